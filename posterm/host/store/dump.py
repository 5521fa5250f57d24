"""A PostgreSQL host database copied to and from a SQLite file: a backup's portable form.

:func:`dump` reads every table of the schema (:data:`.schema.TABLES`, in that order, rows by
primary key) inside one ``REPEATABLE READ READ ONLY`` transaction: one snapshot, taken while
payments go on, so the copy is the database as of one instant. It writes them into a new
SQLite file built from the same schema (:data:`.sqlite.SCHEMA`), which
:mod:`posterm.host.backup` then checks, hashes and encrypts exactly as it does a SQLite
host's database. So a PostgreSQL backup restores into SQLite and a SQLite one into PostgreSQL.

:func:`load` puts such a file into a PostgreSQL database in one transaction: it migrates an
empty target first, takes every table ``ACCESS EXCLUSIVE``, refuses a target a host is
connected to or that holds data (unless ``force``: then its rows are replaced), copies the
rows in (``COPY``), moves every identity column past the restored ids, reads everything
back and compares it with the file row by row, and only then commits. Nothing changes on
any failure. Every statement has a timeout; the URL's password appears in no message.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterator

import psycopg

from posterm.errors import ConfigError, PosError
from posterm.host.store.postgres import redact
from posterm.host.store.schema import LATEST, TABLES
from posterm.host.store.sqlite import SCHEMA

BATCH = 4096
STATEMENT_TIMEOUT_MS = 600_000    # a whole table read or written in one statement (COPY)
LOCK_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 10
HOST_APP = "posterm-host"
HOSTS_GONE_S = 3.0         # the application_name the host's store connects with


class DumpError(PosError):
    """The database could not be copied out or in (the message names it without its password)."""


class TargetInUse(DumpError, ConfigError):
    """The target database is in use by a host, or already holds a host's data."""


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connect(url: str, app: str) -> psycopg.Connection:
    try:   # a malformed URL is refused without echoing it (libpq's message may quote the password)
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise DumpError(f"not a valid PostgreSQL URL: {redact(url)}") from None
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name=app,
                               options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                                       f"-c lock_timeout={LOCK_TIMEOUT_MS} "
                                       f"-c idle_in_transaction_session_timeout={STATEMENT_TIMEOUT_MS}")
    except psycopg.Error as exc:
        raise DumpError(f"cannot connect to {redact(url)}: {_reason(exc, url)}") from None


def _reason(exc: BaseException, url: str) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.replace(url, redact(url))


def _pg_columns(c: psycopg.Connection, table: str) -> dict[str, str]:
    """``table``'s columns on PostgreSQL (name -> type name such as int8), in table order."""
    rows = c.execute("SELECT column_name, udt_name FROM information_schema.columns "
                     "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
                     (table,)).fetchall()
    return {r[0]: r[1] for r in rows}


def _sqlite_columns(db: sqlite3.Connection, table: str) -> tuple[list[str], list[str]]:
    """(columns, primary-key columns in key order) of ``table`` in the SQLite file."""
    info = db.execute(f"PRAGMA table_info({_q(table)})").fetchall()
    cols = [r[1] for r in info]
    pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])] or cols
    return cols, pk


def _pg_order(pk: list[str], types: dict[str, str]) -> str:
    # byte order for text, as SQLite's BINARY collation: the same row order on both sides
    return ", ".join(_q(k) + (' COLLATE "C"' if types.get(k) in ("text", "varchar") else "") for k in pk)


def _pg_rows(c: psycopg.Connection, table: str, cols: list[str], pk: list[str],
             types: dict[str, str]) -> Iterator[list[tuple]]:
    """Batches of ``table``'s rows from a server-side cursor (inside the caller's transaction)."""
    with c.cursor(name=f"posterm_dump_{table}") as cur:
        cur.itersize = BATCH
        cur.execute(f"SELECT {', '.join(map(_q, cols))} FROM {_q(table)} ORDER BY {_pg_order(pk, types)}")
        while True:
            batch = cur.fetchmany(BATCH)
            if not batch:
                return
            yield [tuple(r) for r in batch]


def _schema_version(value: str | None, where: str) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        raise DumpError(f"{where}: meta.schema_version is not a number") from None


