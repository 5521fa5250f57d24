"""The emulated terminal's peripherals: scanner, PIN pad, display, printer, operator
keypad, and the customer who uses them (driven by a scenario).

The firmware never sees PIN digits: the customer presses keys on the
:class:`PinPad`, which passes each digit straight to the secure module
(:mod:`posterm.crypto.pinpad`) and gives the firmware only the encrypted PIN
block. The secure module and the operator-password object are injected (the
runner builds them), so this module imports no host code and no key material.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from firmware_protocol.native.messages import Reason

from posterm.crypto.password_rules import pattern_problem
from posterm.emulator.scenario import DEFAULT_CODE, DEFAULT_CODES, DEMO_PIN, STAGE_OF, Action, PaymentScript
from posterm.errors import CryptoError, PosError

RECEIPT_WIDTH = 32


class PeripheralError(PosError):
    """A peripheral could not do what the firmware asked (no key in the PIN pad, ...)."""


# ------------------------------------------------------------------ display and printer


class Display:
    """The customer display. Its text goes to the ECR in every Progress."""

    def __init__(self, on_change=None) -> None:
        self.text = "WELCOME"
        self.qr_data: str | None = None
        # Called with (text, qr_data) when what the screen shows changes (e.g. `posterm emulate
        # --show-display`); runs on the terminal's thread, so it must be quick and not raise.
        self.on_change = on_change

    def show(self, text: str, qr_data: str | None = None) -> str:
        changed = (text, qr_data) != (self.text, self.qr_data)
        self.text = text
        self.qr_data = qr_data
        if changed and self.on_change is not None:
            try:
                self.on_change(text, qr_data)
            except Exception:  # noqa: BLE001 - a broken viewer must not stop the terminal
                pass
        return text


class Printer:
    """The receipt printer: keeps every receipt printed since start (bounded)."""

    def __init__(self, keep: int = 1000) -> None:
        self.receipts: collections.deque[tuple[str, ...]] = collections.deque(maxlen=keep)
        self.paper_ok = True
        self.footer: tuple[str, ...] = ()   # printed at the foot of every receipt (security notices)

    def print(self, lines: tuple[str, ...]) -> tuple[str, ...]:
        lines = tuple(line[:64] for line in (*lines, *self.footer))
        self.receipts.append(lines)
        return lines


def receipt_line(left: str, right: str = "", width: int = RECEIPT_WIDTH) -> str:
    """``left`` and ``right`` on one line, right-aligned to ``width``."""
    if not right:
        return left[:64]
    gap = max(1, width - len(left) - len(right))
    return (left + " " * gap + right)[:64]


# ------------------------------------------------------------------ PIN pad


@dataclass(frozen=True, slots=True)
class PinBlock:
    """What the PIN pad hands the firmware: ciphertext, its KSN and the ISO format."""

    block: bytes
    ksn: bytes
    format: int

    def __repr__(self) -> str:
        return f"PinBlock(ksn={self.ksn.hex().upper()}, format={self.format}, block=<redacted>)"


class SecureModule(Protocol):  # what posterm.crypto.pinpad provides (duck-typed)
    def begin_pin_entry(self, pan: str) -> Any: ...
    def press(self, digit: str) -> Any: ...
    def finish(self) -> Any: ...
    def status(self) -> Any: ...


class PinPad:
    """The PIN pad: keys go into the secure module; only an encrypted block comes out.

    Thread-safe: the host link signs messages with the same module from its worker.
    """

    def __init__(self, module: Any) -> None:
        self.module = module
        self.lock = threading.RLock()
        self.entering = False

    def begin(self, pan: str) -> None:
        with self.lock:
            self.entering = True
            try:
                self.module.begin_pin_entry(pan)
            except PosError:
                self.entering = False
                raise

    def press(self, digit: str) -> None:
        with self.lock:
            if self.entering:
                self.module.press(digit)

    def cancel(self) -> None:
        with self.lock:
            if self.entering:
                self.entering = False
                cancel = getattr(self.module, "cancel_pin_entry", None) or getattr(self.module, "cancel", None)
                if cancel is not None:
                    try:
                        cancel()
                    except PosError:
                        pass

    def finish(self) -> PinBlock:
        """The encrypted PIN block. Raises :class:`PeripheralError` (never with digits)."""
        with self.lock:
            self.entering = False
            try:
                enc = self.module.finish()
            except (PosError, ValueError) as exc:
                raise PeripheralError(f"PIN pad could not make a PIN block: {type(exc).__name__}") from None
        fmt = getattr(enc, "format", 4)
        return PinBlock(bytes(enc.block), bytes(enc.ksn), int(getattr(fmt, "value", fmt)))

    def status(self) -> Any:
        with self.lock:
            return self.module.status()

    def load_key_block(self, key_block: str) -> Any:
        """Unwrap a TR-31 block into the module. Raises ``CryptoError`` (no key bytes in it)."""
        with self.lock:
            return self.module.load_key_block(key_block)


# ------------------------------------------------------------------ operator keypad


@dataclass(frozen=True, slots=True)
class ResetVerdict:
    """What came of a supervisor's operator-password reset: ``reason`` NONE when done;
    SUPERVISOR_PASSWORD_WRONG, SUPERVISOR_LOCKED (``locked_until``, epoch seconds) or
    PASSWORD_NOT_ALLOWED otherwise. ``tries_left``: supervisor tries before the lock."""

    reason: Reason
    tries_left: int
    locked_until: float | None = None


class OperatorKeypad:
    """The merchant's keypad: checks the operator password for refund, settle and key load.

    ``checker`` is :class:`posterm.crypto.pinpad.OperatorPassword` (or anything with
    ``verify(password) -> bool`` that raises when locked). Five wrong tries lock it.
    """

    def __init__(self, checker: Any, supervisor: Any = None) -> None:
        self.checker = checker
        # posterm.crypto.pinpad.SupervisorPassword (verify(password) -> SupervisorCheck), or
        # None: this terminal has no supervisor password and cannot reset the operator's.
        self.supervisor = supervisor
        self.cancel_pressed = False

    def reset_operator(self, supervisor_password: str, new_password: str) -> ResetVerdict:
        """The supervisor resets (and unlocks) the operator password. The supervisor password
        is checked first (its own try limit); the new operator password may not be it, nor a
        guessable pattern (:func:`posterm.crypto.password_rules.pattern_problem`: one
        character repeated, a run of digits)."""
        if self.supervisor is None:
            raise PeripheralError("this terminal has no supervisor password")
        check = self.supervisor.verify(supervisor_password)
        if not check.ok:
            reason = Reason.SUPERVISOR_LOCKED if check.locked_until is not None else Reason.SUPERVISOR_PASSWORD_WRONG
            return ResetVerdict(reason, check.tries_left, check.locked_until)
        if new_password == supervisor_password or pattern_problem(new_password) is not None:
            return ResetVerdict(Reason.PASSWORD_NOT_ALLOWED, check.tries_left)
        self.checker.reset(new_password)
        return ResetVerdict(Reason.NONE, check.tries_left)

    def check(self, password: str | None) -> Reason:
        """``Reason.NONE`` when right, else ``OPERATOR_PASSWORD_WRONG`` or ``OPERATOR_LOCKED``."""
        if getattr(self.checker, "locked", False) is True:
            return Reason.OPERATOR_LOCKED
        if password is None:
            return Reason.OPERATOR_PASSWORD_WRONG
        try:
            ok = self.checker.verify(password)
        except (CryptoError, PosError) as exc:
            if "lock" in type(exc).__name__.lower() or "lock" in str(exc).lower():
                return Reason.OPERATOR_LOCKED
            return Reason.OPERATOR_PASSWORD_WRONG
        if ok:
            return Reason.NONE
        return Reason.OPERATOR_LOCKED if getattr(self.checker, "locked", False) is True else Reason.OPERATOR_PASSWORD_WRONG


# ------------------------------------------------------------------ the customer


class Wallet(Protocol):
    """The customer's wallet app: it talks to the host, never to the terminal."""

    def scan_qr(self, qr_data: str, code: str) -> None: ...
    def confirm(self, order_id: str) -> None: ...


