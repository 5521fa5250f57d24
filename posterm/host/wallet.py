"""The customer's wallet (the phone): pay a merchant's QR, confirm a waiting payment, and
find the account a payment code belongs to."""

from __future__ import annotations

from posterm.host import ledger, phone
from posterm.host.authorise import checks
from posterm.host.context import HostContext, HostRefused, require_account


def scan(ctx: HostContext, qr_data: str, account_id: str) -> str:
    """The customer scans a merchant's dynamic QR and pays from ``account_id``. Returns the
    trade's status (that of the order as it was when it was not waiting for a scan).

    Scanning and paying is the confirmation on the phone, but neither a second factor nor
    the extra confirmation a payment over a limit (``over_limit`` confirm) or risk control's
    "confirm" asks for: such a payment, and a two-factor account's, waits (``WAIT_BUYER``)
    for the verification code sent to the phone (:func:`confirm` with it) or, when the
    account prefers, the biometric approval (``posterm host phone approve``)."""
    with ctx.store.transaction() as tx:
        t = tx.trade_by_qr(qr_data)
        if t is None:
            raise HostRefused("this QR code is not a payable order")
        if t["status"] != "SHOW_QR":
            return t["status"]
        acct = require_account(tx, account_id)
        tx.set_trade_account(t["trade_no"], account_id)
        t = tx.trade(t["trade_no"])
        terminal = tx.terminal(t["terminal_id"])
        refusal = checks(ctx, tx, acct, t["amount_minor"], t["currency"], terminal, t["trade_no"])
        if refusal is not None and refusal[0] != "confirm":
            ledger.decline(tx, t["trade_no"], refusal[1], refusal[2])
        elif acct["two_factor"] or refusal is not None:
            tx.ask_customer(t["trade_no"], "WAIT_BUYER", ctx.clock())
            phone.ask_payment(ctx, tx, acct, t)     # a code or an approval request, per preference
        else:
            ledger.capture(ctx, tx, t["trade_no"])  # confirmed on the phone by scanning and paying
        return tx.trade_status(t["trade_no"])


def account_for_code(ctx: HostContext, code: str) -> str:
    """The account a payment code belongs to (the wallet that shows it)."""
    row = ctx.store.view().code(code)
    if row is None:
        raise HostRefused("unknown payment code")
    return row["account_id"]


def confirm(ctx: HostContext, order_id: str, merchant_id: str, code: str | None = None) -> str:
    """The customer confirms the merchant's order waiting on the phone. Returns its status.

    A two-factor account's payment, and a scan's asked for an extra confirmation (see
    :func:`scan`), needs ``code``, the verification code the phone received
    (:func:`posterm.host.phone.confirm_payment`: a wrong one is counted, the fifth kills it
    and declines the payment); an account that prefers biometric approval approves it with
    ``posterm host phone approve`` instead. Raises HostRefused saying why it was not
    confirmed (what it changed, a try counted, stays committed)."""
    refused = None
    with ctx.store.transaction() as tx:
        t = tx.trade_by_order(merchant_id, order_id)
        if t is None:
            raise HostRefused(f"no order {order_id}")
        if t["status"] == "WAIT_BUYER":
            acct = tx.account(t["account_id"]) if t["account_id"] else None
            if acct is not None and phone.needs_phone(tx, acct, t):
                refused = phone.confirm_payment(ctx, tx, acct, t, code)
            else:
                ledger.capture(ctx, tx, t["trade_no"])
        status = tx.trade_status(t["trade_no"])
    if refused is not None:
        raise HostRefused(refused if status == "WAIT_BUYER" else f"{refused}; the payment is {status.lower()}")
    return status
