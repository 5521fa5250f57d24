"""Live control of an emulated terminal: what a control panel shows, and the customer's and
the operator's actions as methods (the web panel, :mod:`posterm.panel`, and the pytest
plugin's ``posterm_terminal`` fixture are built on it).

    control = TerminalControl(term)           # term: a started EmulatedTerminal
    control.present_code("289900000000000003")
    control.wait_for(lambda s: s["prompt"] == "pin")
    control.type_pin()                        # the demo PIN; type_pin("000000"): a wrong one
    control.state()["receipts"][-1]["lines"]

**What it shows** (:meth:`TerminalControl.state`, a JSON-ready dict): the display text and
the dynamic QR's payload, the prompt (scan / pin / phone / qr), the keypad, the last
:data:`MAX_RECEIPTS` receipts, the firmware state, the host's last answer for the order,
the line (unplugged, bytes, what it survived) and a traffic log of the last
:data:`MAX_TRAFFIC` decoded frames and link events, secrets masked exactly as in a
recording (the family's :class:`~posterm.families.interfaces.RecordObserver`: a payment
code keeps its last four digits, PIN blocks, passwords, key blocks and MACs are
``<redacted>``). The snapshot is taken on the terminal's own line thread (it owns the
firmware) after each pass, only when something changed; readers get a copy under a lock.

**Actions** are scenario actions (:mod:`posterm.emulator.scenario`), played by the firmware
as a scenario's are: one that answers the prompt on the screen is played now (after its
``after``); one for another prompt waits for the next prompt of its kind (at most
:data:`~posterm.emulator.firmware.machine.MAX_HELD_ACTIONS`); keys and what happens to the
terminal itself (line fault, unplug, replug, restart) happen now. At most
:data:`MAX_PENDING` calls wait for the line thread; one more raises :class:`ControlBusy`.
With ``manual=True`` (the default) the customer does nothing of their own: no default
test code, no demo PIN; a person (or a test) acts.

**Export**: every action done is recorded with the payment it was done in, and
:meth:`TerminalControl.scenario_toml` writes the session as a scenario file
(``posterm emulate --scenario`` replays it), each payment with the outcome it had as its
``expect``. That file is the one answer that carries PIN digits typed (a scenario must).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
from typing import Any, Callable

from firmware_protocol.currency import format_minor, to_minor
from firmware_protocol.native.messages import Outcome, Reason, TerminalState as S

from posterm.emulator.scenario import ACTIONS, DEMO_PIN, KEYS, LINE_FAULTS, TERMINAL_ACTIONS, Action, action_table, key_list, masked_keys
from posterm.errors import ConfigError, PosError

log = logging.getLogger("posterm.emulator.control")

MAX_PENDING = 32          # calls queued for the line thread, per terminal
MAX_TRAFFIC = 200         # decoded frames and link events kept, per terminal
MAX_RECEIPTS = 5          # receipts in the snapshot
MAX_HEX = 192             # hex characters of a frame kept in the traffic log (masked first)
MAX_EXPORT_PAYMENTS = 200  # payments kept for the scenario export
MAX_EXPORT_ACTIONS = 32    # actions per exported payment
MAX_LISTENERS = 16
CALL_TIMEOUT = 5.0
WRONG_PIN = "000000"

# The demo host's test codes (posterm.host.demo: TEST_ACCOUNTS and their behaviours, and
# the README's table), with what each does; the EUR twins behave the same.
DEMO_CODES: tuple[dict[str, str], ...] = (
    {"code": "289900000000000001", "does": "approved; PIN above 1,000.00 (the demo PIN 147258); declined above 5,000.00"},
    {"code": "289900000000000002", "does": "balance 5.00: declined (insufficient balance) above that"},
    {"code": "289900000000000003", "does": "always asks for the PIN (147258)"},
    {"code": "289900000000000004", "does": "confirmation on the phone, given by the wallet 2 s after it is asked"},
    {"code": "289900000000000005", "does": "confirmation on the phone that never comes: confirm or refuse it yourself"},
    {"code": "289900000000000006", "does": "approved, then the host goes silent: the payment ends unknown"},
    {"code": "289900000000000007", "does": "rejected by risk control (declined)"},
    {"code": "289900000000000008", "does": "account frozen (declined)"},
    {"code": "289900000000978001", "does": "EUR: as ...0001 (a ZVT register pays in EUR)"},
)


class ControlBusy(PosError):
    """Too many calls already wait for this terminal's line thread (or the register is busy)."""


