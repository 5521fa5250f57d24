"""The one operation in flight, and what the firmware's parts agree on about outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_protocol.host import messages as h
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason
from firmware_protocol.native.tlv import Message

from posterm.emulator.orders import OrderRecord
from posterm.emulator.peripherals import Customer
from posterm.emulator.scenario import PaymentScript
from posterm.emulator.states import Event


@dataclass
class Flow:
    """The operation in flight (one at a time)."""

    kind: str                                    # pay | cancel | refund | settle | key
    request: Message
    order_id: str | None = None
    amount_minor: int = 0
    currency: str = "XXX"
    code: str | None = field(default=None, repr=False)   # full code: memory only, never stored
    dynamic_qr: bool = False
    inflight: int | None = None                  # token of the flow's host request
    sent: str = ""                               # what that request was: check | pay | cancel_check | cancel | refund | settle
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


# Why a payment is cancelled at the host, by the event that made the firmware cancel it.
CANCEL_REASONS = {
    Event.ABORT: Reason.ABORTED_BY_ECR, Event.POLLS_EXHAUSTED: Reason.CONFIRMATION_TIMEOUT,
    Event.PIN_TIMEOUT: Reason.CONFIRMATION_TIMEOUT, Event.PIN_CANCELLED: Reason.CUSTOMER_CANCELLED,
    Event.WALKED_AWAY: Reason.CUSTOMER_CANCELLED, Event.HOST_NOT_FOUND: Reason.HOST_UNAVAILABLE,
    Event.QR_TIMEOUT: Reason.CONFIRMATION_TIMEOUT,
}
# The host statuses that end a payment, and the outcome each is for the ECR.
FINAL_STATUSES = {h.HostStatus.APPROVED: Outcome.APPROVED, h.HostStatus.DECLINED: Outcome.DECLINED,
                  h.HostStatus.CANCELLED: Outcome.CANCELLED, h.HostStatus.REFUNDED: Outcome.CANCELLED}


def new_order_event(request: m.PayRequest) -> Event:
    """The event that starts a new order's payment, by how the customer pays."""
    if request.dynamic_qr:
        return Event.ORDER_NEW_QR
    return Event.ORDER_NEW_CODE if request.payment_code else Event.ORDER_NEW_SCAN


def result_of(rec: OrderRecord) -> m.PayResult:
    """The journaled answer for an order (the one the ECR gets again: never charge twice)."""
    return m.PayResult(order_id=rec.order_id, outcome=rec.outcome or Outcome.UNKNOWN, amount_minor=rec.amount_minor,
                       currency=rec.currency, reason=rec.reason, reason_text=rec.reason_text,
                       trade_no=rec.trade_no, code_last4=rec.code_last4, refunded_minor=rec.refunded_minor,
                       paid_at=rec.paid_at)