def dump(url: str, into: str | Path) -> dict[str, int]:
    """Copy the host database at ``url`` into a new SQLite file ``into`` (0600, made by the
    caller); return the rows copied per table.

    Raises :class:`DumpError` when the database cannot be read, is not a host's, or has a
    table or column this posterm does not know (made by a newer one).
    """
    where = redact(url)
    out = sqlite3.connect(into, isolation_level=None)
    try:
        # a scratch file, read back and encrypted at once (the encrypted copy is what is fsynced)
        out.execute("PRAGMA synchronous=OFF")
        out.executescript("BEGIN;\n" + SCHEMA + "DELETE FROM meta;\nCOMMIT;")   # the source's meta rows replace the script's
        counts: dict[str, int] = {}
        c = _connect(url, "posterm-backup")
        try:
            c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if c.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
                raise DumpError(f"{where} is not a posterm host database (it has no meta table)")
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = _schema_version(row[0] if row else None, where)
            if version > LATEST:
                raise DumpError(f"{where} is at schema version {version}, this posterm knows {LATEST}: "
                                f"back it up with the posterm that made it")
            out.execute("BEGIN")
            for table in TABLES:
                types = _pg_columns(c, table)
                if not types:
                    raise DumpError(f"{where} has no table {table}: open it with this posterm's host once "
                                    f"(it migrates the schema), then back it up")
                cols, pk = _sqlite_columns(out, table)
                unknown = [k for k in types if k not in cols]
                if unknown:
                    raise DumpError(f"{where}: table {table} has column(s) {', '.join(unknown)} this posterm "
                                    f"does not know: back it up with the posterm that made it")
                have = [k for k in cols if k in types]
                sql = f"INSERT INTO {_q(table)} ({', '.join(map(_q, have))}) VALUES ({', '.join('?' * len(have))})"
                n = 0
                for batch in _pg_rows(c, table, have, pk, types):
                    out.executemany(sql, batch)
                    n += len(batch)
                counts[table] = n
            out.execute("COMMIT")
            c.execute("COMMIT")
        except psycopg.Error as exc:
            raise DumpError(f"cannot read {where}: {_reason(exc, url)}") from None
        finally:
            c.close()
        return counts
    except sqlite3.Error as exc:
        raise DumpError(f"cannot write the snapshot of {where}: {exc}") from None
    finally:
        out.close()


def _file_tables(src: sqlite3.Connection) -> list[str]:
    return [r[0] for r in src.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]


