"""The driver's journal: every request is written down before it goes on the wire.

After a crash, a killed process or a cut cable, :meth:`Journal.unfinished` lists
the orders whose outcome the ECR never learnt, and ``Terminal.recover()`` asks
the terminal about each and records the answer.  Nothing secret is stored: no
payment code (its last 4 digits at most), no password, no PIN.

SQLite (stdlib) in WAL mode with ``synchronous=FULL``: a committed row survives a
power cut. One row per order; refunds get their own rows keyed by refund id.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from posterm.home import posterm_home
from posterm.safefs import prepare_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id      TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('pay', 'refund', 'cancel')),
    ref_id        TEXT NOT NULL DEFAULT '',      -- refund id for refunds
    port          TEXT NOT NULL,
    terminal_id   TEXT,
    amount_minor  INTEGER NOT NULL CHECK (amount_minor >= 0),
    currency      TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('sent', 'final')),
    outcome       TEXT,                          -- approved/declined/cancelled/unknown/pending
    reason        INTEGER,
    result_json   TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    PRIMARY KEY (order_id, kind, ref_id)
);
CREATE INDEX IF NOT EXISTS orders_unfinished ON orders(state) WHERE state != 'final';
"""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    order_id: str
    kind: str
    ref_id: str
    port: str
    terminal_id: str | None
    amount_minor: int
    currency: str
    state: str
    outcome: str | None
    reason: int | None
    result: dict[str, Any] | None
    created_at: float
    updated_at: float


class Journal:
    """A durable list of requests and their outcomes. Thread-safe."""

    def __init__(self, path: str | Path | None = None, clock=time.time) -> None:
        self.path = Path(path) if path is not None else posterm_home() / "driver-journal.db"
        prepare_sqlite(self.path)  # 0600, its -wal/-shm too; a planted symlink is refused
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record_sent(self, order_id: str, kind: str, port: str, amount_minor: int, currency: str,
                    terminal_id: str | None = None, ref_id: str = "") -> None:
        """Write down a request before it is sent. A row that already exists (a
        retry of the same order) keeps its history and goes back to ``sent``
        unless it is final."""
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT INTO orders (order_id, kind, ref_id, port, terminal_id, amount_minor, currency,"
                " state, created_at, updated_at) VALUES (?,?,?,?,?,?,?, 'sent', ?, ?)"
                " ON CONFLICT (order_id, kind, ref_id) DO UPDATE SET updated_at = excluded.updated_at",
                (order_id, kind, ref_id, port, terminal_id, amount_minor, currency, now, now),
            )

    def record_outcome(self, order_id: str, kind: str, outcome: str, reason: int | None,
                       result: dict[str, Any], final: bool, ref_id: str = "") -> None:
        """Record what the terminal answered. ``final=False`` keeps the order in
        :meth:`unfinished` (outcome unknown or still pending)."""
        with self._lock:
            self._db.execute(
                "UPDATE orders SET outcome=?, reason=?, result_json=?, state=?, updated_at=?"
                " WHERE order_id=? AND kind=? AND ref_id=?",
                (outcome, reason, json.dumps(result, sort_keys=True), "final" if final else "sent",
                 self._clock(), order_id, kind, ref_id),
            )

    def get(self, order_id: str, kind: str = "pay", ref_id: str = "") -> JournalEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM orders WHERE order_id=? AND kind=? AND ref_id=?", (order_id, kind, ref_id)
            ).fetchone()
        return self._entry(row) if row else None

    def unfinished(self) -> list[JournalEntry]:
        """Orders sent whose final outcome is not known, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM orders WHERE state != 'final' ORDER BY created_at").fetchall()
        return [self._entry(r) for r in rows]

    def entries(self) -> Iterator[JournalEntry]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM orders ORDER BY created_at").fetchall()
        return iter([self._entry(r) for r in rows])

    @staticmethod
    def _entry(row: tuple) -> JournalEntry:
        (order_id, kind, ref_id, port, terminal_id, amount, currency, state, outcome, reason,
         result_json, created, updated) = row
        return JournalEntry(order_id, kind, ref_id, port, terminal_id, amount, currency, state, outcome,
                            reason, json.loads(result_json) if result_json else None, created, updated)
