"""The emulated terminal's firmware: an event-driven state machine, no I/O.

Inputs (time is always passed in)::

    fw.on_link_event(event, now)          # MessageReceived / UndecodableMessage from posterm.families.native.link
    fw.on_host_reply(token, reply, now)   # the host's answer to a HostCall (None: no answer)
    fw.tick(now)                          # timers: polls, timeouts, the customer, reconciliation

Outputs::

    fw.take_ecr()            -> messages for the ECR (send each through the link)
    fw.take_host_calls()     -> HostCall(token, message, timeout) for the host link to perform
    fw.take_wallet_calls()   -> what the customer's wallet does at the host (scan a QR, confirm)
    fw.next_deadline()       -> when tick() next has work

Every transition is looked up in :mod:`posterm.emulator.states`. The host is
never called from here: requests leave as :class:`HostCall` values and answers
come back as inputs, so the link loop that drives this object keeps ACKing the
ECR while the host thinks. Host messages leave unsigned; the host link signs
them with the PIN pad's MAC key.

The journal is written before each step that the host could act on (the order
before the AuthRequest, the outcome before the PayResult), so a terminal killed
at any point restarts knowing what is unfinished and settles it with the host
(:meth:`Firmware.start`, then the background reconciler).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import pin_pan
from firmware_protocol.native import messages as m
from firmware_protocol.currency import format_minor
from firmware_protocol.errors import UnknownMessageType
from firmware_protocol.native.messages import Outcome, Reason, Stage, TerminalState as S
from firmware_protocol.native.tlv import Message

from posterm.emulator import states
from posterm.emulator.orders import OrderRecord, OrderStore
from posterm.emulator.peripherals import (
    Customer,
    Display,
    OperatorKeypad,
    PeripheralError,
    PinBlock,
    PinPad,
    Printer,
    receipt_line,
)
from posterm.emulator.scenario import Action, PaymentScript, Scenario
from posterm.errors import PosError
from posterm.families.native.link import MessageReceived, UndecodableMessage
from posterm.ecr.trace import mask_code

log = logging.getLogger("posterm.emulator")

FIRMWARE_VERSION = "posterm-emu 0.1.0"
CAPABILITIES = (m.Capability.SCANNER | m.Capability.PIN_PAD | m.Capability.PRINTER | m.Capability.DYNAMIC_QR
                | m.Capability.PHONE_CONFIRM | m.Capability.REFUND | m.Capability.SETTLEMENT
                | m.Capability.KEY_LOADING)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the terminal is; the host checks it at logon."""

    terminal_id: str = "T0000001"
    merchant_id: str = "M100000001"
    firmware_version: str = FIRMWARE_VERSION
    location: str = "CN-SH"


@dataclass(frozen=True, slots=True)
class FirmwareConfig:
    """Timers and bounds, in seconds. The polling defaults are Alipay face-to-face's."""

    poll_interval: float = 5.0       # phone confirmation / QR: query the host this often
    poll_attempts: int = 5           # ... this many times, then cancel
    scan_timeout: float = 60.0
    pin_timeout: float = 60.0
    qr_timeout: float = 120.0
    host_timeout: float = 10.0       # one host request
    query_attempts: int = 3          # PROCESSING answers before giving up as unknown
    query_delay: float = 1.0
    keepalive: float = 4.0           # re-send Progress while the customer dawdles (< the 5 s promise)
    print_time: float = 0.0
    reconcile_base: float = 1.0      # back-off of the background reconciler: base * 2**n ...
    reconcile_max: float = 60.0      # ... capped here
    error_recovery: float = 1.0
    # Look a new order id up at the host before authorising it (one HostQuery, about 1 ms
    # in process): the only way, on this host protocol, to tell that another terminal of
    # the merchant already took that order id. Off only if the ECR makes ids unique per terminal.
    check_new_orders: bool = True
    # An order left unfinished (the ECR got UNKNOWN, or no answer at all) is reversed at the
    # host when reconciled, even if the host approved it. For ECR protocols with no query
    # (Concert): there the ECR was told "not processed" and cannot learn otherwise, so a
    # payment the host approved meanwhile must be given back, not kept. With it, an approval
    # stays in flight in the journal until the front reports ResultDelivery: one the ECR never
    # acknowledged is reversed too (and a restart before the report reverses it as well).
    void_unfinished: bool = False

    def __post_init__(self) -> None:
        for name in ("poll_interval", "scan_timeout", "pin_timeout", "qr_timeout", "host_timeout",
                     "keepalive", "reconcile_base", "reconcile_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FirmwareConfig.{name} must be positive")
        if self.poll_attempts < 1 or self.query_attempts < 1:
            raise ValueError("FirmwareConfig attempts must be at least 1")

    def with_overrides(self, overrides: dict[str, float]) -> "FirmwareConfig":
        return replace(self, **{k: (int(v) if k == "poll_attempts" else float(v)) for k, v in overrides.items()})


@dataclass(frozen=True, slots=True)
class ResultDelivery:
    """From an ECR front that knows whether the ECR took an outcome (Concert: the ECR's ACK of
    the answer frame). ``delivered`` False: the ECR never acknowledged it (Concert)."""

    order_id: str
    delivered: bool
    cause: str = ""


@dataclass(frozen=True, slots=True)
class HostCall:
    """A request for the host link to perform; the answer comes back through on_host_reply."""

    token: int
    message: h.HostMessage
    timeout: float


@dataclass(frozen=True, slots=True)
class WalletCall:
    """The customer's wallet acting at the host (not through the terminal)."""

    kind: str                 # "scan_qr" | "confirm"
    order_id: str
    qr_data: str | None = None
    code: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    order_id: str
    expected: Outcome | None
    expected_reason: Reason | None
    outcome: Outcome
    reason: int

    @property
    def ok(self) -> bool:
        return ((self.expected is None or self.expected == self.outcome)
                and (self.expected_reason is None or self.expected_reason == self.reason))


@dataclass
class _Flow:
    """The operation in flight (one at a time)."""

    kind: str                                    # pay | cancel | refund | settle | key
    request: Message
    order_id: str | None = None
    amount_minor: int = 0
    currency: str = "XXX"
    code: str | None = field(default=None, repr=False)   # full code: memory only, never stored
    dynamic_qr: bool = False
    inflight: int | None = None                  # token of the flow's host request
    sent: str = ""                               # what that request was: pay | cancel | refund | settle
    poll_attempt: int = 0
    queries: int = 0
    qr_deadline: float | None = None
    cancel_reason: int | None = None
    customer: Customer | None = None
    script: PaymentScript | None = None
    progress: m.Progress | None = None
    final: Message | None = None
    last_reply: h.HostMessage | None = None
    reached_host: bool = False                   # a request of this flow may have been processed
    journaled: bool = False                      # the order is in the terminal journal (ours)
    key_reason: Reason = Reason.NONE
    batch_no: int = 0
    totals: tuple[m.Totals, ...] = ()


