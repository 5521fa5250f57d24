"""The PostgreSQL store's own guarantees: a conflict is retried, bounded; unrelated accounts
never wait for each other; one account's payments take turns; the pool has a cap; the URL's
password is never shown. Every test runs on a database of its own (tests/pgstore.py)."""

from __future__ import annotations

import threading
import uuid

import pytest

from posterm.host import Host
from tests import pgstore
from tests.host.conftest import terminal
from tests.host.test_host import pay

WAIT = 30.0  # every wait below is for an event, bounded


@pytest.fixture
def url(tmp_path, monkeypatch):
    with pgstore.store_db("postgresql", tmp_path, monkeypatch, "demo") as u:   # the demo already in: no seeding per test
        yield u


@pytest.fixture
def host(url):
    h = Host.open(url)
    h.add_account("alice", "Alice", balance_minor=10_000)
    h.add_account("bob", "Bob", balance_minor=10_000)
    yield h
    assert h.check_books() == []
    h.close()


def _move(tx, account, delta):
    """Change a balance as the host does: with its two ledger rows (the books stay balanced)."""
    txn = f"test:{uuid.uuid4().hex}"
    tx.add_balance(account, delta)
    tx.ledger_entry(txn, f"customer:{account}", delta, "CNY", "test", 0.0)
    tx.ledger_entry(txn, "merchant:M100000001", -delta, "CNY", "test", 0.0)


def _other(url):
    """A second connection, outside the store: the concurrent writer."""
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def test_a_serialization_failure_is_retried_on_a_new_snapshot(host, url):
    store = host.store
    calls = []

    def unit():
        calls.append(1)
        with store.transaction() as tx:
            tx.conn.execute("SELECT 1 FROM merchants LIMIT 1")  # the snapshot is taken here
            if len(calls) == 1:  # another connection changes alice's row after our snapshot ...
                with _other(url) as c:
                    c.execute("UPDATE accounts SET name = 'Alice B' WHERE id = 'alice'")
            acct = tx.account("alice")  # ... so locking it FOR UPDATE fails (40001) the first time
            _move(tx, "alice", -100)
            return acct["name"]

    before = store.retries
    assert store.run(unit) == "Alice B"   # the second run saw the other's change
    assert len(calls) == 2 and store.retries == before + 1
    assert host.account("alice")["balance_minor"] == 9_900  # once, not twice


def test_the_retry_is_bounded(host, url):
    import psycopg

    from posterm.host.store.postgres import MAX_TRIES

    store = host.store
    calls = []

    def always_conflicts():
        calls.append(1)
        with store.transaction() as tx:
            tx.conn.execute("SELECT 1 FROM merchants LIMIT 1")
            with _other(url) as c:
                c.execute("UPDATE accounts SET pin_tries = 0 WHERE id = 'alice'")
            tx.account("alice")

    with pytest.raises(psycopg.errors.SerializationFailure):
        store.run(always_conflicts)
    assert len(calls) == MAX_TRIES


def test_two_connections_forced_to_deadlock_are_retried(host):
    """Two units of work lock alice and bob in opposite orders; PostgreSQL aborts one (40P01)
    and the store runs it again: both end committed, each exactly once."""
    store = host.store
    locked = [threading.Event(), threading.Event()]
    out, errors = {}, []

    def unit(me, first, second):
        tries = 0

        def body():
            nonlocal tries
            tries += 1
            with store.transaction() as tx:
                tx.account(first)
                if tries == 1:
                    locked[me].set()
                    assert locked[1 - me].wait(WAIT)  # both hold their first row: now cross
                tx.account(second)
                _move(tx, first, -1)
                _move(tx, second, -1)
            return tries

        try:
            out[me] = store.run(body)
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = [threading.Thread(target=unit, args=(0, "alice", "bob")), threading.Thread(target=unit, args=(1, "bob", "alice"))]
    for x in t:
        x.start()
    for x in t:
        x.join(WAIT * 2)
    assert not errors and len(out) == 2
    assert sorted(out.values())[1] >= 2  # one of them ran again
    assert host.account("alice")["balance_minor"] == host.account("bob")["balance_minor"] == 10_000 - 2


