"""``posterm terminal``: the terminal's own administration over the ECR line (the supervisor
resets the operator password)."""

from __future__ import annotations

import sys

import click

from firmware_protocol.native.messages import Reason

from posterm.cli.common import EXIT_CODES_HELP, check_password, emit_json, handle_errors, port_options
from posterm.cli.driver_cmd import _open, json_option, timeout_option
from posterm.crypto.password_rules import pattern_problem


@click.group()
def terminal() -> None:
    """The terminal's own administration: reset a locked or forgotten operator password."""


def _new_password(value: str, hint: str) -> str:
    """A new operator password: what the protocol carries, and not a guessable pattern (the
    terminal refuses one too, PASSWORD_NOT_ALLOWED; here the reason is said)."""
    check_password(value, hint)
    why = pattern_problem(value, "the new operator password")
    if why:
        raise click.BadParameter(f"{why} (not shown)", param_hint=hint)
    return value


def _passwords(from_stdin: bool) -> tuple[str, str]:
    """(supervisor password, new operator password): two lines of stdin, or hidden prompts
    (the new one typed twice). Never echoed, never in an error."""
    if from_stdin:
        lines = [sys.stdin.readline().strip() for _ in range(2)]
        if not all(lines):
            raise click.BadParameter("expected two lines: the supervisor password, then the new operator password",
                                     param_hint="--passwords-stdin")
        return (check_password(lines[0], "--passwords-stdin"), _new_password(lines[1], "--passwords-stdin"))
    supervisor = check_password(click.prompt("Supervisor password", hide_input=True, err=True),
                                "supervisor password")
    new = _new_password(click.prompt("New operator password", hide_input=True, confirmation_prompt=True,
                                     err=True), "new operator password")
    return supervisor, new


@terminal.command("reset-password", epilog=EXIT_CODES_HELP)
@port_options
@click.option("--passwords-stdin", is_flag=True,
              help="Read the supervisor password and the new operator password from stdin, one line each"
                   " (default: hidden prompts).")
@json_option
@timeout_option
@handle_errors
def reset_password(passwords_stdin, as_json, timeout, **kw):
    """Set a new operator password with the terminal's supervisor password.

    This is how a terminal whose operator password is locked (5 wrong tries) or forgotten
    is opened again: the supervisor password (kept on the terminal, demo 975310) is checked
    by the terminal, which then keeps the new operator password and clears its lock. Three
    wrong supervisor passwords in a row lock the supervisor password for 30 minutes.
    Neither password is shown, logged, traced or recorded in clear.

    The new password may not be one character repeated or a run of digits (123456,
    654321): exit 2 naming the rule, before anything is sent.

    Exits 0 when the password was reset, 1 when the terminal refused (wrong or locked
    supervisor password, or a new password it does not allow: the supervisor's own, or one
    of the patterns above).
    """
    protocol = kw.get("protocol") or "chosen"
    # The port first: nothing to type for a terminal that is not there.
    with _open(kw, as_json) as term:
        reset = getattr(term, "reset_operator_password", None)
        if reset is None:
            raise click.UsageError(f"the {protocol} protocol family cannot reset the operator password over the"
                                   " line (reset it on the terminal's keypad)")
        supervisor, new = _passwords(passwords_stdin)
        out = reset(supervisor, new, timeout=timeout or 10.0)
    if as_json:
        emit_json(out.to_json())
    elif out.done:
        click.echo("operator password reset (the operator password is unlocked)")
    else:
        detail = ""
        if out.locked_until:
            detail = f"; the supervisor password is locked until {out.locked_until}"
        elif out.supervisor_tries_left is not None and out.reason:
            detail = f"; {out.supervisor_tries_left} supervisor tries left before it locks"
        reason = out.to_json()["reason"] or "refused"
        if out.reason == Reason.PASSWORD_NOT_ALLOWED:
            reason += " (the new password may not be the supervisor's, one character repeated or a run of digits)"
        click.echo(f"operator password not reset: {reason}{detail}")
    sys.exit(0 if out.done else 1)
