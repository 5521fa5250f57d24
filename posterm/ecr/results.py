"""What an ECR operation returns, whatever protocol family carried it.

Every family's driver answers ``pay``/``query``/``cancel``/``recover`` with a
:class:`PaymentResult`, ``refund`` with a :class:`RefundOutcome`, ``settle`` with a
:class:`Settlement`, ``hello`` with a :class:`TerminalInfo` and the key calls with a
:class:`KeyInfo`. Amounts are integers in minor units with an ISO 4217 currency. Each
has ``to_json()`` (what ``--json`` prints and the journal stores).

The vocabulary (:class:`Outcome`, :class:`Reason`, :class:`Capability`) is the one the
terminal firmware speaks internally (firmware_protocol's message catalogue); a family
whose wire says less (Concert has no reason codes) maps onto it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from firmware_protocol.native.messages import Capability, KeyAlgorithm, Outcome, PayResult, Reason, Totals

from posterm.errors import LocalProtocolError, PosTimeout, RemoteProtocolError

__all__ = ["Capability", "KeyAlgorithm", "KeyInfo", "Outcome", "OutcomeMismatch", "PaymentResult", "Reason",
           "PasswordReset", "RefundOutcome", "Settlement", "TerminalInfo", "as_reason", "mismatch", "reason_name"]


class OutcomeMismatch(RemoteProtocolError):
    """The terminal reports an order approved for another amount, currency or order than
    requested, even when asked again. What it said is journaled (never hidden: the host may
    have charged it); the ECR must check the order with the host."""


def as_reason(code: int) -> Reason | int:
    """``code`` as a :class:`Reason`, or the plain int when it names none (a newer terminal)."""
    try:
        return Reason(code)
    except ValueError:
        return code


def reason_name(code: Reason | int) -> str:
    """``insufficient_balance``; ``code_77`` for a code with no name."""
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
    #: Set when ``pay`` gave up waiting after this many seconds and aborted on the terminal.
    gave_up_after: float | None = None

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    @property
    def not_found(self) -> bool:
        """The terminal and its host never heard of this order (nothing was charged)."""
        return self.outcome is Outcome.DECLINED and self.reason == Reason.ORDER_NOT_FOUND

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
            "currency": self.currency, "reason": reason_name(self.reason) if self.reason else None,
            "reason_text": self.reason_text or None, "trade_no": self.trade_no,
            "code_last4": self.code_last4, "refunded_minor": self.refunded_minor,
            "paid_at": self.paid_at, "receipt": list(self.receipt),
            **({"gave_up_after": self.gave_up_after} if self.gave_up_after is not None else {}),
        }

    @classmethod
    def from_message(cls, msg: PayResult, receipt: Iterable[str] = ()) -> "PaymentResult":
        """From a firmware PayResult message (and the receipt lines printed meanwhile)."""
        return cls(msg.order_id, msg.outcome, msg.amount_minor, msg.currency, as_reason(msg.reason),
                   msg.reason_text, msg.trade_no, msg.code_last4, msg.refunded_minor, msg.paid_at,
                   tuple(receipt))


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """The outcome of a refund (``refund_id`` is the ECR's: the same id never refunds twice)."""

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

    @property
    def final(self) -> bool:
        return self.outcome in (Outcome.APPROVED, Outcome.DECLINED)

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result, "order_id": self.order_id, "refund_id": self.refund_id,
            "amount_minor": self.amount_minor, "currency": self.currency,
            "reason": reason_name(self.reason) if self.reason else None,
            "reason_text": self.reason_text or None,
            "refunded_total_minor": self.refunded_total_minor, "receipt": list(self.receipt),
        }


@dataclass(frozen=True, slots=True)
class Settlement:
    """The end-of-day report of a closed batch: totals per currency."""

    batch_no: int
    totals: tuple[Totals, ...]
    host_agrees: bool
    settled_at: str | None
    outcome: Outcome
    reason: Reason | int
    receipt: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.outcome.name.lower(), "batch_no": self.batch_no, "host_agrees": self.host_agrees,
            "settled_at": self.settled_at, "reason": reason_name(self.reason) if self.reason else None,
            "totals": [
                {"currency": t.currency, "approved_count": t.approved_count, "approved_minor": t.approved_minor,
                 "refunded_count": t.refunded_count, "refunded_minor": t.refunded_minor,
                 "cancelled_count": t.cancelled_count, "net_minor": t.net_minor}
                for t in self.totals
            ],
        }