def test_unrelated_accounts_do_not_wait_for_each_other(host):
    """While one transaction holds alice's row, a whole unit of work on bob commits (no lock
    wait, no retry); then the first commits too."""
    store = host.store
    holding, done = threading.Event(), threading.Event()
    errors = []

    def hold_alice():
        try:
            with store.transaction() as tx:
                tx.account("alice")
                _move(tx, "alice", -5)
                holding.set()
                assert done.wait(WAIT)  # bob's payment finishes while alice's row is locked
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=hold_alice)
    t.start()
    assert holding.wait(WAIT)
    before = store.retries

    def bob():
        with store.transaction() as tx:
            tx.account("bob")
            _move(tx, "bob", -7)

    store.run(bob)
    done.set()
    t.join(WAIT)
    assert not errors and store.retries == before
    assert host.account("alice")["balance_minor"] == 9_995 and host.account("bob")["balance_minor"] == 9_993


def test_one_accounts_payments_take_turns(host, url):
    """A second transaction on alice waits for the first's row lock, then (its snapshot being
    older than the first's commit) is run again and sees the first's change."""
    store = host.store
    holding, waiting = threading.Event(), threading.Event()
    errors = []

    def first():
        try:
            with store.transaction() as tx:
                tx.account("alice")
                _move(tx, "alice", -100)
                holding.set()
                assert waiting.wait(WAIT)
        except BaseException as exc:
            errors.append(exc)

    seen = []

    def second():
        with store.transaction() as tx:
            seen.append(tx.account("alice")["balance_minor"])
            _move(tx, "alice", -200)

    t1 = threading.Thread(target=first)
    t1.start()
    assert holding.wait(WAIT)
    before = store.retries
    t2 = threading.Thread(target=lambda: store.run(second))
    t2.start()
    with _other(url) as c:  # the event: the second is blocked on alice's row lock
        for _ in range(3000):
            row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock'").fetchone()
            if row[0]:
                break
            c.execute("SELECT pg_sleep(0.01)")
        assert row[0] == 1, "the second transaction never waited for alice's row"
    waiting.set()
    t1.join(WAIT)
    t2.join(WAIT)
    assert not errors and not t2.is_alive()
    assert seen[-1] == 9_900 and store.retries == before + 1  # it ran again on the first's result
    assert host.account("alice")["balance_minor"] == 9_700


def test_payments_through_a_small_pool_from_many_threads(tmp_path, monkeypatch):
    """POSTERM_PG_POOL caps the connections; 12 terminals paying at once through 2 all finish."""
    from posterm.host.store.postgres import pool_size

    monkeypatch.setenv("POSTERM_PG_POOL", "2")
    assert pool_size() == 2
    with pgstore.store_db("postgresql", tmp_path, monkeypatch) as url:
        host = Host.open(url)
        try:
            assert host.store.cap == 2
            terms = [terminal(host, f"T{n:07d}") for n in range(1, 13)]
            answers = []

            def go(t):
                for i in range(3):
                    answers.append(pay(t, 10, order=f"{t.terminal_id}-{i}").status)

            threads = [threading.Thread(target=go, args=(t,)) for t in terms]
            for x in threads:
                x.start()
            for x in threads:
                x.join(WAIT * 4)
            assert len(answers) == 36 and {a.name for a in answers} == {"APPROVED"}
            assert host.account("demo-001")["balance_minor"] == 1_000_000 - 360
            assert host.check_books() == []
        finally:
            host.close()


@pytest.mark.parametrize("raw", ["0", "-1", "x", "201"])
def test_a_bad_pool_size_is_refused(raw):
    from posterm.host.store.postgres import pool_size

    with pytest.raises(ValueError, match="POSTERM_PG_POOL"):
        pool_size({"POSTERM_PG_POOL": raw})


def test_the_password_is_never_shown():
    from posterm.host.store.postgres import StoreUnavailable, Store, redact

    assert redact("postgresql://u:hunter22@h:5/d?sslmode=require&password=hunter22") == \
        "postgresql://u:***@h:5/d?sslmode=require&password=%2A%2A%2A"
    with pytest.raises(StoreUnavailable) as e:
        Store("postgresql://u:hunter22@127.0.0.1:1/d")
    assert "hunter22" not in str(e.value) and "***" in str(e.value)


@pytest.fixture
def empty_url():
    with pgstore.fresh_database(None) as u:   # not a template's copy: the migrations run here
        yield u


def test_migrations_are_numbered_and_applied_once(empty_url):
    from posterm.host.store import open_store
    from posterm.host.store.schema import LATEST

    url = empty_url
    s = open_store(url)
    try:
        assert s.read().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(LATEST)
        commits = s.commits
    finally:
        s.close()
    s = open_store(url)  # opened again: nothing to migrate, nothing written
    try:
        assert s.commits == 0 and commits >= LATEST
    finally:
        s.close()
