"""The emulated terminal's own journal: what it did, so a restart knows what is unfinished.

One SQLite file per terminal, ``$POSTERM_HOME/terminals/<terminal id>/journal.db``,
WAL mode with ``synchronous=FULL`` (a committed row survives a kill -9 or a power
cut). An order is written *before* its AuthRequest leaves, so a terminal killed
mid-flow restarts with the order ``unfinished`` and settles it with the host.

No secrets: a payment code is kept as its last 4 digits only; PINs, passwords
and key blocks never reach this file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_protocol.native.messages import Outcome, Reason, Totals

from posterm.home import posterm_home
from posterm.safefs import prepare_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id       TEXT PRIMARY KEY,
    amount_minor   INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    code_last4     TEXT,
    dynamic_qr     INTEGER NOT NULL DEFAULT 0,
    batch_no       INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('in_flight', 'unfinished', 'final')),
    outcome        INTEGER,
    reason         INTEGER NOT NULL DEFAULT 0,
    reason_text    TEXT NOT NULL DEFAULT '',
    trade_no       TEXT,
    paid_at        TEXT,
    refunded_minor INTEGER NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_open ON orders(state) WHERE state != 'final';
CREATE TABLE IF NOT EXISTS refunds (
    refund_id      TEXT PRIMARY KEY,
    order_id       TEXT NOT NULL,
    amount_minor   INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    batch_no       INTEGER NOT NULL,
    outcome        INTEGER NOT NULL,
    reason         INTEGER NOT NULL DEFAULT 0,
    refunded_total INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id   TEXT,
    kind       TEXT NOT NULL,
    lines      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settlements (
    batch_no    INTEGER PRIMARY KEY,
    totals      TEXT NOT NULL,
    host_agrees INTEGER NOT NULL,
    settled_at  TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


_RECEIPT_SQL = "INSERT INTO receipts(order_id, kind, lines, created_at) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One payment as the terminal knows it."""

    order_id: str
    amount_minor: int
    currency: str
    code_last4: str | None
    dynamic_qr: bool
    batch_no: int
    state: str                  # in_flight | unfinished | final
    outcome: Outcome | None
    reason: int
    reason_text: str
    trade_no: str | None
    paid_at: str | None
    refunded_minor: int
    attempts: int
    created_at: str
    updated_at: str

    @property
    def final(self) -> bool:
        return self.state == "final"


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    order_id: str | None
    kind: str
    lines: tuple[str, ...]
    created_at: str


def journal_path(terminal_id: str, home: Path | None = None) -> Path:
    """``$POSTERM_HOME/terminals/<terminal_id>/journal.db``."""
    return (home or posterm_home()) / "terminals" / terminal_id / "journal.db"


