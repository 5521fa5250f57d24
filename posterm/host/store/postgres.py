"""The host's PostgreSQL store: the same interface, schema and queries as the SQLite one.

``Store(url)`` with ``url`` a ``postgresql://`` (or ``postgres://``) URL. The schema comes from
:mod:`.schema` (one definition, rendered for PostgreSQL: BIGINT money, DOUBLE PRECISION
times, BYTEA verifiers) and its numbered migrations are applied under an advisory lock, so
several host processes starting together migrate once. The queries are :mod:`.queries`'
(``?`` placeholders translated to psycopg's ``%s``).

Transactions: every :meth:`Store.write` is ``BEGIN ISOLATION LEVEL REPEATABLE READ`` (one
snapshot for the whole read-check-write) and, through :class:`~.queries.Tx`, reads an account
``FOR UPDATE``: two payments of one account take turns on its row, payments of different
accounts touch different rows and never wait for each other. Exactly-once stays where the
SQLite store has it, in unique keys (a trade per (merchant, order id), a refund id, a ledger
transaction, a KSN counter, a nonce). What two concurrent transactions can still collide on
(the same row changed after our snapshot: ``40001``; a deadlock: ``40P01``; the same unique key
inserted meanwhile: ``23505``) aborts one of them whole, and :meth:`Store.run` runs the unit of
work again on a new snapshot: at most :data:`MAX_TRIES` times, with jittered exponential
backoff, counted in :attr:`Store.retries`. A :meth:`write` inside another on the same thread
is a savepoint, as on SQLite.

Connections come from a bounded pool (psycopg_pool; ``POSTERM_PG_POOL``, default
:data:`DEFAULT_POOL`); a write holds one for its transaction, a read outside a write borrows one
per statement (autocommit). Every statement has a timeout (``statement_timeout``,
``lock_timeout``), connecting too (``connect_timeout``). The URL's password never appears in an
error or a log line: :func:`redact`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
import urllib.parse
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from posterm.host.store.books import daily_spend_from_trades
from posterm.host.store.queries import Tx
from posterm.host.store.schema import AddColumns, pending, render

log = logging.getLogger("posterm.host.store")

DEFAULT_POOL = 8
MAX_POOL = 200
MAX_TRIES = 12              # a unit of work runs at most this often on conflicts
UNIQUE_TRIES = 3            # a unique-key clash is concurrency once; a third one is a real duplicate
STATEMENT_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
POOL_WAIT_S = 30.0
MIGRATION_LOCK = 0x706F7374   # pg_advisory_xact_lock key for migrations ("post")
# the transient conflicts a retry resolves: another transaction won the row, a deadlock
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def is_url(value: object) -> bool:
    """Whether ``value`` names a PostgreSQL database (``postgresql://`` or ``postgres://``).

    Its own copy of :func:`posterm.host.store.is_postgres_url`: importing the package's
    would be an import cycle (the package imports this module lazily)."""
    return isinstance(value, str) and value.lower().startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """``url`` with any password (in the authority or as ``password=`` in the query) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "postgresql://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = urllib.parse.urlencode([(k, "***" if k.lower() == "password" else v)
                                    for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)])
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def pool_size(env: dict[str, str] | None = None) -> int:
    """The pool's cap from ``POSTERM_PG_POOL`` (1..MAX_POOL), else :data:`DEFAULT_POOL`."""
    raw = (env if env is not None else os.environ).get("POSTERM_PG_POOL", "").strip()
    if not raw:
        return DEFAULT_POOL
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"POSTERM_PG_POOL: not a whole number: {raw!r}") from None
    if not 1 <= n <= MAX_POOL:
        raise ValueError(f"POSTERM_PG_POOL: {n} is not in 1..{MAX_POOL}")
    return n


class StoreUnavailable(psycopg.OperationalError):
    """The PostgreSQL server cannot be reached (the message names the URL without its password)."""


# ------------------------------------------------------------------ rows and SQL


