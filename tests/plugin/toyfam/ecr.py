"""The toy family's ECR driver: pay over a toy line, with the EcrDriver API.

* ``hello``: asks the terminal who it is (``info``).
* ``pay``: journaled before it goes on the wire; the result is journaled before the
  driver acks it (the ack is the receipt: a terminal of this family does not keep an
  approval its ECR never acked). A result for another order is refused (never acked).
* The toy has no query, cancel, refund, settlement or keys: those raise :class:`Unsupported`.
  ``recover`` records an unfinished payment ``cancelled``: its result was never acked,
  so the terminal reversed it.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Callable

from firmware_protocol.native.messages import Capability, Outcome, Reason

from posterm.ecr.journal import Journal
from posterm.ecr.session import PortSession, line_settings, resolve_port
from posterm.errors import LinkFailed, LocalProtocolError, PosTimeout
from posterm.families.events import MessageReceived, SendFailed
from posterm.families.pump import TIMED_OUT, Pump

from . import wire as w
from posterm.ecr.results import PaymentResult, TerminalInfo
from .link import ToyConfig, ToyLink

PROTOCOL = "toy"


class Unsupported(LocalProtocolError):
    """The toy protocol has no message for this operation."""


def new_order_id() -> str:
    return "TY" + secrets.token_hex(8).upper()


class ToyTerminal(PortSession):
    """An ECR talking the toy protocol, on posterm's shared port session (port, journal,
    closing, I/O errors as Disconnected). One operation at a time; a context manager."""

    protocol = PROTOCOL

    def __init__(self, transport: Any, *, port_name: str = "", journal: Journal | None = None,
                 config: ToyConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._init_port(transport, port_name, journal)
        self._link = ToyLink("ecr", config, confirm=True)
        self._pump = Pump(self._link, self._read, self._write, clock=clock)
        self._clock = clock
        self._lock = threading.Lock()
        self.info: TerminalInfo | None = None

    @classmethod
    def open(cls, url: str | None = None, *, journal: Journal | str | None = None, record: str | None = None,
             config: ToyConfig | None = None, **settings: Any) -> "ToyTerminal":
        """Open ``url`` (default ``$POSTERM_PORT``). Raises TransportError, LocalProtocolError."""
        url = resolve_port(url)
        settings = line_settings(url, settings, {})
        return cls._open_session(url, settings, record, journal,
                                 lambda transport, journal, _: cls(transport, port_name=url, journal=journal, config=config))

    @property
    def link_stats(self) -> dict[str, int]:
        return dict(self._link.stats)

    # -- operations ----------------------------------------------------------------------

    def hello(self, timeout: float = 3.0) -> TerminalInfo:
        """Who is the terminal? Raises PosTimeout, LinkFailed."""
        def on_event(ev: Any) -> Any:
            if isinstance(ev, MessageReceived):
                self._link.accept(self._clock())
                self._pump.flush()
                if isinstance(ev.message, w.Info):
                    return ev.message
            return self._failed(ev)

        info = self._exchange(w.Hello(), timeout, on_event)
        self.info = TerminalInfo(info.terminal_id, info.merchant_id, info.firmware_version, 0, Capability(0))
        return self.info

    def pay(self, amount_minor: int, currency: str, order_id: str | None = None, payment_code: str | None = None,
            on_progress: Callable[[Any], None] | None = None, timeout: float = 120.0,
            description: str | None = None, dynamic_qr: bool = False) -> PaymentResult:
        """A payment of ``amount_minor`` in ``currency``. Raises LocalProtocolError (bad arguments),
        PosTimeout (no result: the payment stays unfinished in the journal), LinkFailed."""
        if dynamic_qr:
            raise Unsupported("the toy protocol has no dynamic QR")
        if type(amount_minor) is not int:
            raise LocalProtocolError("amount_minor must be an int of minor units (never a float)")
        order_id = order_id or new_order_id()
        try:
            request = w.Pay(order_id, amount_minor, currency, payment_code)
        except w.ToyFrameError as exc:
            raise LocalProtocolError(f"the toy protocol cannot carry this payment: {exc}") from None
        if self._journal is not None:
            self._journal.record_sent(order_id, "pay", self.port_name, amount_minor, currency, None)

        def on_event(ev: Any) -> Any:
            if isinstance(ev, MessageReceived) and isinstance(ev.message, w.Result):
                r = ev.message
                if r.order_id != order_id:
                    self._link.reset_held()       # not ours: never acked, so the terminal reverses it
                    return None
                result = PaymentResult(order_id, Outcome[r.outcome.upper()], r.amount_minor, r.currency,
                                       _reason(r.reason), "", None, r.code_last4)
                if self._journal is not None:      # journaled before the ack leaves
                    self._journal.record_outcome(order_id, "pay", result.result, int(result.reason),
                                                 result.to_json(), final=result.final)
                self._link.accept(self._clock())
                self._pump.flush()
                return result
            return self._failed(ev)

        try:
            return self._exchange(request, timeout, on_event)
        except PosTimeout:
            raise PosTimeout(f"no toy result for {order_id} within {timeout:g} s: it stays unfinished in the"
                             " journal (run recover)") from None

    def recover(self, timeout: float = 10.0, **kw: Any) -> list[PaymentResult]:
        """Unfinished payments were never acked here, so the terminal reversed them: recorded cancelled."""
        out = []
        for entry in (self._journal.unfinished() if self._journal is not None else []):
            result = PaymentResult(entry.order_id, Outcome.CANCELLED, entry.amount_minor, entry.currency,
                                   Reason.NONE, "never acknowledged by this ECR: the toy terminal reverses it")
            self._journal.record_outcome(entry.order_id, entry.kind, result.result, 0, result.to_json(), final=True)
            out.append(result)
        return out

    def query(self, order_id: str, timeout: float = 10.0) -> Any:
        raise Unsupported("the toy protocol has no query message")

    def status(self, timeout: float = 3.0) -> Any:
        raise Unsupported("the toy protocol has no status message (use hello)")

    def cancel(self, order_id: str, operator_password: str | None = None, **kw: Any) -> Any:
        raise Unsupported("the toy protocol has no cancel message")

    def refund(self, order_id: str, amount_minor: int, refund_id: str, operator_password: str | None = None,
               **kw: Any) -> Any:
        raise Unsupported("the toy protocol has no refund message")

    def settle(self, operator_password: str, timeout: float = 60.0, on_progress: Any = None) -> Any:
        raise Unsupported("the toy protocol has no settlement message")

    def load_key(self, key_block: str, operator_password: str, timeout: float = 10.0) -> Any:
        raise Unsupported("the toy protocol has no key-loading message")

    def key_status(self, timeout: float = 3.0) -> Any:
        raise Unsupported("the toy protocol has no key-status message")

    def abort(self, order_id: str | None = None, timeout: float = 10.0) -> Any:
        raise Unsupported("the toy protocol has no abort message")

    # -- the exchange ----------------------------------------------------------------------

    def _failed(self, ev: Any) -> None:
        if isinstance(ev, SendFailed):
            raise LinkFailed(f"toy request not acked by {self.port_name} after {ev.attempts} attempt(s)")
        return None

    def _exchange(self, request: Any, timeout: float, on_event: Callable[[Any], Any]) -> Any:
        if self._closed:
            raise LocalProtocolError("terminal is closed")
        if not self._lock.acquire(blocking=False):
            raise LocalProtocolError("another operation is in progress on this terminal")
        try:
            self._pump.send(request)
            answer = self._pump.run(self._clock() + timeout, on_event)
        finally:
            self._lock.release()
        if answer is TIMED_OUT:
            raise PosTimeout(f"no toy answer from {self.port_name} within {timeout:g} s")
        return answer


def _reason(code: int) -> Reason | int:
    try:
        return Reason(code)
    except ValueError:
        return code
