"""The password patterns anyone would guess first, refused wherever a password is set: one
character repeated (111111, aaaa) and a run of consecutive digits up or down (123456,
654321). Pure functions, no I/O: the host's payment-password rules
(:func:`posterm.host.identity.password_problem`, which adds the ID's birth date) and the
terminal's operator-password reset (:class:`posterm.emulator.peripherals.OperatorKeypad`)
both use them."""

from __future__ import annotations


def pattern_problem(password: str, what: str = "a password") -> str | None:
    """Why ``password`` is a guessable pattern (one line naming ``what``), None when it is not."""
    if len(set(password)) == 1:
        return f"{what} may not be one digit repeated" if password.isdigit() else f"{what} may not be one character repeated"
    if password.isascii() and password.isdigit() and len(password) > 1:
        steps = {int(b) - int(a) for a, b in zip(password, password[1:])}
        if steps in ({1}, {-1}):
            return f"{what} may not be a run of digits, up or down"
    return None