class Row(tuple):
    """A result row: ``row[0]`` and ``row["column"]`` (like :class:`sqlite3.Row`); ``dict(row)`` works."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    # one small class per column list (cached): the index lives on the class, not on each row
    return type("Row", (Row,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}})


def _row_factory(cursor: psycopg.Cursor) -> Callable[[Sequence[Any]], Row]:
    desc = cursor.description
    cls = _row_class(tuple(d.name for d in desc) if desc else ())
    return lambda values: tuple.__new__(cls, values)


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """SQLite-style ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Result:
    """A statement's rows fetched at once (its connection is back in the pool): a cursor's reading half."""

    __slots__ = ("rows", "rowcount", "_at")

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows, self.rowcount, self._at = rows, rowcount, 0

    def fetchone(self) -> Row | None:
        if self._at >= len(self.rows):
            return None
        self._at += 1
        return self.rows[self._at - 1]

    def fetchall(self) -> list[Row]:
        out, self._at = self.rows[self._at:], len(self.rows)
        return out

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class Conn:
    """One pooled connection with the ``execute(sql, args)`` the store's queries use."""

    __slots__ = ("database_key", "raw")

    def __init__(self, raw: psycopg.Connection, database_key: str = "") -> None:
        self.raw = raw
        self.database_key = database_key   # what names the database (Tx.database_path): the URL, redacted

    def execute(self, sql: str, args: Iterable[Any] = ()) -> psycopg.Cursor:
        args = tuple(args)
        return self.raw.execute(_pg(sql) if args else sql, args or None)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(_pg(sql), list(seq))

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


class _Autocommit:
    """Reads outside a transaction: each statement on a connection borrowed from the pool."""

    __slots__ = ("database_key", "store")

    def __init__(self, store: "Store") -> None:
        self.store = store
        self.database_key = store.display

    def execute(self, sql: str, args: Iterable[Any] = ()) -> _Result:
        with self.store._borrow() as raw:
            cur = Conn(raw).execute(sql, args)
            rows = cur.fetchall() if cur.description else []
            return _Result(rows, cur.rowcount)

    in_transaction = False


# ------------------------------------------------------------------ the store


