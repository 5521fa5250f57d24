"""Scenarios: what the customer does at the emulated terminal, read from TOML.

A scenario is a list of payments; each PayRequest for a new order takes the
next one (when they run out, the defaults below apply)::

    [terminal]                       # optional timing overrides (seconds)
    poll_interval = 0.5              # phone confirmation: query every ...
    poll_attempts = 5                # ... this many times, then cancel
    scan_timeout = 30
    pin_timeout = 30
    qr_timeout = 60

    [[payment]]
    expect = "approved"              # optional: approved | declined | cancelled | unknown
    expect_reason = "none"           # optional: a Reason name, lower case
    actions = [
      { action = "present_code", code = "289900000000000003", after = 0.2 },
      { action = "type_pin", digits = "147258" },
    ]
    then = [ { action = "restart" } ]  # optional: done to the terminal once this payment is over

Actions, done in order, each when the terminal asks for that kind of input:

``present_code`` (code, after)      the customer shows a payment code to the scanner
``scan_qr`` (code, after)            the customer's wallet (account ``code``) scans the terminal's QR
``type_pin`` (digits, after, key_interval)   digits go to the PIN pad's secure module
``cancel_pin`` (after)               the customer presses Cancel on the PIN pad
``confirm_on_phone`` (after)         the customer confirms in the wallet app after a delay
``do_nothing``                       the customer ignores this prompt (the terminal times out)
``walk_away`` (after)                the customer leaves
``wait`` (seconds)                   a pause before the next action
``refuse_on_phone`` (after)          the customer refuses in the wallet app (the terminal cancels)
``press_keys`` (keys, after)         keys on the terminal's keypad: ``"1 4 7 2 5 8 OK"``, ``"CANCEL"``

and what happens to the terminal itself (played at the next prompt, then the prompt's
own action follows): ``line_fault`` (fault: ``corrupt`` the next chunk from the ECR, or
``drop`` the next one to it), ``unplug`` (seconds: the cable is out that long, 0 until a
``replug``), ``replug``, ``restart`` (the terminal is power-cycled: the journal settles
what was in flight).

``then`` (optional) lists what happens to the terminal once the payment is over, back at
idle, before the next payment: only those terminal actions and ``press_keys`` (a
restart or a pulled cable between two payments, as the control panel exports them).

With no scenario (or after the last payment of one) the host's test payment
codes pick the outcome: the scanner sees the approving test code of the order's
currency (``DEFAULT_CODES``: CNY, EUR; ``DEFAULT_CODE`` for any other), the PIN pad
types ``DEMO_PIN`` once and a dynamic QR is scanned by the wallet of that code.
Errors are :class:`~posterm.errors.ConfigError` naming the file and key (or line).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_protocol.native.messages import Outcome, Reason

from posterm.errors import ConfigError

DEFAULT_CODE = "289900000000000001"
# The demo host's approving test code (posterm.host.demo, suffix 01) in each currency it has
# accounts in: a register that sends only an amount (ZVT: EUR) is approved up to the
# account's password-free limit, with the PIN up to its per-transaction limit.
DEFAULT_CODES = {"CNY": DEFAULT_CODE, "EUR": "289900000000978001"}
DEMO_PIN = "147258"

# action -> {parameter: (type, required)}
ACTIONS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "present_code": {"code": (str, True), "after": ((int, float), False)},
    "scan_qr": {"code": (str, False), "after": ((int, float), False)},
    "type_pin": {"digits": (str, True), "after": ((int, float), False), "key_interval": ((int, float), False)},
    "cancel_pin": {"after": ((int, float), False)},
    "confirm_on_phone": {"after": ((int, float), False)},
    "do_nothing": {},
    "walk_away": {"after": ((int, float), False)},
    "wait": {"seconds": ((int, float), True)},
    "refuse_on_phone": {"after": ((int, float), False)},
    "press_keys": {"keys": (str, True), "after": ((int, float), False)},
    "line_fault": {"fault": (str, True), "after": ((int, float), False)},
    "unplug": {"seconds": ((int, float), False), "after": ((int, float), False)},
    "replug": {"after": ((int, float), False)},
    "restart": {"after": ((int, float), False)},
}
# Which prompt each action answers (wait is a pause; do_nothing answers any prompt with silence).
STAGE_OF = {"present_code": "scan", "walk_away": "any", "scan_qr": "qr", "type_pin": "pin",
            "cancel_pin": "pin", "confirm_on_phone": "phone", "do_nothing": "any", "refuse_on_phone": "phone",
            "press_keys": "any", "line_fault": "any", "unplug": "any", "replug": "any", "restart": "any"}
# What happens to the terminal rather than an answer to its prompt: the runner does these.
TERMINAL_ACTIONS = frozenset({"line_fault", "unplug", "replug", "restart"})
LINE_FAULTS = ("corrupt", "drop")
KEYS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "OK", "CANCEL", "CLEAR")
MAX_KEYS = 32
TERMINAL_KEYS = {"poll_interval": (0.01, 600.0), "poll_attempts": (1, 100), "scan_timeout": (0.05, 3600.0),
                 "pin_timeout": (0.05, 3600.0), "qr_timeout": (0.05, 3600.0)}


@dataclass(frozen=True, slots=True)
class Action:
    """One customer action. ``repr`` masks the PIN digits."""

    kind: str
    code: str | None = None
    digits: str | None = field(default=None, repr=False)
    after: float = 0.0
    key_interval: float = 0.05
    seconds: float = 0.0
    keys: str | None = field(default=None, repr=False)    # press_keys: may be a PIN
    fault: str | None = None

    def __repr__(self) -> str:
        extra = ""
        if self.code:
            extra += f", code=…{self.code[-4:]}"
        if self.digits:
            extra += ", digits=<redacted>"
        if self.keys:
            extra += f", keys={masked_keys(self.keys)}"
        if self.fault:
            extra += f", fault={self.fault}"
        return f"Action({self.kind}{extra}, after={self.after:g})"


def key_list(keys: str) -> list[str]:
    """``"1 4 7 OK"`` as ``["1", "4", "7", "OK"]`` (names upper-cased; digits may run together:
    ``"147258 OK"``). Raises ValueError naming no digit."""
    out: list[str] = []
    for token in keys.upper().split():
        out.extend(token if token.isdigit() else [token])
    if not out or len(out) > MAX_KEYS or any(k not in KEYS for k in out):
        raise ValueError(f"keys: 1 to {MAX_KEYS} of 0-9, OK, CANCEL, CLEAR separated by spaces")
    return out


def masked_keys(keys: str) -> str:
    """The keys with every digit shown as ``*`` (digits on the keypad may be a PIN)."""
    try:
        return " ".join("*" if k.isdigit() else k for k in key_list(keys))
    except ValueError:
        return "<invalid>"


@dataclass(frozen=True, slots=True)
class PaymentScript:
    """The customer's actions for one payment, and what the test expects of it."""

    actions: tuple[Action, ...] = ()
    expect: Outcome | None = None
    expect_reason: Reason | None = None
    then: tuple[Action, ...] = ()     # terminal actions / keys once the payment is over (at idle)