@dataclass
class _SideOp:
    """A host conversation beside the flow: an ECR Query, or reconciling an unfinished order."""

    order_id: str
    step: str                                    # query | reverse | cancel
    record: OrderRecord | None
    answer_ecr: bool = False


_CANCEL_REASONS = {
    "abort": Reason.ABORTED_BY_ECR, "polls_exhausted": Reason.CONFIRMATION_TIMEOUT,
    "pin_timeout": Reason.CONFIRMATION_TIMEOUT, "pin_cancelled": Reason.CUSTOMER_CANCELLED,
    "walked_away": Reason.CUSTOMER_CANCELLED, "host_not_found": Reason.HOST_UNAVAILABLE,
    "qr_timeout": Reason.CONFIRMATION_TIMEOUT,
}
_FINAL_STATUSES = {h.HostStatus.APPROVED: Outcome.APPROVED, h.HostStatus.DECLINED: Outcome.DECLINED,
                   h.HostStatus.CANCELLED: Outcome.CANCELLED, h.HostStatus.REFUNDED: Outcome.CANCELLED}


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Firmware:
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
        self._flow: _Flow | None = None
        self._tokens = itertools.count(1)
        self._timers: dict[str, tuple[float, Callable[[], None]]] = {}
        self._ecr_out: list[Message] = []
        self._host_out: list[HostCall] = []
        self._wallet_out: list[WalletCall] = []
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._dispatching = False
        self._event = ""
        self._side: dict[int, _SideOp] = {}
        self._side_by_order: dict[str, int] = {}
        self._reconcile_due: dict[str, float] = {}
        self._undelivered: dict[str, dict[str, Any]] = {}   # Concert: approvals awaiting the ECR's ACK
        self._reverse: set[str] = set()                       # Concert: approvals the ECR never took
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
            self._reconcile_due[rec.order_id] = now
        return n

    def on_link_event(self, event: Any, now: float) -> None:
        self._now = now
        if isinstance(event, MessageReceived):
            self.on_message(event.message, now)
        elif isinstance(event, ResultDelivery):
            self._on_delivery(event)
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
                self._fire("abort", request=msg)
            else:
                self._fire("cancel", request=msg)
        elif isinstance(msg, m.Refund):
            self._fire("refund", request=msg)
        elif isinstance(msg, m.Settle):
            self._fire("settle", request=msg)
        elif isinstance(msg, m.KeyLoad):
            self._fire("key_load", request=msg)
        elif isinstance(msg, m.Abort):
            flow = self._flow
            if msg.order_id is not None and (flow is None or flow.order_id != msg.order_id):
                self._send(m.Error(code=m.ErrorCode.UNEXPECTED, text="that order is not in flight",
                                   in_reply_to=msg.TYPE))
            else:
                self._fire("abort", request=msg)
        elif isinstance(msg, m.Error):
            # Never answer an Error with an Error: two peers doing so would ping-pong forever.
            log.warning("%s: the ECR sent Error %s (in reply to %s): %r", self.identity.terminal_id,
                        _code_name(msg.code), f"0x{msg.in_reply_to:04X}" if msg.in_reply_to is not None else "-",
                        msg.text)
        else:
            self._send(m.Error(code=m.ErrorCode.UNKNOWN_MESSAGE, text=f"{type(msg).__name__} is not a request",
                               in_reply_to=msg.TYPE))

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
        side = self._side.pop(token, None)
        if side is not None:
            self._side_by_order.pop(side.order_id, None)
            self._on_side_reply(side, reply)
            return
        if flow is None or flow.inflight != token:
            log.debug("stale host answer for token %d dropped", token)
            return
        flow.inflight = None
        flow.last_reply = reply
        purpose = self._purpose_of(flow, reply)
        self._fire(purpose, reply=reply)

    def tick(self, now: float) -> None:
        """Fire every timer that is due (in deadline order)."""
        self._now = now
        for _ in range(1000):  # bounded: a timer that re-arms itself at once cannot spin forever
            due = [(t, name) for name, (t, _) in self._timers.items() if t <= now]
            if not due:
                break
            _, name = min(due)
            _, fn = self._timers.pop(name)
            fn()
        self._maybe_reconcile()

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

    def next_deadline(self) -> float | None:
        times = [t for t, _ in self._timers.values()]
        if not self._side and self._reconcile_due:
            times.append(min(self._reconcile_due.values()))
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

    def _fire(self, event: str, **data: Any) -> None:
        self._events.append((event, data))
        if self._dispatching:
            return  # run after the current action, in order
        self._dispatching = True
        try:
            while self._events:
                ev, kw = self._events.pop(0)
                before = self.state
                nxt, action = states.transition(before, ev)
                self.state = nxt
                self._event = ev
                self.transitions.append((before, ev, nxt))
                del self.transitions[:-200]
                log.debug("%s: %s --%s--> %s (%s)", self.identity.terminal_id, before.name, ev, nxt.name, action)
                try:
                    getattr(self, f"_act_{action}")(**kw)
                except states.NoTransition:
                    raise
                except (PosError, OSError, ValueError) as exc:
                    # sqlite3 errors are not OSError; the runner logs anything else and restarts us.
                    log.error("%s: action %s failed: %s", self.identity.terminal_id, action, type(exc).__name__)
                    if self.state is not S.ERROR:
                        self._events.insert(0, ("fault", {"error": exc}))
        finally:
            self._dispatching = False

    # ---------------------------------------------------------------- request handling outside the table

    def _on_hello(self, msg: m.Hello) -> None:
        if msg.min_version > m.PROTOCOL_VERSION:
            self._send(m.Error(code=m.ErrorCode.VERSION_UNSUPPORTED,
                               text=f"terminal speaks protocol {m.PROTOCOL_VERSION}", in_reply_to=msg.TYPE))
            return
        self._send(m.HelloReply(protocol_version=min(msg.protocol_version, m.PROTOCOL_VERSION),
                                capabilities=int(CAPABILITIES), terminal_id=self.identity.terminal_id,
                                merchant_id=self.identity.merchant_id,
                                firmware_version=self.identity.firmware_version))

    def _on_pay(self, msg: m.PayRequest) -> None:
        flow = self._flow
        if flow is not None and flow.kind == "pay" and flow.order_id == msg.order_id:
            if (flow.amount_minor, flow.currency) == (msg.amount_minor, msg.currency):
                # The ECR re-sent its request (cut cable, reconnect): carry on, re-say where we are.
                if flow.progress is not None:
                    self._send(flow.progress)
            else:
                self._send(self._conflict(msg))
            return
        rec = self.journal.get(msg.order_id)
        if rec is not None:
            if (rec.amount_minor, rec.currency) != (msg.amount_minor, msg.currency):
                self._send(self._conflict(msg))
            elif rec.final:
                self._send(self._result_of(rec))   # the stored answer: never charge twice
            else:
                self._start_side(rec.order_id, rec, answer_ecr=True)
            return
        if msg.dynamic_qr:
            self._fire("pay_qr", request=msg)
        elif msg.payment_code:
            self._fire("pay_code", request=msg)
        else:
            self._fire("pay_scan", request=msg)

    def _conflict(self, msg: m.PayRequest) -> m.PayResult:
        return m.PayResult(order_id=msg.order_id, outcome=Outcome.DECLINED, amount_minor=msg.amount_minor,
                           currency=msg.currency, reason=Reason.ORDER_CONFLICT,
                           reason_text="order id already used with other parameters")

    def _on_query(self, order_id: str) -> None:
        rec = self.journal.get(order_id)
        if rec is not None and rec.final:
            self._send(self._result_of(rec))
            return
        flow = self._flow
        if flow is not None and flow.kind == "pay" and flow.order_id == order_id:
            self._send(m.PayResult(order_id=order_id, outcome=Outcome.PENDING, amount_minor=flow.amount_minor,
                                   currency=flow.currency))
            return
        self._start_side(order_id, rec, answer_ecr=True)

    # ---------------------------------------------------------------- actions: answers outside a flow

    def _act_busy(self, request: Message, **_: Any) -> None:
        self._send(m.Error(code=m.ErrorCode.BUSY, text=f"terminal is {self.state.name.lower()}",
                           in_reply_to=request.TYPE))

    def _act_ignore(self, **_: Any) -> None:
        pass

    def _act_nothing_to_abort(self, request: Message | None = None, **_: Any) -> None:
        self._send(m.Error(code=m.ErrorCode.UNEXPECTED, text="nothing in flight to abort",
                           in_reply_to=m.Abort.TYPE))

    # ---------------------------------------------------------------- actions: the payment

    def _act_check_order(self, request: m.PayRequest, **_: Any) -> None:
        """A new order id: ask the host whether it already has it (another terminal of the
        merchant used it). Nothing is journaled yet: a HostQuery cannot charge anyone, so a
        terminal killed now has nothing to reconcile. No Progress either: the ECR sees the
        payment start as before."""
        script = self._scripts.pop(0) if self._scripts else None
        self._flow = _Flow("pay", request, order_id=request.order_id, amount_minor=request.amount_minor,
                           currency=request.currency, code=request.payment_code, dynamic_qr=request.dynamic_qr,
                           customer=Customer(script), script=script)
        if not self.config.check_new_orders:
            self._fire(_new_order_event(request))
            return
        self._host(h.HostQuery(terminal_id=self.identity.terminal_id, order_id=request.order_id), sent="check")

    def _begin_pay(self) -> _Flow:
        """The order is this terminal's: journal it before anything that could charge leaves."""
        flow = self._flow
        assert flow is not None and flow.kind == "pay"
        if not flow.journaled:
            req = flow.request
            self.journal.begin_order(req.order_id, req.amount_minor, req.currency,
                                     req.payment_code[-4:] if req.payment_code else None, req.dynamic_qr,
                                     self._stamp())
            flow.journaled = True
        return flow

    def _act_elsewhere(self, reply: h.AuthResponse, **_: Any) -> None:
        """The host already has this order id from another terminal of the merchant: tell the
        ECR what became of it (paid or not, never charged twice), marked ORDER_CONFLICT, and
        keep it out of this terminal's journal and batch: it is the other terminal's sale."""
        status = reply.status
        outcome = _FINAL_STATUSES.get(status, Outcome.UNKNOWN)  # still in progress there: ask again later
        log.warning("%s: order %s was taken on another terminal (host status %s): answered, not counted",
                    self.identity.terminal_id, reply.order_id, status.name)
        flow = self._flow
        if flow is not None and flow.journaled:
            # Journaled before its AuthRequest left: close it as not ours (a decline is in no
            # batch total) so neither settlement nor the reconciler ever takes it for a sale.
            self.journal.finish_order(flow.order_id, Outcome.DECLINED, Reason.ORDER_CONFLICT, self._stamp(),
                                      reason_text=f"order taken on terminal {reply.owner_terminal_id}")
        self._conclude(outcome, Reason.ORDER_CONFLICT, reply, record=False,
                       reason_text=f"order taken on another terminal ({status.name.lower()}); not in this batch")

    def _act_not_sent(self, reply: h.HostMessage | None = None, **_: Any) -> None:
        reason = int(getattr(reply, "reason", 0) or 0) or (Reason.HOST_UNAVAILABLE if reply is None else Reason.OTHER)
        self._conclude(Outcome.DECLINED, reason, None, record=False,
                       reason_text="the host could not be asked; nothing was charged")

    def _act_authorise(self, code: str | None = None, **_: Any) -> None:
        flow = self._begin_pay()
        if code is not None:
            flow.code = code
            self.journal.set_code(flow.order_id, code[-4:], self._stamp())
        self._clear_customer_timers()
        self._progress(Stage.AUTHORISING, "Authorising...")
        self._host(h.AuthRequest(terminal_id=self.identity.terminal_id, order_id=flow.order_id,
                                 amount_minor=flow.amount_minor, currency=flow.currency, payment_code=flow.code,
                                 location=self.identity.location, description=flow.request.description))

    def _act_precreate(self, **_: Any) -> None:
        flow = self._begin_pay()
        self._progress(Stage.AUTHORISING, "Preparing QR code...")
        self._host(h.AuthRequest(terminal_id=self.identity.terminal_id, order_id=flow.order_id,
                                 amount_minor=flow.amount_minor, currency=flow.currency, dynamic_qr=True,
                                 location=self.identity.location, description=flow.request.description))

    def _act_ask_for_scan(self, **_: Any) -> None:
        flow = self._begin_pay()
        request = flow.request
        timeout = float(request.timeout_s) if request.timeout_s else self.config.scan_timeout
        self._progress(Stage.WAITING_FOR_SCAN, f"{format_minor(flow.amount_minor, flow.currency)}\nShow your payment code")
        self._timer("flow", timeout, lambda: self._fire("scan_timeout"))
        self._customer_at("scan")

    def _act_ask_for_pin(self, reply: h.AuthResponse | None = None, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        self._clear_timer("flow")
        tries = getattr(reply, "pin_tries_left", None)
        text = "Enter payment password" + (f" ({tries} tries left)" if tries is not None else "")
        try:
            self.pinpad.begin(pin_pan((flow.code or "0000")[-4:]))
        except PosError as exc:
            log.error("%s: PIN pad unusable: %s", self.identity.terminal_id, type(exc).__name__)
            flow.cancel_reason = Reason.KEY_ERROR
            self._fire("pin_cancelled")
            return
        self._progress(Stage.WAITING_FOR_PIN, text)
        self._timer("flow", self.config.pin_timeout, lambda: self._fire("pin_timeout"))
        self._customer_at("pin")

    def _act_verify_pin(self, pin: PinBlock, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        self._clear_timer("flow")
        self._progress(Stage.AUTHORISING, "Checking password...")
        self._host(h.PinVerify(terminal_id=self.identity.terminal_id, order_id=flow.order_id,
                               pin_block=pin.block, pin_ksn=pin.ksn, pin_format=pin.format))

    def _act_wait_for_phone(self, reply: h.AuthResponse | None = None, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        flow.poll_attempt = 0
        self._progress(Stage.WAITING_FOR_PHONE, "Confirm the payment on your phone", attempt=0)
        self._timer("flow", self.config.poll_interval, lambda: self._fire("poll_due"))
        self._customer_at("phone")

    def _act_show_qr(self, reply: h.AuthResponse, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        flow.poll_attempt = 0
        qr = reply.qr_data or ""
        timeout = float(flow.request.timeout_s) if flow.request.timeout_s else self.config.qr_timeout
        flow.qr_deadline = self._now + timeout
        self.display.show("Scan with your wallet", qr_data=qr)
        self._progress(Stage.SHOWING_QR, f"{format_minor(flow.amount_minor, flow.currency)}\nScan with your wallet",
                       qr_data=qr)
        self._timer("flow", self.config.poll_interval, lambda: self._fire("poll_due"))
        self._customer_at("qr", qr_data=qr)

    def _act_poll_host(self, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        flow.poll_attempt += 1
        if self.state is S.SHOWING_QR:
            self._progress(Stage.SHOWING_QR, "Scan with your wallet", qr_data=self.display.qr_data,
                           attempt=min(flow.poll_attempt, 255))
            self._host(h.HostQuery(terminal_id=self.identity.terminal_id, order_id=flow.order_id))
        else:
            self._progress(Stage.WAITING_FOR_PHONE, "Confirm the payment on your phone",
                           attempt=min(flow.poll_attempt, 255))
            self._host(h.ConfirmPoll(terminal_id=self.identity.terminal_id, order_id=flow.order_id))

    def _act_schedule_poll(self, reply: h.HostMessage | None = None, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        if self.state is S.SHOWING_QR:
            exhausted = flow.qr_deadline is not None and self._now + self.config.poll_interval > flow.qr_deadline
        else:
            exhausted = flow.poll_attempt >= self.config.poll_attempts
        if exhausted:
            self._fire("polls_exhausted")
            return
        interval = self.config.poll_interval
        self._timer("flow", interval, lambda: self._fire("poll_due"))

    def _act_query_host(self, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        flow.queries += 1
        self._progress(Stage.QUERYING, "Checking with the host...")
        self._host(h.HostQuery(terminal_id=self.identity.terminal_id, order_id=flow.order_id))

    def _act_query_again(self, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        if flow.queries >= self.config.query_attempts:
            self._fire("queries_exhausted")
            return
        self._timer("flow", self.config.query_delay, self._act_query_host)

    def _act_cancel_order(self, request: m.Cancel, **_: Any) -> None:
        """An ECR Cancel while idle. Cancelling a paid order refunds it, which needs the
        operator password (a wrong one counts toward the lock, as for refunds). Without a
        password only an unpaid order may be cancelled: the journal, or else the host, says."""
        rec = self.journal.get(request.order_id)
        flow = _Flow("cancel", request, order_id=request.order_id, amount_minor=rec.amount_minor if rec else 0,
                     currency=rec.currency if rec else "XXX", cancel_reason=Reason.NONE)
        self._flow = flow
        if request.operator_password is not None or (rec is not None and rec.outcome is Outcome.APPROVED):
            verdict = self.keypad.check(request.operator_password)
            if verdict is not Reason.NONE:
                self._fire("operator_refused", reason=verdict)
                return
            self._act_cancel_at_host()
            return
        # A race remains: an order confirmed at the host between this query and the HostCancel
        # is refunded (to its payer) without the password. Closing it needs a conditional cancel.
        self._progress(Stage.CANCELLING, "Checking with the host...")
        self._host(h.HostQuery(terminal_id=self.identity.terminal_id, order_id=request.order_id), sent="cancel_check")

    def _act_cancel_refused(self, reason: int = Reason.NONE, reply: Any = None, **_: Any) -> None:
        flow = self._flow
        self._flow = None
        assert flow is not None and flow.order_id is not None
        self._clear_timer("keepalive")
        if not reason:  # the host says the order is paid and no password came
            reason = Reason.OPERATOR_LOCKED if self.keypad.check(None) is Reason.OPERATOR_LOCKED \
                else Reason.OPERATOR_PASSWORD_WRONG
        text = "" if isinstance(flow.request, m.Cancel) and flow.request.operator_password is not None \
            else "the operator password is needed to cancel a paid order"
        self._send(m.PayResult(order_id=flow.order_id, outcome=Outcome.DECLINED,
                               amount_minor=flow.amount_minor or getattr(reply, "amount_minor", 0) or 0,
                               currency=getattr(reply, "currency", None) or flow.currency, reason=reason,
                               reason_text=text))

    def _act_cancel_at_host(self, request: Message | None = None, reply: Any = None, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        if flow.cancel_reason is None:
            reason = _CANCEL_REASONS.get(self._event, Reason.OTHER)
            if isinstance(request, m.Abort):
                reason = Reason.ABORTED_BY_ECR
            flow.cancel_reason = reason
        self._clear_timer("flow")
        self._clear_customer_timers()
        self.pinpad.cancel()
        if flow.inflight is not None:
            return  # the request in flight is answered first; then we cancel (CANCELLING, host_*)
        self._progress(Stage.CANCELLING, "Cancelling...")
        self._host(h.HostCancel(terminal_id=self.identity.terminal_id, order_id=flow.order_id,
                                reason=int(flow.cancel_reason)))

    def _act_cancel_finished(self, reply: h.HostMessage | None = None, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        status = getattr(reply, "status", None)
        host_reason = int(getattr(reply, "reason", Reason.NONE))
        if flow.kind == "pay":
            if status is h.HostStatus.APPROVED:
                self._conclude(Outcome.APPROVED, Reason.NONE, reply)
            else:
                # Cancelled, reversed, or never there: the customer was not charged.
                self._conclude(Outcome.CANCELLED, flow.cancel_reason or host_reason, reply)
            return
        # An ECR Cancel of an earlier order.
        if status in (h.HostStatus.CANCELLED, h.HostStatus.REFUNDED):
            outcome, reason = Outcome.CANCELLED, Reason.NONE
        elif status is h.HostStatus.NOT_FOUND:
            outcome, reason = Outcome.DECLINED, Reason.ORDER_NOT_FOUND
        else:
            outcome, reason = Outcome.DECLINED, host_reason or Reason.OTHER
        self._conclude(outcome, reason, reply, record=outcome is Outcome.CANCELLED)

    def _act_approved(self, reply: h.AuthResponse, **_: Any) -> None:
        self._conclude(Outcome.APPROVED, Reason.NONE, reply)

    def _act_declined(self, reply: h.HostMessage, **_: Any) -> None:
        reason = int(getattr(reply, "reason", Reason.NONE))
        if getattr(reply, "status", None) is h.HostStatus.NOT_FOUND:
            reason = reason or Reason.ORDER_NOT_FOUND
        self._conclude(Outcome.DECLINED, reason or Reason.OTHER, reply)

    def _act_cancelled(self, reply: h.HostMessage, **_: Any) -> None:
        self._conclude(Outcome.CANCELLED, int(getattr(reply, "reason", Reason.NONE)), reply)

    def _act_no_code(self, **_: Any) -> None:
        self._conclude(Outcome.CANCELLED, Reason.NO_CODE_PRESENTED, None)

    def _act_aborted_before_host(self, reply: Any = None, **_: Any) -> None:
        flow = self._flow
        if flow is not None and flow.journaled and isinstance(reply, h.AuthResponse):
            # Aborted while our AuthRequest was out, and its answer is another terminal's
            # order: nothing of ours to cancel, and not ours to count as cancelled either.
            self._act_elsewhere(reply)
            return
        self._conclude(Outcome.CANCELLED, Reason.ABORTED_BY_ECR, None)

    def _act_unknown(self, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        if flow.kind == "pay":
            self._conclude(Outcome.UNKNOWN, Reason.HOST_UNAVAILABLE, None)
            self._reconcile_due[flow.order_id] = self._now + self.config.reconcile_base
        else:
            # An ECR Cancel the host did not answer: it may have been done (refunded) before the
            # answer was lost, or not. The order is no longer known to be approved, so it leaves
            # the batch and the reconciler asks the host; a Query meanwhile asks the host too
            # instead of answering APPROVED from the journal.
            rec = self.journal.get(flow.order_id)
            if rec is not None and rec.final and rec.outcome is Outcome.APPROVED:
                self.journal.finish_order(rec.order_id, Outcome.UNKNOWN, Reason.HOST_UNAVAILABLE, self._stamp(),
                                          trade_no=rec.trade_no, paid_at=rec.paid_at,
                                          refunded_minor=rec.refunded_minor)
                self._reconcile_due[rec.order_id] = self._now + self.config.reconcile_base
            self._conclude(Outcome.UNKNOWN, Reason.HOST_UNAVAILABLE, None, record=False)

    def _conclude(self, outcome: Outcome, reason: int, reply: Any, record: bool = True,
                  reason_text: str | None = None) -> None:
        """Journal the outcome, print the receipt, and hold the PayResult until printed."""
        flow = self._flow
        assert flow is not None and flow.order_id is not None
        self._clear_timer("flow")
        self._clear_customer_timers()
        self._clear_timer("keepalive")
        self.pinpad.cancel()
        status = getattr(reply, "status", None)
        code_last4 = getattr(reply, "code_last4", None) or (flow.code[-4:] if flow.code else None)
        currency = getattr(reply, "currency", None) or flow.currency
        amount = flow.amount_minor or getattr(reply, "amount_minor", 0)
        refunded = getattr(reply, "refunded_minor", 0) or (amount if status is h.HostStatus.REFUNDED else 0)
        trade_no = getattr(reply, "trade_no", None)
        paid_at = getattr(reply, "paid_at", None)
        if reason_text is None:
            reason_text = getattr(reply, "reason_text", "") or ""
        result = m.PayResult(order_id=flow.order_id, outcome=outcome, amount_minor=amount, currency=currency,
                             reason=reason, reason_text=reason_text[:128], trade_no=trade_no,
                             code_last4=code_last4, refunded_minor=refunded, paid_at=paid_at)
        flow.final = result
        title = "SALE" if flow.kind == "pay" else "CANCEL"
        lines = self._receipt_head(title, flow.order_id) + [
            receipt_line("AMOUNT", format_minor(amount, currency)),
            *([receipt_line("CODE", mask_code("*" * 14 + code_last4))] if code_last4 else []),
            receipt_line("RESULT", outcome.name),
            *([receipt_line("REASON", _reason_name(reason))] if reason else []),
            *([receipt_line("TRADE NO", trade_no)] if trade_no else []),
            *(["CHECK WITH THE HOST BEFORE", "TAKING THE PAYMENT AGAIN"] if outcome is Outcome.UNKNOWN else []),
            *(["TAKEN ON ANOTHER TERMINAL", "NOT IN THIS BATCH"]
              if flow.kind == "pay" and reason == Reason.ORDER_CONFLICT else []),
        ]
        kind = "pay" if flow.kind == "pay" else "cancel"
        printed = self.printer.print(tuple(lines))
        if (record and self.config.void_unfinished and flow.kind == "pay" and outcome is Outcome.APPROVED
                and self.journal.get(flow.order_id) is not None):
            # Concert: approved, but kept only once the ECR acknowledges the answer (ResultDelivery);
            # until then the order stays in flight, so a restart reverses it too.
            self.journal.add_receipt(flow.order_id, kind, printed, self._stamp())
            self._undelivered[flow.order_id] = {
                "outcome": outcome, "reason": reason, "reason_text": reason_text, "trade_no": trade_no,
                "paid_at": paid_at, "refunded_minor": refunded, "code_last4": code_last4}
            for key in list(self._undelivered)[:-1000]:   # bounded; the journal keeps them in flight anyway
                self._undelivered.pop(key, None)
        elif record and self.journal.get(flow.order_id) is not None:
            # The outcome and its receipt in one journal transaction (one fsync, not two).
            self.journal.finish_order(flow.order_id, outcome, reason, self._stamp(), reason_text=reason_text,
                                      trade_no=trade_no, paid_at=paid_at, refunded_minor=refunded,
                                      code_last4=code_last4, receipt=(kind, printed))
        else:
            self.journal.add_receipt(flow.order_id, kind, printed, self._stamp())
        self._printed(printed, flow.order_id)

    def _act_deliver(self, **_: Any) -> None:
        flow = self._flow
        self._flow = None
        self.display.show("WELCOME")
        if flow is None or flow.final is None:
            return
        self._send(flow.final)
        if flow.kind == "pay" and isinstance(flow.final, m.PayResult):
            script = flow.script
            self.scenario_results.append(ScenarioResult(
                flow.order_id or "", script.expect if script else None, script.expect_reason if script else None,
                flow.final.outcome, int(flow.final.reason)))
            del self.scenario_results[:-1000]

    # ---------------------------------------------------------------- actions: operator functions

    def _act_refund_at_host(self, request: m.Refund, **_: Any) -> None:
        self._flow = _Flow("refund", request, order_id=request.order_id, amount_minor=request.amount_minor,
                           currency=request.currency)
        verdict = self.keypad.check(request.operator_password)
        if verdict is not Reason.NONE:
            self._fire("operator_refused", reason=verdict)
            return
        self._progress(Stage.REFUNDING, "Refunding...")
        self._host(h.HostRefund(terminal_id=self.identity.terminal_id, order_id=request.order_id,
                                refund_id=request.refund_id, amount_minor=request.amount_minor,
                                currency=request.currency))

    def _act_refund_refused(self, reason: Reason, **_: Any) -> None:
        flow = self._flow
        self._flow = None
        assert flow is not None
        req = flow.request
        assert isinstance(req, m.Refund)
        self._send(m.RefundResult(order_id=req.order_id, refund_id=req.refund_id, outcome=Outcome.DECLINED,
                                  amount_minor=req.amount_minor, currency=req.currency, reason=reason))

    def _act_refund_finished(self, reply: h.HostMessage | None = None, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        req = flow.request
        assert isinstance(req, m.Refund)
        if isinstance(reply, h.RefundResponse):
            outcome = Outcome(reply.outcome) if reply.outcome in iter(Outcome) else Outcome.DECLINED
            result = m.RefundResult(order_id=req.order_id, refund_id=req.refund_id, outcome=outcome,
                                    amount_minor=reply.amount_minor or req.amount_minor,
                                    currency=reply.currency or req.currency, reason=reply.reason,
                                    refunded_total_minor=reply.refunded_total_minor)
            # ORDER_CONFLICT judges this request, not the refund id's earlier outcome: not recorded.
            if outcome in (Outcome.APPROVED, Outcome.DECLINED) and reply.reason != Reason.ORDER_CONFLICT:
                self.journal.record_refund(req.refund_id, req.order_id, result.amount_minor, result.currency,
                                           outcome, int(reply.reason), reply.refunded_total_minor, self._stamp())
        else:
            reason = int(getattr(reply, "reason", 0)) or Reason.HOST_UNAVAILABLE
            outcome = Outcome.UNKNOWN if reply is None else Outcome.DECLINED
            result = m.RefundResult(order_id=req.order_id, refund_id=req.refund_id, outcome=outcome,
                                    amount_minor=req.amount_minor, currency=req.currency, reason=reason)
        flow.final = result
        lines = self._receipt_head("REFUND", req.order_id) + [
            receipt_line("REFUND ID", req.refund_id[:20]),
            receipt_line("AMOUNT", format_minor(result.amount_minor, result.currency)),
            receipt_line("RESULT", result.outcome.name),
            *([receipt_line("REASON", _reason_name(result.reason))] if result.reason else []),
            *([receipt_line("REFUNDED", format_minor(result.refunded_total_minor, result.currency))]
              if result.outcome is Outcome.APPROVED else []),
        ]
        self._print(lines, req.order_id, "refund")

    def _act_settle_at_host(self, request: m.Settle, **_: Any) -> None:
        batch = self.journal.batch_no()
        self._flow = _Flow("settle", request, batch_no=batch)
        verdict = self.keypad.check(request.operator_password)
        if verdict is not Reason.NONE:
            self._fire("operator_refused", reason=verdict)
            return
        self._flow.totals = self.journal.totals(batch)
        self._progress(Stage.SETTLING, f"Settling batch {batch}...", order_id="settle")
        self._host(h.SettleRequest(terminal_id=self.identity.terminal_id, batch_no=batch, totals=self._flow.totals))

    def _act_settle_refused(self, reason: Reason, **_: Any) -> None:
        flow = self._flow
        self._flow = None
        assert flow is not None
        self._send(m.SettleReport(batch_no=flow.batch_no, host_agrees=False, outcome=Outcome.DECLINED, reason=reason))

    def _act_settle_unknown(self, **_: Any) -> None:
        flow = self._flow
        self._flow = None
        assert flow is not None
        self._send(m.SettleReport(batch_no=flow.batch_no, totals=flow.totals, host_agrees=False,
                                  outcome=Outcome.UNKNOWN, reason=Reason.HOST_UNAVAILABLE))

    def _act_settle_finished(self, reply: h.HostMessage, **_: Any) -> None:
        flow = self._flow
        assert flow is not None
        if isinstance(reply, h.SettleResponse):
            self.journal.close_batch(flow.batch_no, flow.totals, reply.agrees, reply.settled_at)
            report = m.SettleReport(batch_no=flow.batch_no, totals=flow.totals, host_agrees=reply.agrees,
                                    settled_at=reply.settled_at, outcome=Outcome.APPROVED)
        else:
            report = m.SettleReport(batch_no=flow.batch_no, totals=flow.totals, host_agrees=False,
                                    outcome=Outcome.DECLINED, reason=int(getattr(reply, "reason", 0)) or Reason.OTHER)
        flow.final = report
        lines = self._receipt_head(f"SETTLEMENT BATCH {flow.batch_no}", None)
        for t in flow.totals:
            lines += [receipt_line(f"SALES x{t.approved_count}", format_minor(t.approved_minor, t.currency)),
                      receipt_line(f"REFUNDS x{t.refunded_count}", format_minor(t.refunded_minor, t.currency)),
                      receipt_line(f"CANCELLED x{t.cancelled_count}"),
                      receipt_line("NET", format_minor(t.net_minor, t.currency))]
        if not flow.totals:
            lines.append("NO TRANSACTIONS")
        lines.append(receipt_line("HOST AGREES", "YES" if report.host_agrees else "NO"))
        self._print(lines, None, "settlement")

    def _act_load_key(self, request: m.KeyLoad, **_: Any) -> None:
        self._flow = _Flow("key", request)
        verdict = self.keypad.check(request.operator_password)
        if verdict is not Reason.NONE:
            self._flow.key_reason = verdict
        else:
            try:
                self.pinpad.load_key_block(request.key_block)
            except (PosError, ValueError) as exc:
                log.warning("%s: key block refused: %s", self.identity.terminal_id, type(exc).__name__)
                self._flow.key_reason = Reason.KEY_ERROR
        self._fire("key_loaded")

    def _act_key_status(self, **_: Any) -> None:
        flow = self._flow
        self._flow = None
        self._send(self._key_status(flow.key_reason if flow else Reason.NONE))

    # ---------------------------------------------------------------- actions: faults

    def _act_fail(self, error: BaseException | None = None, **_: Any) -> None:
        flow = self._flow
        self._flow = None
        self._timers.clear()
        self.pinpad.cancel()
        if flow is not None and flow.kind == "pay" and flow.order_id:
            self._send(m.PayResult(order_id=flow.order_id, outcome=Outcome.UNKNOWN, amount_minor=flow.amount_minor,
                                   currency=flow.currency, reason=Reason.OTHER, reason_text="terminal fault"))
            self._reconcile_due[flow.order_id] = self._now + self.config.reconcile_base
        elif flow is not None:
            self._send(m.Error(code=m.ErrorCode.INTERNAL, text="terminal fault", in_reply_to=flow.request.TYPE))
        self._timer("recover", self.config.error_recovery, lambda: self._fire("recovered"))

    def _act_resume(self, **_: Any) -> None:
        self.display.show("WELCOME")

    # ================================================================ the customer

    def _customer_at(self, stage: str, qr_data: str | None = None) -> None:
        flow = self._flow
        assert flow is not None and flow.customer is not None
        plan = flow.customer.respond(stage)
        if plan is None:
            return
        delay, action = plan
        self._timer("customer", delay, lambda: self._customer_does(action, stage, qr_data))

    def _customer_does(self, action: Action, stage: str, qr_data: str | None) -> None:
        flow = self._flow
        if flow is None:
            return
        kind = action.kind
        if kind == "present_code":
            self._fire("code_scanned", code=action.code)
        elif kind == "walk_away":
            if stage == "pin":
                self._fire("pin_cancelled")
            elif stage in ("scan", "qr"):
                self._fire("walked_away")
            # at the phone prompt, walking away looks like silence: the polls run out
        elif kind == "cancel_pin":
            self._fire("pin_cancelled")
        elif kind == "type_pin":
            self._type_pin(action.digits or "", action.key_interval)
        elif kind == "confirm_on_phone":
            self._wallet_out.append(WalletCall("confirm", flow.order_id or ""))
        elif kind == "scan_qr":
            self._wallet_out.append(WalletCall("scan_qr", flow.order_id or "", qr_data=qr_data, code=action.code))

    def _type_pin(self, digits: str, interval: float) -> None:
        # One key per timer, like fingers on a keypad; the digits go to the secure module only.
        keys = iter(digits)

        def press() -> None:
            if self.state is not S.AWAITING_PIN:
                return
            key = next(keys, None)
            if key is None:
                try:
                    block = self.pinpad.finish()
                except PeripheralError:
                    self._fire("pin_cancelled")
                    return
                self._fire("pin_entered", pin=block)
                return
            self.pinpad.press(key)
            self._timer("customer", interval, press)

        press()

    def _clear_customer_timers(self) -> None:
        self._clear_timer("customer")

    # ================================================================ side conversations

    def _start_side(self, order_id: str, rec: OrderRecord | None, answer_ecr: bool) -> None:
        token = self._side_by_order.get(order_id)
        if token is not None:
            self._side[token].answer_ecr |= answer_ecr
            return
        op = _SideOp(order_id, "query", rec, answer_ecr)
        self._side_send(op, h.HostQuery(terminal_id=self.identity.terminal_id, order_id=order_id))

    def _side_send(self, op: _SideOp, msg: h.HostMessage) -> None:
        token = next(self._tokens)
        self._side[token] = op
        self._side_by_order[op.order_id] = token
        self._host_out.append(HostCall(token, msg, self.config.host_timeout))

    def _on_side_reply(self, op: _SideOp, reply: h.HostMessage | None) -> None:
        status = getattr(reply, "status", None)
        rec = op.record
        if rec is None:
            # An order this terminal never journaled: the host's word is the answer.
            if op.answer_ecr:
                self._send(self._host_result(op.order_id, reply))
            return
        # An unfinished order of ours: query, then undo what cannot be finished.
        if (self.config.void_unfinished and op.step == "query" and not op.answer_ecr
                and status is h.HostStatus.APPROVED):
            # The ECR cannot learn that it was paid (see FirmwareConfig.void_unfinished): refund it.
            op.step = "reverse"
            log.warning("%s: order %s was approved after the ECR was told it was not: reversing it",
                        self.identity.terminal_id, rec.order_id)
            self._side_send(op, h.HostCancel(terminal_id=self.identity.terminal_id, order_id=rec.order_id,
                                             reason=int(Reason.HOST_UNAVAILABLE)))
            return
        if status in _FINAL_STATUSES and not (op.step != "query" and status is h.HostStatus.DECLINED):
            outcome = _FINAL_STATUSES[status]
            reason = int(reply.reason) if outcome is not Outcome.APPROVED else Reason.NONE
            if op.step != "query" and outcome is Outcome.CANCELLED:
                reason = reason or Reason.HOST_UNAVAILABLE
            self._settle_record(rec, outcome, reason, reply)
        elif op.step == "query" and status is not None and status is not h.HostStatus.DECLINED:
            # Not final at the host (customer gone) or not there at all: cancel / reverse it.
            op.step = "reverse"
            if status is h.HostStatus.NOT_FOUND:
                msg: h.HostMessage = h.ReversalAdvice(terminal_id=self.identity.terminal_id, order_id=rec.order_id,
                                                      reason=int(Reason.HOST_UNAVAILABLE))
            else:
                msg = h.HostCancel(terminal_id=self.identity.terminal_id, order_id=rec.order_id,
                                   reason=int(Reason.HOST_UNAVAILABLE))
            self._side_send(op, msg)
            return
        elif op.step != "query" and status is h.HostStatus.NOT_FOUND:
            self._settle_record(rec, Outcome.CANCELLED, Reason.HOST_UNAVAILABLE, reply)
        else:
            attempts = self.journal.count_attempt(rec.order_id)
            delay = min(self.config.reconcile_base * 2 ** min(attempts, 16), self.config.reconcile_max)
            self._reconcile_due[rec.order_id] = self._now + delay
        if op.answer_ecr:
            latest = self.journal.get(rec.order_id)
            self._send(self._result_of(latest) if latest is not None else self._host_result(rec.order_id, reply))

    def _settle_record(self, rec: OrderRecord, outcome: Outcome, reason: int, reply: Any) -> None:
        status = getattr(reply, "status", None)
        refunded = getattr(reply, "refunded_minor", 0) or (rec.amount_minor if status is h.HostStatus.REFUNDED else 0)
        self.journal.finish_order(rec.order_id, outcome, reason, self._stamp(),
                                  reason_text=getattr(reply, "reason_text", "") or "",
                                  trade_no=getattr(reply, "trade_no", None), paid_at=getattr(reply, "paid_at", None),
                                  refunded_minor=refunded, code_last4=getattr(reply, "code_last4", None))
        self._reconcile_due.pop(rec.order_id, None)
        self._reverse.discard(rec.order_id)
        log.info("%s: order %s reconciled with the host: %s", self.identity.terminal_id, rec.order_id, outcome.name)

    def _on_delivery(self, ev: ResultDelivery) -> None:
        """Concert: the ECR acknowledged an outcome (keep it) or never did (reverse an approval)."""
        pending = self._undelivered.pop(ev.order_id, None)
        if ev.delivered:
            if pending is not None:
                out = pending.pop("outcome")
                reason = pending.pop("reason")
                self.journal.finish_order(ev.order_id, out, reason, self._stamp(), **pending)
            return
        rec = self.journal.get(ev.order_id)
        if rec is None or (rec.final and rec.outcome is not Outcome.APPROVED):
            return   # nothing was charged: nothing to give back
        log.warning("%s: the ECR never acknowledged the answer for %s (%s): reversing it at the host",
                    self.identity.terminal_id, ev.order_id, ev.cause or "undelivered")
        self._reverse.add(ev.order_id)
        self._reconcile_due[ev.order_id] = self._now

    def _maybe_reconcile(self) -> None:
        if not self._reconcile_due or self._side:
            return
        order_id, due = min(self._reconcile_due.items(), key=lambda kv: kv[1])
        if due > self._now or order_id == self.order_in_flight:
            return
        rec = self.journal.get(order_id)
        if rec is not None and rec.final and order_id in self._reverse and rec.outcome is Outcome.APPROVED:
            self._reconcile_due[order_id] = self._now + self.config.reconcile_max
            self._start_side(order_id, rec, answer_ecr=False)
            return
        self._reverse.discard(order_id)
        if rec is None or rec.final:
            self._reconcile_due.pop(order_id, None)
            return
        self._reconcile_due[order_id] = self._now + self.config.reconcile_max  # until the answer reschedules it
        self._start_side(order_id, rec, answer_ecr=False)

    def _host_result(self, order_id: str, reply: h.HostMessage | None) -> m.PayResult:
        status = getattr(reply, "status", None)
        amount = getattr(reply, "amount_minor", 0) or 0
        currency = getattr(reply, "currency", None) or "XXX"
        if reply is None:
            outcome, reason = Outcome.UNKNOWN, Reason.HOST_UNAVAILABLE
        elif status in _FINAL_STATUSES:
            outcome = _FINAL_STATUSES[status]
            reason = int(reply.reason) if outcome is not Outcome.APPROVED else Reason.NONE
        elif status is h.HostStatus.NOT_FOUND:
            outcome, reason = Outcome.DECLINED, Reason.ORDER_NOT_FOUND
        elif status is not None:
            outcome, reason = Outcome.PENDING, Reason.NONE
        else:
            outcome, reason = Outcome.UNKNOWN, int(getattr(reply, "reason", 0)) or Reason.OTHER
        return m.PayResult(order_id=order_id, outcome=outcome, amount_minor=amount, currency=currency, reason=reason,
                           trade_no=getattr(reply, "trade_no", None), code_last4=getattr(reply, "code_last4", None),
                           refunded_minor=getattr(reply, "refunded_minor", 0) or 0,
                           paid_at=getattr(reply, "paid_at", None))

    # ================================================================ helpers

    def _purpose_of(self, flow: _Flow, reply: h.HostMessage | None) -> str:
        """Name the event for the flow's host answer (see states.py)."""
        kind = flow.sent
        if kind == "check":
            if not isinstance(reply, h.AuthResponse):
                return "check_failed"
            return _new_order_event(flow.request) if reply.status is h.HostStatus.NOT_FOUND else "order_elsewhere"
        if (kind == "pay" and isinstance(reply, h.AuthResponse) and reply.owner_terminal_id is not None
                and reply.owner_terminal_id != self.identity.terminal_id):
            # Both look-ups passed and the other terminal's authorisation got there first: the
            # host's answer is the owner's, not ours (a host before protocol 2 names no owner).
            return "order_elsewhere"
        if kind == "cancel_check":
            status = getattr(reply, "status", None)
            if status is h.HostStatus.APPROVED:
                return "cancel_needs_password"
            if status in (h.HostStatus.PROCESSING, h.HostStatus.NEED_PIN, h.HostStatus.WAIT_BUYER,
                          h.HostStatus.SHOW_QR):
                return "cancel_unpaid"
            kind = "cancel"  # final, not found, an error or silence: the query's answer is the cancel's
        if kind == "cancel":
            if reply is None:
                return "cancel_silent"
            status = getattr(reply, "status", None)
            return "cancel_done" if status in (h.HostStatus.CANCELLED, h.HostStatus.REFUNDED) else "cancel_refused"
        if kind == "refund":
            return "refund_silent" if reply is None else "refund_done"
        if kind == "settle":
            return "settle_silent" if reply is None else "settle_done"
        if reply is None:
            return "host_silent"
        if isinstance(reply, h.AuthResponse):
            return f"host_{reply.status.name.lower()}"
        return "host_declined"  # a HostError to a payment request: a decline with its reason

    def _host(self, msg: h.HostMessage, sent: str | None = None) -> None:
        flow = self._flow
        assert flow is not None
        token = next(self._tokens)
        flow.inflight = token
        flow.sent = sent or {h.HostCancel: "cancel", h.HostRefund: "refund",
                             h.SettleRequest: "settle"}.get(type(msg), "pay")
        self._host_out.append(HostCall(token, msg, self.config.host_timeout))

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

    def _print(self, lines: list[str], order_id: str | None, kind: str) -> None:
        printed = self.printer.print(tuple(lines))
        self.journal.add_receipt(order_id, kind, printed, self._stamp())
        self._printed(printed, order_id)

    def _printed(self, printed: tuple[str, ...], order_id: str | None) -> None:
        """The receipt is printed and journaled: show it and send it to the ECR."""
        self._progress(Stage.PRINTING, "Printing receipt...", order_id=order_id or "terminal")
        self._send(m.Print(lines=printed, order_id=order_id))
        self._timer("print", self.config.print_time, lambda: self._fire("printed"))

    def _receipt_head(self, title: str, order_id: str | None) -> list[str]:
        ident = self.identity
        lines = [ident.firmware_version, receipt_line("MERCHANT", ident.merchant_id),
                 receipt_line("TERMINAL", ident.terminal_id), self._stamp()[:19].replace("T", " ") + " UTC", title]
        if order_id:
            lines += ["ORDER", order_id]
        return lines

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

    def _result_of(self, rec: OrderRecord) -> m.PayResult:
        return m.PayResult(order_id=rec.order_id, outcome=rec.outcome or Outcome.UNKNOWN, amount_minor=rec.amount_minor,
                           currency=rec.currency, reason=rec.reason, reason_text=rec.reason_text,
                           trade_no=rec.trade_no, code_last4=rec.code_last4, refunded_minor=rec.refunded_minor,
                           paid_at=rec.paid_at)

    def _timer(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        self._timers[name] = (self._now + max(0.0, delay), fn)

    def _clear_timer(self, name: str) -> None:
        self._timers.pop(name, None)

    def _stamp(self) -> str:
        return self._wallclock().astimezone(timezone.utc).isoformat(timespec="seconds")


def _new_order_event(request: m.PayRequest) -> str:
    return f"order_new_{'qr' if request.dynamic_qr else 'code' if request.payment_code else 'scan'}"


def _attr(obj: Any, name: str, default: Any) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _reason_name(code: int) -> str:
    try:
        return Reason(code).name
    except ValueError:
        return f"CODE {code}"


def _code_name(code: int) -> str:
    try:
        return m.ErrorCode(code).name
    except ValueError:
        return f"CODE {code}"