class Store:
    """A pool of connections to one PostgreSQL database (see the module docstring)."""

    dialect = "postgresql"

    def __init__(self, url: str, *, pool: int | None = None, home=None) -> None:
        from posterm.home import posterm_home

        if not is_url(url):
            raise ValueError("not a postgresql:// URL")
        self.url = url
        self.display = redact(url)
        self.path = None                 # no file: the SQLite store's file-level backup does not apply
        # where the host's keys live (the HSM directory): POSTERM_HOME, shared by every host
        # process of this machine on this database
        self.home = home if home is not None else posterm_home()
        self.commits = 0                 # outermost write transactions committed
        self.retries = 0                 # units of work run again after a conflict
        self._count = threading.Lock()
        self._local = threading.local()
        self.cap = pool if pool is not None else pool_size()
        kwargs = {"autocommit": True, "row_factory": _row_factory, "connect_timeout": CONNECT_TIMEOUT_S,
                  "application_name": "posterm-host",
                  "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS} "
                             f"-c idle_in_transaction_session_timeout={2 * STATEMENT_TIMEOUT_MS}"}
        try:
            # a bad URL is refused here, before any thread is started (and without echoing it)
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            raise ValueError(f"not a valid PostgreSQL URL: {self.display}") from None
        try:  # one direct connection first: a server that is not there is told at once, with its reason
            psycopg.connect(url, **kwargs).close()
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(f"cannot connect to {self.display}: {reason.replace(url, self.display)}") from None
        self._pool = ConnectionPool(url, kwargs=kwargs, min_size=1, max_size=self.cap, timeout=POOL_WAIT_S,
                                    open=False, name="posterm-host", reconnect_timeout=POOL_WAIT_S)
        try:
            self._pool.open(wait=True, timeout=POOL_WAIT_S)
        except PoolTimeout:
            self._pool.close(timeout=5)
            raise StoreUnavailable(f"cannot connect to {self.display} in {POOL_WAIT_S:g} s") from None
        try:
            self._migrate()
            if self.read().execute("SELECT 1 FROM meta WHERE key = 'daily_spend'").fetchone() is None:
                self._fill_daily_spend()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<postgres.Store {self.display}>"

    # -- schema ---------------------------------------------------------------------

    def _migrate(self) -> None:
        """Apply the migrations this database lacks, one transaction each, under an advisory
        lock (several processes starting on one new database migrate once)."""
        for number, _, steps in pending(self._version()):
            with self.write() as db:
                db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is not None and int(row[0]) >= number:
                    continue
                for step in steps:
                    if isinstance(step, AddColumns):
                        for name, kind in step.columns.items():
                            db.execute(f"ALTER TABLE {step.table} ADD COLUMN IF NOT EXISTS {name} "
                                       f"{render(kind, 'postgresql')}")
                    else:
                        db.execute(render(step, "postgresql"))
                db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE "
                           "SET value = excluded.value", (str(number),))

    def _version(self) -> int:
        if self.read().execute("SELECT to_regclass('meta')").fetchone()[0] is None:
            return 0
        row = self.read().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _fill_daily_spend(self) -> None:
        with self.write() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            if db.execute("SELECT 1 FROM meta WHERE key = 'daily_spend'").fetchone() is None:
                db.execute("DELETE FROM daily_spend")
                db.executemany("INSERT INTO daily_spend VALUES (?, ?, ?)",
                               [(a, d, v) for (a, d), v in daily_spend_from_trades(db).items()])
                db.execute("INSERT INTO meta VALUES ('daily_spend', '1')")

    # -- connections and transactions ----------------------------------------------------

    @contextmanager
    def _borrow(self) -> Iterator[psycopg.Connection]:
        try:
            raw = self._pool.getconn(timeout=POOL_WAIT_S)
        except PoolTimeout:
            raise StoreUnavailable(f"no connection to {self.display} free in {POOL_WAIT_S:g} s "
                                   f"(pool of {self.cap}: POSTERM_PG_POOL)") from None
        try:
            yield raw
        finally:
            self._pool.putconn(raw)

    def _current(self) -> Conn | None:
        return getattr(self._local, "conn", None)

    @contextmanager
    def write(self) -> Iterator[Conn]:
        """One durable transaction (REPEATABLE READ; ROLLBACK on any error). Inside another on
        this thread it is a savepoint of the outer one, as on SQLite."""
        c = self._current()
        if c is not None:
            c.execute("SAVEPOINT nested")
            try:
                yield c
            except BaseException:
                self._quietly(c, "ROLLBACK TO SAVEPOINT nested")
                self._quietly(c, "RELEASE SAVEPOINT nested")
                raise
            c.execute("RELEASE SAVEPOINT nested")
            return
        with self._borrow() as raw:
            c = Conn(raw, self.display)
            c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            self._local.conn = c
            try:
                yield c
            except BaseException:
                self._local.conn = None
                self._quietly(c, "ROLLBACK")
                raise
            self._local.conn = None
            try:
                c.execute("COMMIT")
            except BaseException:
                self._quietly(c, "ROLLBACK")
                raise
            with self._count:
                self.commits += 1

    @staticmethod
    def _quietly(c: Conn, sql: str) -> None:
        try:
            c.execute(sql)
        except psycopg.Error:
            pass   # the connection is gone or the transaction already over: the pool discards a broken one

    def read(self) -> Conn | _Autocommit:
        """The connection of this thread's transaction, else one borrowed per statement."""
        return self._current() or _Autocommit(self)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """:meth:`write`, with the host's named queries; accounts are read FOR UPDATE."""
        with self.write() as c:
            yield Tx(c, " FOR UPDATE")

    def view(self) -> Tx:
        """The named queries outside a transaction (reads only), or inside this thread's one."""
        c = self._current()
        return Tx(c, " FOR UPDATE") if c is not None else Tx(_Autocommit(self))

    def in_transaction(self) -> bool:
        return self._current() is not None

    def run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)``, run again on a conflict (see the module docstring): at most
        :data:`MAX_TRIES` times, a unique-key clash at most :data:`UNIQUE_TRIES`. Inside a
        transaction of this thread it runs once (the outermost run retries the whole)."""
        if self._current() is not None:
            return fn(*args, **kw)
        delay = 0.002
        for attempt in range(1, MAX_TRIES + 1):
            try:
                return fn(*args, **kw)
            except (*RETRYABLE, pg_errors.UniqueViolation) as exc:
                limit = UNIQUE_TRIES if isinstance(exc, pg_errors.UniqueViolation) else MAX_TRIES
                if attempt >= limit:
                    raise
                with self._count:
                    self.retries += 1
                log.debug("store conflict (%s), try %d of %d", type(exc).__name__, attempt + 1, limit)
                time.sleep(delay * random.uniform(0.5, 1.5))   # jittered backoff, not synchronisation
                delay = min(delay * 2, 0.25)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.close(timeout=10)