@dataclass(frozen=True, slots=True)
class Scenario:
    payments: tuple[PaymentScript, ...] = ()
    terminal: dict[str, float] = field(default_factory=dict)
    source: str = "<scenario>"


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file. Raises :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"scenario {p}: cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, str(p))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse scenario TOML text. Raises :class:`ConfigError` naming ``source`` and the key or line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"scenario {source}: not valid TOML: {exc}") from None
    return scenario_from_dict(data, source)


def scenario_from_dict(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate an already-parsed scenario mapping (also used by the pytest plugin)."""

    def err(key: str, why: str) -> ConfigError:
        return ConfigError(f"scenario {source}: {key}: {why}")

    unknown = set(data) - {"terminal", "payment"}
    if unknown:
        raise err(sorted(unknown)[0], "unknown top-level key (expected [terminal] and [[payment]])")
    terminal: dict[str, float] = {}
    tdata = data.get("terminal", {})
    if not isinstance(tdata, dict):
        raise err("terminal", "must be a table")
    for key, value in tdata.items():
        if key not in TERMINAL_KEYS:
            raise err(f"terminal.{key}", f"unknown setting (known: {', '.join(sorted(TERMINAL_KEYS))})")
        lo, hi = TERMINAL_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise err(f"terminal.{key}", f"must be a number from {lo:g} to {hi:g}")
        if key == "poll_attempts" and not isinstance(value, int):
            raise err(f"terminal.{key}", "must be a whole number")
        terminal[key] = value
    pdata = data.get("payment", [])
    if not isinstance(pdata, list):
        raise err("payment", "must be an array of tables ([[payment]])")
    payments = []
    for i, pay in enumerate(pdata):
        where = f"payment[{i}]"
        if not isinstance(pay, dict):
            raise err(where, "must be a table")
        extra = set(pay) - {"actions", "expect", "expect_reason", "then"}
        if extra:
            raise err(f"{where}.{sorted(extra)[0]}", "unknown key (expected actions, expect, expect_reason, then)")
        expect = None
        if "expect" in pay:
            names = {o.name.lower(): o for o in Outcome if o is not Outcome.PENDING}
            if pay["expect"] not in names:
                raise err(f"{where}.expect", f"must be one of {', '.join(names)}")
            expect = names[pay["expect"]]
        expect_reason = None
        if "expect_reason" in pay:
            names_r = {r.name.lower(): r for r in Reason}
            if not isinstance(pay["expect_reason"], str) or pay["expect_reason"].lower() not in names_r:
                raise err(f"{where}.expect_reason", "must be a reason name such as 'insufficient_balance'")
            expect_reason = names_r[pay["expect_reason"].lower()]
        actions_data = pay.get("actions", [])
        if not isinstance(actions_data, list):
            raise err(f"{where}.actions", "must be an array of inline tables")
        actions = tuple(_action(a, f"{where}.actions[{j}]", err) for j, a in enumerate(actions_data))
        then_data = pay.get("then", [])
        if not isinstance(then_data, list):
            raise err(f"{where}.then", "must be an array of inline tables")
        then = tuple(_action(a, f"{where}.then[{j}]", err) for j, a in enumerate(then_data))
        for j, a in enumerate(then):
            if a.kind not in TERMINAL_ACTIONS and a.kind != "press_keys":
                raise err(f"{where}.then[{j}].action", f"{a.kind} answers a prompt: only "
                          f"{', '.join(sorted(TERMINAL_ACTIONS))} and press_keys come after a payment")
        payments.append(PaymentScript(actions, expect, expect_reason, then))
    return Scenario(tuple(payments), terminal, source)


def _action(a: Any, where: str, err) -> Action:
    if isinstance(a, str):  # shorthand: "do_nothing", "walk_away"
        a = {"action": a}
    if not isinstance(a, dict):
        raise err(where, "must be an inline table like { action = \"present_code\", code = \"...\" }")
    kind = a.get("action")
    if kind not in ACTIONS:
        raise err(f"{where}.action", f"unknown action {kind!r} (known: {', '.join(ACTIONS)})")
    params = ACTIONS[kind]
    for key in a:
        if key != "action" and key not in params:
            raise err(f"{where}.{key}", f"{kind} takes no parameter {key!r}"
                      + (f" (it takes {', '.join(params)})" if params else ""))
    values: dict[str, Any] = {}
    for key, (typ, required) in params.items():
        if key not in a:
            if required:
                raise err(f"{where}.{key}", f"{kind} needs {key}")
            continue
        v = a[key]
        if isinstance(v, bool) or not isinstance(v, typ):
            raise err(f"{where}.{key}", "must be " + ("a number" if typ is not str else "a string"))
        if isinstance(v, (int, float)) and not 0 <= v <= 3600:
            raise err(f"{where}.{key}", "must be from 0 to 3600 seconds")
        values[key] = v
    if "code" in values and not (values["code"].isdigit() and 10 <= len(values["code"]) <= 32):
        raise err(f"{where}.code", "must be 10 to 32 digits")
    if "digits" in values and not (values["digits"].isdigit() and 4 <= len(values["digits"]) <= 12):
        # Say nothing about the value itself: it is a PIN.
        raise err(f"{where}.digits", "must be 4 to 12 digits")
    if "keys" in values:
        try:
            key_list(values["keys"])
        except ValueError as exc:
            raise err(f"{where}.keys", str(exc).removeprefix("keys: ")) from None
    if "fault" in values and values["fault"] not in LINE_FAULTS:
        raise err(f"{where}.fault", f"must be one of {', '.join(LINE_FAULTS)}")
    return Action(kind, code=values.get("code"), digits=values.get("digits"),
                  after=float(values.get("after", 0.0)), key_interval=float(values.get("key_interval", 0.05)),
                  seconds=float(values.get("seconds", 0.0)), keys=values.get("keys"), fault=values.get("fault"))


def action_table(action: Action) -> dict[str, Any]:
    """``action`` as the inline table a scenario file gives it (what :func:`_action` reads back)."""
    out: dict[str, Any] = {"action": action.kind}
    for key in ACTIONS[action.kind]:
        value = getattr(action, key)
        if value is None or (key in ("after", "seconds") and not value and not ACTIONS[action.kind][key][1]):
            continue
        if key == "key_interval" and value == 0.05:
            continue
        out[key] = value
    return out
