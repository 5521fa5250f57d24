"""The driver's journal: every request is written down before it goes on the wire.

After a crash, a killed process or a cut cable, :meth:`Journal.unfinished` lists
the orders whose outcome the ECR never learnt, and ``Terminal.recover()`` asks
the terminal about each and records the answer.  Nothing secret is stored: no
payment code (its last 4 digits at most), no password, no PIN.

SQLite (stdlib) in WAL mode with ``synchronous=FULL``: a committed row survives a
power cut. One row per operation: ``(order_id, kind, ref_id)`` with kind ``pay``,
``refund`` (ref_id = the refund id) or ``cancel``. The file is 0600 and a planted
symlink is refused (:mod:`posterm.safefs`).

The journal never downgrades what the host did (schema 2):

- A row's ``amount_minor``/``currency`` are those of the first request; a re-send with
  other values keeps them (the re-send is written to ``attempts``).
- A final row's outcome only moves up the ranks ``declined`` < ``cancelled`` <
  ``approved``: an approved payment or refund stays approved whatever is answered
  later. An answer that would downgrade it, and any answer the driver judged a
  rejection of one attempt (``ORDER_CONFLICT``, a protocol error), is written to
  ``attempts`` and leaves the row as it was.
- ``attempts`` keeps at most :data:`MAX_ATTEMPTS_PER_OP` rows per operation (oldest go).

Version 1 files (no ``attempts`` table) are migrated on open.
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

SCHEMA_VERSION = 2
MAX_ATTEMPTS_PER_OP = 64

#: outcome -> rank; a final row only ever moves to a strictly higher rank.
#: (A cancel row: a declined cancel retried with the right password may become cancelled.)
OUTCOME_RANK = {None: 0, "unknown": 0, "pending": 0, "declined": 1, "cancelled": 2, "approved": 3}

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
CREATE TABLE IF NOT EXISTS attempts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    ref_id        TEXT NOT NULL DEFAULT '',
    at            REAL NOT NULL,
    what          TEXT NOT NULL,                 -- sent / rejected / ignored / protocol_error / gave_up
    amount_minor  INTEGER,
    currency      TEXT,
    outcome       TEXT,
    reason        INTEGER,
    note          TEXT NOT NULL DEFAULT '',
    result_json   TEXT
);
CREATE INDEX IF NOT EXISTS attempts_op ON attempts(order_id, kind, ref_id, id);
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """Something that happened to an operation without changing its row: a re-send with
    other values, a rejected attempt (ORDER_CONFLICT), an answer that would have downgraded
    a final outcome, a protocol error, a give-up."""

    order_id: str
    kind: str
    ref_id: str
    at: float
    what: str
    amount_minor: int | None
    currency: str | None
    outcome: str | None
    reason: int | None
    note: str
    result: dict[str, Any] | None


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
        prepare_sqlite(self.path)  # 0600, no planted symlinks (the file or its -wal/-shm)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _migrate(self) -> None:
        # Version 0/1 had the orders table only; version 2 adds attempts. CREATE ... IF NOT
        # EXISTS makes both the new file and the migration; user_version records it.
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            from posterm.errors import ConfigError

            raise ConfigError(f"{self.path}: journal schema {version} is newer than this posterm ({SCHEMA_VERSION})")
        self._db.executescript(SCHEMA)
        if version < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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
        retry of the same order) keeps its history, its first amount and currency and
        its state; a re-send with another amount or currency is written to ``attempts``."""
        now = self._clock()
        with self._lock:
            row = self._db.execute(
                "SELECT amount_minor, currency FROM orders WHERE order_id=? AND kind=? AND ref_id=?",
                (order_id, kind, ref_id)).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO orders (order_id, kind, ref_id, port, terminal_id, amount_minor, currency,"
                    " state, created_at, updated_at) VALUES (?,?,?,?,?,?,?, 'sent', ?, ?)",
                    (order_id, kind, ref_id, port, terminal_id, amount_minor, currency, now, now),
                )
                return
            self._db.execute("UPDATE orders SET updated_at=? WHERE order_id=? AND kind=? AND ref_id=?",
                             (now, order_id, kind, ref_id))
            if (row[0], row[1]) != (amount_minor, currency):
                self._attempt(order_id, kind, ref_id, "sent", amount_minor, currency, None, None,
                              f"re-sent with {amount_minor} {currency}; the journal keeps the first request"
                              f" ({row[0]} {row[1]})", None)

    def record_outcome(self, order_id: str, kind: str, outcome: str, reason: int | None,
                       result: dict[str, Any], final: bool, ref_id: str = "") -> None:
        """Record what the terminal answered. ``final=False`` keeps the order in
        :meth:`unfinished` (outcome unknown or still pending).

        Never downgrades: on a final row only an outcome of a higher rank
        (:data:`OUTCOME_RANK`) replaces the one recorded; anything else is written to
        ``attempts`` instead. Returns True when the row changed."""
        if outcome not in OUTCOME_RANK:
            raise ValueError(f"unknown outcome {outcome!r}")
        with self._lock:
            row = self._db.execute(
                "SELECT state, outcome FROM orders WHERE order_id=? AND kind=? AND ref_id=?",
                (order_id, kind, ref_id)).fetchone()
            if row is None:
                return False
            state, current = row
            if state == "final" and not (final and OUTCOME_RANK[outcome] > OUTCOME_RANK[current]):
                if outcome != current or not final:
                    self._attempt(order_id, kind, ref_id, "ignored", result.get("amount_minor"),
                                  result.get("currency"), outcome, reason,
                                  f"answer {outcome} not recorded over final {current}", result)
                return False
            self._db.execute(
                "UPDATE orders SET outcome=?, reason=?, result_json=?, state=?, updated_at=?"
                " WHERE order_id=? AND kind=? AND ref_id=?",
                (outcome, reason, json.dumps(result, sort_keys=True), "final" if final else "sent",
                 self._clock(), order_id, kind, ref_id),
            )
            return True

    def record_attempt(self, order_id: str, kind: str, what: str, note: str, *, ref_id: str = "",
                       amount_minor: int | None = None, currency: str | None = None,
                       outcome: str | None = None, reason: int | None = None,
                       result: dict[str, Any] | None = None) -> None:
        """Write down a fact about one attempt that does not change the operation's row:
        ``rejected`` (e.g. ORDER_CONFLICT), ``protocol_error``, ``gave_up``..."""
        with self._lock:
            self._attempt(order_id, kind, ref_id, what, amount_minor, currency, outcome, reason, note, result)

    def attempts(self, order_id: str, kind: str = "pay", ref_id: str = "") -> list[Attempt]:
        """The attempts written for one operation, oldest first (at most MAX_ATTEMPTS_PER_OP)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT order_id, kind, ref_id, at, what, amount_minor, currency, outcome, reason, note,"
                " result_json FROM attempts WHERE order_id=? AND kind=? AND ref_id=? ORDER BY id",
                (order_id, kind, ref_id)).fetchall()
        return [Attempt(*r[:10], json.loads(r[10]) if r[10] else None) for r in rows]

    def _attempt(self, order_id: str, kind: str, ref_id: str, what: str, amount_minor: Any, currency: Any,
                 outcome: str | None, reason: int | None, note: str, result: dict[str, Any] | None) -> None:
        amount = amount_minor if type(amount_minor) is int else None
        self._db.execute(
            "INSERT INTO attempts (order_id, kind, ref_id, at, what, amount_minor, currency, outcome, reason,"
            " note, result_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (order_id, kind, ref_id, self._clock(), what, amount, currency if isinstance(currency, str) else None,
             outcome, reason, note[:500], json.dumps(result, sort_keys=True) if result is not None else None))
        self._db.execute(
            "DELETE FROM attempts WHERE order_id=? AND kind=? AND ref_id=? AND id NOT IN"
            " (SELECT id FROM attempts WHERE order_id=? AND kind=? AND ref_id=? ORDER BY id DESC LIMIT ?)",
            (order_id, kind, ref_id, order_id, kind, ref_id, MAX_ATTEMPTS_PER_OP))

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