def load(file: str | Path, url: str, *, force: bool = False) -> dict[str, int]:
    """Load the host database in the SQLite ``file`` (checked by the caller) into the
    PostgreSQL database at ``url``, in one transaction; return the rows loaded per table.

    An empty target is migrated first. Refused, with nothing changed: a target a host is
    connected to (:class:`TargetInUse`), one that holds rows in any table but ``meta``
    unless ``force`` (:class:`TargetInUse`; with ``force`` its rows are replaced), a file
    with a table or column the target lacks or at a newer schema version (:class:`DumpError`).
    After the rows, every identity column's sequence is moved past the highest id; the rows
    are then read back and compared with the file before the commit.
    """
    from posterm.host.store.postgres import Store

    where = redact(url)
    src = sqlite3.connect(f"{Path(file).resolve().as_uri()}?mode=ro", uri=True)
    try:
        present = set(_file_tables(src))
        unknown = sorted(present - set(TABLES))
        if unknown:
            raise DumpError(f"{file}: table(s) {', '.join(unknown)} this posterm does not know")
        if "meta" in present:
            row = src.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = _schema_version(row[0] if row else None, str(file))
            if version > LATEST:
                raise DumpError(f"{file} is at schema version {version}, this posterm knows {LATEST}")
        c = _connect(url, "posterm-restore")   # first: a bad URL or a server not there is told here
        try:
            Store(url, pool=1).close()    # a new database gets the schema (an up-to-date one: nothing happens)
        except (psycopg.Error, ValueError) as exc:
            c.close()
            raise DumpError(f"cannot prepare {where}: {_reason(exc, url)}") from None
        try:
            _hosts_gone(c)
            c.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            # no host writes while we load (and one writing now is waited for, lock_timeout at most)
            c.execute(f"LOCK TABLE {', '.join(map(_q, TABLES))} IN ACCESS EXCLUSIVE MODE")
            hosts = _hosts(c)
            if hosts:
                raise TargetInUse(f"{where} is in use by {hosts} host connection(s): stop the host first; "
                                  f"nothing changed")
            busy = [t for t in TABLES if t != "meta"
                    and c.execute(f"SELECT EXISTS (SELECT 1 FROM {_q(t)})").fetchone()[0]]
            if busy and not force:
                raise TargetInUse(f"{where} already holds a host's data (table {busy[0]} has rows): give "
                                  f"--force to replace it (take a backup of it first); nothing changed")
            c.execute(f"TRUNCATE {', '.join(map(_q, TABLES))}")
            counts: dict[str, int] = {}
            for table in TABLES:
                if table not in present:
                    continue
                types = _pg_columns(c, table)
                cols, pk = _sqlite_columns(src, table)
                missing = [k for k in cols if k not in types]
                if missing:
                    raise DumpError(f"{where}: table {table} lacks column(s) {', '.join(missing)} the backup has")
                n = 0
                with c.cursor() as cur:
                    with cur.copy(f"COPY {_q(table)} ({', '.join(map(_q, cols))}) FROM STDIN") as cp:
                        cp.set_types([types[k] for k in cols])
                        rows = src.execute(f"SELECT {', '.join(map(_q, cols))} FROM {_q(table)}")
                        while batch := rows.fetchmany(BATCH):
                            for r in batch:
                                cp.write_row(r)
                            n += len(batch)
                counts[table] = n
            for table, col in c.execute(
                    "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = "
                    "current_schema() AND is_identity = 'YES'").fetchall():
                if table in TABLES:
                    c.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), GREATEST(COALESCE(MAX({_q(col)}), 0), 1), "
                              f"MAX({_q(col)}) IS NOT NULL) FROM {_q(table)}", (_q(table), col))
            for table in TABLES:
                if table in present:
                    _compare(src, c, table, where)
            c.execute("COMMIT")
            return counts
        except psycopg.Error as exc:
            raise DumpError(f"cannot restore into {where}: {_reason(exc, url)}; nothing changed") from None
        finally:
            c.close()   # without a COMMIT the transaction is rolled back
    except sqlite3.Error as exc:
        raise DumpError(f"cannot read {file}: {exc}") from None
    finally:
        src.close()


def _hosts(c: psycopg.Connection) -> int:
    """How many host connections (other than ours) the target database has."""
    return c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND pid <> pg_backend_pid() AND application_name = %s", (HOST_APP,)).fetchone()[0]


def _hosts_gone(c: psycopg.Connection, within: float | None = None) -> None:
    """Give the server-side ends of host connections just closed (the migration's, a host
    stopped a moment ago) ``within`` seconds to exit: a backend leaves ``pg_stat_activity``
    a little after its client hung up. A host still running is then refused."""
    deadline = time.monotonic() + (HOSTS_GONE_S if within is None else within)
    while _hosts(c) and time.monotonic() < deadline:
        time.sleep(0.05)   # polling the server's view of its connections, bounded


def _compare(src: sqlite3.Connection, c: psycopg.Connection, table: str, where: str) -> None:
    """Raise DumpError unless ``table`` holds on PostgreSQL exactly the rows the file holds."""
    cols, pk = _sqlite_columns(src, table)
    types = _pg_columns(c, table)
    mine = src.execute(f"SELECT {', '.join(map(_q, cols))} FROM {_q(table)} ORDER BY {', '.join(map(_q, pk))}")
    n = 0
    for theirs in _pg_rows(c, table, cols, pk, types):
        ours = [tuple(r) for r in mine.fetchmany(len(theirs))]
        if ours != theirs:
            raise DumpError(f"{where}: table {table} read back differs from the backup near row {n + 1}; "
                            f"nothing changed")
        n += len(theirs)
    if mine.fetchone() is not None:
        raise DumpError(f"{where}: table {table} read back has fewer rows than the backup; nothing changed")
