"""Drive an Ingenico Concert (Telium) terminal with the ECR driver API (:class:`posterm.Terminal`'s).

    import posterm

    with posterm.open_terminal("/dev/ttyACM0", protocol="concert") as term:      # USB: 9600 8N1
        result = term.pay(1250, "EUR")
    with posterm.Terminal.open("/dev/ttyS0", protocol="concert", bytesize=7, parity="E") as term:  # RS-232

What Concert carries and what it does not, and what the driver does about it:

* ``pay``: a debit request; the terminal reads the card or scans the customer's
  payment code itself (Concert has no field for a code, so ``payment_code`` is
  refused). The order id travels in the 10-character private field, and comes
  back in the answer's.
* ``refund``: a credit request naming the order in the private field; the operator
  types the password on the terminal (``operator_password`` does not cross the
  line). The wire has no refund id: a refund id already journaled is answered from
  the journal and never sent again; another amount under it is refused.
  ``cancel``: a cancel ("annulation") request for the order.
* Status ``0`` is approved, ``7`` declined, ``9`` not processed (cancelled on the
  terminal, or refused before any host contact). The answer carries no reason code.
* There is no query in Concert: ``query``, ``status``, ``settle``, ``load_key`` and
  ``abort`` raise :class:`Unsupported`.
* The ACK is the receipt (PROTOCOL.md C.8): an answer is journaled before the driver
  ACKs it, and a Concert terminal does not keep an approval its ECR never ACKed
  (posterm's emulator reverses it at the host). So ``recover`` records an unfinished
  payment ``cancelled``; unfinished refunds and cancels are reported ``unknown``.
  (Sending a request again would charge the customer again: the driver never does.)

Every request is journaled before it goes on the wire, as with posterm's protocol.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Iterator

from firmware_protocol import currency as cur
from firmware_protocol.concert import (
    PRIVATE_WIDTH,
    AnswerFlag,
    ConcertAnswer,
    ConcertRequest,
    Status,
    TxnType,
)

from posterm.families.concert import new_private_id
from posterm.families.concert.link import ConcertConfig, ConcertLink, Delivered, FrameRejected, GarbageSkipped, MessageReceived, SendFailed
from posterm.families.pump import TIMED_OUT, Pump
from posterm.errors import LinkFailed, LocalProtocolError, PosTimeout
from posterm.ecr.journal import Journal
from posterm.ecr.results import (Capability, Outcome, PaymentResult, Reason, RefundOutcome, TerminalInfo,
                                 journaled_refund)
from posterm.ecr.session import DEFAULT_PAY_TIMEOUT, PortSession, line_settings, resolve_port

log = logging.getLogger("posterm.ecr.concert")
wire_log = logging.getLogger("posterm.wire")


UNACKNOWLEDGED = ("never acknowledged by this ECR: a Concert terminal reverses an approval its ECR"
                  " did not acknowledge")


class Unsupported(LocalProtocolError):
    """The protocol family has no message for this operation."""


def new_concert_order_id() -> str:
    """Ten characters, the width of Concert's private field."""
    return new_private_id("P", PRIVATE_WIDTH)


def _outcome(answer: ConcertAnswer, txn: TxnType) -> Outcome:
    if txn is TxnType.CANCEL:
        return Outcome.CANCELLED if answer.status is Status.ACCEPTED else Outcome.DECLINED
    return {Status.ACCEPTED: Outcome.APPROVED, Status.REFUSED: Outcome.DECLINED}.get(
        answer.status, Outcome.CANCELLED)


