"""The emulated terminal's firmware: an event-driven state machine, no I/O.

Inputs (time is always passed in)::

    fw.on_link_event(event, now)          # MessageReceived / UndecodableMessage from posterm.families.events
    fw.on_host_reply(token, reply, now)   # the host's answer to a HostCall (None: no answer)
    fw.tick(now)                          # timers: polls, timeouts, the customer, reconciliation

Outputs::

    fw.take_ecr()            -> messages for the ECR (send each through the link)
    fw.take_host_calls()     -> HostCall(token, message, timeout) for the host link to perform
    fw.take_wallet_calls()   -> what the customer's wallet does at the host (scan a QR, confirm)
    fw.next_deadline()       -> when tick() next has work

Every transition is looked up in :mod:`posterm.emulator.states`, and its action runs the
handler that declares ``@handles(action)``: here (answers outside a flow, faults, the end
of a printed flow), in :mod:`.payment`, :mod:`.operator` and :mod:`.customer` (mixins: the
table calls them on this one object, and they share its flow and timers). What the
terminal could not finish is :mod:`.reconcile`'s (a collaborator with its own state);
receipt text is :mod:`.receipts`'. The host is never called from here: requests leave as
:class:`HostCall` values and answers come back as inputs, so the link loop that drives
this object keeps ACKing the ECR while the host thinks. Host messages leave unsigned; the
host link signs them with the PIN pad's MAC key.

The journal is written before each step that the host could act on (the order
before the AuthRequest, the outcome before the PayResult), so a terminal killed
at any point restarts knowing what is unfinished and settles it with the host
(:meth:`Firmware.start`, then the background reconciler).
"""

from __future__ import annotations

import collections
import itertools
import logging
from datetime import datetime, timezone
from typing import Any, Callable

from firmware_protocol.errors import UnknownMessageType
from firmware_protocol.host import messages as h
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason, Stage, TerminalState as S
from firmware_protocol.native.tlv import Message

from posterm.emulator import states
from posterm.emulator.firmware import receipts
from posterm.emulator.firmware.customer import CustomerActions
from posterm.emulator.firmware.flow import Flow, new_order_event
from posterm.emulator.firmware.operator import OperatorActions
from posterm.emulator.firmware.payment import PaymentActions
from posterm.emulator.firmware.reconcile import Reconciler
from posterm.emulator.firmware.values import (
    CAPABILITIES,
    FirmwareConfig,
    HostCall,
    Identity,
    ResultDelivery,
    ScenarioResult,
    WalletCall,
)
from posterm.emulator.orders import OrderStore
from posterm.emulator.peripherals import Display, OperatorKeypad, PinPad, Printer
from posterm.emulator.scenario import Action as ScriptAction, PaymentScript, Scenario
from posterm.emulator.states import Action, Event, handles
from posterm.errors import PosError
from posterm.families.events import MessageReceived, UndecodableMessage

log = logging.getLogger("posterm.emulator")

