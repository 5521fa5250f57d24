from __future__ import annotations

import pytest

from posterm.crypto.pinpad import SecureModule
from posterm.emulator.hostlink import SignedHostLink
from posterm.host import Host
from tests import pgstore

# the store each host test runs on: SQLite and PostgreSQL (tests/pgstore.py)
store_kind, host_db, demo_db = pgstore.store_kind, pgstore.host_db, pgstore.demo_db

CODE = {n: f"28990000000000000{n}" for n in range(1, 9)}
PIN = "147258"


class Clock:
    def __init__(self, now: float = 1_795_000_000.0) -> None:  # 2026-11-18 ~15:46 Asia/Shanghai
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def terminal(host: Host, tid: str = "T0000001", client=None) -> SignedHostLink:
    """A logged-on terminal with a new PIN pad. A new pad gets a new initial key (a new key
    id): the terminal's current key in a pad with no memory of its counter would re-use KSNs
    an earlier pad of this terminal used, and the host refuses them as replays."""
    sm = SecureModule()
    sm.inject_kbpk(host.hsm.kbpk_for_injection(tid))
    sm.load_key_block(host.hsm.issue_initial_key(tid).block)
    link = SignedHostLink(sm, client or host.client(), terminal_id=tid, merchant_id="M100000001",
                          firmware_version="test 1", location="CN-SH")
    link.logon()
    return link


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def host(demo_db, clock):
    """A host on each store: SQLite (a file) and PostgreSQL (a database of its own; skipped
    without POSTERM_TEST_PG, failed under CI=true without it)."""
    h = Host.open(demo_db, clock=clock, outage_seconds=30.0)
    yield h
    assert h.check_books() == []
    h.close()


@pytest.fixture
def term(host):
    return terminal(host)


SUPPORT_PASSWORD = "support-password-1"


def support(host: Host, name: str = "support"):
    """Support staff's verification for a key operation (the operator is added once per host)."""
    from posterm.host import security

    if host.store.view().operator(name) is None:
        security.add_operator(host.ctx, name, SUPPORT_PASSWORD)
    return security.OperatorProof(name, SUPPORT_PASSWORD)


def db_arg(host: Host) -> str:
    """What ``--db`` names ``host``'s database by: its file, or its URL."""
    return str(host.store.path) if host.store.dialect == "sqlite" else host.store.url


def raw_execute(db, sql: str, args: tuple = ()) -> None:
    """Run one statement on ``db`` (a file or a URL) on a connection of its own, outside the
    host (``?`` placeholders): what a tamperer with database access does."""
    db = str(db)
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True, connect_timeout=10) as c:
            c.execute(sql.replace("?", "%s"), args)
        return
    import sqlite3

    c = sqlite3.connect(db, timeout=30)
    with c:
        c.execute(sql, args)
    c.close()


def db_dump(db) -> str:
    """Everything in ``db`` (a file or a URL) as text: SQLite's dump, or every table's rows on
    PostgreSQL with byte strings shown as latin-1 text (so a secret kept in clear in one shows)."""
    db = str(db)
    if db.startswith("postgresql://"):
        import psycopg

        from posterm.host.store.schema import TABLES

        out = []
        with psycopg.connect(db, autocommit=True, connect_timeout=10) as c:
            for t in TABLES:
                for row in c.execute(f"SELECT * FROM {t}"):
                    out.append(repr([v.decode("latin-1") if isinstance(v, bytes) else v for v in row]))
        return "\n".join(out)
    import sqlite3

    c = sqlite3.connect(db)
    try:
        return "\n".join(c.iterdump())
    finally:
        c.close()


def raw_query(db, sql: str) -> list[tuple]:
    """The rows of one query on ``db`` (a file or a URL), on a connection of its own."""
    db = str(db)
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True, connect_timeout=10) as c:
            return [tuple(r) for r in c.execute(sql)]
    import sqlite3

    c = sqlite3.connect(db, timeout=30)
    try:
        return [tuple(r) for r in c.execute(sql)]
    finally:
        c.close()


def host_cli(db, *args, input=None) -> tuple[int, str, str]:
    """``posterm host ARGS --db DB`` in process: (exit code, stdout, stderr) apart."""
    from click.testing import CliRunner

    from posterm.cli import main

    try:
        runner = CliRunner(mix_stderr=False)  # click 8.1
    except TypeError:
        runner = CliRunner()                  # click 8.2: apart already
    r = runner.invoke(main, ["host", *args, "--db", str(db)], input=input)
    return r.exit_code, r.stdout, r.stderr
