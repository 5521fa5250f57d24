"""Group commit (posterm.host.store.group): requests queued together share one COMMIT, a
request's failure undoes only its own savepoint, and no answer leaves before its commit."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostStatus as S
from posterm.errors import Disconnected, TransportError
from posterm.host import Host
from posterm.host.client import TcpHostClient
from posterm.host.server import serve
from posterm.host.store import Store
from posterm.host.store.group import CommitFailed, GroupCommit
from tests.host.conftest import CODE, terminal


def _wait_queued(gc: GroupCommit, n: int, timeout: float = 30.0) -> None:
    """Until ``n`` jobs wait in the queue (bounded)."""
    end = time.monotonic() + timeout
    while len(gc._queue) < n:
        assert time.monotonic() < end, f"only {len(gc._queue)} of {n} queued"
        time.sleep(0.005)


def _insert(key: str):
    def fn(tx):
        tx.conn.execute("INSERT INTO meta VALUES (?, '1')", (key,))
        return key
    return fn


def _keys(path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT key FROM meta")}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "g.db")
    yield s
    s.close()


def _blocked_batch(gc: GroupCommit):
    """A first job that holds the committer until the returned event is set (so what is
    queued meanwhile makes the next batch), and the thread waiting on it."""
    release, started = threading.Event(), threading.Event()

    def blocker(tx):
        started.set()
        assert release.wait(30)
        return "first"
    t = threading.Thread(target=gc.run, args=(blocker,))
    t.start()
    assert started.wait(30)
    return release, t


def test_requests_queued_together_share_one_commit(store):
    gc = GroupCommit(store, max_batch=64)
    try:
        release, first = _blocked_batch(gc)
        commits = store.commits
        results: dict[str, object] = {}
        threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, gc.run(_insert(k)))) for k in
                   (f"k{i}" for i in range(10))]
        for t in threads:
            t.start()
        _wait_queued(gc, 10)
        release.set()
        for t in [first, *threads]:
            t.join(30)
        assert results == {f"k{i}": f"k{i}" for i in range(10)}
        assert store.commits == commits + 2          # the blocker's batch, then the ten in one
        assert gc.batches == 2 and gc.largest == 10
        assert {f"k{i}" for i in range(10)} <= _keys(store.path)
    finally:
        gc.close()


def test_batch_size_is_bounded(store):
    gc = GroupCommit(store, max_batch=4)
    try:
        release, first = _blocked_batch(gc)
        threads = [threading.Thread(target=gc.run, args=(_insert(f"b{i}"),)) for i in range(10)]
        for t in threads:
            t.start()
        _wait_queued(gc, 10)
        release.set()
        for t in [first, *threads]:
            t.join(30)
        assert gc.largest == 4 and gc.batches == 1 + 3   # 4 + 4 + 2
    finally:
        gc.close()


def test_a_failing_request_rolls_back_only_its_savepoint(store):
    gc = GroupCommit(store)
    try:
        release, first = _blocked_batch(gc)
        errors: dict[str, BaseException] = {}

        def bad(tx):
            tx.conn.execute("INSERT INTO meta VALUES ('bad', '1')")
            raise RuntimeError("this request fails")

        def call(key, fn):
            try:
                gc.run(fn)
            except BaseException as exc:  # noqa: BLE001
                errors[key] = exc
        threads = [threading.Thread(target=call, args=(k, fn)) for k, fn in
                   (("a", _insert("a")), ("bad", bad), ("c", _insert("c")))]
        for t in threads:
            t.start()
            _wait_queued(gc, threads.index(t) + 1)   # in this order, in one batch
        release.set()
        for t in [first, *threads]:
            t.join(30)
        assert set(errors) == {"bad"} and isinstance(errors["bad"], RuntimeError)
        keys = _keys(store.path)
        assert {"a", "c"} <= keys and "bad" not in keys
        assert gc.batches == 2 and gc.largest == 2
    finally:
        gc.close()


def test_a_failed_commit_fails_every_request_of_the_batch(store):
    gc = GroupCommit(store)

    def failing_commit(c):
        raise sqlite3.OperationalError("disk I/O error (injected)")
    gc.commit = failing_commit
    try:
        with pytest.raises(CommitFailed):
            gc.run(_insert("lost"))
        assert "lost" not in _keys(store.path)
        del gc.commit                      # the class's COMMIT again: the committer goes on
        assert gc.run(_insert("kept")) == "kept"
        assert "kept" in _keys(store.path)
    finally:
        gc.close()


def test_nested_and_in_transaction_calls_run_inline(store):
    gc = GroupCommit(store)
    try:
        assert gc.run(lambda tx: gc.run(_insert("inner"))) == "inner"   # on the committer: a savepoint
        with store.write():
            assert gc.run(_insert("caller")) == "caller"             # the caller's own transaction
        assert {"inner", "caller"} <= _keys(store.path)
    finally:
        gc.close()


def test_a_lone_request_commits_on_its_callers_thread(store):
    gc = GroupCommit(store)
    try:
        commits = store.commits
        assert gc.run(lambda tx: (_insert("lone")(tx), threading.current_thread())[1]) is threading.current_thread()
        assert gc.direct == 1 and gc.batches == 1 and store.commits == commits + 1
        assert "lone" in _keys(store.path)                 # committed before run returned
    finally:
        gc.close()


def test_requests_arriving_during_a_lone_batch_wait_for_the_committer(store):
    """While a lone request's batch runs on its caller's thread, the next queues (batches never
    overlap) and runs on the committer's thread once that batch has committed."""
    gc = GroupCommit(store)
    try:
        release, first = _blocked_batch(gc)               # the lone one, held in its savepoint
        ran_on: list[threading.Thread] = []
        t = threading.Thread(target=gc.run, args=(lambda tx: ran_on.append(threading.current_thread()),))
        t.start()
        _wait_queued(gc, 1)
        assert ran_on == [] and gc.batches == 0           # it waits: one batch at a time
        release.set()
        first.join(30)
        t.join(30)
        assert ran_on == [gc._thread] and gc.direct == 1 and gc.batches == 2
    finally:
        gc.close()