class OrderStore:
    """The terminal's durable record of orders, refunds, receipts and batches. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        prepare_sqlite(self.path)  # 0600, its -wal/-shm too; a planted symlink is refused
        self._lock = threading.Lock()
        # isolation_level=None: we open every transaction ourselves (PITFALLS: 3.11 implicit ones).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._db.executescript(SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('batch_no', '1')")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing -----------------------------------------------------------------------

    def _write(self, sql: str, args: tuple, *more: tuple[str, tuple]) -> None:
        """One transaction: ``sql`` with ``args``, then each further (sql, args) pair."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(sql, args)
                for extra_sql, extra_args in more:
                    self._db.execute(extra_sql, extra_args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def begin_order(self, order_id: str, amount_minor: int, currency: str, code_last4: str | None,
                    dynamic_qr: bool, now: str) -> None:
        """Record a new payment as in flight (before anything goes to the host)."""
        self._write(
            "INSERT INTO orders(order_id, amount_minor, currency, code_last4, dynamic_qr, batch_no, state,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'in_flight', ?, ?)",
            (order_id, amount_minor, currency, code_last4, int(dynamic_qr), self.batch_no(), now, now))

    def set_code(self, order_id: str, code_last4: str | None, now: str) -> None:
        self._write("UPDATE orders SET code_last4 = ?, updated_at = ? WHERE order_id = ?",
                    (code_last4, now, order_id))

    def finish_order(self, order_id: str, outcome: Outcome, reason: int, now: str, *, reason_text: str = "",
                     trade_no: str | None = None, paid_at: str | None = None, refunded_minor: int = 0,
                     code_last4: str | None = None, receipt: tuple[str, tuple[str, ...]] | None = None) -> None:
        """Record the outcome (and its receipt, ``(kind, lines)``, in the same transaction).
        UNKNOWN keeps the order unfinished (the reconciler owns it)."""
        state = "unfinished" if outcome in (Outcome.UNKNOWN, Outcome.PENDING) else "final"
        more = () if receipt is None else ((_RECEIPT_SQL, (order_id, receipt[0], json.dumps(list(receipt[1])), now)),)
        self._write(
            "UPDATE orders SET state = ?, outcome = ?, reason = ?, reason_text = ?,"
            " trade_no = COALESCE(?, trade_no), paid_at = COALESCE(?, paid_at), refunded_minor = ?,"
            " code_last4 = COALESCE(?, code_last4), updated_at = ? WHERE order_id = ?",
            (state, int(outcome), int(reason), reason_text[:128], trade_no, paid_at, refunded_minor,
             code_last4, now, order_id), *more)

    def mark_unfinished_after_restart(self) -> int:
        """A restart found orders still ``in_flight``: the old process died mid-flow."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE orders SET state = 'unfinished', outcome = ?, reason = ? WHERE state = 'in_flight'",
                (int(Outcome.UNKNOWN), int(Reason.HOST_UNAVAILABLE)))
            return cur.rowcount

    def count_attempt(self, order_id: str) -> int:
        with self._lock:
            self._db.execute("UPDATE orders SET attempts = attempts + 1 WHERE order_id = ?", (order_id,))
            row = self._db.execute("SELECT attempts FROM orders WHERE order_id = ?", (order_id,)).fetchone()
        return row[0] if row else 0

    def record_refund(self, refund_id: str, order_id: str, amount_minor: int, currency: str, outcome: Outcome,
                      reason: int, refunded_total: int, now: str) -> None:
        """Record the host's answer to a refund. An approved refund is final: a later answer
        under the same id (a conflicting re-use the host refused) never replaces it, or the
        batch would lose money the host did pay back. A declined one may be retried."""
        self._write(
            "INSERT INTO refunds(refund_id, order_id, amount_minor, currency, batch_no, outcome, reason,"
            " refunded_total, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(refund_id) DO UPDATE SET order_id = excluded.order_id,"
            " amount_minor = excluded.amount_minor, currency = excluded.currency, batch_no = excluded.batch_no,"
            " outcome = excluded.outcome, reason = excluded.reason, refunded_total = excluded.refunded_total,"
            " created_at = excluded.created_at WHERE refunds.outcome != ?",
            (refund_id, order_id, amount_minor, currency, self.batch_no(), int(outcome), int(reason),
             refunded_total, now, int(Outcome.APPROVED)))
        if outcome is Outcome.APPROVED:
            self._write("UPDATE orders SET refunded_minor = MAX(refunded_minor, ?) WHERE order_id = ?",
                        (refunded_total, order_id))

    def add_receipt(self, order_id: str | None, kind: str, lines: tuple[str, ...], now: str) -> None:
        self._write(_RECEIPT_SQL, (order_id, kind, json.dumps(list(lines)), now))

    def close_batch(self, batch_no: int, totals: tuple[Totals, ...], host_agrees: bool, settled_at: str | None) -> None:
        """Store the batch's totals and open the next batch, in one transaction."""
        data = json.dumps([_totals_dict(t) for t in totals])
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO settlements(batch_no, totals, host_agrees, settled_at)"
                                 " VALUES (?, ?, ?, ?)", (batch_no, data, int(host_agrees), settled_at))
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'batch_no'", (str(batch_no + 1),))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- reading -----------------------------------------------------------------------

    def batch_no(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'batch_no'").fetchone()
        return int(row[0])

    def get(self, order_id: str) -> OrderRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_ORDER_COLS} FROM orders WHERE order_id = ?", (order_id,)).fetchone()
        return _order(row) if row else None

    def orders(self) -> list[OrderRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_ORDER_COLS} FROM orders ORDER BY created_at, rowid").fetchall()
        return [_order(r) for r in rows]

    def unfinished(self) -> list[OrderRecord]:
        """Orders whose outcome the terminal has not settled with the host."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_ORDER_COLS} FROM orders WHERE state != 'final'"
                                    " ORDER BY created_at, rowid").fetchall()
        return [_order(r) for r in rows]

    def refund(self, refund_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT order_id, amount_minor, currency, outcome, reason, refunded_total"
                                   " FROM refunds WHERE refund_id = ?", (refund_id,)).fetchone()
        if row is None:
            return None
        return {"order_id": row[0], "amount_minor": row[1], "currency": row[2], "outcome": Outcome(row[3]),
                "reason": row[4], "refunded_total": row[5]}

    def receipts(self) -> list[ReceiptRecord]:
        with self._lock:
            rows = self._db.execute("SELECT order_id, kind, lines, created_at FROM receipts ORDER BY id").fetchall()
        return [ReceiptRecord(r[0], r[1], tuple(json.loads(r[2])), r[3]) for r in rows]

    def totals(self, batch_no: int) -> tuple[Totals, ...]:
        """End-of-day totals of ``batch_no``, one per currency, in currency order.

        Approved = paid and not cancelled afterwards; a cancelled count covers
        orders cancelled or reversed (whether or not they had been paid).
        """
        per: dict[str, dict[str, int]] = {}

        def bucket(cur: str) -> dict[str, int]:
            return per.setdefault(cur, {"approved_count": 0, "approved_minor": 0, "refunded_count": 0,
                                        "refunded_minor": 0, "cancelled_count": 0})

        with self._lock:
            orders = self._db.execute("SELECT currency, outcome, amount_minor FROM orders"
                                      " WHERE batch_no = ? AND state = 'final'", (batch_no,)).fetchall()
            refunds = self._db.execute("SELECT currency, amount_minor FROM refunds WHERE batch_no = ? AND outcome = ?",
                                       (batch_no, int(Outcome.APPROVED))).fetchall()
        for cur, outcome, amount in orders:
            if outcome == Outcome.APPROVED:
                b = bucket(cur)
                b["approved_count"] += 1
                b["approved_minor"] += amount
            elif outcome == Outcome.CANCELLED:
                bucket(cur)["cancelled_count"] += 1
        for cur, amount in refunds:
            b = bucket(cur)
            b["refunded_count"] += 1
            b["refunded_minor"] += amount
        return tuple(Totals(currency=c, **v) for c, v in sorted(per.items()))

    def settlements(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT batch_no, totals, host_agrees, settled_at FROM settlements"
                                    " ORDER BY batch_no").fetchall()
        return [{"batch_no": r[0], "totals": json.loads(r[1]), "host_agrees": bool(r[2]), "settled_at": r[3]}
                for r in rows]


_ORDER_COLS = ("order_id, amount_minor, currency, code_last4, dynamic_qr, batch_no, state, outcome, reason,"
               " reason_text, trade_no, paid_at, refunded_minor, attempts, created_at, updated_at")


def _order(row: tuple) -> OrderRecord:
    return OrderRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6],
                       Outcome(row[7]) if row[7] is not None else None, row[8], row[9], row[10], row[11],
                       row[12], row[13], row[14], row[15])


def _totals_dict(t: Totals) -> dict[str, Any]:
    return {"currency": t.currency, "approved_count": t.approved_count, "approved_minor": t.approved_minor,
            "refunded_count": t.refunded_count, "refunded_minor": t.refunded_minor,
            "cancelled_count": t.cancelled_count}