@dataclass(frozen=True, slots=True)
class TerminalInfo:
    """Who answered ``hello``. A family whose probe carries no identity leaves the ids empty."""

    terminal_id: str
    merchant_id: str
    firmware_version: str
    protocol_version: int
    capabilities: Capability

    def to_json(self) -> dict[str, Any]:
        return {"terminal_id": self.terminal_id, "merchant_id": self.merchant_id,
                "firmware_version": self.firmware_version, "protocol_version": self.protocol_version,
                "capabilities": [c.name for c in Capability if c in self.capabilities]}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """The PIN pad's key: KSN, counters left and check value, never key bytes."""

    loaded: bool
    algorithm: KeyAlgorithm
    ksn: str | None
    counters_left: int
    kcv: str | None
    reason: Reason | int = Reason.NONE

    def to_json(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "algorithm": self.algorithm.name, "ksn": self.ksn,
                "counters_left": self.counters_left, "kcv": self.kcv,
                "reason": reason_name(self.reason) if self.reason else None}


@dataclass(frozen=True, slots=True)
class PasswordReset:
    """What came of resetting the terminal's operator password with its supervisor password.
    ``supervisor_tries_left``: wrong supervisor passwords left before its lock;
    ``locked_until``: ISO 8601 UTC, while the supervisor password is locked."""

    outcome: Outcome
    reason: Reason | int = Reason.NONE
    supervisor_tries_left: int | None = None
    locked_until: str | None = None

    @property
    def done(self) -> bool:
        return self.outcome is Outcome.APPROVED

    def to_json(self) -> dict[str, Any]:
        return {"result": "reset" if self.done else "refused",
                "reason": reason_name(self.reason) if self.reason else None,
                "supervisor_tries_left": self.supervisor_tries_left, "locked_until": self.locked_until}


def mismatch(result: PaymentResult | RefundOutcome, order_id: str, amount_minor: int, currency: str,
             refund_id: str | None = None) -> str | None:
    """Why an APPROVED answer does not answer this request (None when it does, or when it
    is no approval: a decline moves no money, whatever amount it names)."""
    if result.outcome is not Outcome.APPROVED:
        return None
    what = f"refund {refund_id}" if refund_id is not None else f"order {order_id}"
    if result.order_id != order_id or (refund_id is not None and getattr(result, "refund_id", None) != refund_id):
        return f"terminal approved {result.order_id} in answer to {what}"
    if (result.amount_minor, result.currency) != (amount_minor, currency):
        return (f"terminal approved {what} for {result.amount_minor} {result.currency},"
                f" but {amount_minor} {currency} was requested")
    return None


def journaled_refund(earlier: Any, amount_minor: int, currency: str, *, protocol: str, look: str) -> RefundOutcome:
    """A refund id the journal has seen (``earlier``, its JournalEntry), for a family whose wire
    carries no refund id the terminal could check: the journal answers and nothing is sent.
    The same amount and currency get the first answer; another amount is refused
    (LocalProtocolError); an answer that never came raises PosTimeout (``protocol`` cannot
    ask, sending again could refund twice; ``look`` says where the operator checks)."""
    if (earlier.amount_minor, earlier.currency) != (amount_minor, currency):
        raise LocalProtocolError(
            f"refund id {earlier.ref_id!r} was already used for {earlier.amount_minor} {earlier.currency}"
            f" on order {earlier.order_id}: a different amount needs a new refund id")
    if earlier.state != "final" or not earlier.result:
        raise PosTimeout(
            f"refund {earlier.ref_id!r} of order {earlier.order_id} was sent and its answer never came:"
            f" {protocol} cannot ask, and sending it again could refund twice; check {look}")
    r = earlier.result
    return RefundOutcome(earlier.order_id, earlier.ref_id, Outcome[str(r["result"]).upper()],
                         r.get("amount_minor", earlier.amount_minor), earlier.currency, Reason.NONE,
                         r.get("refunded_total_minor", 0),
                         "the journal's answer to the first request with this refund id (not sent again)")