class Customer:
    """Plays one payment's script: at each prompt, the next action for it (or none).

    ``respond(stage)`` returns ``(delay, action)`` or ``None`` when the customer does
    nothing at this prompt. Stages: ``scan``, ``pin``, ``phone``, ``qr``. An exhausted
    (or absent) script falls back to the defaults of the host's test codes: the approving
    one of ``currency`` (the order's). A ``manual`` customer has no defaults: past its
    script it does nothing until told (a person at the control panel).
    """

    def __init__(self, script: PaymentScript | None = None, currency: str = "CNY", manual: bool = False) -> None:
        self.script = script
        self.manual = manual
        self.default_code = DEFAULT_CODES.get(currency, DEFAULT_CODE)
        self._queue = collections.deque(script.actions if script else ())
        self._typed_demo_pin = False

    def respond(self, stage: str) -> tuple[float, Action] | None:
        delay = 0.0
        while self._queue:
            action = self._queue[0]
            if action.kind == "wait":
                self._queue.popleft()
                delay += action.seconds
                continue
            target = STAGE_OF[action.kind]
            if target not in (stage, "any"):
                return None  # meant for a later prompt: this one goes unanswered
            self._queue.popleft()
            if action.kind == "do_nothing":
                return None
            return delay + action.after, action
        return self._default(stage)

    def _default(self, stage: str) -> tuple[float, Action] | None:
        if self.manual:
            return None
        if stage == "scan":
            return 0.2, Action("present_code", code=self.default_code)
        if stage == "pin":
            # The demo PIN once per payment. Asked again, it was not this account's PIN:
            # a customer who does not know it presses Cancel rather than guessing, so an
            # emulator pointed at a real account never burns its PIN tries.
            if self._typed_demo_pin:
                return 0.2, Action("cancel_pin")
            self._typed_demo_pin = True
            return 0.2, Action("type_pin", digits=DEMO_PIN)
        if stage == "qr":
            return 0.5, Action("scan_qr", code=self.default_code)
        return None  # phone: the host's test code decides whether the customer confirms
