"""The double-entry books: the daily-spend totals and the ledger check (SQL both stores run)."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from zoneinfo import ZoneInfo


def local_day(ts: float, tz: str) -> str:
    """The date (YYYY-MM-DD) of ``ts`` in time zone ``tz``: the day a daily limit counts in."""
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%Y-%m-%d")


def daily_spend_from_trades(db: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(account, local day) -> approved payments paid that day less their refunds, from the trades.

    What the ``daily_spend`` table keeps up to date at each capture, refund and cancel, so
    a daily-limit check is one lookup instead of a sum over the day's trades.
    """
    out: dict[tuple[str, str], int] = {}
    for acct, paid_at, net, tz in db.execute(
            """SELECT t.account_id, t.paid_at, t.amount_minor - t.refunded_minor, a.tz FROM trades t
               JOIN accounts a ON a.id = t.account_id WHERE t.status = 'APPROVED'"""):
        key = (acct, local_day(paid_at, tz))
        out[key] = out.get(key, 0) + net
    return out


def check_ledger(db: sqlite3.Connection) -> list[str]:
    """Problems with the books (empty when they balance).

    Every ledger transaction sums to zero per currency; every customer's balance equals
    its ledger entries, and so does its running total (``ledger_totals``, customers' only);
    money issued equals what customers and merchants hold; every trade is charged what its
    status says; the daily-limit totals match the trades.
    """
    problems = []
    for row in db.execute("SELECT txn, currency, CAST(SUM(delta) AS BIGINT) s FROM ledger GROUP BY txn, currency "
                          "HAVING SUM(delta) != 0"):
        problems.append(f"ledger transaction {row['txn']} does not balance ({row['s']} {row['currency']})")
    for row in db.execute("""SELECT a.id, a.balance_minor, CAST(COALESCE(SUM(l.delta), 0) AS BIGINT) s FROM accounts a
                             LEFT JOIN ledger l ON l.account = 'customer:' || a.id GROUP BY a.id, a.balance_minor
                             HAVING a.balance_minor != COALESCE(SUM(l.delta), 0)"""):
        problems.append(f"account {row['id']} balance {row['balance_minor']} != ledger {row['s']}")
    for row in db.execute("""SELECT s.account, s.s, COALESCE(t.total_minor, 0) kept FROM
                             (SELECT account, CAST(SUM(delta) AS BIGINT) s FROM ledger WHERE account LIKE 'customer:%'
                              GROUP BY account) s
                             LEFT JOIN ledger_totals t USING (account) WHERE s.s != COALESCE(t.total_minor, 0)"""):
        problems.append(f"running total of {row['account']} is {row['kept']}, its entries sum to {row['s']}")
    total = db.execute("SELECT CAST(COALESCE(SUM(delta), 0) AS BIGINT) FROM ledger").fetchone()[0]
    if total != 0:
        problems.append(f"ledger does not sum to zero: {total}")
    for row in db.execute("""SELECT t.trade_no, t.status, t.amount_minor, t.refunded_minor,
                                    CAST(COALESCE((SELECT -SUM(delta) FROM ledger WHERE txn = t.trade_no
                                              AND account LIKE 'customer:%'), 0) AS BIGINT) charged
                             FROM trades t"""):
        paid = row["amount_minor"] if row["status"] in ("APPROVED", "REFUNDED") else 0
        if row["charged"] != paid:
            problems.append(f"trade {row['trade_no']} ({row['status']}) charged {row['charged']}, expected {paid}")
    expected = {k: v for k, v in daily_spend_from_trades(db).items() if v}
    kept = {(r[0], r[1]): r[2] for r in db.execute("SELECT account_id, day, spent_minor FROM daily_spend "
                                                    "WHERE spent_minor != 0")}
    for key in sorted(set(expected) | set(kept)):
        if expected.get(key, 0) != kept.get(key, 0):
            problems.append(f"daily spend of {key[0]} on {key[1]} is {kept.get(key, 0)}, trades say "
                            f"{expected.get(key, 0)}")
    return problems
