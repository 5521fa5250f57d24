"""The native family's ECR driver: drive a terminal speaking posterm's protocol.

    import posterm

    with posterm.Terminal.open("/dev/ttyUSB0") as term:          # or socket://, rfc2217://, a pty
        info = term.hello()
        result = term.pay(1234, "CNY", payment_code="289900000000000001",
                          on_progress=lambda p: print(p.text))
        if result.approved: ...
        elif result.outcome is Outcome.UNKNOWN: term.recover()

What every family shares is in :mod:`posterm.ecr`: the results (:mod:`posterm.ecr.results`),
order ids, the port session with its journal and reconnect (:mod:`posterm.ecr.session`).

Every call sends one request through :mod:`posterm.families.native.link` and waits for its
answer; ``Progress`` and ``Print`` messages that arrive meanwhile go to
``on_progress`` and into the result's receipt. A decline is a result, not an
exception. Errors are typed (:mod:`posterm.errors`): ``TransportError`` (and
``Disconnected``) for the port, ``LinkFailed`` when frames are not
acknowledged, ``PosTimeout`` when no answer comes, ``TerminalRefused`` when the
terminal answers with an Error message.

No payment is lost or doubled: each request (pay, refund, cancel) is journaled
(:mod:`posterm.ecr.journal`) before it goes on the wire; :meth:`Terminal.recover` resolves
every operation whose outcome was never learnt (payments and cancels by Query, refunds
by re-sending them with their refund id). Re-sending a PayRequest with the same order
id is safe: the terminal answers the stored outcome, or ORDER_CONFLICT for other
parameters, which is journaled as a rejected attempt and never overwrites the order.

The driver checks what it is told: an approval for another order, amount or currency
is a protocol error, resolved by asking again (:class:`OutcomeMismatch` when the lie
persists); answers for other orders or refunds, and Errors about earlier requests, are
stale and ignored. When ``pay`` times out it aborts the payment on the terminal, then
queries. Bounds: :data:`MAX_RECEIPT_LINES` receipt lines per operation; a link event
overflow is :class:`LinkFailed`.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason
from firmware_protocol.native.tlv import Message

from posterm.errors import (
    Disconnected,
    LinkFailed,
    LocalProtocolError,
    PosError,
    PosTimeout,
    RemoteProtocolError,
)
from posterm.ecr.ids import new_order_id
from posterm.ecr.journal import Journal, JournalEntry
from posterm.ecr.results import (
    KeyInfo,
    OutcomeMismatch,
    PasswordReset,
    PaymentResult,
    RefundOutcome,
    Settlement,
    TerminalInfo,
    as_reason,
    mismatch,
)
from posterm.ecr.session import (
    DEFAULT_PAY_TIMEOUT,
    DEFAULT_TIMEOUT,
    PortSession,
    check_timeout,
    line_rate,
    open_terminal,
    resolve_port,
)
from posterm.ecr.trace import hexdump
from posterm.families.native.link import (
    DuplicateIgnored,
    FrameRejected,
    FrameTrace,
    GarbageSkipped,
    Link,
    LinkConfig,
    MessageReceived,
    PartialDiscarded,
    Retransmitted,
    SendFailed,
    UndecodableMessage,
)
from posterm.families.native.redact import message_fields, redact_frame
from posterm.families.pump import TIMED_OUT, Pump

wire_log = logging.getLogger("posterm.wire")
log = logging.getLogger("posterm.ecr.native")

#: Receipt lines kept per operation (a Print line is at most 64 characters): a terminal
#: that floods Print messages costs at most this, the rest is dropped and logged.
MAX_RECEIPT_LINES = 256


class TerminalRefused(PosError):
    """The terminal answered with an Error message (busy, unexpected, malformed...)."""

    def __init__(self, error: m.Error) -> None:
        code = error.code.name if isinstance(error.code, m.ErrorCode) else str(error.code)
        super().__init__(f"terminal refused the request: {code}" + (f" ({error.text})" if error.text else ""))
        self.error = error
        self.code = error.code


# ------------------------------------------------------------------ the driver


@dataclass
class _Waiter:
    """What the current request waits for."""

    expect: tuple[type[Message], ...]
    order_id: str | None
    on_progress: Callable[[m.Progress], None] | None
    receipt: list[str] = field(default_factory=list)  # at most MAX_RECEIPT_LINES
    refund_id: str | None = None
    receipt_dropped: int = 0


class Terminal(PortSession):
    """A payment terminal on the other end of a transport. One operation at a time.

    Construct with :meth:`open` (a port URL) or directly with a transport object
    (anything with ``read(max_bytes, timeout)``, ``write(data)`` and ``close()``).
    """

    #: The family this driver speaks (its name in :mod:`posterm.families`).
    protocol = "posterm"

    def __init__(self, transport: Any, *, port_name: str = "", journal: Journal | None = None,
                 link_config: LinkConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 reconnect: bool = False, reopen: Callable[[], Any] | None = None,
                 reconnect_attempts: int = 6, reconnect_max_delay: float = 2.0, trace: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._init_port(transport, port_name, journal, reopen=reopen, reconnect_attempts=reconnect_attempts,
                        reconnect_max_delay=reconnect_max_delay)
        cfg = link_config or LinkConfig()
        self._trace = trace or wire_log.isEnabledFor(logging.DEBUG)
        if self._trace and not cfg.trace_frames:
            cfg = LinkConfig(**{**_config_dict(cfg), "trace_frames": True})
        self._link_config = cfg
        self._link = Link(cfg)
        self._clock = clock
        self._sleep = sleep  # pauses between polls (a fake clock's sleep in tests)
        self._reconnect = reconnect
        self._op_lock = threading.Lock()
        self._abort_requested: str | None | bool = False
        self.info: TerminalInfo | None = None

    # -- opening and closing ------------------------------------------------

    @classmethod
    def open(cls, url: str | None = None, *, journal: Journal | str | None = None, reconnect: bool = False,
             trace: bool = False, link_config: LinkConfig | None = None, record: str | None = None,
             protocol: str | None = None, **settings: Any) -> "Terminal":
        """Open ``url`` (a device path or pyserial URL; default ``$POSTERM_PORT``) and
        return a :class:`Terminal`. ``settings`` are serial settings (``baudrate``,
        ``bytesize``, ``parity``, ``stopbits``, ``rtscts``, ``xonxoff``, ``exclusive``,
        ``pace``). ``record``: write a session recording (:mod:`posterm.record`) to this
        file. ``protocol``: the protocol family (:mod:`posterm.families`; default
        ``$POSTERM_PROTOCOL`` or ``posterm``); another family returns its own driver
        object with this API (:func:`posterm.ecr.session.open_terminal` opens it).
        Raises :class:`TransportError` if the port cannot be opened.
        """
        from posterm.families import family

        fam = family(protocol)
        if fam.name != cls.protocol:
            # reconnect, trace and link_config are this driver's own options
            return open_terminal(url, fam.name, journal=journal, record=record, **settings)

        url = resolve_port(url)
        if link_config is None:
            link_config = LinkConfig(line_rate=line_rate(url, settings))
        return cls._open_session(url, settings, record, journal, lambda transport, journal, opener: cls(
            transport, port_name=url, journal=journal, reconnect=reconnect, trace=trace, link_config=link_config,
            reopen=lambda: opener(url, **settings)))

    @property
    def link_stats(self) -> dict[str, int]:
        return dict(self._link.stats)

    # -- operations -----------------------------------------------------------

    def hello(self, timeout: float = 3.0) -> TerminalInfo:
        """Say hello; learn who the terminal is and agree the protocol version."""
        check_timeout(timeout)
        reply = self._transact(self._hello_message(), (m.HelloReply,), timeout)
        return self._learn(reply)

    @staticmethod
    def _hello_message() -> m.Hello:
        # A fresh session number makes this session's Hello a new frame for the terminal.
        return m.Hello(protocol_version=m.PROTOCOL_VERSION, capabilities=int(m.Capability.ECR_PRINTS),
                       session=secrets.randbits(32))

    def _learn(self, reply: m.HelloReply) -> TerminalInfo:
        self.info = TerminalInfo(reply.terminal_id, reply.merchant_id, reply.firmware_version,
                                 reply.protocol_version, m.Capability(reply.capabilities))
        return self.info

    def status(self, timeout: float = 3.0) -> m.Status:
        """The terminal's state (answered even in the middle of a payment)."""
        check_timeout(timeout)
        return self._transact(m.StatusRequest(), (m.Status,), timeout)

    def pay(self, amount_minor: int, currency: str, order_id: str | None = None,
            payment_code: str | None = None, on_progress: Callable[[m.Progress], None] | None = None,
            timeout: float = DEFAULT_PAY_TIMEOUT, description: str | None = None,
            dynamic_qr: bool = False) -> PaymentResult:
        """Take a payment of ``amount_minor`` (integer minor units) in ``currency``.

        Returns a :class:`PaymentResult` (approved, declined, cancelled or unknown).
        The request is journaled before it is sent; if the line fails or the
        answer does not come, the order stays unfinished in the journal and
        ``recover()`` resolves it. Raises ``PosTimeout`` (no answer within
        ``timeout``, and a follow-up query got none), ``TransportError``,
        ``LinkFailed`` or ``TerminalRefused`` (e.g. busy).
        """
        if type(amount_minor) is not int:
            raise LocalProtocolError("amount_minor must be an int of minor units (never a float)")
        check_timeout(timeout)
        order_id = order_id or new_order_id()
        request = m.PayRequest(amount_minor=amount_minor, currency=currency, order_id=order_id,
                               payment_code=payment_code, description=description, dynamic_qr=dynamic_qr)
        self._journal_sent(order_id, "pay", amount_minor, currency)
        try:
            answer, receipt = self._transact_collect(request, (m.PayResult,), timeout, order_id, on_progress,
                                                     resume=lambda: self._query_until_final(order_id, timeout))
        except PosTimeout:
            return self._give_up(order_id, amount_minor, currency, timeout)
        result = answer if isinstance(answer, PaymentResult) else PaymentResult.from_message(answer, receipt)
        return self._settle_pay_answer(result, amount_minor, currency)

    def _settle_pay_answer(self, result: PaymentResult, amount_minor: int, currency: str,
                           gave_up_after: float | None = None) -> PaymentResult:
        """Check the answer to a PayRequest against the request and journal it."""
        if gave_up_after is not None:
            result = dataclasses.replace(result, gave_up_after=gave_up_after)
        if result.reason == Reason.ORDER_CONFLICT and result.outcome is not Outcome.APPROVED:
            # The answer judges this attempt (same order id, other amount), not the order:
            # the order keeps whatever the host did with the first request.
            self._journal_attempt(result, "pay", "rejected", "ORDER_CONFLICT: the order id was used with"
                                  f" other parameters; this attempt asked {amount_minor} {currency}")
            return result
        problem = mismatch(result, result.order_id, amount_minor, currency)
        if problem is None:
            self._journal_result(result)
            return result
        log.warning("protocol error from the terminal: %s; asking again by Query", problem)
        self._journal_attempt(result, "pay", "protocol_error", problem)
        checked = self._try_query(result.order_id, 5.0, final_only=False)
        if checked is None:
            raise OutcomeMismatch(f"{problem}; no answer to the follow-up query: order {result.order_id}"
                                  " stays unfinished in the journal: run `posterm recover`")
        if gave_up_after is not None:
            checked = dataclasses.replace(checked, gave_up_after=gave_up_after)
        again = mismatch(checked, result.order_id, amount_minor, currency)
        self._journal_result(checked)  # what the host says about the order, even if wrong for us
        if again is not None:
            raise OutcomeMismatch(f"{again} (asked twice); journaled: check order {result.order_id} with the host")
        return checked

    def _give_up(self, order_id: str, amount_minor: int, currency: str, timeout: float) -> PaymentResult:
        """``pay`` waited ``timeout`` in vain: abort the payment on the terminal (so it does not
        run on without us), else learn its outcome by query; journal either way."""
        grace = min(5.0, max(1.0, timeout / 2))
        log.warning("no outcome for order %s within %g s: aborting it on the terminal", order_id, timeout)
        if self._journal is not None:
            self._journal.record_attempt(order_id, "pay", "gave_up", f"no answer within {timeout:g} s: sent Abort")
        result = None
        try:
            answer, receipt = self._transact_collect(m.Abort(order_id=order_id), (m.PayResult,), grace, order_id)
            result = PaymentResult.from_message(answer, receipt)
        except TerminalRefused:
            pass  # not in flight (any more): the outcome is the terminal's to tell by Query
        except (PosTimeout, LinkFailed):
            pass
        if result is None:
            result = self._try_query(order_id, grace)
        if result is None:
            raise PosTimeout(f"no outcome for order {order_id} within {timeout:g} s, and no answer to Abort"
                             " or Query; it stays in the journal: run `posterm recover`") from None
        return self._settle_pay_answer(result, amount_minor, currency, gave_up_after=timeout)

    def query(self, order_id: str, timeout: float = DEFAULT_TIMEOUT) -> PaymentResult:
        """Ask what became of ``order_id``. ``PENDING`` while the terminal is still on it;
        DECLINED with reason ORDER_NOT_FOUND (``result.not_found``) when the terminal and
        its host never heard of it."""
        check_timeout(timeout)
        answer, receipt = self._transact_collect(m.Query(order_id=order_id), (m.PayResult,), timeout, order_id)
        result = PaymentResult.from_message(answer, receipt)
        if self._journal is not None and self._journal.get(order_id) is not None:
            self._journal_result(result)
        return result

    def cancel(self, order_id: str, operator_password: str | None = None,
               timeout: float = 60.0, on_progress: Callable[[m.Progress], None] | None = None) -> PaymentResult:
        """Cancel ``order_id``: closes an unpaid order, refunds a paid one (host rules apply).

        Cancelling a paid order needs ``operator_password`` (it refunds the customer); without
        one the terminal cancels only an unpaid order and otherwise answers DECLINED
        (OPERATOR_PASSWORD_WRONG). Journaled as its own ``cancel`` entry before it is sent,
        so ``recover()`` resolves a cancel whose answer was lost (by querying the order)."""
        check_timeout(timeout)
        pay_entry = self._journal.get(order_id) if self._journal is not None else None
        self._journal_sent(order_id, "cancel", pay_entry.amount_minor if pay_entry else 0,
                           pay_entry.currency if pay_entry else "XXX")
        answer, receipt = self._transact_collect(
            m.Cancel(order_id=order_id, operator_password=operator_password), (m.PayResult,), timeout,
            order_id, on_progress)
        result = PaymentResult.from_message(answer, receipt)
        self._journal_cancel(result)
        return result

    def refund(self, order_id: str, amount_minor: int, refund_id: str, operator_password: str,
               currency: str | None = None, timeout: float = 60.0,
               on_progress: Callable[[m.Progress], None] | None = None) -> RefundOutcome:
        """Refund ``amount_minor`` of a paid order. Idempotent on ``refund_id``: sending
        the same refund again returns its first outcome, never a second refund.

        An approved answer for another order, refund id, amount or currency is a protocol
        error: the refund is asked once more (idempotent); if the answer is still wrong it
        is journaled and :class:`OutcomeMismatch` raised."""
        check_timeout(timeout)
        if type(amount_minor) is not int:
            raise LocalProtocolError("amount_minor must be an int of minor units (never a float)")
        if currency is None:
            entry = self._journal.get(order_id) if self._journal is not None else None
            if entry is None:
                raise LocalProtocolError("currency is required when the order is not in this journal")
            currency = entry.currency
        self._journal_sent(order_id, "refund", amount_minor, currency, ref_id=refund_id)
        request = m.Refund(order_id=order_id, amount_minor=amount_minor, currency=currency, refund_id=refund_id,
                           operator_password=operator_password)
        problem = None
        for _attempt in range(2):
            answer, receipt = self._transact_collect(request, (m.RefundResult,), timeout, order_id, on_progress,
                                                     refund_id=refund_id)
            outcome = RefundOutcome(answer.order_id, answer.refund_id, answer.outcome, answer.amount_minor,
                                    answer.currency, as_reason(answer.reason), answer.refunded_total_minor,
                                    answer.reason_text, tuple(receipt))
            if outcome.reason == Reason.ORDER_CONFLICT and not outcome.approved:
                self._journal_attempt(outcome, "refund", "rejected", "ORDER_CONFLICT: the refund id was used with"
                                      f" other parameters; this attempt asked {amount_minor} {currency}",
                                      ref_id=refund_id)
                return outcome
            problem = mismatch(outcome, order_id, amount_minor, currency, refund_id)
            if problem is None:
                self._journal_refund(outcome, refund_id)
                return outcome
            log.warning("protocol error from the terminal: %s; asking again", problem)
            self._journal_attempt(outcome, "refund", "protocol_error", problem, ref_id=refund_id)
        raise OutcomeMismatch(f"{problem} (asked twice); refund {refund_id} stays unfinished in the journal:"
                              " check it with the host")

    def settle(self, operator_password: str, timeout: float = 60.0,
               on_progress: Callable[[m.Progress], None] | None = None) -> Settlement:
        """Close the batch: the terminal settles with the host and reports end-of-day totals."""
        check_timeout(timeout)
        answer, receipt = self._transact_collect(m.Settle(operator_password=operator_password),
                                                 (m.SettleReport,), timeout, None, on_progress)
        return Settlement(answer.batch_no, answer.totals, answer.host_agrees, answer.settled_at,
                          answer.outcome, as_reason(answer.reason), tuple(receipt))

    def load_key(self, key_block: str, operator_password: str, timeout: float = 10.0) -> KeyInfo:
        """Send a TR-31 key block (the initial DUKPT key) to the PIN pad."""
        check_timeout(timeout)
        return self._key_info(self._transact(m.KeyLoad(key_block=key_block, operator_password=operator_password),
                                             (m.KeyStatus,), timeout))

    def reset_operator_password(self, supervisor_password: str, new_password: str,
                                timeout: float = 10.0) -> PasswordReset:
        """Set a new operator password (and clear its lock) with the terminal's supervisor
        password. A wrong supervisor password counts toward its own lock (3 tries)."""
        check_timeout(timeout)
        answer = self._transact(m.OperatorReset(supervisor_password=supervisor_password,
                                                new_operator_password=new_password),
                                (m.OperatorResetResult,), timeout)
        outcome = Outcome(answer.outcome)
        return PasswordReset(outcome, as_reason(answer.reason), answer.supervisor_tries_left, answer.locked_until)

    def key_status(self, timeout: float = 3.0) -> KeyInfo:
        """KSN, counters left and KCV of the PIN pad's key (never key bytes)."""
        check_timeout(timeout)
        return self._key_info(self._transact(m.KeyStatusRequest(), (m.KeyStatus,), timeout))

    def abort(self, order_id: str | None = None, timeout: float = 10.0) -> PaymentResult | None:
        """Stop the operation in flight.

        From another thread while ``pay`` runs: asks the running call to send Abort;
        that ``pay`` then returns the terminal's answer (normally cancelled). With
        nothing running here: sends Abort and returns the PayResult, or ``None``
        when the terminal had nothing in flight.
        """
        if self._op_lock.locked():
            self._abort_requested = order_id
            return None
        try:
            answer, receipt = self._transact_collect(m.Abort(order_id=order_id), (m.PayResult,), timeout, order_id)
        except TerminalRefused as exc:
            if exc.code == m.ErrorCode.UNEXPECTED:
                return None
            raise
        result = PaymentResult.from_message(answer, receipt)
        if self._journal is not None and self._journal.get(result.order_id) is not None:
            self._journal_result(result)
        return result

    def recover(self, timeout: float = DEFAULT_TIMEOUT,
                operator_password: str | None = None) -> list[PaymentResult | RefundOutcome]:
        """Resolve every unfinished operation in the journal.

        - a payment: Query; an order the terminal never heard of is recorded as declined
          (``order_not_found``): it was never charged;
        - a cancel: Query the order; CANCELLED means the cancel took effect; any other
          final answer means it did not (the cancel is recorded declined, the order keeps
          its outcome);
        - a refund: re-sent with the same refund id (the terminal and host answer a repeat
          with its first outcome, never a second refund). That needs ``operator_password``;
          without one the refund is returned UNKNOWN and stays unfinished.

        Returns what was learnt, in journal order (final or still pending/unknown).
        """
        check_timeout(timeout)
        if self._journal is None:
            return []
        results: list[PaymentResult | RefundOutcome] = []
        for entry in self._journal.unfinished():
            try:
                results.append(self._recover_one(entry, timeout, operator_password))
            except (TerminalRefused, RemoteProtocolError, PosTimeout) as exc:
                # One operation the terminal will not resolve now must not keep the others
                # unresolved: it stays unfinished (for the next recover) and is reported.
                log.warning("recover: %s %s %s stays unfinished: %s", entry.kind, entry.order_id, entry.ref_id, exc)
                text = f"not resolved: {type(exc).__name__}: {exc}"[:128]
                if entry.kind == "refund":
                    results.append(RefundOutcome(entry.order_id, entry.ref_id, Outcome.UNKNOWN, entry.amount_minor,
                                                 entry.currency, reason_text=text))
                else:
                    results.append(PaymentResult(entry.order_id, Outcome.UNKNOWN, entry.amount_minor,
                                                 entry.currency, reason_text=text))
        return results

    def _recover_one(self, entry: JournalEntry, timeout: float,
                     operator_password: str | None) -> PaymentResult | RefundOutcome:
        if entry.kind == "pay":
            result = self.query(entry.order_id, timeout=timeout)
            self._journal_result(result)
            return result
        if entry.kind == "cancel":
            # A cancel still running at the terminal would be misread by a Query of
            # the order (still approved): let the terminal finish first.
            self._wait_idle(timeout)
            answer, _ = self._transact_collect(m.Query(order_id=entry.order_id), (m.PayResult,), timeout,
                                               entry.order_id)
            result = PaymentResult.from_message(answer)
            self._journal_cancel(result, learnt_by_query=True)
            return result
        if operator_password is None:
            return RefundOutcome(entry.order_id, entry.ref_id, Outcome.UNKNOWN, entry.amount_minor,
                                 entry.currency, reason_text="needs the operator password to ask"
                                 " the terminal again (recover --operator-password)")
        self._wait_idle(timeout)
        return self.refund(entry.order_id, entry.amount_minor, entry.ref_id, operator_password,
                           currency=entry.currency, timeout=timeout)

    def _wait_idle(self, timeout: float, pause: float = 0.2) -> None:
        """Wait (asking Status) until the terminal is IDLE or ``timeout`` passes."""
        deadline = self._clock() + timeout
        while self.status(timeout=min(3.0, timeout)).state is not m.TerminalState.IDLE:
            if self._clock() >= deadline:
                return  # the request that follows will say why (BUSY)
            self._sleep(pause)

    # -- the request loop -------------------------------------------------------

    def _transact(self, request: Message, expect: tuple[type[Message], ...], timeout: float) -> Any:
        answer, _ = self._transact_collect(request, expect, timeout, None)
        return answer

    def _transact_collect(self, request: Message, expect: tuple[type[Message], ...], timeout: float,
                          order_id: str | None, on_progress: Callable[[m.Progress], None] | None = None,
                          resume: Callable[[], Any] | None = None,
                          refund_id: str | None = None) -> tuple[Any, list[str]]:
        if self._closed:
            raise LocalProtocolError("terminal is closed")
        if not self._op_lock.acquire(blocking=False):
            raise LocalProtocolError("another operation is in progress on this Terminal")
        try:
            self._abort_requested = False
            waiter = _Waiter(expect, order_id, on_progress, refund_id=refund_id)
            deadline = self._clock() + timeout
            try:
                if self.info is None and not isinstance(request, m.Hello):
                    # Every session opens with a Hello (PROTOCOL.md): it tells the terminal
                    # that sequence numbers start again.
                    self._learn(self._wait(_Waiter((m.HelloReply,), None, None),
                                           min(deadline, self._clock() + 3.0), self._send(self._hello_message())))
                self._write(self._link.send(request, self._clock()))
                return self._wait(waiter, deadline, request), waiter.receipt
            except Disconnected:
                if not self._reconnect:
                    raise
                self._reconnect_now()
                if resume is not None:
                    # The terminal carries on without us; learn the outcome by query.
                    return resume(), waiter.receipt
                self._write(self._link.send(request, self._clock()))
                return self._wait(waiter, deadline, request), waiter.receipt
        finally:
            self._op_lock.release()

    def _pump(self) -> Pump:
        """This port's link pump. ``_read``/``_write`` reach the transport of the moment (a
        reconnect replaces it). A flood of events within one read is the line's failure,
        not the caller's misuse: LinkFailed."""
        return Pump(self._link, self._read, self._write, clock=self._clock,
                    flooded=lambda exc: LinkFailed(f"the line from {self.port_name} floods the link: {exc}"))

    def _send(self, request: Message) -> Message:
        self._pump().send(request)
        return request

    def _wait(self, waiter: _Waiter, deadline: float, request: Message) -> Any:
        pump = self._pump()

        def before_read(now: float) -> None:
            if self._abort_requested is not False:
                abort_id = self._abort_requested or waiter.order_id
                self._abort_requested = False
                pump.send(m.Abort(order_id=abort_id), now)

        answer = pump.run(deadline, lambda event: self._handle_event(event, waiter, request), before_read=before_read)
        if answer is TIMED_OUT:
            raise PosTimeout(f"no {'/'.join(t.__name__ for t in waiter.expect)} for"
                             f" {type(request).__name__} within the timeout")
        if waiter.receipt_dropped:
            log.warning("receipt cut at %d lines: %d more lines dropped", MAX_RECEIPT_LINES, waiter.receipt_dropped)
        return answer

    def _handle_event(self, event: Any, waiter: _Waiter, request: Message | None = None) -> Any:
        if isinstance(event, FrameTrace):
            self._trace_frame(event)
            return None
        if isinstance(event, MessageReceived):
            msg = event.message
            if self._trace:
                wire_log.debug("msg in  %s", message_fields(msg))
            if isinstance(msg, waiter.expect):
                mine = getattr(msg, "order_id", None)
                if waiter.order_id is not None and mine is not None and mine != waiter.order_id:
                    log.warning("ignoring %s for another order (a stale answer)", type(msg).__name__)
                    return None
                if waiter.refund_id is not None and getattr(msg, "refund_id", None) != waiter.refund_id:
                    log.warning("ignoring %s for another refund (a stale answer)", type(msg).__name__)
                    return None
                return msg
            if isinstance(msg, m.Progress):
                if waiter.on_progress is not None and (msg.order_id is None or waiter.order_id is None
                                                       or msg.order_id == waiter.order_id):
                    waiter.on_progress(msg)
                return None
            if isinstance(msg, m.Print):
                room = MAX_RECEIPT_LINES - len(waiter.receipt)
                waiter.receipt.extend(msg.lines[:max(0, room)])
                waiter.receipt_dropped += max(0, len(msg.lines) - max(0, room))
                return None
            if isinstance(msg, m.Error):
                if (request is not None and msg.in_reply_to is not None
                        and msg.in_reply_to != getattr(request, "TYPE", msg.in_reply_to)):
                    log.warning("ignoring an Error about an earlier 0x%04X request (a stale answer)",
                                msg.in_reply_to)
                    return None
                raise TerminalRefused(msg)
            log.warning("unexpected %s from the terminal, ignored", type(msg).__name__)
            return None
        if isinstance(event, SendFailed):
            raise LinkFailed(f"{type(event.message).__name__} not acknowledged after {event.attempts} attempts"
                             f" on {self.port_name}: check the cable, port and serial settings")
        if isinstance(event, Retransmitted):
            wire_log.info("retransmit seq=%d attempt=%d (%s)", event.seq, event.attempt, event.cause)
        elif isinstance(event, FrameRejected):
            wire_log.info("NAK sent: frame seq=%d rejected: %s", event.seq, event.reason)
        elif isinstance(event, GarbageSkipped):
            wire_log.info("skipped %d bytes of line noise", len(event.data))
        elif isinstance(event, PartialDiscarded):
            wire_log.info("inter-byte timeout: dropped a partial frame of %d bytes", len(event.data))
        elif isinstance(event, DuplicateIgnored):
            wire_log.info("duplicate frame seq=%d acknowledged again, not delivered twice", event.seq)
        elif isinstance(event, UndecodableMessage):
            log.warning("undecodable message from the terminal: %s", event.error)
        return None

    def _trace_frame(self, event: FrameTrace) -> None:
        if not wire_log.isEnabledFor(logging.DEBUG):
            return
        masked, _ = redact_frame(event.raw)
        arrow = "->" if event.direction == "out" else "<-"
        desc = message_fields(event.message) if event.message is not None else ""
        wire_log.debug("%s %s seq=%d len=%d %s\n%s", arrow, event.kind.name, event.seq, len(event.raw), desc,
                       hexdump(masked))

    # -- reconnecting ------------------------------------------------------------------

    def _reconnect_now(self) -> None:
        """Reopen the port (bounded back-off, :meth:`PortSession._reopen_port`), then say Hello again."""
        self._reopen_port()
        self._link.reset()
        self._learn(self._bare_transact(self._hello_message(), (m.HelloReply,), 3.0))

    def _bare_transact(self, request: Message, expect: tuple[type[Message], ...], timeout: float,
                       order_id: str | None = None) -> Any:
        """Send and wait while already holding the operation lock."""
        waiter = _Waiter(expect, order_id, None)
        self._write(self._link.send(request, self._clock()))
        return self._wait(waiter, self._clock() + timeout, request)

    def _query_until_final(self, order_id: str, timeout: float) -> PaymentResult:
        deadline = self._clock() + timeout
        while True:
            answer = self._bare_transact(m.Query(order_id=order_id), (m.PayResult,), DEFAULT_TIMEOUT, order_id)
            result = PaymentResult.from_message(answer)
            if result.outcome is not Outcome.PENDING or self._clock() >= deadline:
                return result
            self._sleep(0.2)

    def _try_query(self, order_id: str, timeout: float, final_only: bool = False) -> PaymentResult | None:
        """Query once; None when no answer, or (``final_only``) when PENDING."""
        try:
            answer, receipt = self._transact_collect(m.Query(order_id=order_id), (m.PayResult,), timeout, order_id)
        except (PosTimeout, LinkFailed, TerminalRefused):
            return None
        result = PaymentResult.from_message(answer, receipt)
        if result.outcome is Outcome.PENDING or (final_only and not result.final):
            return None
        return result

    # -- journal ----------------------------------------------------------------------

    def _journal_sent(self, order_id: str, kind: str, amount_minor: int, currency: str, ref_id: str = "") -> None:
        if self._journal is not None:
            self._journal.record_sent(order_id, kind, self.port_name, amount_minor, currency,
                                      self.info.terminal_id if self.info else None, ref_id=ref_id)

    def _journal_result(self, result: PaymentResult) -> None:
        if self._journal is not None:
            self._journal.record_outcome(result.order_id, "pay", result.result, int(result.reason),
                                         result.to_json(), final=result.final)

    def _journal_refund(self, outcome: RefundOutcome, refund_id: str) -> None:
        if self._journal is not None:
            self._journal.record_outcome(outcome.order_id, "refund", outcome.result, int(outcome.reason),
                                         outcome.to_json(), final=outcome.final, ref_id=refund_id)

    def _journal_cancel(self, result: PaymentResult, learnt_by_query: bool = False) -> None:
        """The answer to a Cancel (or, in recover, a Query about a cancelled order): the
        cancel entry and the order's own entry (which never downgrades, so a reversed
        sale keeps its approval and trade number; the cancel entry says it was reversed)."""
        if self._journal is None:
            return
        if result.final:
            outcome = "cancelled" if result.outcome is Outcome.CANCELLED else "declined"
            data = result.to_json()
            if learnt_by_query and outcome == "declined":
                data["reason_text"] = f"not cancelled: the order is {result.result}"
            self._journal.record_outcome(result.order_id, "cancel", outcome, int(result.reason), data, final=True)
        else:
            self._journal.record_outcome(result.order_id, "cancel", result.result, int(result.reason),
                                         result.to_json(), final=False)
        if self._journal.get(result.order_id) is not None and not (learnt_by_query and not result.final):
            self._journal_result(result)

    def _journal_attempt(self, result: PaymentResult | RefundOutcome, kind: str, what: str, note: str,
                         ref_id: str = "") -> None:
        if self._journal is not None:
            self._journal.record_attempt(result.order_id, kind, what, note, ref_id=ref_id,
                                         amount_minor=result.amount_minor, currency=result.currency,
                                         outcome=result.result, reason=int(result.reason), result=result.to_json())

    @staticmethod
    def _key_info(msg: m.KeyStatus) -> KeyInfo:
        return KeyInfo(msg.loaded, msg.algorithm, msg.ksn, msg.counters_left, msg.kcv, as_reason(msg.reason))


def _config_dict(cfg: LinkConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
