"""The host's SQLite store: schema, connections and transactions.

WAL, ``synchronous=FULL`` (NORMAL may lose committed transactions on power loss),
foreign keys on, one connection per thread, explicit ``BEGIN IMMEDIATE`` for every
write so a read-check-write sequence cannot interleave with another writer. A
:meth:`Store.write` inside another on the same thread is a savepoint of the outer
transaction, so a terminal request and its replay bookkeeping commit (and fsync) once.
The database file is created 0600; SQLite gives ``-wal`` and ``-shm`` the same mode.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from posterm.host.store.books import daily_spend_from_trades
from posterm.host.store.queries import Tx
from posterm.host.store import security_sql
from posterm.safefs import prepare_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, real_name INTEGER NOT NULL DEFAULT 0,
    verifier BLOB, balance_minor INTEGER NOT NULL DEFAULT 0 CHECK (balance_minor >= 0),
    currency TEXT NOT NULL, per_tx_limit INTEGER NOT NULL, daily_limit INTEGER NOT NULL,
    password_free INTEGER NOT NULL, confirm TEXT NOT NULL CHECK (confirm IN ('pin', 'phone')),
    home_region TEXT NOT NULL DEFAULT '', two_factor INTEGER NOT NULL DEFAULT 0,
    frozen INTEGER NOT NULL DEFAULT 0, tz TEXT NOT NULL DEFAULT 'Asia/Shanghai',
    pin_tries INTEGER NOT NULL DEFAULT 0, behaviour TEXT NOT NULL DEFAULT 'normal',
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS merchants (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terminals (
    id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL REFERENCES merchants(id), location TEXT NOT NULL,
    registered_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS payment_codes (
    code_hash TEXT PRIMARY KEY, last4 TEXT NOT NULL, account_id TEXT NOT NULL REFERENCES accounts(id),
    issued_at REAL NOT NULL, expires_at REAL, used_at REAL, test INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS trades (
    trade_no TEXT PRIMARY KEY, merchant_id TEXT NOT NULL REFERENCES merchants(id), order_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL REFERENCES terminals(id), account_id TEXT REFERENCES accounts(id),
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0), currency TEXT NOT NULL, status TEXT NOT NULL,
    reason INTEGER NOT NULL DEFAULT 0, reason_text TEXT NOT NULL DEFAULT '', params_hash TEXT NOT NULL,
    code_last4 TEXT, created_at REAL NOT NULL, paid_at REAL, asked_at REAL,
    refunded_minor INTEGER NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0), qr_data TEXT,
    description TEXT, settled_batch INTEGER,
    UNIQUE (merchant_id, order_id), CHECK (refunded_minor <= amount_minor));
CREATE INDEX IF NOT EXISTS trades_account ON trades (account_id, created_at);
CREATE INDEX IF NOT EXISTS trades_terminal ON trades (terminal_id, created_at);
CREATE INDEX IF NOT EXISTS trades_approved ON trades (account_id, paid_at, amount_minor, status)
    WHERE status = 'APPROVED';
CREATE TABLE IF NOT EXISTS refunds (
    refund_id TEXT PRIMARY KEY, trade_no TEXT NOT NULL REFERENCES trades(trade_no),
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0), currency TEXT NOT NULL, created_at REAL NOT NULL,
    settled_batch INTEGER);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY, txn TEXT NOT NULL, account TEXT NOT NULL, delta INTEGER NOT NULL,
    currency TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_account ON ledger (account);
CREATE TABLE IF NOT EXISTS risk_decisions (
    id INTEGER PRIMARY KEY, trade_no TEXT NOT NULL, account_id TEXT NOT NULL, decision TEXT NOT NULL,
    reasons TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), kind TEXT NOT NULL,
    text TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pin_failures (
    id INTEGER PRIMARY KEY, account_id TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pin_failures_account ON pin_failures (account_id, created_at);
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY, trade_no TEXT NOT NULL REFERENCES trades(trade_no), account_id TEXT,
    reason TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open', created_at REAL NOT NULL,
    resolution TEXT, closed_at REAL);
CREATE TABLE IF NOT EXISTS settlements (
    id INTEGER PRIMARY KEY, terminal_id TEXT NOT NULL, batch_no INTEGER NOT NULL, totals TEXT NOT NULL,
    agrees INTEGER NOT NULL, created_at REAL NOT NULL, UNIQUE (terminal_id, batch_no));
CREATE TABLE IF NOT EXISTS ksn_seen (ikid TEXT PRIMARY KEY, counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pin_ksn_seen (ikid TEXT PRIMARY KEY, counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS daily_spend (
    account_id TEXT NOT NULL, day TEXT NOT NULL, spent_minor INTEGER NOT NULL,
    PRIMARY KEY (account_id, day)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, seen_at REAL NOT NULL);
-- The merchant gateway (posterm.host.gateway): apps registered per merchant, each paying
-- through its own virtual terminal row; per trade the app, its notify_url and the state of
-- the asynchronous notification; the out_trade_no an app cancelled before any pay arrived
-- (a late pay of it is refused, never charged).
CREATE TABLE IF NOT EXISTS gateway_apps (
    app_id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL REFERENCES merchants(id),
    kind TEXT NOT NULL CHECK (kind IN ('alipay', 'wechat')), terminal_id TEXT NOT NULL REFERENCES terminals(id),
    public_key_pem TEXT, wechat_mch_id TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_trades (
    trade_no TEXT PRIMARY KEY REFERENCES trades(trade_no), app_id TEXT NOT NULL REFERENCES gateway_apps(app_id),
    notify_url TEXT, closed_by TEXT, notify_state TEXT NOT NULL DEFAULT 'none',
    notify_attempts INTEGER NOT NULL DEFAULT 0, notify_next_at REAL);
CREATE INDEX IF NOT EXISTS gateway_trades_notify ON gateway_trades (notify_state, notify_next_at);
CREATE TABLE IF NOT EXISTS gateway_voids (
    terminal_id TEXT NOT NULL, order_id TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (terminal_id, order_id)) WITHOUT ROWID;
-- The security centre's guard (posterm.host.monitor, posterm.host.identity): the running sum
-- of each ledger account's entries, kept with every entry (a balance check is one lookup);
-- each whole-ledger audit; a customer's verified identity, as keyed hashes (the HSM's
-- identity key) and the ID number's last 4 characters. Per account (columns added in
-- Store.__init__): over a limit reject or confirm, the reminder share, the day reminded.
CREATE TABLE IF NOT EXISTS ledger_totals (account TEXT PRIMARY KEY, total_minor INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audits (
    id INTEGER PRIMARY KEY, created_at REAL NOT NULL, accounts INTEGER NOT NULL, mismatched TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id), id_hash BLOB NOT NULL, id_last4 TEXT NOT NULL,
    name_hash BLOB NOT NULL, birth_hashes BLOB NOT NULL, verified_at REAL NOT NULL);
-- Security notices the host publishes (posterm.host.notices): terminals show them on the idle
-- screen and at the foot of receipts, the wallet in its inbox, until `until` (NULL: until removed).
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY, text TEXT NOT NULL, created_at REAL NOT NULL, until REAL);
"""


