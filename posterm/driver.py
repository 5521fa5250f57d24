"""Drive a payment terminal from the cash register (ECR) side.

    from posterm.driver import Terminal

    with Terminal.open("/dev/ttyUSB0") as term:          # or socket://, rfc2217://, a pty
        info = term.hello()
        result = term.pay(1234, "CNY", payment_code="289900000000000001",
                          on_progress=lambda p: print(p.text))
        if result.approved: ...
        elif result.outcome is Outcome.UNKNOWN: term.recover()

Every call sends one request through :mod:`posterm.link` and waits for its
answer; ``Progress`` and ``Print`` messages that arrive meanwhile go to
``on_progress`` and into the result's receipt. A decline is a result, not an
exception. Errors are typed (:mod:`posterm.errors`): ``TransportError`` (and
``Disconnected``) for the port, ``LinkFailed`` when frames are not
acknowledged, ``PosTimeout`` when no answer comes, ``TerminalRefused`` when the
terminal answers with an Error message.

No payment is lost or doubled: each request is journaled (:mod:`posterm.journal`)
before it goes on the wire; :meth:`Terminal.recover` asks the terminal about every
order whose outcome was never learnt. Re-sending a PayRequest with the same
order id is safe: the terminal answers the stored outcome.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from firmware_protocol import messages as m
from firmware_protocol.messages import Outcome, Reason
from firmware_protocol.tlv import Message

from posterm.errors import (
    Disconnected,
    LinkFailed,
    LocalProtocolError,
    PosError,
    PosTimeout,
    TransportError,
)
from posterm.journal import Journal
from posterm.link import (
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
from posterm.redact import hexdump, message_fields, redact_frame

wire_log = logging.getLogger("posterm.wire")
log = logging.getLogger("posterm.driver")

DEFAULT_PAY_TIMEOUT = 120.0
DEFAULT_TIMEOUT = 10.0


class TerminalRefused(PosError):
    """The terminal answered with an Error message (busy, unexpected, malformed...)."""

    def __init__(self, error: m.Error) -> None:
        code = error.code.name if isinstance(error.code, m.ErrorCode) else str(error.code)
        super().__init__(f"terminal refused the request: {code}" + (f" ({error.text})" if error.text else ""))
        self.error = error
        self.code = error.code


# ------------------------------------------------------------------ results


def _reason(code: int) -> Reason | int:
    try:
        return Reason(code)
    except ValueError:
        return code


def _reason_name(code: Reason | int) -> str:
    return code.name.lower() if isinstance(code, Reason) else f"code_{int(code)}"


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """The outcome of a payment (from pay, query, cancel or recover)."""

    order_id: str
    outcome: Outcome
    amount_minor: int
    currency: str
    reason: Reason | int = Reason.NONE
    reason_text: str = ""
    trade_no: str | None = None
    code_last4: str | None = None
    refunded_minor: int = 0
    paid_at: str | None = None
    receipt: tuple[str, ...] = ()

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    @property
    def result(self) -> str:
        """``approved``, ``declined``, ``cancelled``, ``unknown`` or ``pending``."""
        return self.outcome.name.lower()

    @property
    def final(self) -> bool:
        return self.outcome in (Outcome.APPROVED, Outcome.DECLINED, Outcome.CANCELLED)

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result, "order_id": self.order_id, "amount_minor": self.amount_minor,
            "currency": self.currency, "reason": _reason_name(self.reason) if self.reason else None,
            "reason_text": self.reason_text or None, "trade_no": self.trade_no,
            "code_last4": self.code_last4, "refunded_minor": self.refunded_minor,
            "paid_at": self.paid_at, "receipt": list(self.receipt),
        }

    @classmethod
    def from_message(cls, msg: m.PayResult, receipt: Iterable[str] = ()) -> "PaymentResult":
        return cls(msg.order_id, msg.outcome, msg.amount_minor, msg.currency, _reason(msg.reason),
                   msg.reason_text, msg.trade_no, msg.code_last4, msg.refunded_minor, msg.paid_at,
                   tuple(receipt))


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    order_id: str
    refund_id: str
    outcome: Outcome
    amount_minor: int
    currency: str
    reason: Reason | int = Reason.NONE
    refunded_total_minor: int = 0
    reason_text: str = ""
    receipt: tuple[str, ...] = ()

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    @property
    def result(self) -> str:
        return self.outcome.name.lower()

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result, "order_id": self.order_id, "refund_id": self.refund_id,
            "amount_minor": self.amount_minor, "currency": self.currency,
            "reason": _reason_name(self.reason) if self.reason else None,
            "refunded_total_minor": self.refunded_total_minor, "receipt": list(self.receipt),
        }


@dataclass(frozen=True, slots=True)
class Settlement:
    batch_no: int
    totals: tuple[m.Totals, ...]
    host_agrees: bool
    settled_at: str | None
    outcome: Outcome
    reason: Reason | int
    receipt: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.outcome.name.lower(), "batch_no": self.batch_no, "host_agrees": self.host_agrees,
            "settled_at": self.settled_at, "reason": _reason_name(self.reason) if self.reason else None,
            "totals": [
                {"currency": t.currency, "approved_count": t.approved_count, "approved_minor": t.approved_minor,
                 "refunded_count": t.refunded_count, "refunded_minor": t.refunded_minor,
                 "cancelled_count": t.cancelled_count, "net_minor": t.net_minor}
                for t in self.totals
            ],
        }


@dataclass(frozen=True, slots=True)
class TerminalInfo:
    terminal_id: str
    merchant_id: str
    firmware_version: str
    protocol_version: int
    capabilities: m.Capability

    def to_json(self) -> dict[str, Any]:
        return {"terminal_id": self.terminal_id, "merchant_id": self.merchant_id,
                "firmware_version": self.firmware_version, "protocol_version": self.protocol_version,
                "capabilities": [c.name for c in m.Capability if c in self.capabilities]}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    loaded: bool
    algorithm: m.KeyAlgorithm
    ksn: str | None
    counters_left: int
    kcv: str | None
    reason: Reason | int = Reason.NONE

    def to_json(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "algorithm": self.algorithm.name, "ksn": self.ksn,
                "counters_left": self.counters_left, "kcv": self.kcv,
                "reason": _reason_name(self.reason) if self.reason else None}


def new_order_id(prefix: str = "PT") -> str:
    """A fresh merchant order id: prefix, UTC time to the second, 12 random hex digits.

    48 random bits: a thousand ids in one second collide with odds of about 2e-9 (with 24
    bits it was 3%, and a collision would hand one customer's payment the outcome of
    another's, since the terminal answers a known order id with its stored outcome).
    """
    return f"{prefix}{datetime.now(timezone.utc):%Y%m%d%H%M%S}{secrets.token_hex(6).upper()}"


# ------------------------------------------------------------------ the driver


@dataclass
class _Waiter:
    """What the current request waits for."""

    expect: tuple[type[Message], ...]
    order_id: str | None
    on_progress: Callable[[m.Progress], None] | None
    receipt: list[str] = field(default_factory=list)


class PortSession:
    """What every protocol family's driver shares: the port, the journal, closing, and
    I/O errors normalised to :class:`Disconnected`. A context manager."""

    READ_SIZE = 4096

    def _init_port(self, transport: Any, port_name: str, journal: Journal | None) -> None:
        self._transport = transport
        self.port_name = port_name or getattr(transport, "description", "") or repr(transport)
        self._journal = journal
        self._owns_journal = False
        self._closed = False

    def close(self) -> None:
        """Close the port (and the journal if this object opened it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._transport.close()
        finally:
            if self._owns_journal and self._journal is not None:
                self._journal.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def journal(self) -> Journal | None:
        return self._journal

    def _read(self, timeout: float) -> bytes:
        try:
            return self._transport.read(self.READ_SIZE, timeout)
        except TransportError:
            raise
        except OSError as exc:  # a transport that did not normalise its errors
            raise Disconnected(f"{self.port_name}: {exc}") from exc

    def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._transport.write(data)
        except TransportError:
            raise
        except OSError as exc:
            raise Disconnected(f"{self.port_name}: {exc}") from exc


class Terminal(PortSession):
    """A payment terminal on the other end of a transport. One operation at a time.

    Construct with :meth:`open` (a port URL) or directly with a transport object
    (anything with ``read(max_bytes, timeout)``, ``write(data)`` and ``close()``).
    """

    def __init__(self, transport: Any, *, port_name: str = "", journal: Journal | None = None,
                 link_config: LinkConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 reconnect: bool = False, reopen: Callable[[], Any] | None = None,
                 reconnect_attempts: int = 6, reconnect_max_delay: float = 2.0, trace: bool = False) -> None:
        self._init_port(transport, port_name, journal)
        cfg = link_config or LinkConfig()
        self._trace = trace or wire_log.isEnabledFor(logging.DEBUG)
        if self._trace and not cfg.trace_frames:
            cfg = LinkConfig(**{**_config_dict(cfg), "trace_frames": True})
        self._link_config = cfg
        self._link = Link(cfg)
        self._clock = clock
        self._reconnect = reconnect
        self._reopen = reopen
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_max_delay = reconnect_max_delay
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
        file. ``protocol``: the protocol family (:mod:`posterm.protocols`; default
        ``$POSTERM_PROTOCOL`` or ``posterm``); another family returns its own driver
        object with this API (e.g. :class:`posterm.concert.driver.ConcertTerminal`).
        Raises :class:`TransportError` if the port cannot be opened.
        """
        from posterm.protocols import family
        from posterm.transport import open_transport, default_port

        fam = family(protocol)
        if fam.name != "posterm":
            return fam.driver_class().open(url, journal=journal, record=record, **settings)

        url = url or default_port()
        if not url:
            raise LocalProtocolError("no port given and POSTERM_PORT is not set")
        if record:
            from posterm.record import open_recorded

            open_transport = open_recorded(open_transport, record, url, settings)  # noqa: N806 - same call, recorded
        transport = open_transport(url, **settings)
        if link_config is None:
            link_config = LinkConfig(line_rate=_line_rate(url, settings))
        own = False
        if journal is None or isinstance(journal, str):
            journal = Journal(journal)
            own = True
        term = cls(transport, port_name=url, journal=journal, reconnect=reconnect, trace=trace,
                   link_config=link_config, reopen=lambda: open_transport(url, **settings))
        term._owns_journal = own
        return term

    @property
    def link_stats(self) -> dict[str, int]:
        return dict(self._link.stats)

    # -- operations -----------------------------------------------------------

    def hello(self, timeout: float = 3.0) -> TerminalInfo:
        """Say hello; learn who the terminal is and agree the protocol version."""
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
        order_id = order_id or new_order_id()
        request = m.PayRequest(amount_minor=amount_minor, currency=currency, order_id=order_id,
                               payment_code=payment_code, description=description, dynamic_qr=dynamic_qr)
        self._journal_sent(order_id, "pay", amount_minor, currency)
        try:
            answer, receipt = self._transact_collect(request, (m.PayResult,), timeout, order_id, on_progress,
                                                     resume=lambda: self._query_until_final(order_id, timeout))
        except PosTimeout:
            # The terminal may have finished without our hearing it: ask once.
            result = self._try_query(order_id, min(5.0, max(1.0, timeout / 2)))
            if result is None:
                raise PosTimeout(f"no outcome for order {order_id} within {timeout:g} s;"
                                 " it stays in the journal: run `posterm recover`") from None
            self._journal_result(result)
            return result
        result = answer if isinstance(answer, PaymentResult) else PaymentResult.from_message(answer, receipt)
        self._journal_result(result)
        return result

    def query(self, order_id: str, timeout: float = DEFAULT_TIMEOUT) -> PaymentResult:
        """Ask what became of ``order_id``. ``PENDING`` while the terminal is still on it."""
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
        (OPERATOR_PASSWORD_WRONG)."""
        answer, receipt = self._transact_collect(
            m.Cancel(order_id=order_id, operator_password=operator_password), (m.PayResult,), timeout,
            order_id, on_progress)
        result = PaymentResult.from_message(answer, receipt)
        if self._journal is not None and self._journal.get(order_id) is not None:
            self._journal_result(result)
        return result

    def refund(self, order_id: str, amount_minor: int, refund_id: str, operator_password: str,
               currency: str | None = None, timeout: float = 60.0,
               on_progress: Callable[[m.Progress], None] | None = None) -> RefundOutcome:
        """Refund ``amount_minor`` of a paid order. Idempotent on ``refund_id``: sending
        the same refund again returns its first outcome, never a second refund."""
        if type(amount_minor) is not int:
            raise LocalProtocolError("amount_minor must be an int of minor units (never a float)")
        if currency is None:
            entry = self._journal.get(order_id) if self._journal is not None else None
            if entry is None:
                raise LocalProtocolError("currency is required when the order is not in this journal")
            currency = entry.currency
        self._journal_sent(order_id, "refund", amount_minor, currency, ref_id=refund_id)
        answer, receipt = self._transact_collect(
            m.Refund(order_id=order_id, amount_minor=amount_minor, currency=currency, refund_id=refund_id,
                     operator_password=operator_password),
            (m.RefundResult,), timeout, order_id, on_progress)
        outcome = RefundOutcome(answer.order_id, answer.refund_id, answer.outcome, answer.amount_minor,
                                answer.currency, _reason(answer.reason), answer.refunded_total_minor,
                                answer.reason_text, tuple(receipt))
        if self._journal is not None:
            self._journal.record_outcome(order_id, "refund", outcome.result, int(outcome.reason),
                                         outcome.to_json(), final=outcome.outcome is not Outcome.UNKNOWN,
                                         ref_id=refund_id)
        return outcome

    def settle(self, operator_password: str, timeout: float = 60.0,
               on_progress: Callable[[m.Progress], None] | None = None) -> Settlement:
        """Close the batch: the terminal settles with the host and reports end-of-day totals."""
        answer, receipt = self._transact_collect(m.Settle(operator_password=operator_password),
                                                 (m.SettleReport,), timeout, None, on_progress)
        return Settlement(answer.batch_no, answer.totals, answer.host_agrees, answer.settled_at,
                          answer.outcome, _reason(answer.reason), tuple(receipt))

    def load_key(self, key_block: str, operator_password: str, timeout: float = 10.0) -> KeyInfo:
        """Send a TR-31 key block (the initial DUKPT key) to the PIN pad."""
        return self._key_info(self._transact(m.KeyLoad(key_block=key_block, operator_password=operator_password),
                                             (m.KeyStatus,), timeout))

    def key_status(self, timeout: float = 3.0) -> KeyInfo:
        """KSN, counters left and KCV of the PIN pad's key (never key bytes)."""
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

    def recover(self, timeout: float = DEFAULT_TIMEOUT) -> list[PaymentResult]:
        """Resolve every unfinished payment in the journal by asking the terminal.

        Returns the results learnt (final or still pending/unknown). An order the
        terminal never heard of is recorded as declined (``order_not_found``):
        it was never charged.
        """
        if self._journal is None:
            return []
        results = []
        for entry in self._journal.unfinished():
            if entry.kind != "pay":
                continue
            result = self.query(entry.order_id, timeout=timeout)
            self._journal_result(result)
            results.append(result)
        return results

    # -- the request loop -------------------------------------------------------

    def _transact(self, request: Message, expect: tuple[type[Message], ...], timeout: float) -> Any:
        answer, _ = self._transact_collect(request, expect, timeout, None)
        return answer

    def _transact_collect(self, request: Message, expect: tuple[type[Message], ...], timeout: float,
                          order_id: str | None, on_progress: Callable[[m.Progress], None] | None = None,
                          resume: Callable[[], Any] | None = None) -> tuple[Any, list[str]]:
        if self._closed:
            raise LocalProtocolError("terminal is closed")
        if not self._op_lock.acquire(blocking=False):
            raise LocalProtocolError("another operation is in progress on this Terminal")
        try:
            self._abort_requested = False
            waiter = _Waiter(expect, order_id, on_progress)
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

    def _send(self, request: Message) -> Message:
        self._write(self._link.send(request, self._clock()))
        return request

    def _wait(self, waiter: _Waiter, deadline: float, request: Message) -> Any:
        while True:
            now = self._clock()
            if now >= deadline:
                raise PosTimeout(f"no {'/'.join(t.__name__ for t in waiter.expect)} for"
                                 f" {type(request).__name__} within the timeout")
            if self._abort_requested is not False:
                abort_id = self._abort_requested or waiter.order_id
                self._abort_requested = False
                self._write(self._link.send(m.Abort(order_id=abort_id), now))
            link_deadline = self._link.next_deadline()
            wait = min(deadline - now, 0.05 if link_deadline is None else max(0.0, link_deadline - now), 0.05)
            data = self._read(wait)
            now = self._clock()
            self._link.receive_data(data, now)
            self._link.tick(now)
            self._write(self._link.data_to_send())
            while (event := self._link.next_event()) is not None:
                answer = self._handle_event(event, waiter)
                if answer is not None:
                    return answer

    def _handle_event(self, event: Any, waiter: _Waiter) -> Any:
        if isinstance(event, FrameTrace):
            self._trace_frame(event)
            return None
        if isinstance(event, MessageReceived):
            msg = event.message
            if self._trace:
                wire_log.debug("msg in  %s", message_fields(msg))
            if isinstance(msg, waiter.expect):
                mine = getattr(msg, "order_id", None)
                if waiter.order_id is None or mine is None or mine == waiter.order_id:
                    return msg
                log.warning("ignoring %s for another order", type(msg).__name__)
                return None
            if isinstance(msg, m.Progress):
                if waiter.on_progress is not None:
                    waiter.on_progress(msg)
                return None
            if isinstance(msg, m.Print):
                waiter.receipt.extend(msg.lines)
                return None
            if isinstance(msg, m.Error):
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
        """Reopen the port with bounded exponential back-off, then say Hello again."""
        if self._reopen is None:
            raise Disconnected(f"{self.port_name}: lost, and no way to reopen it")
        try:
            self._transport.close()
        except Exception:  # noqa: BLE001 - the old port is gone either way
            pass
        delay = 0.1
        last: Exception | None = None
        for attempt in range(1, self._reconnect_attempts + 1):
            time.sleep(delay)
            try:
                self._transport = self._reopen()
            except TransportError as exc:
                last = exc
                log.info("reconnect attempt %d to %s failed: %s", attempt, self.port_name, exc)
                delay = min(delay * 2, self._reconnect_max_delay)
                continue
            self._link.reset()
            log.info("reconnected to %s after %d attempt(s)", self.port_name, attempt)
            self._learn(self._bare_transact(self._hello_message(), (m.HelloReply,), 3.0))
            return
        raise Disconnected(f"{self.port_name}: could not reconnect after {self._reconnect_attempts} attempts") from last

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
            time.sleep(0.2)

    def _try_query(self, order_id: str, timeout: float) -> PaymentResult | None:
        try:
            answer, receipt = self._transact_collect(m.Query(order_id=order_id), (m.PayResult,), timeout, order_id)
        except (PosTimeout, LinkFailed, TerminalRefused):
            return None
        result = PaymentResult.from_message(answer, receipt)
        return result if result.outcome is not Outcome.PENDING else None

    # -- journal ----------------------------------------------------------------------

    def _journal_sent(self, order_id: str, kind: str, amount_minor: int, currency: str, ref_id: str = "") -> None:
        if self._journal is not None:
            self._journal.record_sent(order_id, kind, self.port_name, amount_minor, currency,
                                      self.info.terminal_id if self.info else None, ref_id=ref_id)

    def _journal_result(self, result: PaymentResult) -> None:
        if self._journal is not None:
            self._journal.record_outcome(result.order_id, "pay", result.result, int(result.reason),
                                         result.to_json(), final=result.final)

    @staticmethod
    def _key_info(msg: m.KeyStatus) -> KeyInfo:
        return KeyInfo(msg.loaded, msg.algorithm, msg.ksn, msg.counters_left, msg.kcv, _reason(msg.reason))


def _line_rate(url: str, settings: dict[str, Any]) -> float | None:
    """Bytes per second of a real serial line at these settings; None where the bytes are not
    clocked out at the baud rate (TCP, socket://, loop://; a pty is a serial path and gets a
    rate, which only lengthens its ACK timer)."""
    from posterm.transport import default_baud
    from posterm.transport.base import bits_per_byte

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme and scheme not in ("rfc2217",):
        return None
    baud = settings.get("baudrate") or default_baud()
    return baud / bits_per_byte(settings.get("bytesize", 8), settings.get("parity", "N"), settings.get("stopbits", 1))


def _config_dict(cfg: LinkConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