_MAX_TRANSITIONS = 200
MAX_NOTICES = 5           # security notices shown at most (the host sends no more)
MAX_NOTICE_CHARS = 80     # characters of each
_MAX_SCENARIO_RESULTS = 1000
_MAX_TIMERS_PER_TICK = 1000
MAX_HELD_ACTIONS = 32


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Firmware(PaymentActions, OperatorActions, CustomerActions):
    """The terminal's firmware. Not thread-safe: one loop owns it (the runner's terminal thread)."""

    def __init__(self, identity: Identity, journal: OrderStore, pinpad: PinPad, keypad: OperatorKeypad, *,
                 config: FirmwareConfig | None = None, scenario: Scenario | None = None,
                 wallclock: Callable[[], datetime] = _utc_now) -> None:
        self.identity = identity
        self.journal = journal
        self.pinpad = pinpad
        self.keypad = keypad
        self.display = Display()
        self.printer = Printer()
        self.notices: tuple[str, ...] = ()   # the host's security notices (idle screen, receipt foot)
        self.base_config = config or FirmwareConfig()
        self.config = self.base_config
        self.state = S.IDLE
        self.host_online = True
        self.host_refusal: int | None = None     # why the host refused our logon (a Reason), until it accepts
        self.scenario_results: list[ScenarioResult] = []
        self._scripts: list[PaymentScript] = []
        self.set_scenario(scenario)
        self._wallclock = wallclock
        self._now = 0.0
        self._flow: Flow | None = None
        self._tokens = itertools.count(1)
        self._timers: dict[str, tuple[float, Callable[[], None]]] = {}
        self._ecr_out: list[Message] = []
        self._host_out: list[HostCall] = []
        self._wallet_out: list[WalletCall] = []
        self._terminal_out: list[ScriptAction] = []   # what happens to the terminal (line faults, restart): the runner's
        # The control panel's customer (posterm.emulator.control): no default answers when manual;
        # actions given before their prompt wait here (bounded) for it.
        self.manual_customer = False
        self.held_actions: collections.deque[ScriptAction] = collections.deque(maxlen=MAX_HELD_ACTIONS)
        self.after_payment: collections.deque[ScriptAction] = collections.deque(maxlen=MAX_HELD_ACTIONS)
        self.outcomes: collections.Counter[str] = collections.Counter()   # payments ended, by outcome name
        self.last_host_answer: tuple[str | None, Any] = (None, None)     # (order id, the host's last answer to a flow)
        self._events: list[tuple[Event, dict[str, Any]]] = []
        self._dispatching = False
        self._event: Event | None = None   # the event being handled (the handlers read why they run)
        self.reconciler = Reconciler(journal, identity.terminal_id, config=lambda: self.config,
                                     clock=lambda: self._now, stamp=self._stamp, send=self._send,
                                     call_host=self._call_host, in_flight=lambda: self.order_in_flight)
        self.transitions: list[tuple[S, str, S]] = []   # for tests and traces (bounded)

    # ================================================================ inputs

    def set_scenario(self, scenario: Scenario | None) -> None:
        """Replace the customer scripts (the next payments take them in order)."""
        self._scripts = list(scenario.payments) if scenario else []
        self.config = self.base_config.with_overrides(scenario.terminal) if scenario else self.base_config

    def add_payment_script(self, script: PaymentScript) -> None:
        self._scripts.append(script)

    def start(self, now: float) -> int:
        """After a (re)start: orders the last run left in flight become unfinished and the
        reconciler settles them with the host. Returns how many were found."""
        self._now = now
        n = self.journal.mark_unfinished_after_restart()
        if n:
            log.warning("%s: %d order(s) were in flight when the terminal stopped; reconciling",
                        self.identity.terminal_id, n)
        for rec in self.journal.unfinished():
            self.reconciler.schedule(rec.order_id, now)
        return n

    def on_link_event(self, event: Any, now: float) -> None:
        self._now = now
        if isinstance(event, MessageReceived):
            self.on_message(event.message, now)
        elif isinstance(event, ResultDelivery):
            self.reconciler.on_delivery(event)
        elif isinstance(event, UndecodableMessage):
            code = m.ErrorCode.UNKNOWN_MESSAGE if isinstance(event.error, UnknownMessageType) else m.ErrorCode.MALFORMED
            self._send(m.Error(code=code, text=type(event.error).__name__))

    def on_message(self, msg: Message, now: float) -> None:
        """One message from the ECR."""
        self._now = now
        if isinstance(msg, m.Hello):
            self._on_hello(msg)
        elif isinstance(msg, m.StatusRequest):
            self._send(self.status())
        elif isinstance(msg, m.KeyStatusRequest):
            self._send(self._key_status())
        elif isinstance(msg, m.Query):
            self._on_query(msg.order_id)
        elif isinstance(msg, m.PayRequest):
            self._on_pay(msg)
        elif isinstance(msg, m.Cancel):
            flow = self._flow
            if flow is not None and flow.kind == "pay" and flow.order_id == msg.order_id:
                self._fire(Event.ABORT, request=msg)
            else:
                self._fire(Event.CANCEL, request=msg)
        elif isinstance(msg, m.Refund):
            self._fire(Event.REFUND, request=msg)
        elif isinstance(msg, m.Settle):
            self._fire(Event.SETTLE, request=msg)
        elif isinstance(msg, m.KeyLoad):
            self._fire(Event.KEY_LOAD, request=msg)
        elif isinstance(msg, m.OperatorReset):
            self._fire(Event.OPERATOR_RESET, request=msg)
        elif isinstance(msg, m.Abort):
            flow = self._flow
            if msg.order_id is not None and (flow is None or flow.order_id != msg.order_id):
                self._send(m.Error(code=m.ErrorCode.UNEXPECTED, text="that order is not in flight",
                                   in_reply_to=msg.TYPE))
            else:
                self._fire(Event.ABORT, request=msg)
        elif isinstance(msg, m.Error):
            # Never answer an Error with an Error: two peers doing so would ping-pong forever.
            log.warning("%s: the ECR sent Error %s (in reply to %s): %r", self.identity.terminal_id,
                        _code_name(msg.code), f"0x{msg.in_reply_to:04X}" if msg.in_reply_to is not None else "-",
                        msg.text)
        else:
            self._send(m.Error(code=m.ErrorCode.UNKNOWN_MESSAGE, text=f"{type(msg).__name__} is not a request",
                               in_reply_to=msg.TYPE))

    def set_notices(self, notices: tuple[str, ...] | list[str]) -> None:
        """The host's security notices (from its LogonResult): shown on the idle screen and
        printed at the foot of every receipt from now on. Capped in count and length."""
        self.notices = tuple(str(n)[:MAX_NOTICE_CHARS] for n in list(notices)[:MAX_NOTICES])
        self.printer.footer = receipts.notices_footer(self.notices)
        if self.state is S.IDLE and self._flow is None:
            self._show_idle()

    def _show_idle(self) -> None:
        self.display.show(receipts.idle_screen(self.notices))

    def on_logon(self, refused: int | None, now: float, error: str = "") -> None:
        """What came of a logon tried outside a request (at start): accepted (``refused``
        None, ``error`` empty), refused (``refused`` = the host's Reason) or no answer."""
        self._now = now
        self.host_online = refused is None and not error
        self.host_refusal = refused

    def on_host_reply(self, token: int, reply: h.HostMessage | None, now: float, error: str = "",
                      refused: int | None = None) -> None:
        """The host's answer to HostCall ``token``; ``None`` when it did not answer (``error`` says why).

        ``refused``: the host refused this terminal's logon (a Reason, e.g. TERMINAL_UNKNOWN),
        so the request was never processed there.
        """
        self._now = now
        self.host_online = reply is not None
        if refused or reply is not None:
            self.host_refusal = refused or None
        if reply is None and not refused:
            log.info("%s: host did not answer: %s", self.identity.terminal_id, error or "timeout")
        flow = self._flow
        if refused:
            # Nothing of this request happened at the host; where nothing of the flow did
            # either, the host's refusal is the answer (a payment is declined: not charged).
            # A flow the host may already have acted on treats it as silence and finds out later.
            if not (flow is not None and flow.inflight == token and flow.reached_host):
                reply = h.HostError(code=0, reason=refused, text="logon refused")
        elif flow is not None and flow.inflight == token and flow.sent != "check":
            flow.reached_host = True
        if self.reconciler.on_reply(token, reply):
            return
        if flow is None or flow.inflight != token:
            log.debug("stale host answer for token %d dropped", token)
            return
        flow.inflight = None
        flow.last_reply = reply
        self.last_host_answer = (flow.order_id, reply)   # for the control panel: outlives the flow
        self._fire(self._event_of(flow, reply), reply=reply)

    def tick(self, now: float) -> None:
        """Fire every timer that is due (in deadline order)."""
        self._now = now
        for _ in range(_MAX_TIMERS_PER_TICK):  # bounded: a timer that re-arms itself at once cannot spin forever
            due = [(t, name) for name, (t, _) in self._timers.items() if t <= now]
            if not due:
                break
            _, name = min(due)
            _, fn = self._timers.pop(name)
            fn()
        self.reconciler.tick()

    # ================================================================ outputs

    def take_ecr(self) -> list[Message]:
        out, self._ecr_out = self._ecr_out, []
        return out

    def take_host_calls(self) -> list[HostCall]:
        out, self._host_out = self._host_out, []
        return out

    def take_wallet_calls(self) -> list[WalletCall]:
        out, self._wallet_out = self._wallet_out, []
        return out

    def take_terminal_calls(self) -> list[ScriptAction]:
        """Scenario or panel actions on the terminal itself (line_fault, unplug, replug, restart)."""
        out, self._terminal_out = self._terminal_out, []
        return out

    def next_deadline(self) -> float | None:
        times = [t for t, _ in self._timers.values()]
        reconcile = self.reconciler.next_due()
        if reconcile is not None:
            times.append(reconcile)
        return min(times) if times else None

    # ================================================================ introspection

    @property
    def order_in_flight(self) -> str | None:
        return self._flow.order_id if self._flow is not None and self._flow.kind == "pay" else None

    def status(self) -> m.Status:
        try:
            key_loaded = bool(_attr(self.pinpad.status(), "loaded", True))
        except PosError:
            key_loaded = False
        return m.Status(state=self.state, order_id=self.order_in_flight if self._flow else None,
                        host_online=self.host_online, paper_ok=self.printer.paper_ok, key_loaded=key_loaded,
                        unfinished=min(0xFFFF, len(self.journal.unfinished())))

    # ================================================================ the table

    def _fire(self, event: Event, **data: Any) -> None:
        """Run ``event`` through the table now, or after the action running (in order)."""
        self._events.append((event, data))
        if self._dispatching:
            return  # run after the current action, in order
        self._dispatching = True
        try:
            while self._events:
                ev, kw = self._events.pop(0)
                before = self.state
                nxt, action = states.transition(before, ev)
                handler = HANDLERS.get(action)
                if handler is None:
                    raise states.NoHandler(action)
                if frozenset(kw) != states.EVENT_DATA[ev]:
                    raise states.WrongEventData(ev, frozenset(kw))
                self.state = nxt
                self._event = ev
                self.transitions.append((before, ev, nxt))
                del self.transitions[:-_MAX_TRANSITIONS]
                log.debug("%s: %s --%s--> %s (%s)", self.identity.terminal_id, before.name, ev, nxt.name, action)
                try:
                    handler(self, **kw)
                except states.TableError:
                    raise
                except (PosError, OSError, ValueError) as exc:
                    # sqlite3 errors are not OSError; the runner logs anything else and restarts us.
                    log.error("%s: action %s failed: %s", self.identity.terminal_id, action, type(exc).__name__)
                    if self.state is not S.ERROR:
                        self._events.insert(0, (Event.FAULT, {"error": exc}))
        finally:
            self._dispatching = False

    def _event_of(self, flow: Flow, reply: h.HostMessage | None) -> Event:
        """The event for the flow's host answer (see states.py)."""
        kind = flow.sent
        if kind == "check":
            if not isinstance(reply, h.AuthResponse):
                return Event.CHECK_FAILED
            return new_order_event(flow.request) if reply.status is h.HostStatus.NOT_FOUND else Event.ORDER_ELSEWHERE
        if (kind == "pay" and isinstance(reply, h.AuthResponse) and reply.owner_terminal_id is not None
                and reply.owner_terminal_id != self.identity.terminal_id):
            # Both look-ups passed and the other terminal's authorisation got there first: the
            # host's answer is the owner's, not ours (a host before protocol 2 names no owner).
            return Event.ORDER_ELSEWHERE
        if kind == "cancel_check":
            status = getattr(reply, "status", None)
            if status is h.HostStatus.APPROVED:
                return Event.CANCEL_NEEDS_PASSWORD
            if status in (h.HostStatus.PROCESSING, h.HostStatus.NEED_PIN, h.HostStatus.WAIT_BUYER,
                          h.HostStatus.SHOW_QR):
                return Event.CANCEL_UNPAID
            kind = "cancel"  # final, not found, an error or silence: the query's answer is the cancel's
        if kind == "cancel":
            if reply is None:
                return Event.CANCEL_SILENT
            status = getattr(reply, "status", None)
            return Event.CANCEL_DONE if status in (h.HostStatus.CANCELLED, h.HostStatus.REFUNDED) \
                else Event.CANCEL_REFUSED
        if kind == "refund":
            return Event.REFUND_SILENT if reply is None else Event.REFUND_DONE
        if kind == "settle":
            return Event.SETTLE_SILENT if reply is None else Event.SETTLE_DONE
        if reply is None:
            return Event.HOST_SILENT
        if isinstance(reply, h.AuthResponse):
            return states.HOST_ANSWER[reply.status]
        return Event.HOST_DECLINED  # a HostError to a payment request: a decline with its reason

    # ---------------------------------------------------------------- requests answered outside the table

    def _on_hello(self, msg: m.Hello) -> None:
        if msg.min_version > m.PROTOCOL_VERSION:
            self._send(m.Error(code=m.ErrorCode.VERSION_UNSUPPORTED,
                               text=f"terminal speaks protocol {m.PROTOCOL_VERSION}", in_reply_to=msg.TYPE))
            return
        self._send(m.HelloReply(protocol_version=min(msg.protocol_version, m.PROTOCOL_VERSION),
                                capabilities=int(CAPABILITIES), terminal_id=self.identity.terminal_id,
                                merchant_id=self.identity.merchant_id,
                                firmware_version=self.identity.firmware_version))

    # ---------------------------------------------------------------- actions: answers outside a flow

    @handles(Action.BUSY)
    def _act_busy(self, *, request: Message) -> None:
        self._send(m.Error(code=m.ErrorCode.BUSY, text=f"terminal is {self.state.name.lower()}",
                           in_reply_to=request.TYPE))

    @handles(Action.IGNORE)
    def _act_ignore(self, **_: Any) -> None:
        """Anything late or moot (the one handler that takes any event's data)."""

    @handles(Action.NOTHING_TO_ABORT)
    def _act_nothing_to_abort(self, *, request: Message) -> None:
        self._send(m.Error(code=m.ErrorCode.UNEXPECTED, text="nothing in flight to abort",
                           in_reply_to=m.Abort.TYPE))

    # ---------------------------------------------------------------- actions: the end of a printed flow

    @handles(Action.DELIVER)
    def _act_deliver(self) -> None:
        """The receipt is out: the held answer goes to the ECR, the terminal is idle again."""
        flow = self._flow
        self._flow = None
        self._show_idle()
        if flow is None or flow.final is None:
            return
        self._send(flow.final)
        if flow.kind == "pay" and isinstance(flow.final, m.PayResult):
            script = flow.script
            self.scenario_results.append(ScenarioResult(
                flow.order_id or "", script.expect if script else None, script.expect_reason if script else None,
                flow.final.outcome, int(flow.final.reason)))
            del self.scenario_results[:-_MAX_SCENARIO_RESULTS]
            self.outcomes[flow.final.outcome.name] += 1
            # The scenario's "then": the runner plays it once the ECR has the answer and the
            # line is quiet (a restart now would drop the PayResult still in the output).
            self.after_payment.extend(script.then if script else ())

    # ---------------------------------------------------------------- actions: faults

    @handles(Action.FAIL)
    def _act_fail(self, *, error: BaseException) -> None:
        flow = self._flow
        self._flow = None
        self._timers.clear()
        self.pinpad.cancel()
        if flow is not None and flow.kind == "pay" and flow.order_id:
            self._send(m.PayResult(order_id=flow.order_id, outcome=Outcome.UNKNOWN, amount_minor=flow.amount_minor,
                                   currency=flow.currency, reason=Reason.OTHER, reason_text="terminal fault"))
            self.reconciler.schedule(flow.order_id, self._now + self.config.reconcile_base)
        elif flow is not None:
            self._send(m.Error(code=m.ErrorCode.INTERNAL, text="terminal fault", in_reply_to=flow.request.TYPE))
        self._timer("recover", self.config.error_recovery, lambda: self._fire(Event.RECOVERED))

    @handles(Action.RESUME)
    def _act_resume(self) -> None:
        self._show_idle()

    # ================================================================ helpers the actions share

    def _host(self, msg: h.HostMessage, sent: str | None = None) -> None:
        """Send the flow's one host request (its answer becomes the flow's next event)."""
        flow = self._flow
        assert flow is not None
        flow.inflight = self._call_host(msg)
        flow.sent = sent or {h.HostCancel: "cancel", h.HostRefund: "refund",
                             h.SettleRequest: "settle"}.get(type(msg), "pay")

    def _call_host(self, msg: h.HostMessage) -> int:
        """Queue a host request; returns its token (one counter for the flow and the reconciler)."""
        token = next(self._tokens)
        self._host_out.append(HostCall(token, msg, self.config.host_timeout))
        return token

    def _send(self, msg: Message) -> None:
        self._ecr_out.append(msg)

    def _progress(self, stage: Stage, text: str, qr_data: str | None = None, attempt: int | None = None,
                  order_id: str | None = None) -> None:
        flow = self._flow
        oid = order_id or (flow.order_id if flow is not None and flow.order_id else "terminal")
        self.display.show(text, qr_data=qr_data if qr_data is not None else self.display.qr_data
                          if stage is Stage.SHOWING_QR else None)
        msg = m.Progress(order_id=oid, stage=stage, text=text[:256], qr_data=qr_data, attempt=attempt)
        if flow is not None:
            flow.progress = msg
        self._send(msg)
        self._timer("keepalive", self.config.keepalive, self._keepalive)

    def _keepalive(self) -> None:
        flow = self._flow
        if flow is None or flow.progress is None or self.state not in states.CUSTOMER_STATES:
            return
        self._send(flow.progress)
        self._timer("keepalive", self.config.keepalive, self._keepalive)

    def _print(self, lines: tuple[str, ...], order_id: str | None, kind: str) -> None:
        printed = self.printer.print(lines)
        self.journal.add_receipt(order_id, kind, printed, self._stamp())
        self._printed(printed, order_id)

    def _printed(self, printed: tuple[str, ...], order_id: str | None) -> None:
        """The receipt is printed and journaled: show it and send it to the ECR."""
        self._progress(Stage.PRINTING, "Printing receipt...", order_id=order_id or "terminal")
        self._send(m.Print(lines=printed, order_id=order_id))
        self._timer("print", self.config.print_time, lambda: self._fire(Event.PRINTED))

    def _key_status(self, reason: int = Reason.NONE) -> m.KeyStatus:
        try:
            st = self.pinpad.status()
        except PosError:
            return m.KeyStatus(loaded=False, reason=reason or Reason.KEY_ERROR)
        loaded = bool(_attr(st, "loaded", False))
        alg = _attr(st, "algorithm", m.KeyAlgorithm.AES_DUKPT if loaded else m.KeyAlgorithm.NONE)
        if not isinstance(alg, m.KeyAlgorithm):
            alg = m.KeyAlgorithm.AES_DUKPT if loaded and "AES" in str(alg).upper() else (
                m.KeyAlgorithm.TDES_DUKPT if loaded else m.KeyAlgorithm.NONE)
        ksn = _attr(st, "ksn", None)
        if isinstance(ksn, bytes):
            ksn = ksn.hex().upper()
        kcv = _attr(st, "kcv", None)
        if isinstance(kcv, bytes):
            kcv = kcv.hex().upper()[:6]
        return m.KeyStatus(loaded=loaded, algorithm=alg, ksn=ksn if loaded else None,
                           counters_left=int(_attr(st, "counters_left", 0) or 0), kcv=kcv if loaded else None,
                           reason=reason)

    def _timer(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        self._timers[name] = (self._now + max(0.0, delay), fn)

    def _clear_timer(self, name: str) -> None:
        self._timers.pop(name, None)

    def _stamp(self) -> str:
        return self._wallclock().astimezone(timezone.utc).isoformat(timespec="seconds")


# The table's actions bound to their handlers, once: the dispatch never looks a name up.
HANDLERS: dict[Action, Callable[..., None]] = states.handlers_of(Firmware)


def _attr(obj: Any, name: str, default: Any) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _code_name(code: int) -> str:
    try:
        return m.ErrorCode(code).name
    except ValueError:
        return f"CODE {code}"