class Store:
    """Per-thread connections to one database file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # before SQLite creates it 0644 (the books world-readable); a planted symlink is refused
        prepare_sqlite(self.path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.commits = 0   # outermost write transactions committed (a WAL fsync each, when it changed anything)
        self.conn().executescript(SCHEMA)
        self._add_columns("cases", {"resolution": "TEXT", "closed_at": "REAL"})
        self.conn().executescript(security_sql.SCHEMA)          # the security centre (issue 17)
        self._add_columns("accounts", security_sql.ACCOUNT_COLUMNS)
        if self.read().execute("SELECT 1 FROM meta WHERE key = 'daily_spend'").fetchone() is None:
            self._fill_daily_spend()
        # the security centre's guard (see the SCHEMA comment)
        self._add_columns("accounts", {"over_limit": "TEXT NOT NULL DEFAULT 'reject'",
                                       "remind_at": "INTEGER NOT NULL DEFAULT 80", "reminded_day": "TEXT"})
        if self.read().execute("SELECT 1 FROM meta WHERE key = 'ledger_totals'").fetchone() is None:
            with self.write() as db:
                if db.execute("SELECT 1 FROM meta WHERE key = 'ledger_totals'").fetchone() is None:
                    db.execute("DELETE FROM ledger_totals")
                    db.execute("INSERT INTO ledger_totals SELECT account, SUM(delta) FROM ledger GROUP BY account")
                    db.execute("INSERT INTO meta VALUES ('ledger_totals', '1')")

    def _add_columns(self, table: str, columns: dict[str, str]) -> None:
        """Give a database made by an older version the columns it lacks (nullable, so old rows stay valid)."""
        have = {r[1] for r in self.read().execute(f"PRAGMA table_info({table})")}
        missing = {k: v for k, v in columns.items() if k not in have}
        if missing:
            with self.write() as db:
                for name, kind in missing.items():
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def _fill_daily_spend(self) -> None:
        """Build ``daily_spend`` from the trades of a database made before it existed (once)."""
        with self.write() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = 'daily_spend'").fetchone() is None:
                db.execute("DELETE FROM daily_spend")
                db.executemany("INSERT INTO daily_spend VALUES (?, ?, ?)",
                               [(a, d, v) for (a, d), v in daily_spend_from_trades(db).items()])
                db.execute("INSERT INTO meta VALUES ('daily_spend', '1')")

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One durable transaction: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error).

        Inside another ``write`` on this thread it is a savepoint instead: its changes are
        undone if it raises, and made durable only when the outermost transaction commits.
        """
        c = self.conn()
        if c.in_transaction:
            c.execute("SAVEPOINT nested")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK TO nested")
                c.execute("RELEASE nested")
                raise
            c.execute("RELEASE nested")
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        self.commits += 1

    def read(self) -> sqlite3.Connection:
        return self.conn()

    def in_transaction(self) -> bool:
        """Whether this thread's connection (if it has one) is inside a transaction."""
        c = getattr(self._local, "conn", None)
        return c is not None and c.in_transaction

    def close_thread(self) -> None:
        """Close this thread's connection (a thread that ends: its connection is not kept)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            return
        self._local.conn = None
        with self._lock:
            if c in self._all:
                self._all.remove(c)
        c.close()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """:meth:`write`, with the host's named queries (:class:`~posterm.host.store.queries.Tx`)."""
        with self.write() as c:
            yield Tx(c)

    def view(self) -> Tx:
        """The named queries outside a transaction: for reads only (each statement sees a
        consistent snapshot; use :meth:`transaction` for a read-check-write)."""
        return Tx(self.conn())

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()
