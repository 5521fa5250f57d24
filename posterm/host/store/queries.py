"""Every query the host's service modules make, by name, over one connection of either store.

A :class:`Tx` is what ``Store.transaction`` yields (inside ``BEGIN IMMEDIATE`` on SQLite, a
REPEATABLE READ transaction on PostgreSQL) and ``Store.view`` returns (reads). Rows are
:class:`sqlite3.Row` or the PostgreSQL store's row (``row["column"]`` and ``row[0]`` alike); a
lookup that finds nothing returns None. Nothing here decides anything: the rules (limits,
risk, who may change an order) are the service's; this module only reads and writes.

The SQL is what SQLite and PostgreSQL both run (``?`` placeholders: the PostgreSQL store
translates them): upserts by ``ON CONFLICT``, no ``INSERT OR ...``, no two-argument ``MIN``.
In a PostgreSQL write transaction an account is read ``FOR UPDATE`` (``Tx.lock``): payments of
one account take turns on its row, payments of different accounts never wait for each other.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any, Iterable

from posterm.host.store.books import local_day
from posterm.host.store.security_sql import ACCOUNT_SETTINGS as SECURITY_SETTINGS, SecurityQueries

Row = sqlite3.Row

# The account columns an administrator changes one at a time (set_account): a fixed list,
# as a column name cannot be a bound parameter.
ACCOUNT_SETTINGS = frozenset({"per_tx_limit", "daily_limit", "password_free", "real_name", "two_factor",
                              "confirm", "frozen", "over_limit", "remind_at", "reminded_day"})
ACCOUNT_SETTINGS |= SECURITY_SETTINGS   # the security centre's (posterm.host.store.security_sql)
# Where each KSN replay guard keeps the last counter seen per initial key.
KSN_TABLES = {"request": "ksn_seen", "pin": "pin_ksn_seen"}


def code_hash(code: str) -> str:
    """How a payment code is kept at rest: its salted SHA-256 (the host never stores a code)."""
    return hashlib.sha256(b"posterm-code:" + code.encode()).hexdigest()


class Tx(SecurityQueries):
    """The host's queries over ``conn`` (see the module docstring)."""

    __slots__ = ("conn", "lock")

    def __init__(self, conn: sqlite3.Connection, lock: str = "") -> None:
        self.conn = conn
        self.lock = lock   # appended to the account lookup: " FOR UPDATE" in a PostgreSQL write

    def _one(self, sql: str, args: Iterable[Any] = ()) -> Row | None:
        return self.conn.execute(sql, tuple(args)).fetchone()

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, tuple(args)).fetchall()

    def _run(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, tuple(args))

    def database_path(self) -> str:
        """What names the database this connection is on: the SQLite file, or the PostgreSQL
        store's key (its URL without the password)."""
        key = getattr(self.conn, "database_key", None)
        if key is not None:
            return key
        return next(r[2] for r in self._all("PRAGMA database_list") if r[1] == "main")

    # -- merchants and terminals -----------------------------------------------------------

    def merchant_count(self) -> int:
        return self._one("SELECT COUNT(*) FROM merchants")[0]

    def add_merchant(self, merchant_id: str, name: str) -> None:
        """Add a merchant; one that exists is left as it is."""
        self._run("INSERT INTO merchants VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (merchant_id, name))

    def merchant_exists(self, merchant_id: str) -> bool:
        return self._one("SELECT 1 FROM merchants WHERE id = ?", (merchant_id,)) is not None

    def put_terminal(self, terminal_id: str, merchant_id: str, location: str, now: float) -> None:
        """Register (or re-register) a terminal with its merchant and location."""
        self._run("INSERT INTO terminals VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                  "merchant_id = excluded.merchant_id, location = excluded.location, "
                  "registered_at = excluded.registered_at", (terminal_id, merchant_id, location, now))

    def terminal(self, terminal_id: str) -> Row | None:
        return self._one("SELECT * FROM terminals WHERE id = ?", (terminal_id,))

    # -- accounts ----------------------------------------------------------------------

    def account(self, account_id: str) -> Row | None:
        return self._one("SELECT * FROM accounts WHERE id = ?" + self.lock, (account_id,))

    def insert_account(self, account_id: str, name: str, *, real_name: bool, verifier: bytes | None, currency: str,
                       per_tx_limit: int, daily_limit: int, password_free: int, confirm: str, home_region: str,
                       two_factor: bool, tz: str, behaviour: str, now: float) -> None:
        """A new account with a zero balance (it is funded through the ledger)."""
        self._run("""INSERT INTO accounts (id, name, real_name, verifier, balance_minor, currency, per_tx_limit,
                     daily_limit, password_free, confirm, home_region, two_factor, tz, behaviour, created_at)
                     VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                  (account_id, name, int(real_name), verifier, currency, per_tx_limit, daily_limit,
                   password_free, confirm, home_region, int(two_factor), tz, behaviour, now))

    def set_account(self, account_id: str, column: str, value: Any) -> None:
        """Change one of :data:`ACCOUNT_SETTINGS`; booleans are stored as 0/1. Raises KeyError otherwise."""
        if column not in ACCOUNT_SETTINGS:
            raise KeyError(column)
        self._run(f"UPDATE accounts SET {column} = ? WHERE id = ?",
                  (int(value) if isinstance(value, bool) else value, account_id))

    def set_verifier(self, account_id: str, verifier: bytes) -> None:
        """A new payment-password verifier; the wrong-PIN count starts again."""
        self._run("UPDATE accounts SET verifier = ?, pin_tries = 0 WHERE id = ?", (verifier, account_id))

    def pin_tries(self, account_id: str) -> int:
        return self._one("SELECT pin_tries FROM accounts WHERE id = ?", (account_id,))[0]

    def reset_pin_tries(self, account_id: str) -> None:
        self._run("UPDATE accounts SET pin_tries = 0 WHERE id = ?", (account_id,))

    def count_wrong_pin(self, account_id: str, now: float) -> None:
        """One more wrong PIN (the count stops at 3), and a failure the risk rules count."""
        self._run("UPDATE accounts SET pin_tries = CASE WHEN pin_tries + 1 < 3 THEN pin_tries + 1 ELSE 3 END WHERE id = ?", (account_id,))
        self._run("INSERT INTO pin_failures (account_id, created_at) VALUES (?, ?)", (account_id, now))

    def account_tz(self, account_id: str) -> str:
        return self._one("SELECT tz FROM accounts WHERE id = ?", (account_id,))[0]

    # -- payment codes -------------------------------------------------------------------

    def add_code(self, code: str, account_id: str, now: float, expires_at: float | None, *, test: bool = False) -> None:
        """Store a payment code (its hash and last 4 digits). A test code that exists is left as it is."""
        tail = " ON CONFLICT (code_hash) DO NOTHING" if test else ""
        self._run("INSERT INTO payment_codes VALUES (?, ?, ?, ?, ?, NULL, ?)" + tail,
                  (code_hash(code), code[-4:], account_id, now, expires_at, int(test)))

    def code(self, code: str) -> Row | None:
        return self._one("SELECT * FROM payment_codes WHERE code_hash = ?", (code_hash(code),))

    def use_code(self, code_hash_: str, now: float) -> None:
        self._run("UPDATE payment_codes SET used_at = ? WHERE code_hash = ?", (now, code_hash_))

    # -- trades ------------------------------------------------------------------------

    def trade(self, trade_no: str) -> Row | None:
        return self._one("SELECT * FROM trades WHERE trade_no = ?", (trade_no,))

    def trade_by_order(self, merchant_id: str, order_id: str) -> Row | None:
        return self._one("SELECT * FROM trades WHERE merchant_id = ? AND order_id = ?", (merchant_id, order_id))

    def trade_by_no_or_order(self, ref: str) -> Row | None:
        return self._one("SELECT * FROM trades WHERE trade_no = ? OR order_id = ?", (ref, ref))

    def trade_by_qr(self, qr_data: str) -> Row | None:
        return self._one("SELECT * FROM trades WHERE qr_data = ?", (qr_data,))

    def trade_status(self, trade_no: str) -> str:
        return self._one("SELECT status FROM trades WHERE trade_no = ?", (trade_no,))[0]

    def trades(self, *, terminal: str | None = None, account: str | None = None) -> list[Row]:
        """Trades, oldest first, of one terminal and/or account (all when neither is given)."""
        sql, args = "SELECT * FROM trades WHERE 1=1", []
        if terminal:
            sql += " AND terminal_id = ?"
            args.append(terminal)
        if account:
            sql += " AND account_id = ?"
            args.append(account)
        return self._all(sql + " ORDER BY created_at, trade_no", args)

    def insert_trade(self, *, trade_no: str, merchant_id: str, order_id: str, terminal_id: str,
                     account_id: str | None, amount_minor: int, currency: str, status: str, params_hash: str,
                     code_last4: str | None, created_at: float, asked_at: float | None, qr_data: str | None,
                     description: str | None) -> None:
        self._run("""INSERT INTO trades (trade_no, merchant_id, order_id, terminal_id, account_id, amount_minor,
                     currency, status, params_hash, code_last4, created_at, asked_at, qr_data, description)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                  (trade_no, merchant_id, order_id, terminal_id, account_id, amount_minor, currency, status,
                   params_hash, code_last4, created_at, asked_at, qr_data, description))

    def set_trade_account(self, trade_no: str, account_id: str) -> None:
        self._run("UPDATE trades SET account_id = ? WHERE trade_no = ?", (account_id, trade_no))

    def ask_customer(self, trade_no: str, status: str, now: float) -> None:
        """The trade waits for the customer (``status`` NEED_PIN or WAIT_BUYER) since ``now``."""
        self._run("UPDATE trades SET status = ?, asked_at = ? WHERE trade_no = ?", (status, now, trade_no))

    def approve_trade(self, trade_no: str, now: float) -> None:
        self._run("UPDATE trades SET status = 'APPROVED', reason = 0, reason_text = '', paid_at = ? "
                  "WHERE trade_no = ?", (now, trade_no))

    def decline_trade(self, trade_no: str, reason: int, text: str) -> None:
        self._run("UPDATE trades SET status = 'DECLINED', reason = ?, reason_text = ? WHERE trade_no = ?",
                  (int(reason), text, trade_no))

    def cancel_trade(self, trade_no: str, reason: int) -> None:
        self._run("UPDATE trades SET status = 'CANCELLED', reason = ? WHERE trade_no = ?", (int(reason), trade_no))

    def refund_trade_fully(self, trade_no: str) -> None:
        self._run("UPDATE trades SET status = 'REFUNDED', refunded_minor = amount_minor WHERE trade_no = ?",
                  (trade_no,))

    def set_refunded(self, trade_no: str, total_minor: int) -> None:
        self._run("UPDATE trades SET refunded_minor = ? WHERE trade_no = ?", (total_minor, trade_no))

    # -- refunds -------------------------------------------------------------------------

    def refund(self, refund_id: str) -> Row | None:
        """A refund already made, with its trade's ``order_id`` and ``refunded_minor``."""
        return self._one("SELECT r.*, t.refunded_minor, t.order_id FROM refunds r JOIN trades t USING (trade_no) "
                         "WHERE refund_id = ?", (refund_id,))

    def insert_refund(self, refund_id: str, trade_no: str, amount_minor: int, currency: str, now: float) -> None:
        self._run("INSERT INTO refunds (refund_id, trade_no, amount_minor, currency, created_at) "
                  "VALUES (?, ?, ?, ?, ?)", (refund_id, trade_no, amount_minor, currency, now))

    # -- the ledger and the daily totals ------------------------------------------------------

    def ledger_entry(self, txn: str, account: str, delta: int, currency: str, kind: str, now: float) -> None:
        """One ledger entry; a customer's is counted in its running total (:meth:`ledger_total`).

        Only customers' (``customer:<id>``, what the guard checks): a merchant's or the
        issuance account's total would be one row every payment at the merchant writes, on
        PostgreSQL a hot row that would serialise (and abort, to be retried) the payments of
        different customers, which otherwise never wait for each other."""
        self._run("INSERT INTO ledger (txn, account, delta, currency, kind, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                  (txn, account, delta, currency, kind, now))
        if not account.startswith("customer:"):
            return
        self._run("INSERT INTO ledger_totals VALUES (?, ?) ON CONFLICT (account) DO UPDATE "
                  "SET total_minor = ledger_totals.total_minor + excluded.total_minor", (account, delta))

    # -- the security centre's guard (posterm.host.monitor, posterm.host.identity) -----------

    def ledger_total(self, account: str) -> int:
        """The running sum of customer ledger account ``account``'s entries (``customer:<id>``)."""
        row = self._one("SELECT total_minor FROM ledger_totals WHERE account = ?", (account,))
        return row[0] if row else 0

    def balance_and_total(self, account_id: str) -> Row | None:
        """The customer's balance column and its ledger running total, in one lookup."""
        return self._one("SELECT a.balance_minor, COALESCE(t.total_minor, 0) AS total_minor FROM accounts a "
                         "LEFT JOIN ledger_totals t ON t.account = 'customer:' || a.id WHERE a.id = ?", (account_id,))

    def ledger_sums_vs_balances(self) -> list[Row]:
        """Every customer account: id, currency, balance column, the ledger re-added (a full
        scan), and the running total, oldest account first."""
        return self._all("""SELECT a.id, a.currency, a.balance_minor,
                                   CAST(COALESCE((SELECT SUM(delta) FROM ledger l
                                                  WHERE l.account = 'customer:' || a.id), 0) AS BIGINT) AS ledger_minor,
                                   COALESCE(t.total_minor, 0) AS total_minor
                            FROM accounts a LEFT JOIN ledger_totals t ON t.account = 'customer:' || a.id
                            ORDER BY a.created_at, a.id""")

    def record_audit(self, now: float, accounts: int, mismatched: list[str]) -> None:
        self._run("INSERT INTO audits (created_at, accounts, mismatched) VALUES (?, ?, ?)",
                  (now, accounts, json.dumps(mismatched)))

    def last_audit(self) -> Row | None:
        return self._one("SELECT * FROM audits ORDER BY id DESC LIMIT 1")

    def outflow_since(self, account_id: str, since: float) -> int:
        """The account's approved payments paid after ``since``, refunds deducted."""
        return self._one("SELECT CAST(COALESCE(SUM(amount_minor - refunded_minor), 0) AS BIGINT) FROM trades WHERE account_id = ? "
                         "AND status = 'APPROVED' AND paid_at > ?", (account_id, since))[0]

    def daily_totals_before(self, account_id: str, day: str, limit: int) -> tuple[int, ...]:
        """The account's daily spending totals (non-zero) of the ``limit`` days with spending before ``day``."""
        return tuple(r[0] for r in self._all(
            "SELECT spent_minor FROM daily_spend WHERE account_id = ? AND day < ? AND spent_minor > 0 "
            "ORDER BY day DESC LIMIT ?", (account_id, day, limit)))

    def put_identity(self, account_id: str, id_hash: bytes, id_last4: str, name_hash: bytes, birth_hashes: bytes,
                     now: float) -> None:
        self._run("INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET "
                  "id_hash = excluded.id_hash, id_last4 = excluded.id_last4, name_hash = excluded.name_hash, "
                  "birth_hashes = excluded.birth_hashes, verified_at = excluded.verified_at",
                  (account_id, id_hash, id_last4, name_hash, birth_hashes, now))

    def identity(self, account_id: str) -> Row | None:
        return self._one("SELECT * FROM identities WHERE account_id = ?", (account_id,))

    def accounts_with_id(self, id_hash: bytes) -> list[str]:
        return [r[0] for r in self._all("SELECT account_id FROM identities WHERE id_hash = ? ORDER BY account_id",
                                        (id_hash,))]

    def risk_decisions(self, *, account: str | None = None, action: str | None = None,
                       since: float | None = None, limit: int = 10000) -> list[Row]:
        """Risk decisions, oldest first, with their trade's order id and amount; filtered."""
        sql = ("SELECT d.*, t.order_id, t.amount_minor, t.currency, t.terminal_id FROM risk_decisions d "
               "LEFT JOIN trades t USING (trade_no) WHERE 1=1")
        args: list[Any] = []
        if account:
            sql += " AND d.account_id = ?"
            args.append(account)
        if action:
            sql += " AND d.decision = ?"
            args.append(action)
        if since is not None:
            sql += " AND d.created_at >= ?"
            args.append(since)
        return self._all(sql + " ORDER BY d.id LIMIT ?", [*args, limit])

    def merchants(self) -> list[Row]:
        return self._all("SELECT m.*, (SELECT COUNT(*) FROM terminals t WHERE t.merchant_id = m.id) AS terminals "
                         "FROM merchants m ORDER BY m.id")

    def terminals(self, merchant_id: str | None = None) -> list[Row]:
        if merchant_id:
            return self._all("SELECT * FROM terminals WHERE merchant_id = ? ORDER BY id", (merchant_id,))
        return self._all("SELECT * FROM terminals ORDER BY id")

    def settlements(self, terminal_id: str | None = None, limit: int = 10000) -> list[Row]:
        if terminal_id:
            return self._all("SELECT * FROM settlements WHERE terminal_id = ? ORDER BY id LIMIT ?", (terminal_id, limit))
        return self._all("SELECT * FROM settlements ORDER BY id LIMIT ?", (limit,))

    def add_balance(self, account_id: str, delta: int) -> None:
        self._run("UPDATE accounts SET balance_minor = balance_minor + ? WHERE id = ?", (delta, account_id))

    def customer_ledger(self, account_id: str) -> list[Row]:
        """The customer's ledger entries in order, each with its trade's order id, merchant and status."""
        return self._all(
            """SELECT l.txn, l.delta, l.currency, l.kind, l.created_at, t.order_id, t.merchant_id, t.status
               FROM ledger l LEFT JOIN trades t ON t.trade_no = COALESCE(
                   (SELECT trade_no FROM refunds WHERE 'R:' || refund_id = l.txn), REPLACE(l.txn, 'C:', ''))
               WHERE l.account = ? ORDER BY l.id""", (f"customer:{account_id}",))

    def spent_on(self, account_id: str, day: str) -> int:
        row = self._one("SELECT spent_minor FROM daily_spend WHERE account_id = ? AND day = ?", (account_id, day))
        return row[0] if row else 0

    def add_spent(self, account_id: str, paid_at: float, tz: str, delta: int) -> None:
        """Count ``delta`` in the account's total for the local day (in ``tz``) ``paid_at`` falls on."""
        self._run("INSERT INTO daily_spend VALUES (?, ?, ?) ON CONFLICT (account_id, day) DO UPDATE "
                  "SET spent_minor = daily_spend.spent_minor + excluded.spent_minor", (account_id, local_day(paid_at, tz), delta))

    # -- risk history --------------------------------------------------------------------

    def recent_approved_amounts(self, account_id: str, limit: int = 20) -> tuple[int, ...]:
        return tuple(r[0] for r in self._all(
            "SELECT amount_minor FROM trades WHERE account_id = ? AND status = 'APPROVED' ORDER BY paid_at DESC "
            "LIMIT ?", (account_id, limit)))

    def payments_since(self, account_id: str, since: float, other_than: str) -> int:
        return self._one("SELECT COUNT(*) FROM trades WHERE account_id = ? AND created_at >= ? AND trade_no != ?",
                         (account_id, since, other_than))[0]

    def paid_at_terminal_before(self, account_id: str, terminal_id: str, other_than: str) -> bool:
        return self._one("SELECT 1 FROM trades WHERE account_id = ? AND terminal_id = ? AND trade_no != ? LIMIT 1",
                         (account_id, terminal_id, other_than)) is not None

    def wrong_pins_since(self, account_id: str, since: float) -> int:
        return self._one("SELECT COUNT(*) FROM pin_failures WHERE account_id = ? AND created_at >= ?",
                         (account_id, since))[0]

    def record_risk_decision(self, trade_no: str, account_id: str, action: str, reasons: tuple[str, ...],
                             now: float) -> None:
        self._run("INSERT INTO risk_decisions (trade_no, account_id, decision, reasons, created_at) "
                  "VALUES (?, ?, ?, ?, ?)", (trade_no, account_id, action, json.dumps(reasons), now))

    # -- alerts and cases ------------------------------------------------------------------

    def alert(self, account_id: str, kind: str, text: str, now: float) -> None:
        self._run("INSERT INTO alerts (account_id, kind, text, created_at) VALUES (?, ?, ?, ?)",
                  (account_id, kind, text, now))

    def recent_alerts(self, account_id: str, limit: int = 10) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all(
            "SELECT kind, text, created_at FROM alerts WHERE account_id = ? ORDER BY id DESC LIMIT ?",
            (account_id, limit))]

    def open_case(self, trade_no: str, account_id: str | None, reason: str, now: float) -> int:
        """A new open case; returns its id."""
        return int(self._one("INSERT INTO cases (trade_no, account_id, reason, created_at) VALUES (?, ?, ?, ?) "
                             "RETURNING id", (trade_no, account_id, reason, now))[0])

    def case(self, case_id: int) -> Row | None:
        return self._one("SELECT * FROM cases WHERE id = ?", (case_id,))

    def close_case(self, case_id: int, resolution: str, now: float) -> None:
        self._run("UPDATE cases SET status = 'closed', resolution = ?, closed_at = ? WHERE id = ?",
                  (resolution, now, case_id))

    def open_case_count(self, account_id: str) -> int:
        return self._one("SELECT COUNT(*) FROM cases WHERE account_id = ? AND status = 'open'", (account_id,))[0]

    def open_cases_of(self, account_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all(
            "SELECT id, trade_no, reason, status FROM cases WHERE account_id = ? AND status = 'open'", (account_id,))]

    def cases(self) -> list[Row]:
        return self._all("SELECT * FROM cases ORDER BY id")

    # -- settlement ----------------------------------------------------------------------

    def settlement(self, terminal_id: str, batch_no: int) -> Row | None:
        return self._one("SELECT * FROM settlements WHERE terminal_id = ? AND batch_no = ?", (terminal_id, batch_no))

    def last_batch_no(self, terminal_id: str) -> int:
        """The terminal's highest settled batch number, 0 when it has settled none."""
        row = self._one("SELECT MAX(batch_no) AS n FROM settlements WHERE terminal_id = ?", (terminal_id,))
        return int(row["n"] or 0) if row is not None else 0

    def unsettled_final_trades(self, terminal_id: str) -> list[Row]:
        """The terminal's approved, refunded and cancelled trades not in a batch yet."""
        return self._all("SELECT * FROM trades WHERE terminal_id = ? AND settled_batch IS NULL "
                         "AND status IN ('APPROVED', 'REFUNDED', 'CANCELLED')", (terminal_id,))

    def unsettled_refunds(self, terminal_id: str) -> list[Row]:
        return self._all("SELECT r.* FROM refunds r JOIN trades t USING (trade_no) WHERE t.terminal_id = ? "
                         "AND r.settled_batch IS NULL", (terminal_id,))

    def settle(self, terminal_id: str, batch_no: int, totals: list[dict[str, Any]], agrees: bool,
               now: float) -> None:
        """Put the terminal's final trades and its refunds not in a batch yet into ``batch_no``,
        and record the batch with the host's ``totals``."""
        self._run("UPDATE trades SET settled_batch = ? WHERE terminal_id = ? AND settled_batch IS NULL "
                  "AND status IN ('APPROVED', 'REFUNDED', 'CANCELLED', 'DECLINED')", (batch_no, terminal_id))
        self._run("UPDATE refunds SET settled_batch = ? WHERE settled_batch IS NULL AND trade_no IN "
                  "(SELECT trade_no FROM trades WHERE terminal_id = ?)", (batch_no, terminal_id))
        self._run("INSERT INTO settlements (terminal_id, batch_no, totals, agrees, created_at) VALUES (?, ?, ?, ?, ?)",
                  (terminal_id, batch_no, json.dumps(totals), int(agrees), now))

    # -- the merchant gateway (posterm.host.gateway) --------------------------------------

    def add_gateway_app(self, app_id: str, merchant_id: str, kind: str, terminal_id: str, public_key_pem: str | None,
                        wechat_mch_id: str | None, now: float) -> None:
        """Register (or re-register, replacing its key) a merchant's app."""
        self._run("INSERT INTO gateway_apps VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (app_id) DO UPDATE SET "
                  "merchant_id = excluded.merchant_id, kind = excluded.kind, terminal_id = excluded.terminal_id, "
                  "public_key_pem = excluded.public_key_pem, wechat_mch_id = excluded.wechat_mch_id, "
                  "created_at = excluded.created_at",
                  (app_id, merchant_id, kind, terminal_id, public_key_pem, wechat_mch_id, now))

    def gateway_app(self, app_id: str) -> Row | None:
        return self._one("SELECT * FROM gateway_apps WHERE app_id = ?", (app_id,))

    def gateway_apps(self) -> list[Row]:
        return self._all("SELECT * FROM gateway_apps ORDER BY app_id")

    def gateway_app_by_mch(self, wechat_mch_id: str) -> list[Row]:
        return self._all("SELECT * FROM gateway_apps WHERE wechat_mch_id = ? ORDER BY app_id", (wechat_mch_id,))

    def add_gateway_trade(self, trade_no: str, app_id: str, notify_url: str | None) -> None:
        """The gateway's record of its trade (once; a repeat leaves it as it is)."""
        self._run("INSERT INTO gateway_trades (trade_no, app_id, notify_url, notify_state) "
                  "VALUES (?, ?, ?, ?) ON CONFLICT (trade_no) DO NOTHING", (trade_no, app_id, notify_url, "pending" if notify_url else "none"))

    def gateway_trade(self, trade_no: str) -> Row | None:
        return self._one("SELECT * FROM gateway_trades WHERE trade_no = ?", (trade_no,))

    def set_gateway_closed_by(self, trade_no: str, how: str) -> None:
        self._run("UPDATE gateway_trades SET closed_by = ? WHERE trade_no = ? AND closed_by IS NULL", (how, trade_no))

    def gateway_notifications_due(self, now: float, limit: int) -> list[Row]:
        """Trades whose notification is pending and due, paid (APPROVED) or final, oldest first."""
        return self._all("SELECT g.*, t.status FROM gateway_trades g JOIN trades t USING (trade_no) "
                         "WHERE g.notify_state = 'pending' AND (g.notify_next_at IS NULL OR g.notify_next_at <= ?) "
                         "AND t.status IN ('APPROVED', 'REFUNDED') ORDER BY t.created_at LIMIT ?", (now, limit))

    def set_gateway_notify(self, trade_no: str, state: str, attempts: int, next_at: float | None) -> None:
        self._run("UPDATE gateway_trades SET notify_state = ?, notify_attempts = ?, notify_next_at = ? "
                  "WHERE trade_no = ?", (state, attempts, next_at, trade_no))

    def add_gateway_void(self, terminal_id: str, order_id: str, now: float) -> None:
        self._run("INSERT INTO gateway_voids VALUES (?, ?, ?) ON CONFLICT (terminal_id, order_id) DO NOTHING", (terminal_id, order_id, now))

    def gateway_void(self, terminal_id: str, order_id: str) -> bool:
        return self._one("SELECT 1 FROM gateway_voids WHERE terminal_id = ? AND order_id = ?",
                         (terminal_id, order_id)) is not None

    # -- replay guards -------------------------------------------------------------------

    def ksn_fresh(self, guard: str, ikid: str, counter: int) -> bool:
        """Record ``counter`` for initial key ``ikid`` in the ``guard`` ("request" or "pin") if
        it is above the last one recorded; False (nothing recorded) for a replay."""
        table = KSN_TABLES[guard]
        cur = self._run(f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT (ikid) DO UPDATE "
                        f"SET counter = excluded.counter WHERE excluded.counter > {table}.counter", (ikid, counter))
        return cur.rowcount == 1

    def nonce_seen(self, nonce_hex: str) -> bool:
        return self._one("SELECT 1 FROM nonces WHERE nonce = ?", (nonce_hex,)) is not None

    def add_nonce(self, nonce_hex: str, now: float) -> None:
        self._run("INSERT INTO nonces VALUES (?, ?)", (nonce_hex, now))

    # -- security notices (posterm.host.notices) -----------------------------------------

    def add_notice(self, text: str, now: float, until: float | None) -> int:
        return int(self._one("INSERT INTO notices (text, created_at, until) VALUES (?, ?, ?) RETURNING id",
                             (text, now, until))[0])

    def notices(self) -> list[Row]:
        """Every notice published, expired ones too, oldest first."""
        return self._all("SELECT * FROM notices ORDER BY id")

    def live_notices(self, now: float, limit: int) -> list[Row]:
        """The notices not expired at ``now``, oldest first, at most ``limit``."""
        return self._all("SELECT * FROM notices WHERE until IS NULL OR until > ? ORDER BY id LIMIT ?", (now, limit))

    def remove_notice(self, notice_id: int) -> bool:
        return self._run("DELETE FROM notices WHERE id = ?", (notice_id,)).rowcount == 1