class ConcertTerminal(PortSession):
    """An ECR talking Concert to a terminal. One operation at a time; a context manager."""

    protocol = "concert"
    #: What answered ``hello`` (it carries no identity): what ``posterm doctor`` reports.
    probe = "ACK to ENQ"
    READ_SIZE = 512

    def __init__(self, transport: Any, *, port_name: str = "", journal: Journal | None = None,
                 config: ConcertConfig | None = None, pos_number: int = 1, long_answer: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._init_port(transport, port_name, journal)
        self._link = ConcertLink("ecr", config, confirm_frames=True)   # ACK only what is journaled
        self._clock = clock
        self.pos_number = pos_number
        self.long_answer = long_answer
        self._lock = threading.Lock()
        self.info: TerminalInfo | None = None

    @classmethod
    def open(cls, url: str | None = None, *, journal: Journal | str | None = None, record: str | None = None,
             pos_number: int = 1, config: ConcertConfig | None = None, **settings: Any) -> "ConcertTerminal":
        """Open ``url`` with Concert's serial defaults (9600 8N1; pass ``bytesize=7, parity="E"``
        for a native RS-232 port). Raises TransportError."""
        from posterm.families import family

        url = resolve_port(url)
        settings = line_settings(url, settings, family(cls.protocol).serial_defaults)
        return cls._open_session(url, settings, record, journal, lambda transport, journal, _: cls(
            transport, port_name=url, journal=journal, pos_number=pos_number, config=config))

    @property
    def link_stats(self) -> dict[str, int]:
        return dict(self._link.stats)

    # -- operations -----------------------------------------------------------------

    def hello(self, timeout: float = 3.0) -> TerminalInfo:
        """Is the terminal there and ready? ENQ, expect ACK, then EOT (Concert's only probe)."""
        from firmware_protocol.concert import ACK, ENQ, EOT

        with self._op():
            deadline = self._clock() + timeout
            for _ in range(self._link.config.enq_attempts):
                self._write(bytes([ENQ]))
                until = min(deadline, self._clock() + self._link.config.enq_timeout)
                while self._clock() < until:
                    data = self._read(max(0.0, min(0.05, until - self._clock())))
                    if ACK in data:
                        self._write(bytes([EOT]))
                        self.info = TerminalInfo("", "", "concert", 0, Capability(0))
                        return self.info
                if self._clock() >= deadline:
                    break
            raise PosTimeout(f"no ACK to ENQ from {self.port_name}: terminal absent, busy or wrong serial settings")

    def pay(self, amount_minor: int, currency: str, order_id: str | None = None, payment_code: str | None = None,
            on_progress: Callable[[Any], None] | None = None, timeout: float = DEFAULT_PAY_TIMEOUT,
            description: str | None = None, dynamic_qr: bool = False) -> PaymentResult:
        """A debit of ``amount_minor`` in ``currency``; the terminal reads the card or code itself."""
        if payment_code is not None or dynamic_qr:
            raise Unsupported("Concert has no field for a payment code or a dynamic QR: the terminal scans"
                              " the customer's code itself")
        order_id = order_id or new_concert_order_id()
        def record(answer: ConcertAnswer) -> PaymentResult:
            result = self._result(answer, TxnType.DEBIT, order_id, amount_minor, currency)
            self._journal_result(result)
            return result

        return self._transact(TxnType.DEBIT, amount_minor, currency, order_id, "pay", timeout, record)

    def cancel(self, order_id: str, operator_password: str | None = None, timeout: float = 60.0,
               on_progress: Callable[[Any], None] | None = None, amount_minor: int | None = None,
               currency: str | None = None) -> PaymentResult:
        """Cancel (void) ``order_id`` on the terminal. Amount and currency come from the journal."""
        amount_minor, currency = self._from_journal(order_id, amount_minor, currency)
        def record(answer: ConcertAnswer) -> PaymentResult:
            result = self._result(answer, TxnType.CANCEL, order_id, amount_minor, currency)
            if self._journal is not None and self._journal.get(order_id) is not None:
                self._journal_result(result)
            return result

        return self._transact(TxnType.CANCEL, amount_minor, currency, order_id, None, timeout, record)

    def refund(self, order_id: str, amount_minor: int, refund_id: str, operator_password: str | None = None,
               currency: str | None = None, timeout: float = 60.0,
               on_progress: Callable[[Any], None] | None = None) -> RefundOutcome:
        """A credit of ``amount_minor`` against ``order_id``; the operator confirms on the terminal."""
        _, currency = self._from_journal(order_id, amount_minor, currency)
        if self._journal is not None:
            earlier = self._journal.get(order_id, "refund", refund_id)
            if earlier is not None:
                # Concert's wire carries no refund id: the terminal cannot tell a retry from a second refund
                return journaled_refund(earlier, amount_minor, currency, protocol="Concert",
                                        look="the terminal's journal")

        def record(answer: ConcertAnswer) -> RefundOutcome:
            outcome = {Status.ACCEPTED: Outcome.APPROVED, Status.REFUSED: Outcome.DECLINED}.get(
                answer.status, Outcome.CANCELLED)
            result = RefundOutcome(order_id, refund_id, outcome, answer.amount_minor, currency,
                                   Reason.NONE, 0, f"concert status {answer.status.value}")
            if self._journal is not None:
                self._journal.record_outcome(order_id, "refund", result.result, 0, result.to_json(), final=True,
                                             ref_id=refund_id)
            return result

        return self._transact(TxnType.CREDIT, amount_minor, currency, order_id, "refund", timeout, record,
                              ref_id=refund_id)

    def recover(self, timeout: float = 10.0) -> list[PaymentResult]:
        """Concert cannot ask about an order, but this driver ACKs an answer only after journaling
        it, and a Concert terminal does not keep an approval its ECR never acknowledged (posterm's
        emulator reverses it at the host). So an unfinished payment here was never charged, or is
        being given back: it is recorded ``cancelled`` (final), with the reason in ``reason_text``.
        Unfinished refunds and cancels are reported ``unknown`` and left unfinished: check the
        terminal's journal (a refund sent again under the same refund id is never re-sent)."""
        if self._journal is None:
            return []
        out = []
        for entry in self._journal.unfinished():
            if entry.kind == "pay":
                result = PaymentResult(entry.order_id, Outcome.CANCELLED, entry.amount_minor, entry.currency,
                                       Reason.NONE, UNACKNOWLEDGED)
                self._journal_result(result)
                log.warning("order %s: its answer was never acknowledged by this ECR: recorded cancelled"
                            " (the terminal does not keep it)", entry.order_id)
                out.append(result)
            else:
                out.append(PaymentResult(entry.order_id, Outcome.UNKNOWN, entry.amount_minor, entry.currency,
                                         Reason.NONE, f"Concert has no query: check the terminal's journal"
                                         f" for this {entry.kind}"))
        return out

    def query(self, order_id: str, timeout: float = 10.0) -> PaymentResult:
        raise Unsupported("the Concert protocol has no query message")

    def status(self, timeout: float = 3.0) -> Any:
        raise Unsupported("the Concert protocol has no status message (use hello: ENQ/ACK)")

    def settle(self, operator_password: str, timeout: float = 60.0, on_progress=None) -> Any:
        raise Unsupported("Concert settlement is done on the terminal, not from the ECR")

    def load_key(self, key_block: str, operator_password: str, timeout: float = 10.0) -> Any:
        raise Unsupported("Concert has no key-loading message")

    def key_status(self, timeout: float = 3.0) -> Any:
        raise Unsupported("Concert has no key-status message")

    def abort(self, order_id: str | None = None, timeout: float = 10.0) -> Any:
        raise Unsupported("Concert has no abort message: cancel on the terminal's keypad")

    # -- the exchange -------------------------------------------------------------------

    @contextlib.contextmanager
    def _op(self) -> Iterator[None]:
        if self._closed:
            raise LocalProtocolError("terminal is closed")
        if not self._lock.acquire(blocking=False):
            raise LocalProtocolError("another operation is in progress on this Terminal")
        try:
            yield
        finally:
            self._lock.release()

    def _from_journal(self, order_id: str, amount_minor: int | None, currency: str | None) -> tuple[int, str]:
        entry = self._journal.get(order_id) if self._journal is not None else None
        if amount_minor is None:
            if entry is None:
                raise LocalProtocolError("amount is required when the order is not in this journal")
            amount_minor = entry.amount_minor
        if currency is None:
            if entry is None:
                raise LocalProtocolError("currency is required when the order is not in this journal")
            currency = entry.currency
        return amount_minor, currency

    def _transact(self, txn: TxnType, amount_minor: int, currency: str, order_id: str, journal_kind: str | None,
                  timeout: float, record: Callable[[ConcertAnswer], Any], ref_id: str = "") -> Any:
        if type(amount_minor) is not int:
            raise LocalProtocolError("amount_minor must be an int of minor units (never a float)")
        try:
            numeric = cur.numeric(currency)
        except KeyError:
            raise LocalProtocolError(f"unknown currency {currency!r}") from None
        if len(order_id) > PRIVATE_WIDTH:
            raise LocalProtocolError(f"a Concert order id is at most {PRIVATE_WIDTH} characters: {order_id!r}")
        request = ConcertRequest(amount_minor=amount_minor, currency_numeric=numeric, pos_number=self.pos_number,
                                 txn_type=txn, answer_flag=AnswerFlag.LONG if self.long_answer else AnswerFlag.SHORT,
                                 private=order_id)
        with self._op():
            if journal_kind is not None and self._journal is not None:
                self._journal.record_sent(order_id, journal_kind, self.port_name, amount_minor, currency, None,
                                          ref_id=ref_id)
            deadline = self._clock() + timeout
            pump = self._pump()
            pump.send(request)
            delivered = False

            def on_event(ev: Any) -> Any:
                nonlocal delivered
                if isinstance(ev, Delivered):
                    delivered = True
                elif isinstance(ev, SendFailed):
                    raise LinkFailed(f"Concert request not taken by {self.port_name} after {ev.attempts}"
                                     f" attempt(s) ({ev.cause}): check the cable, port and serial settings"
                                     " (USB 8N1, native RS-232 7E1)")
                elif isinstance(ev, MessageReceived):
                    answer = ev.message
                    if answer.private and answer.private != order_id:
                        self._take_stray(answer)
                        return None
                    try:
                        result = record(answer)     # journaled before our ACK leaves
                    except BaseException:
                        self._link.refuse(self._clock())
                        pump.flush()
                        raise
                    self._link.accept(self._clock())
                    pump.flush()
                    # The terminal still sends EOT (or the frame again, if our ACK was lost:
                    # ACKed again); wait for it so the line is free and the terminal keeps it.
                    self._drain_eot()
                    return result   # a PaymentResult or RefundOutcome: never None
                elif isinstance(ev, FrameRejected):
                    wire_log.info("NAK sent: %s", ev.reason)
                elif isinstance(ev, GarbageSkipped):
                    wire_log.info("skipped %d bytes of line noise", len(ev.data))
                return None

            answered = pump.run(deadline, on_event)
            if answered is TIMED_OUT:
                raise PosTimeout(f"no Concert answer for {order_id} within {timeout:g} s"
                                 + ("" if delivered else " (the request was never acknowledged)")
                                 + ": it stays unfinished in the journal")
            return answered

    def _take_stray(self, answer: ConcertAnswer) -> None:
        """An answer for another order (one this ECR gave up waiting for): journal it and ACK it
        when that order is unfinished in the journal, else NAK it, so the terminal, never told
        it was received, reverses it. Never ACK what is not written down."""
        kinds = {"pay": TxnType.DEBIT, "cancel": TxnType.CANCEL, "refund": TxnType.CREDIT}
        entries = [e for e in (self._journal.unfinished() if self._journal is not None else [])
                   if e.order_id == answer.private and e.kind in kinds]
        if len(entries) != 1:
            log.warning("refusing a Concert answer for %r: not an unfinished order of this journal", answer.private)
            self._link.refuse(self._clock())
        else:
            e = entries[0]
            if e.kind == "refund":
                outcome = {Status.ACCEPTED: Outcome.APPROVED, Status.REFUSED: Outcome.DECLINED}.get(
                    answer.status, Outcome.CANCELLED)
                late = RefundOutcome(e.order_id, e.ref_id, outcome, answer.amount_minor, e.currency,
                                     Reason.NONE, 0, f"concert status {answer.status.value}")
                self._journal.record_outcome(e.order_id, "refund", late.result, 0, late.to_json(), final=True,
                                             ref_id=e.ref_id)
            else:
                res = self._result(answer, kinds[e.kind], e.order_id, e.amount_minor, e.currency)
                self._journal.record_outcome(e.order_id, e.kind, res.result, int(res.reason), res.to_json(),
                                             final=res.final)
            log.warning("a late Concert answer for %s (%s) was journaled", e.order_id, e.kind)
            self._link.accept(self._clock())
        self._write(self._link.data_to_send())

    def _pump(self) -> Pump:
        return Pump(self._link, self._read, self._write, clock=self._clock, max_wait=0.1)

    def _drain_eot(self) -> None:
        """Keep the line moving until the terminal's EOT frees it (or the time for it is up);
        the events stay queued for the next exchange."""
        cfg = self._link.config
        until = self._clock() + cfg.eot_timeout + cfg.ack_timeout
        self._pump().run(until, before_read=lambda now: True if self._link.idle else None)

    def _result(self, answer: ConcertAnswer, txn: TxnType, order_id: str, amount_minor: int,
                currency: str) -> PaymentResult:
        outcome = _outcome(answer, txn)
        last4 = (answer.report or "").rstrip()[-4:]
        # Concert answers carry no reason code: the status says all the ECR learns.
        return PaymentResult(order_id, outcome, answer.amount_minor, currency, Reason.NONE,
                             f"concert status {answer.status.value}", None,
                             last4 if last4.isdigit() and len(last4) == 4 else None)

    def _journal_result(self, result: PaymentResult) -> None:
        if self._journal is not None:
            self._journal.record_outcome(result.order_id, "pay", result.result, int(result.reason),
                                         result.to_json(), final=result.final)
