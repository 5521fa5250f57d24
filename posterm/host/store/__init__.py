"""The host's store: every SQL statement the host runs lives here, on SQLite or PostgreSQL.

:mod:`.schema` (the tables and numbered migrations, once for both), :mod:`.sqlite` and
:mod:`.postgres` (connections, transactions; the same interface), :mod:`.queries` (the named
queries the service modules call, :class:`Tx`), :mod:`.books` (daily totals, the ledger
check), :mod:`.dump` (a PostgreSQL database copied to and from a SQLite file: a backup's
portable form, :mod:`posterm.host.backup`). :func:`open_store` picks the store by what
names the database: a ``postgresql://`` URL or a file path. :mod:`.postgres` and
:mod:`.dump` (and psycopg) are imported only when one is opened.
"""

from posterm.host.store.books import check_ledger, daily_spend_from_trades, local_day
from posterm.host.store.queries import Tx, code_hash
from posterm.host.store.sqlite import SCHEMA, Store



def is_postgres_url(value: object) -> bool:
    """Whether ``value`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(value, str) and value.lower().startswith(("postgresql://", "postgres://"))


def open_store(db):
    """The store for ``db``: a ``postgresql://`` URL opens :class:`.postgres.Store`, anything
    else is a SQLite file (:class:`.sqlite.Store`)."""
    if is_postgres_url(db):
        from posterm.host.store.postgres import Store as PgStore

        return PgStore(db)
    return Store(db)


def is_store_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the database's own (SQLite's or psycopg's), without importing psycopg."""
    import sqlite3
    import sys

    pg = sys.modules.get("psycopg")
    return isinstance(exc, sqlite3.Error) or (pg is not None and isinstance(exc, pg.Error))


__all__ = ["SCHEMA", "Store", "Tx", "check_ledger", "code_hash", "daily_spend_from_trades", "is_postgres_url",
           "is_store_error", "local_day", "open_store"]
