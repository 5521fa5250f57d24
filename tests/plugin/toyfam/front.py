"""The emulated terminal's toy front: the toy wire on the line, native messages to the firmware.

The emulator's firmware speaks one vocabulary, posterm's native messages; this front
translates (the TerminalFront interface of posterm.families.interfaces):

* toy ``hello`` -> ``Hello``; the firmware's ``HelloReply`` -> toy ``info``;
* toy ``pay`` -> ``PayRequest`` (the payment code passes through, it never is logged);
  the firmware's final ``PayResult`` -> toy ``result``; an ``Error`` while a payment is
  pending -> a declined ``result`` for it (nothing was charged);
* ``Progress``, ``Print`` and everything else stay on the terminal.

The ECR's ack of a result is its receipt: each result is reported to the firmware as a
``ResultDelivery`` (delivered, or not: never acked, or the line reset with it queued), and
the firmware reverses what was not delivered (the family says ``ecr_can_query=False``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Any

from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome

from posterm.families.events import Delivered, MessageReceived, SendFailed

from . import wire as w
from posterm.families.events import ResultDelivery
from .link import ToyConfig, ToyLink

log = logging.getLogger("toyfam.front")
MAX_PENDING = 16
OUTCOMES = {Outcome.APPROVED: "approved", Outcome.DECLINED: "declined", Outcome.CANCELLED: "cancelled"}


class ToyFront:
    """The toy wire towards the ECR, native messages towards the firmware."""

    def __init__(self, operator_password: str = "", config: ToyConfig | None = None, *,
                 line_rate: float | None = None) -> None:
        # operator_password: the toy carries no operator actions; line_rate: its timers need no pacing
        self._link = ToyLink("terminal", config)
        self._events: deque = deque()
        self._pending: OrderedDict[str, tuple[int, str]] = OrderedDict()   # order id -> (amount, currency)

    @property
    def stats(self) -> dict[str, int]:
        return self._link.stats

    @property
    def idle(self) -> bool:
        return self._link.idle

    # -- the Link shape --------------------------------------------------------------

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        self._link.receive_data(data, now)
        self._drain()

    def tick(self, now: float) -> None:
        self._link.tick(now)
        self._drain()

    def next_event(self) -> Any | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        return self._link.data_to_send()

    def next_deadline(self) -> float | None:
        return self._link.next_deadline()

    def start_session(self) -> None:
        self._link.start_session()

    def new_session(self) -> list:
        """The firmware got a hello (the ECR reopened the port): every frame names its session,
        so nothing is forgotten; nothing is dropped either (one message in flight at a time)."""
        self._link.start_session()
        return []

    def drop_queued(self, which: Any = None, *, in_flight: bool = False) -> list:
        return []   # one message in flight at a time: nothing queued worth dropping

    def reset(self) -> list:
        self._events.clear()
        self._pending.clear()
        undelivered = self._link.reset()
        for msg in undelivered:   # a new connection: results still queued never reached the ECR
            if isinstance(msg, w.Result):
                self._events.append(ResultDelivery(msg.order_id, False, "line reset"))
        return undelivered

    def send(self, message: m.Message, now: float | None = None) -> bytes:
        """A firmware message for the ECR: what the toy wire carries goes out, the rest stays here."""
        toy = self._translate(message)
        return self._link.send(toy, now) if toy is not None else b""

    # -- translation ---------------------------------------------------------------------

    def _drain(self) -> None:
        while (ev := self._link.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                self._on_request(ev)
            elif isinstance(ev, Delivered) and isinstance(ev.message, w.Result):
                self._events.append(ResultDelivery(ev.message.order_id, True))
            elif isinstance(ev, SendFailed) and isinstance(ev.message, w.Result):
                self._events.append(ResultDelivery(ev.message.order_id, False, ev.cause))

    def _on_request(self, ev: MessageReceived) -> None:
        req = ev.message
        if isinstance(req, w.Hello):
            native: m.Message = m.Hello(protocol_version=m.PROTOCOL_VERSION)
        elif isinstance(req, w.Pay):
            if req.order_id not in self._pending and len(self._pending) >= MAX_PENDING:
                self._pending.popitem(last=False)
            self._pending[req.order_id] = (req.amount_minor, req.currency)
            native = m.PayRequest(amount_minor=req.amount_minor, currency=req.currency, order_id=req.order_id,
                                  payment_code=req.payment_code)
        else:   # the link passes only hello and pay to this side
            return
        self._events.append(MessageReceived(native, ev.seq, ev.raw))

    def _translate(self, msg: m.Message) -> Any | None:
        if isinstance(msg, m.HelloReply):
            return w.Info(msg.terminal_id, msg.merchant_id, msg.firmware_version[:32])
        if isinstance(msg, m.PayResult):
            if msg.outcome not in OUTCOMES:
                return None   # pending or unknown: the final result follows
            self._pending.pop(msg.order_id, None)
            return w.Result(msg.order_id, OUTCOMES[msg.outcome], msg.amount_minor, msg.currency,
                            int(msg.reason or 0), msg.code_last4)
        if isinstance(msg, m.Error) and self._pending:
            order_id, (amount, currency) = self._pending.popitem(last=False)
            log.info("toy: the firmware refused %s (%s): declined", order_id, msg.code.name.lower())
            return w.Result(order_id, "declined", amount, currency, 0)
        return None   # Progress, Print, Status...: the terminal's own display and printer
