"""After the sale: cancel (or reverse) an order, refund part or all of a payment.

Both are exactly once: a cancel of a final trade answers its status again, a refund is
made once per refund id (the same id again gets the same answer; with another order or
amount, a conflict). Only the order's owner cancels it; anyone may refund it at its
merchant, up to what was paid.
"""

from __future__ import annotations

from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Outcome, Reason

from posterm.host import ledger
from posterm.host.context import HostContext
from posterm.host.orders import answer, foreign, not_found, trade_for

CANCEL_WINDOW_S = 24 * 3600
WAITING = ("PROCESSING", "NEED_PIN", "WAIT_BUYER", "SHOW_QR")


def cancel(ctx: HostContext, terminal_id: str, order_id: str, reversal: bool, reason: int = 0) -> h.HostMessage:
    """Answer a HostCancel (``reversal`` False) or a ReversalAdvice: a waiting order is
    cancelled, a paid one is paid back (a cancel only within :data:`CANCEL_WINDOW_S`)."""
    now = ctx.clock()
    with ctx.store.transaction() as tx:
        t = trade_for(tx, terminal_id, order_id)
        if t is None:
            return not_found(order_id)
        if foreign(t, terminal_id, "ReversalAdvice" if reversal else "HostCancel"):
            return answer(tx, t["trade_no"])
        if t["status"] in WAITING:
            # The terminal says why (customer cancelled, aborted by the ECR, ...); none given:
            # the customer did not confirm in time.
            tx.cancel_trade(t["trade_no"], reason or int(Reason.CONFIRMATION_TIMEOUT))
        elif t["status"] == "APPROVED":
            if not reversal and now - (t["paid_at"] or now) > CANCEL_WINDOW_S:
                return h.AuthResponse(order_id=order_id, status=h.HostStatus.APPROVED,
                                      reason=Reason.CANCEL_WINDOW_EXPIRED, trade_no=t["trade_no"],
                                      amount_minor=t["amount_minor"], currency=t["currency"])
            back = t["amount_minor"] - t["refunded_minor"]
            if back:
                ledger.move(ctx, tx, f"C:{t['trade_no']}", f"merchant:{t['merchant_id']}",
                            f"customer:{t['account_id']}", back, t["currency"], "reversal" if reversal else "cancel")
            tx.refund_trade_fully(t["trade_no"])
            ledger.add_spent(tx, t["account_id"], t["paid_at"], -back)
        return answer(tx, t["trade_no"])


def refund(ctx: HostContext, msg: h.HostRefund) -> h.HostMessage:
    """Answer a HostRefund (see the module docstring)."""
    def declined(reason: Reason, **kw) -> h.RefundResponse:
        return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.DECLINED,
                                reason=reason, **kw)

    with ctx.store.transaction() as tx:
        done = tx.refund(msg.refund_id)
        if done is not None:
            if done["order_id"] != msg.order_id or done["amount_minor"] != msg.amount_minor:
                return declined(Reason.ORDER_CONFLICT)
            return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.APPROVED,
                                    amount_minor=done["amount_minor"], refunded_total_minor=done["refunded_minor"],
                                    currency=done["currency"])
        t = trade_for(tx, msg.terminal_id, msg.order_id)
        if t is None:
            return declined(Reason.ORDER_NOT_FOUND)
        if t["status"] != "APPROVED":
            return declined(Reason.NOT_PAID, refunded_total_minor=t["refunded_minor"])
        if msg.currency != t["currency"]:
            return declined(Reason.CURRENCY_MISMATCH)
        if t["refunded_minor"] + msg.amount_minor > t["amount_minor"]:
            return declined(Reason.REFUND_EXCEEDS_PAID, refunded_total_minor=t["refunded_minor"],
                            currency=t["currency"])
        tx.insert_refund(msg.refund_id, t["trade_no"], msg.amount_minor, t["currency"], ctx.clock())
        ledger.move(ctx, tx, f"R:{msg.refund_id}", f"merchant:{t['merchant_id']}", f"customer:{t['account_id']}",
                    msg.amount_minor, t["currency"], "refund")
        total = t["refunded_minor"] + msg.amount_minor
        tx.set_refunded(t["trade_no"], total)
        ledger.add_spent(tx, t["account_id"], t["paid_at"], -msg.amount_minor)
        return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.APPROVED,
                                amount_minor=msg.amount_minor, refunded_total_minor=total, currency=t["currency"])