def test_without_the_direct_path_a_lone_request_goes_to_the_committer(store):
    gc = GroupCommit(store, direct=False)
    try:
        assert gc.run(lambda tx: threading.current_thread()) is gc._thread
        assert gc.direct == 0 and gc.batches == 1
    finally:
        gc.close()


def test_closed_committer_refuses(store):
    gc = GroupCommit(store)
    gc.close()
    with pytest.raises(CommitFailed):
        gc.run(_insert("late"))


# ---------------------------------------------------------------- through the host, over TCP


@pytest.fixture
def served(tmp_path):
    host = Host.open(tmp_path / "host.db")
    assert host.group_commit is not None   # on by default on SQLite
    server = serve(host)
    client = TcpHostClient(server.address)
    yield host, server, client
    client.close()
    server.close()
    assert host.check_books() == []
    host.close()


def _pay(order: str, code: str = CODE[1], amount: int = 100) -> h.AuthRequest:
    return h.AuthRequest(terminal_id="T0000001", order_id=order, amount_minor=amount, currency="CNY",
                         payment_code=code)


def _trade_count(host: Host, order: str) -> int:
    with sqlite3.connect(host.store.path) as db:
        return db.execute("SELECT COUNT(*) FROM trades WHERE order_id = ?", (order,)).fetchone()[0]


def test_a_failed_commit_sends_no_answer(served):
    host, _server, client = served
    term = terminal(host, client=client)
    gc = host.group_commit

    def failing_commit(c):
        raise sqlite3.OperationalError("disk I/O error (injected)")
    gc.commit = failing_commit
    with pytest.raises(Disconnected):     # no answer at all: certainly no approval
        term.request(_pay("GC-FAIL-1"), 5)
    assert _trade_count(host, "GC-FAIL-1") == 0
    del gc.commit
    r = term.request(_pay("GC-FAIL-1"), 5)  # the same order again: paid once, now
    assert r.status is S.APPROVED and _trade_count(host, "GC-FAIL-1") == 1


@pytest.mark.parametrize("direct", [True, False], ids=["on-callers-thread", "on-committer"])
def test_the_answer_leaves_only_after_commit_returns(served, direct):
    host, _server, client = served
    term = terminal(host, client=client)
    gc = host.group_commit
    gc.direct_path = direct
    direct_before = gc.direct
    events: list[str] = []
    answered = threading.Event()
    real = GroupCommit.commit

    def slow_commit(c):
        events.append("commit called")
        # Held here: an answer sent before the commit returns would arrive while we wait.
        if answered.wait(0.5):
            events.append("answer arrived during the commit")
        real(gc, c)
        events.append("commit returned")
    gc.commit = slow_commit
    got: list[h.HostMessage] = []

    def pay():
        got.append(term.request(_pay("GC-ORDER-1"), 30))
        events.append("answer")
        answered.set()
    t = threading.Thread(target=pay)
    t.start()
    t.join(60)
    assert got and got[0].status is S.APPROVED
    assert events == ["commit called", "commit returned", "answer"]
    assert (gc.direct > direct_before) is direct       # the path this case is about was taken


@pytest.mark.parametrize("direct", [True, False], ids=["on-callers-thread", "on-committer"])
def test_killed_between_savepoint_and_commit_answers_nothing(tmp_path, direct):
    """The host process dies (SIGKILL) after the request ran in its savepoint, before the
    batch's COMMIT: the terminal gets no answer and the trade is not in the books."""
    db_path = tmp_path / "host.db"
    Host.open(db_path).close()          # demo data and the HSM, before the child serves it
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: serve until killed by its own COMMIT
        try:
            os.close(r_fd)
            host = Host.open(db_path, demo=False)
            real = GroupCommit.commit

            def commit_or_die(c):
                if c.execute("SELECT 1 FROM trades WHERE order_id = 'GC-KILL-1'").fetchone():
                    os.kill(os.getpid(), signal.SIGKILL)
                real(host.group_commit, c)
            host.group_commit.commit = commit_or_die
            host.group_commit.direct_path = direct
            server = serve(host)
            os.write(w_fd, server.address.encode() + b"\n")
            threading.Event().wait(120)
        finally:
            os._exit(1)
    os.close(w_fd)
    try:
        with os.fdopen(r_fd, "rb") as r:
            address = r.readline().decode().strip()
        assert address.startswith("tcp://")
        host = Host.open(db_path, demo=False, group_commit=False)   # the parent: terminal keys, then the books
        client = TcpHostClient(address)
        term = terminal(host, client=client)
        before = host.account("demo-001")["balance_minor"]
        with pytest.raises((Disconnected, TransportError)):
            term.request(_pay("GC-KILL-1"), 10)
        client.close()
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert _trade_count(host, "GC-KILL-1") == 0
        assert host.account("demo-001")["balance_minor"] == before
        assert host.check_books() == []
        host.close()
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