class ControlError(ConfigError):
    """A control call with a bad argument (names it, never echoing a PIN), or a terminal that stopped."""


def _reason_name(code: int) -> str:
    try:
        return Reason(code).name.lower()
    except ValueError:
        return str(code)


def host_answer(reply: Any) -> dict[str, Any] | None:
    """The host's answer as the panel shows it: its type and a fixed list of plain fields."""
    if reply is None:
        return None
    out: dict[str, Any] = {"type": type(reply).__name__}
    for name in ("order_id", "status", "reason", "reason_text", "trade_no", "amount_minor", "currency", "code_last4",
                 "pin_tries_left", "text"):
        value = getattr(reply, name, None)
        if value is None or value == "":
            continue
        if name == "status":
            value = getattr(value, "name", str(value))
        elif name == "reason":
            value = _reason_name(int(value))
        elif not isinstance(value, (str, int)):
            continue
        out[name] = value
    return out


class TerminalControl:
    """The live view of one :class:`~posterm.emulator.runner.EmulatedTerminal` and the
    actions on it (see the module docstring). ``traffic=False`` leaves the line undecoded
    (a fleet under load). ``close()`` unhooks it; the terminal stays the caller's."""

    def __init__(self, term: Any, *, manual: bool = True, traffic: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.term = term
        self.id = term.terminal_id
        self._clock = clock
        self._t0 = clock()
        self._cond = threading.Condition()
        self._version = 0
        self._snap: dict[str, Any] = {}
        self._key: tuple | None = None
        self._traffic: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_TRAFFIC)
        self._seq = itertools.count(1)
        self._traffic_seq = 0
        self._pending = 0
        self._listeners: list[Callable[["TerminalControl"], None]] = []
        self._last_answer: dict[str, Any] | None = None
        self._last_reply_id: int | None = None
        self._prompt_since = clock()
        self._state_seen: Any = None
        # the export: payments in the order they started, each {order_id, actions, expect, expect_reason}
        self._payments: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EXPORT_PAYMENTS)
        self._next_payment: list[Action] = []      # actions done between payments: the next one's
        self._order_seen: str | None = None
        self._results_seen = 0
        self.manual = manual
        self._observer = None
        self._offsets = {"ecr": 0, "terminal": 0}
        if traffic:
            try:
                from posterm.record.format import recording_support

                self._observer = recording_support(term.protocol).observer()
            except ConfigError as exc:   # a family that cannot be recorded: no traffic log
                log.info("%s: no traffic log: %s", self.id, exc)
        self.register = CashRegister(self)
        term.wire_tap = self._on_wire if self._observer is not None else None
        term.on_service = self._refresh
        self._call(lambda: self._set_manual(manual))

    # ================================================================ reading

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    def state(self, traffic: bool = True) -> dict[str, Any]:
        """A JSON-ready copy of the terminal's state (see the module docstring)."""
        with self._cond:
            snap = dict(self._snap)
            snap["version"] = self._version
            snap["traffic_seq"] = self._traffic_seq
            if traffic:
                snap["traffic"] = list(self._traffic)
        snap["register"] = self.register.status()
        snap["error"] = f"{type(self.term.error).__name__}: {self.term.error}" if self.term.error else None
        return snap

    def traffic(self, since: int = 0) -> list[dict[str, Any]]:
        """Traffic-log entries with a sequence number above ``since`` (at most MAX_TRAFFIC)."""
        with self._cond:
            return [e for e in self._traffic if e["n"] > since]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``predicate(state)`` holds (checked at each change); returns that state.
        Raises :class:`TimeoutError` with the last state seen."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                version = self._version
            snap = self.state()
            if predicate(snap):
                return snap
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.id}: still {snap.get('state')} / {snap.get('display', {}).get('text')!r}"
                                   f" after {timeout:g}s")
            with self._cond:
                self._cond.wait_for(lambda: self._version != version, min(left, 1.0))

    def wait_for_prompt(self, prompt: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the terminal asks for ``prompt`` (scan | pin | phone | qr)."""
        return self.wait_for(lambda s: s["prompt"] == prompt, timeout)

    def add_listener(self, fn: Callable[["TerminalControl"], None]) -> Callable[[], None]:
        """Call ``fn(self)`` (on the terminal's thread: quick, must not raise) at each change
        or traffic entry. Returns the function that removes it."""
        with self._cond:
            if len(self._listeners) >= MAX_LISTENERS:
                raise ControlBusy(f"{self.id}: already {MAX_LISTENERS} listeners")
            self._listeners.append(fn)

        def remove() -> None:
            with self._cond:
                if fn in self._listeners:
                    self._listeners.remove(fn)
        return remove

    def close(self) -> None:
        if self.term.on_service == self._refresh:
            self.term.on_service = None
        self.term.wire_tap = None

    # ================================================================ actions

    def act(self, action: Action) -> str:
        """Do a scenario action now (or at its prompt): ``"now"``, ``"held"`` (waits for its
        prompt) or ``"full"``. Raises ControlBusy / ControlError."""
        if action.kind not in ACTIONS or action.kind == "wait":
            raise ControlError(f"action {action.kind!r}: not a live action")

        def run() -> str:
            fw = self.term.firmware
            stage = fw.prompt
            how = fw.customer_acts(action)
            if how != "full":
                after = round(self._clock() - self._prompt_since, 1) if how == "now" and stage else 0.0
                self._record(fw, action, min(after, 3600.0))
            self._bump()
            return how
        return self._call(run)

    def present_code(self, code: str, after: float = 0.0) -> str:
        """The customer shows payment code ``code`` (10 to 32 digits) to the scanner."""
        return self.act(Action("present_code", code=_code(code), after=_after(after)))

    def scan_qr(self, code: str = "289900000000000001", after: float = 0.0) -> str:
        """The wallet of account ``code`` scans the terminal's dynamic QR."""
        return self.act(Action("scan_qr", code=_code(code), after=_after(after)))

    def type_pin(self, digits: str = DEMO_PIN, after: float = 0.0, key_interval: float = 0.0) -> str:
        """The customer types ``digits`` (default the demo PIN) on the PIN pad."""
        if not (isinstance(digits, str) and digits.isdigit() and 4 <= len(digits) <= 12):
            raise ControlError("pin: must be 4 to 12 digits")
        return self.act(Action("type_pin", digits=digits, after=_after(after), key_interval=_after(key_interval)))

    def wrong_pin(self, after: float = 0.0) -> str:
        """The customer types a wrong PIN (000000): the host counts it."""
        return self.type_pin(WRONG_PIN, after)

    def cancel_pin(self, after: float = 0.0) -> str:
        return self.act(Action("cancel_pin", after=_after(after)))

    def confirm_on_phone(self, after: float = 0.0) -> str:
        return self.act(Action("confirm_on_phone", after=_after(after)))

    def refuse_on_phone(self, after: float = 0.0) -> str:
        """The customer refuses in the wallet app: the terminal cancels the order (customer_cancelled)."""
        return self.act(Action("refuse_on_phone", after=_after(after)))

    def do_nothing(self) -> str:
        """The customer ignores the prompt (an automatic answer planned for it is dropped)."""
        return self.act(Action("do_nothing"))

    def walk_away(self, after: float = 0.0) -> str:
        return self.act(Action("walk_away", after=_after(after)))

    def press_keys(self, keys: str) -> str:
        """Keys on the terminal's keypad, e.g. ``"1 4 7 2 5 8 OK"`` or ``"CANCEL"`` (see scenario.KEYS)."""
        try:
            key_list(keys if isinstance(keys, str) else "")
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return self.act(Action("press_keys", keys=keys))

    def line_fault(self, fault: str = "corrupt") -> str:
        """``corrupt`` the next chunk from the ECR (a bad CRC: NAK, retransmit) or ``drop`` the next one to it."""
        if fault not in LINE_FAULTS:
            raise ControlError(f"fault: must be one of {', '.join(LINE_FAULTS)}")
        return self.act(Action("line_fault", fault=fault))

    def unplug(self, seconds: float = 0.0) -> str:
        """Pull the cable: for ``seconds`` (0: until :meth:`replug`). Bytes both ways are lost."""
        return self.act(Action("unplug", seconds=_after(seconds)))

    def replug(self) -> str:
        return self.act(Action("replug"))

    def restart(self) -> str:
        """Power-cycle the terminal: a payment in flight is reconciled with the host from the journal."""
        return self.act(Action("restart"))

    def set_manual(self, manual: bool) -> None:
        """Manual: the customer does only what they are told; automatic: the test codes' defaults."""
        self._call(lambda: self._set_manual(bool(manual)))

    def sale(self, amount: str, currency: str = "CNY") -> str:
        """Ring up a sale on the panel's cash register (see :class:`CashRegister`); returns the order id."""
        return self.register.sale(amount, currency)

    # ================================================================ the export

    def scenario_toml(self) -> str:
        """The session's actions as a scenario file (``posterm emulate --scenario``)."""
        with self._cond:
            payments = [dict(p, actions=list(p["actions"]), then=list(p["then"])) for p in self._payments]
            manual = self.manual
        lines = [f"# posterm control panel: the session of terminal {self.id}, as a scenario",
                 "# (posterm emulate --scenario FILE replays it; each expect is what the payment came to)", ""]
        for p in payments:
            actions = [action_table(a) for a in p["actions"]]
            if manual and p.get("expect") is not None:
                actions.append({"action": "do_nothing"})   # past the last action the person did nothing
            lines.append(f"[[payment]]  # order {p['order_id']}")
            if p.get("expect"):
                lines.append(f"expect = {json.dumps(p['expect'])}")
            if p.get("expect_reason"):
                lines.append(f"expect_reason = {json.dumps(p['expect_reason'])}")
            lines.append("actions = [")
            for a in actions:
                lines.append("  { " + ", ".join(f"{k} = {_toml(v)}" for k, v in a.items()) + " },")
            lines.append("]")
            if p["then"]:
                lines.append("then = [   # done to the idle terminal after this payment")
                for a in p["then"]:
                    lines.append("  { " + ", ".join(f"{k} = {_toml(v)}" for k, v in action_table(a).items()) + " },")
                lines.append("]")
            lines.append("")
        return "\n".join(lines)

    def _record(self, fw: Any, action: Action, after: float) -> None:
        """Line thread: note ``action`` for the export, with the payment it belongs to."""
        if action.kind == "do_nothing" and (not fw.prompt or self.manual):
            # A manual customer answers nothing by themselves: ignoring the prompt changed
            # nothing, and in the file it would use up the prompt a later action answers.
            return
        recorded = Action(action.kind, code=action.code, digits=action.digits, after=after if after >= 0.1 else 0.0,
                          key_interval=action.key_interval, seconds=action.seconds, keys=action.keys,
                          fault=action.fault)
        at_idle = action.kind in TERMINAL_ACTIONS or action.kind == "press_keys"
        with self._cond:
            order = fw.order_in_flight
            target = self._next_payment
            if order is not None and self._payments and self._payments[-1]["order_id"] == order:
                target = self._payments[-1]["actions"]
            elif order is None and at_idle:
                # Done to an idle terminal: the previous payment's "then" (played once it is over).
                # Replayed at the next payment's first prompt instead, a restart or a CANCEL would
                # end that payment; before any payment they change nothing, so they are left out.
                if self._payments:
                    target = self._payments[-1]["then"]
                elif action.kind in ("restart", "press_keys"):
                    return
            if len(target) < MAX_EXPORT_ACTIONS:
                target.append(recorded)

    # ================================================================ the line thread's side

    def _set_manual(self, manual: bool) -> None:
        self.term.firmware.manual_customer = manual
        flow = self.term.firmware._flow
        if flow is not None and flow.customer is not None:
            flow.customer.manual = manual
        self.manual = manual
        self._key = None

    def _call(self, fn: Callable[[], Any], timeout: float = CALL_TIMEOUT) -> Any:
        """Run ``fn`` on the line thread and return what it returned (bounded queue, bounded wait)."""
        term = self.term
        if term.error is not None or term._stop.is_set():
            raise ControlError(f"terminal {self.id} is not running")
        with self._cond:
            if self._pending >= MAX_PENDING:
                raise ControlBusy(f"terminal {self.id}: {MAX_PENDING} actions already wait; try again")
            self._pending += 1
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except Exception as exc:  # noqa: BLE001 - handed to the caller, never kills the line thread
                box["error"] = exc
            finally:
                with self._cond:
                    self._pending -= 1
                done.set()
        term.call_on_line(run)
        if not term._line.is_alive():   # not started yet (or stopped): nobody would run it
            raise ControlError(f"terminal {self.id} is not running")
        if not done.wait(timeout):
            raise ControlBusy(f"terminal {self.id} did not take the action within {timeout:g}s")
        if "error" in box:
            exc = box["error"]
            raise ControlError(f"{type(exc).__name__}: {exc}") if not isinstance(exc, PosError) else exc
        return box.get("value")

    def _bump(self) -> None:
        with self._cond:
            self._version += 1
            self._cond.notify_all()
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a broken viewer must not stop the terminal
                log.debug("%s: a listener failed", self.id, exc_info=True)

    def _on_wire(self, sender: str, data: bytes) -> None:
        """Line thread: bytes that crossed the line, decoded and masked by the family's observer."""
        observer = self._observer
        if observer is None:
            return
        offset = self._offsets[sender]
        self._offsets[sender] = offset + len(data)
        try:
            seen = observer.feed(sender, data, offset)
        except Exception:  # noqa: BLE001 - a decoder bug must not stop the terminal: the log stops instead
            log.warning("%s: traffic log stopped (the decoder failed)", self.id, exc_info=True)
            self._observer = None
            return
        if not seen:
            return
        t = round(self._clock() - self._t0, 3)
        with self._cond:
            for obs in seen:
                rec = obs.record
                kind = rec.get("type")
                if kind == "identity":
                    continue
                entry = {"n": next(self._seq), "t": t, "from": sender, "type": kind,
                         **{k: v for k, v in rec.items() if k not in ("type", "t", "wall", "from", "hex")}}
                if "hex" in rec:
                    hx = str(rec["hex"])
                    entry["hex"] = hx if len(hx) <= MAX_HEX else hx[:MAX_HEX] + "..."
                self._traffic.append(entry)
                self._traffic_seq = entry["n"]
        self._bump()

    def _refresh(self) -> None:
        """Line thread, after each pass: rebuild the snapshot if anything it shows changed."""
        term = self.term
        fw = term.firmware
        flow = fw._flow
        receipts = fw.printer.receipts
        last_receipt = receipts[-1] if receipts else None
        answered_order, reply = fw.last_host_answer
        key = (fw.state, fw.display.text, fw.display.qr_data, id(last_receipt), id(reply), fw.host_online,
               fw.host_refusal, term.unplugged, sum(fw.outcomes.values()), fw.manual_customer,
               len(fw.held_actions), term.restarts, flow.order_id if flow is not None else None,
               fw.pinpad.entering, sum(term.line_events.values()), id(fw))
        if key == self._key:
            return
        self._key = key
        now = self._clock()
        if fw.state != self._state_seen:
            self._state_seen = fw.state
            self._prompt_since = now
        if reply is not None and id(reply) != self._last_reply_id:
            self._last_reply_id = id(reply)
            self._last_answer = host_answer(reply)
            if self._last_answer is not None and answered_order and "order_id" not in self._last_answer:
                self._last_answer["order_id"] = answered_order
        self._follow_payments(fw)
        order = None
        if flow is not None and flow.kind == "pay":
            order = {"order_id": flow.order_id, "amount_minor": flow.amount_minor, "currency": flow.currency,
                     "amount": _money(flow.amount_minor, flow.currency), "dynamic_qr": flow.dynamic_qr,
                     "code_last4": flow.code[-4:] if flow.code else None}
        last = fw.scenario_results[-1] if fw.scenario_results else None
        snap = {
            "id": self.id, "protocol": term.protocol, "port": term.port,
            "state": fw.state.name, "busy": fw.state is not S.IDLE, "prompt": fw.prompt,
            "display": {"text": fw.display.text, "qr_data": fw.display.qr_data},
            "customer": "manual" if fw.manual_customer else "automatic",
            "held": [repr(a) for a in fw.held_actions],
            "order": order,
            "host": {"online": fw.host_online,
                     "refusal": _reason_name(fw.host_refusal) if fw.host_refusal else None,
                     "answer": self._last_answer},
            "last_result": ({"order_id": last.order_id, "outcome": last.outcome.name.lower(),
                             "reason": _reason_name(last.reason)} if last is not None else None),
            "receipts": [{"lines": list(r)} for r in list(receipts)[-MAX_RECEIPTS:]],
            "keypad": {"keys": list(KEYS), "pin_entry": bool(fw.pinpad.entering)},
            "line": {"unplugged": term.unplugged, "bytes_in": term.bytes_received, "bytes_out": term.bytes_sent,
                     "events": dict(term.line_events), "restarts": term.restarts},
            "payments": {k.lower(): v for k, v in fw.outcomes.items()},
        }
        with self._cond:
            self._snap = snap
        self._bump()

    def _follow_payments(self, fw: Any) -> None:
        """Line thread: a new payment opens an export entry; an ended one gets its expect."""
        order = fw.order_in_flight
        with self._cond:
            if order is not None and order != self._order_seen:
                self._order_seen = order
                self._payments.append({"order_id": order, "actions": self._next_payment, "expect": None,
                                       "expect_reason": None, "then": []})
                self._next_payment = []
            results = fw.scenario_results
            total = sum(fw.outcomes.values())
            if total != self._results_seen and results:
                self._results_seen = total
                res = results[-1]
                for p in reversed(self._payments):
                    if p["order_id"] == res.order_id:
                        if res.outcome is not Outcome.PENDING:
                            p["expect"] = res.outcome.name.lower()
                            p["expect_reason"] = _reason_name(res.reason) if res.reason else None
                        break
            if order is None:
                self._order_seen = None


class CashRegister:
    """The panel's cash register: rings up a sale on the terminal's own port with the
    family's ECR driver (:func:`posterm.ecr.session.open_terminal`), one at a time, in a
    thread; its journal is ``<home>/panel-register.db`` beside the terminal's state. Use it
    or an ECR of your own on the port, not both at once (a pty has one reader)."""

    def __init__(self, control: TerminalControl) -> None:
        self._control = control
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._order: str | None = None
        self._result: dict[str, Any] | None = None
        self._n = itertools.count(1)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"busy": self._thread is not None and self._thread.is_alive(), "order_id": self._order,
                    "result": dict(self._result) if self._result else None}

    def sale(self, amount: str, currency: str = "CNY", timeout: float = 300.0) -> str:
        """Start a sale of ``amount`` (a decimal string, e.g. ``"12.34"``) in ``currency``;
        returns its order id. Raises ControlError (bad amount) / ControlBusy (one is running)."""
        currency = str(currency).upper()
        try:
            minor = to_minor(str(amount), currency)
        except ValueError as exc:
            raise ControlError(f"amount: {exc}") from None
        if not 0 < minor <= 10**12:
            raise ControlError("amount: must be more than 0")
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise ControlBusy(f"the register is still on order {self._order}")
            order = f"PANEL-{self._control.id}-{int(time.time())}-{next(self._n)}"
            self._order, self._result = order, None
            self._thread = threading.Thread(target=self._pay, args=(order, minor, currency, timeout),
                                            name=f"panel-register-{self._control.id}", daemon=True)
            self._thread.start()
        return order

    def _pay(self, order: str, minor: int, currency: str, timeout: float) -> None:
        from posterm.ecr.session import open_terminal

        term = self._control.term
        journal = term.journal.path.parent.parent.parent / "panel-register.db" if hasattr(term.journal, "path") else None
        try:
            with open_terminal(term.port, protocol=term.protocol, journal=str(journal) if journal else None) as ecr:
                res = ecr.pay(minor, currency, order_id=order, timeout=timeout)
            out = {"order_id": res.order_id, "outcome": res.outcome.name.lower(), "reason": _reason_name(int(res.reason)),
                   "amount": _money(res.amount_minor, res.currency), "trade_no": res.trade_no}
        except PosError as exc:
            out = {"order_id": order, "outcome": "error", "reason": type(exc).__name__, "text": str(exc)[:200]}
        with self._lock:
            self._result = out
        self._control._bump()


def _code(code: Any) -> str:
    if not (isinstance(code, str) and code.isdigit() and 10 <= len(code) <= 32):
        raise ControlError("code: must be 10 to 32 digits")
    return code


def _after(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
        raise ControlError("after/seconds: must be a number from 0 to 3600")
    return float(value)


def _money(minor: int, currency: str) -> str:
    try:
        return format_minor(minor, currency)
    except (KeyError, ValueError):
        return f"{minor} {currency}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(round(float(value), 3)) if isinstance(value, float) else str(value)
    return json.dumps(str(value))   # a TOML basic string: JSON's escapes are TOML's


__all__ = ["CALL_TIMEOUT", "CashRegister", "ControlBusy", "ControlError", "DEMO_CODES", "MAX_PENDING",
           "MAX_TRAFFIC", "TerminalControl", "host_answer", "masked_keys"]
