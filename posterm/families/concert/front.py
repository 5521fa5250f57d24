"""The emulated terminal's Concert front: Concert on the line, posterm messages to the firmware.

:class:`ConcertFront` is a :class:`posterm.families.interfaces.TerminalFront`, the link the
emulator's line loop drives (through :class:`posterm.families.pump.Pump`), so the same
firmware, host, scenarios and test codes serve both protocol families:

* a Concert request becomes a posterm request for the firmware: debit ``"0"`` a
  ``PayRequest`` (the terminal scans the customer's code: Concert has no field for
  it), credit ``"1"`` a ``Refund`` of the order named in the private field (the
  operator's password is typed on the terminal's keypad), cancel ``"2"`` a ``Cancel``;
* the firmware's ``PayResult`` / ``RefundResult`` becomes the Concert answer, long or
  short as the request asked; ``Progress`` and ``Print`` stay on the terminal
  (its display and printer), as on a real Concert terminal.

The order id is the request's private field when the ECR filled it (so the ECR
can find the order again), otherwise one the terminal makes up; the answer's
private field carries it either way.

Delivery: the ECR's ACK of the answer frame is its receipt. Every answer the front
sends is reported to the firmware as a :class:`ResultDelivery` once the line knows:
delivered (ACKed), or not (ENQ never ACKed, frame never ACKed or NAKed each time, the
line reset with the answer still queued). The firmware keeps an approval only once
delivered and reverses it at the host otherwise (FirmwareConfig.void_unfinished).

The operator password: Concert carries none; the operator types it on the terminal.
The emulated operator types the terminal's own password unless a test says otherwise
with :meth:`ConcertFront.operator_types` (a wrong one is refused and counts
toward the keypad's lock, as on the native side).
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

from firmware_protocol.native import messages as m
from firmware_protocol.concert import ConcertAnswer, ConcertRequest, Status, TxnType
from firmware_protocol.currency import from_numeric
from firmware_protocol.native.messages import Outcome

from posterm.families.concert import new_private_id
from posterm.families.concert.link import ConcertConfig, ConcertLink, Delivered, MessageReceived, SendFailed
from posterm.families.events import ResultDelivery

log = logging.getLogger("posterm.emulator.concert")



def new_concert_order_id() -> str:
    """Ten characters (the width of the private field): ``C`` and 9 random base-34 characters."""
    return new_private_id("C")


@dataclass
class _Pending:
    request: ConcertRequest
    order_id: str
    currency: str


class ConcertFront:
    """Concert on the wire, posterm messages towards the firmware."""

    def __init__(self, operator_password: str, config: ConcertConfig | None = None, *,
                 line_rate: float | None = None) -> None:
        # line_rate (a paced line) is not needed: Concert's timers (3 s for a frame's ACK) are
        # far longer than a 512-byte frame takes at any rate a Telium port runs.
        self._link = ConcertLink("terminal", config)
        self._operator_password = operator_password
        self._events: deque = deque()
        self._pending: _Pending | None = None
        self._typed: deque = deque(maxlen=16)   # what the emulated operator types at the next prompts

    def operator_types(self, password: str) -> None:
        """The emulated operator will type ``password`` at the next password prompt (once)."""
        self._typed.append(password)

    def _operator_entry(self) -> str:
        return self._typed.popleft() if self._typed else self._operator_password

    @property
    def stats(self) -> dict[str, int]:
        return self._link.stats

    # -- the Link shape -------------------------------------------------------------

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

    def reset(self) -> list:
        self._pending = None
        self._events.clear()
        pending = self._link.reset()
        for msg in pending:   # a new connection: answers still queued never reached the ECR
            if isinstance(msg, ConcertAnswer) and msg.private:
                self._events.append(ResultDelivery(msg.private, False, "line reset"))
        return pending

    @property
    def idle(self) -> bool:
        return self._link.idle

    def start_session(self) -> None:
        pass

    def new_session(self) -> list:
        """Concert has no sessions (the firmware never gets a Hello from this front): nothing to drop."""
        return []

    def drop_queued(self, which: Any = None, *, in_flight: bool = False) -> list:
        """Drop answers not yet delivered (see :meth:`ConcertLink.drop_queued`); each one is
        reported to the firmware as undelivered (:class:`ResultDelivery`), as on a reset."""
        dropped = self._link.drop_queued(which, in_flight=in_flight)
        for msg in dropped:
            if isinstance(msg, ConcertAnswer) and msg.private:
                self._events.append(ResultDelivery(msg.private, False, "dropped"))
        return dropped

    def send(self, message: m.Message, now: float | None = None) -> bytes:
        """A firmware message for the ECR: the outcome becomes a Concert answer; the rest stays here."""
        answer = self._answer_for(message)
        if answer is None:
            return b""
        self._pending = None
        return self._link.send(answer, now)

    # -- translation ---------------------------------------------------------------------

    def _drain(self) -> None:
        while (ev := self._link.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                self._on_request(ev.message, ev.raw)
            elif isinstance(ev, Delivered) and isinstance(ev.message, ConcertAnswer) and ev.message.private:
                self._events.append(ResultDelivery(ev.message.private, True))
            elif isinstance(ev, SendFailed) and isinstance(ev.message, ConcertAnswer) and ev.message.private:
                self._events.append(ResultDelivery(ev.message.private, False, ev.cause))

    def _refuse(self, req: ConcertRequest, why: str) -> None:
        log.info("concert: request not processed: %s", why)
        self._link.enqueue(ConcertAnswer(Status.NOT_PROCESSED, req.amount_minor, req.currency_numeric,
                                      req.pos_number, req.mode, "" if req.answer_flag.value == "1" else None,
                                      req.private))

    def _on_request(self, req: ConcertRequest, raw: bytes) -> None:
        if self._pending is not None:
            return self._refuse(req, "a transaction is already in progress")
        try:
            currency = from_numeric(req.currency_numeric)
        except KeyError:
            return self._refuse(req, f"currency {req.currency_numeric:03d} is not accepted")
        if req.amount_minor <= 0:
            return self._refuse(req, "amount is zero")
        order_id = req.private or new_concert_order_id()
        try:
            if req.txn_type is TxnType.DEBIT:
                msg: m.Message = m.PayRequest(amount_minor=req.amount_minor, currency=currency, order_id=order_id)
            elif req.txn_type is TxnType.CREDIT:
                if not req.private:
                    return self._refuse(req, "a refund names its order in the private field")
                msg = m.Refund(order_id=order_id, amount_minor=req.amount_minor, currency=currency,
                               refund_id=f"R{order_id}-{secrets.token_hex(3)}",
                               operator_password=self._operator_entry())
            elif req.txn_type is TxnType.CANCEL:
                if not req.private:
                    return self._refuse(req, "a cancel names its order in the private field")
                msg = m.Cancel(order_id=order_id, operator_password=self._operator_entry())
            else:
                return self._refuse(req, f"transaction type {req.txn_type.value!r} is not offered")
        except Exception as exc:  # noqa: BLE001 - a field our messages refuse (e.g. private data charset)
            return self._refuse(req, str(exc))
        self._pending = _Pending(req, order_id, currency)
        self._events.append(MessageReceived(msg, 0, raw))

    def _answer_for(self, message: m.Message) -> ConcertAnswer | None:
        p = self._pending
        if p is None:
            if not isinstance(message, (m.Progress, m.Print)):
                log.debug("concert: %s from the firmware with nothing pending, dropped", type(message).__name__)
            return None
        req = p.request
        report: str | None = "" if req.answer_flag.value == "1" else None
        if isinstance(message, m.PayResult):
            if message.outcome is Outcome.PENDING:
                return None
            if req.txn_type is TxnType.CANCEL:
                status = Status.ACCEPTED if message.outcome is Outcome.CANCELLED else Status.REFUSED
            else:
                status = {Outcome.APPROVED: Status.ACCEPTED, Outcome.DECLINED: Status.REFUSED}.get(
                    message.outcome, Status.NOT_PROCESSED)
            if report is not None and message.code_last4:
                report = f"{'*' * 14}{message.code_last4}"
        elif isinstance(message, m.RefundResult):
            status = {Outcome.APPROVED: Status.ACCEPTED, Outcome.DECLINED: Status.REFUSED}.get(
                message.outcome, Status.NOT_PROCESSED)
        elif isinstance(message, m.Error):
            status = Status.NOT_PROCESSED
        else:
            return None   # Progress, Print: the terminal's own display and printer
        reason = int(getattr(message, "reason", 0) or 0)
        if reason:   # Concert's answer has no reason code: the terminal's display and log say it
            try:
                why = m.Reason(reason).name.lower()
            except ValueError:
                why = str(reason)
            log.info("concert: %s %s: status %s, reason %s", req.txn_type.name.lower(), p.order_id,
                     status.value, why)
        return ConcertAnswer(status, req.amount_minor, req.currency_numeric, req.pos_number, req.mode, report,
                             p.order_id)
