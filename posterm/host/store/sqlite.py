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
from posterm.host.store.schema import AddColumns, pending, render, script
from posterm.safefs import prepare_sqlite

SCHEMA = script("sqlite")  # the whole schema (posterm.host.store.schema), as SQLite has it


class Store:
    """Per-thread connections to one database file."""

    dialect = "sqlite"
    retries = 0   # units of work run again after a conflict: none here (BEGIN IMMEDIATE waits instead)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.home = self.path.parent   # where the host's keys live (its hsm directory)
        # before SQLite creates it 0644 (the books world-readable); a planted symlink is refused
        prepare_sqlite(self.path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.commits = 0   # outermost write transactions committed (a WAL fsync each, when it changed anything)
        self._migrate()
        if self.read().execute("SELECT 1 FROM meta WHERE key = 'daily_spend'").fetchone() is None:
            self._fill_daily_spend()

    def _version(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        """Apply the migrations this database lacks (posterm.host.store.schema), each in one
        write transaction that first reads the version again (another process may have
        applied it meanwhile)."""
        c = self.conn()
        c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for number, _, _ in pending(self._version(c)):
            with self.write() as db:
                if self._version(db) >= number:
                    continue
                for step in next(m[2] for m in pending(number - 1)):
                    if isinstance(step, AddColumns):
                        have = {r[1] for r in db.execute(f"PRAGMA table_info({step.table})")}
                        for name, kind in step.columns.items():
                            if name not in have:
                                db.execute(f"ALTER TABLE {step.table} ADD COLUMN {name} {render(kind, 'sqlite')}")
                    else:
                        db.execute(render(step, "sqlite"))
                db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE "
                           "SET value = excluded.value", (str(number),))

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

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """:meth:`write`, with the host's named queries (:class:`~posterm.host.store.queries.Tx`)."""
        with self.write() as c:
            yield Tx(c)

    def view(self) -> Tx:
        """The named queries outside a transaction: for reads only (each statement sees a
        consistent snapshot; use :meth:`transaction` for a read-check-write)."""
        return Tx(self.conn())

    def in_transaction(self) -> bool:
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

    def run(self, fn, *args, **kw):
        """``fn(*args, **kw)``: a unit of work. Once: SQLite's writers wait their turn (BEGIN
        IMMEDIATE, busy timeout) instead of conflicting; the PostgreSQL store retries here."""
        return fn(*args, **kw)

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()
