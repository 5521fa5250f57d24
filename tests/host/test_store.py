"""The host's store: one commit per terminal request, nested writes as savepoints, the
daily-spend totals (kept, rebuilt for an older database, checked), file modes."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostStatus as S
from posterm.host import Host
from posterm.host.store import open_store
from tests.host.conftest import CODE
from tests.host.test_host import enter_pin, pay, query


def test_each_request_is_one_commit(host, term):
    def commits(fn):
        before = host.store.commits
        r = fn()
        return host.store.commits - before, r

    n, r = commits(lambda: pay(term, 100, order="ONE-1"))
    assert (n, r.status) == (1, S.APPROVED)
    n, r = commits(lambda: pay(term, 100, CODE[3], order="ONE-2"))
    assert (n, r.status) == (1, S.NEED_PIN)
    n, r = commits(lambda: enter_pin(term, "ONE-2", CODE[3]))
    assert (n, r.status) == (1, S.APPROVED)
    assert commits(lambda: query(term, "ONE-1"))[0] == 1
    n, r = commits(lambda: term.request(h.HostRefund(terminal_id=term.terminal_id, order_id="ONE-1", refund_id="OR-1",
                                                     amount_minor=50, currency="CNY"), 5))
    assert n == 1 and r.refunded_total_minor == 50


def test_the_ksn_and_the_payment_commit_together(host, term):
    signed = term.sign(h.AuthRequest(terminal_id=term.terminal_id, order_id="TOG-1", amount_minor=100, currency="CNY",
                                     payment_code=CODE[1]))
    db = host.store.read()
    before = [tuple(r) for r in db.execute("SELECT counter FROM ksn_seen").fetchall()]
    if host.store.dialect == "sqlite":
        # A trigger every connection sees (the request runs on the group committer's): the capture fails half-way ...
        raw = sqlite3.connect(host.store.path)
        raw.execute("CREATE TRIGGER boom BEFORE INSERT ON ledger BEGIN SELECT RAISE(ABORT, 'disk gone'); END")
        raw.commit()
        with pytest.raises(sqlite3.IntegrityError):
            host.handle(signed)
        raw.execute("DROP TRIGGER boom")
        raw.commit()
        raw.close()
    else:
        import psycopg

        with host.store.write() as w:  # a trigger every connection of the host's pool meets
            w.execute("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
                      "$$ BEGIN RAISE EXCEPTION 'disk gone'; END $$")
            w.execute("CREATE TRIGGER boom BEFORE INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION boom()")
        with pytest.raises(psycopg.errors.RaiseException):
            host.handle(signed)
        with host.store.write() as w:
            w.execute("DROP TRIGGER boom ON ledger")
    # ... so its KSN was not consumed
    assert [tuple(r) for r in db.execute("SELECT counter FROM ksn_seen").fetchall()] == before
    assert db.execute("SELECT COUNT(*) FROM trades WHERE order_id = 'TOG-1'").fetchone()[0] == 0
    assert host.handle(signed).status is S.APPROVED  # and the very request can still be processed, once
    assert isinstance(host.handle(signed), h.HostError)


def test_nested_write_is_a_savepoint(host_db):
    store = open_store(host_db)
    first = store.commits
    with store.write() as db:
        db.execute("INSERT INTO meta VALUES ('outer', '1')")
        with pytest.raises(RuntimeError):
            with store.write() as inner:
                inner.execute("INSERT INTO meta VALUES ('inner', '1')")
                raise RuntimeError
        with store.write() as inner:
            inner.execute("INSERT INTO meta VALUES ('inner2', '1')")
    keys = {r[0] for r in store.read().execute("SELECT key FROM meta")}
    assert {"outer", "inner2"} <= keys and "inner" not in keys
    assert store.commits == first + 1
    store.close()


def test_refunds_and_cancels_give_back_daily_limit(host, term):
    host.set_limits("demo-001", daily_limit=1000, password_free=1000)
    pay(term, 600, order="DL-1")
    pay(term, 400, order="DL-2")
    assert pay(term, 1).reason == h.Reason.OVER_DAILY_LIMIT
    term.request(h.HostRefund(terminal_id=term.terminal_id, order_id="DL-1", refund_id="DLR-1", amount_minor=100,
                              currency="CNY"), 5)
    assert pay(term, 100, order="DL-3").status is S.APPROVED
    assert pay(term, 1).reason == h.Reason.OVER_DAILY_LIMIT
    term.request(h.HostCancel(terminal_id=term.terminal_id, order_id="DL-2"), 5)
    assert pay(term, 400, order="DL-4").status is S.APPROVED
    assert pay(term, 1).reason == h.Reason.OVER_DAILY_LIMIT


def test_daily_spend_rebuilt_for_an_older_database(tmp_path, clock):
    path = tmp_path / "old.db"
    host = Host.open(path, clock=clock)
    from tests.host.conftest import terminal

    term = terminal(host)
    host.set_limits("demo-001", daily_limit=1000, password_free=1000)
    pay(term, 700, order="OLD-1")
    host.close()
    db = sqlite3.connect(path)  # a database from before the daily_spend table
    db.execute("DROP TABLE daily_spend")
    db.execute("DELETE FROM meta")
    db.commit()
    db.close()
    host = Host.open(path, clock=clock)
    term = terminal(host, "T0000002")
    assert host.check_books() == []
    assert pay(term, 301).reason == h.Reason.OVER_DAILY_LIMIT
    assert pay(term, 300).status is S.APPROVED
    host.close()


def test_books_check_sees_a_wrong_daily_total(host, term):
    pay(term, 100)
    with host.store.write() as db:
        db.execute("UPDATE daily_spend SET spent_minor = spent_minor + 1")
    problems = host.check_books()
    assert problems and "daily spend of demo-001" in problems[0]
    with host.store.write() as db:
        db.execute("UPDATE daily_spend SET spent_minor = spent_minor - 1")


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_database_and_hsm_are_private(tmp_path, monkeypatch, umask):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path / "home"))  # --db outside POSTERM_HOME
    old = os.umask(umask)
    try:
        host = Host.open(tmp_path / "elsewhere" / "host.db")
    finally:
        os.umask(old)
    db = host.store.path
    host.store.conn().execute("INSERT INTO meta VALUES ('x', 'y')")  # the WAL and its index exist now
    for p in (db, db.with_name("host.db-wal"), db.with_name("host.db-shm")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    hsm = db.parent / "hsm"
    assert stat.S_IMODE(hsm.stat().st_mode) == 0o700
    files = list(hsm.iterdir())
    assert {p.name for p in files} == {"hsm.keys", "hsm.keys.devkey", "hsm.lock",   # the HSM's allocation lock
                                       "security.keys", "security.keys.devkey",
                                       "security.keys.lock"}   # the security centre's keys (code MAC, seals)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    host.close()


def test_cli_on_a_new_db_outside_home_makes_private_files(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from posterm.cli import main

    monkeypatch.setenv("POSTERM_HOME", str(tmp_path / "home"))
    old = os.umask(0o022)
    try:
        r = CliRunner().invoke(main, ["host", "trades", "--db", str(tmp_path / "x" / "host.db")])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((tmp_path / "x" / "host.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "x" / "hsm").stat().st_mode) == 0o700
