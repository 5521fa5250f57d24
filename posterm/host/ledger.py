"""Money: the double-entry ledger, capture and decline of a trade, the daily totals.

Every movement is two ledger entries that sum to zero (``customer:<id>``, ``merchant:<id>``,
``issuance``); a customer's balance moves with its entries in the same transaction, so
:func:`~posterm.host.store.check_ledger` holds after every commit. A trade is charged at
most once: :func:`capture` of a trade already final does nothing.
"""

from __future__ import annotations

from firmware_protocol.currency import CURRENCIES
from firmware_protocol.native.messages import Reason

from posterm.host import monitor
from posterm.host.context import HostContext, require_account
from posterm.host.store import Tx, local_day
from posterm.host.store.queries import Row

FINAL = ("APPROVED", "DECLINED", "CANCELLED", "REFUNDED")


def move(ctx: HostContext, tx: Tx, txn: str, debit: str, credit: str, amount: int, currency: str, kind: str) -> None:
    """Move ``amount`` from ledger account ``debit`` to ``credit`` as transaction ``txn``."""
    now = ctx.clock()
    tx.ledger_entry(txn, debit, -amount, currency, kind, now)
    tx.ledger_entry(txn, credit, amount, currency, kind, now)
    for account, delta in ((debit, -amount), (credit, amount)):
        if account.startswith("customer:"):
            tx.add_balance(account.split(":", 1)[1], delta)
            monitor.check_posted(ctx, tx, account.split(":", 1)[1])


def spent_today(ctx: HostContext, tx: Tx, acct: Row) -> int:
    """What the account has spent today (its time zone), refunds deducted."""
    return tx.spent_on(acct["id"], local_day(ctx.clock(), acct["tz"]))


def add_spent(tx: Tx, account_id: str, paid_at: float, delta: int, tz: str | None = None) -> None:
    """Count ``delta`` in the account's daily total of the day ``paid_at`` falls on (its time zone)."""
    tx.add_spent(account_id, paid_at, tz if tz is not None else tx.account_tz(account_id), delta)


def capture(ctx: HostContext, tx: Tx, trade_no: str) -> None:
    """Charge the customer once. Re-checks the balance and limits at capture time."""
    t = tx.trade(trade_no)
    if t["status"] in FINAL:
        return
    acct = require_account(tx, t["account_id"])
    capture_trade(ctx, tx, trade_no, t["merchant_id"], t["amount_minor"], t["currency"], acct,
                  spent_today(ctx, tx, acct))


def capture_trade(ctx: HostContext, tx: Tx, trade_no: str, merchant_id: str, amount: int, currency: str, acct: Row,
                  spent: int) -> None:
    """Capture a trade not yet final: ``acct`` and ``spent`` (today's spending) as read
    in this transaction. Declines it instead when the account cannot pay now."""
    if acct["frozen"]:
        return decline(tx, trade_no, Reason.ACCOUNT_FROZEN, "account frozen")
    if not monitor.balance_ok(ctx, tx, acct["id"]):   # frozen now, and alerted
        return decline(tx, trade_no, Reason.ACCOUNT_FROZEN, monitor.MISMATCH_TEXT)
    if amount > acct["balance_minor"]:
        return decline(tx, trade_no, Reason.INSUFFICIENT_BALANCE, "insufficient balance")
    # over_limit = confirm: the customer confirmed going over (a capture follows a confirmation)
    if spent + amount > acct["daily_limit"] and acct["over_limit"] != "confirm":
        return decline(tx, trade_no, Reason.OVER_DAILY_LIMIT, "over the daily limit")
    move(ctx, tx, trade_no, f"customer:{acct['id']}", f"merchant:{merchant_id}", amount, currency, "payment")
    now = ctx.clock()
    tx.approve_trade(trade_no, now)
    add_spent(tx, acct["id"], now, amount, acct["tz"])
    if acct["large_payment"] is not None and amount >= acct["large_payment"]:   # the customer's own threshold
        ctx.alert(tx, acct["id"], "large_payment", f"payment of {display(amount, currency)} to merchant {merchant_id} "
                  f"(trade {trade_no})")
    monitor.limit_reminder(ctx, tx, acct, spent, spent + amount, now)


def display(minor: int, currency: str) -> str:
    """``minor`` units of ``currency`` as a person reads them (``1500.00 CNY``, ``200 JPY``)."""
    exp = CURRENCIES.get(currency, (0, 2))[1]
    sign, minor = ("-", -minor) if minor < 0 else ("", minor)
    return f"{sign}{minor // 10 ** exp}.{minor % 10 ** exp:0{exp}d} {currency}" if exp else f"{sign}{minor} {currency}"


def decline(tx: Tx, trade_no: str, reason: int, text: str) -> None:
    tx.decline_trade(trade_no, reason, text[:60])
