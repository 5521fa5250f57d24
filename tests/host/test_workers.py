"""Several host processes on one database (posterm.host.workers, `host serve --workers N`):
the KSN replay guard, one-time payment codes and PIN tries hold across processes; kill -9
of a worker mid-payment loses and doubles nothing; the supervisor restarts the dead within
a cap; every test leaves no worker process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostStatus as S, pin_pan
from posterm.crypto.pinpad import SecureModule
from posterm.emulator.hostlink import SignedHostLink
from posterm.errors import PosError
from posterm.host import Host
from posterm.host.client import TcpHostClient
from posterm.host.workers import Supervisor, TooManyRestarts, WorkerConfig
from tests.host.conftest import CODE, PIN, raw_query


def _workers_alive() -> list[int]:
    """Worker processes (any parent) started by this test process's supervisors still running."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            # a PostgreSQL URL is in a worker's environment, never on its command line
            env = (entry / "environ").read_bytes() if b"posterm.host.workers" in cmd else b""
        except OSError:
            continue
        if b"posterm.host.workers" in cmd and str(_TAG).encode() in cmd + env:
            out.append(int(entry.name))
    return out


_TAG = None  # the database of the running test: its workers name it on their command line (or environment)


@pytest.fixture
def db(demo_db):
    """The shared database, on each store (PostgreSQL: a copy of the demo template)."""
    global _TAG
    path = demo_db
    Host.open(path).close()     # the demo data and the HSM, before any worker opens it
    _TAG = path
    yield path
    end = time.monotonic() + 30
    while _workers_alive() and time.monotonic() < end:
        time.sleep(0.05)
    assert _workers_alive() == [], "a worker process outlived its test"
    with Host.open(path, demo=False, group_commit=False) as host:
        assert host.check_books() == []


def _config(db: Path, **kw) -> WorkerConfig:
    return WorkerConfig(db=str(db), **kw)


@pytest.fixture
def two(db):
    """Two separate single-worker supervisors on one database: a request can be sent to a
    chosen process (with --workers N the kernel picks)."""
    a = Supervisor(_config(db), 1).start()
    try:
        b = Supervisor(_config(db), 1).start()
    except BaseException:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


def _module(host: Host, tid: str) -> SecureModule:
    sm = SecureModule()
    sm.inject_kbpk(host.hsm.kbpk_for_injection(tid))
    sm.load_key_block(host.hsm.issue_initial_key(tid).block)
    return sm


def _links(db: Path, addresses: list[str], tids: tuple[str, ...] = ("T0000001",)
           ) -> tuple[list[SignedHostLink], list[TcpHostClient]]:
    """One terminal logged on to each address: the same one (one PIN pad) by default, else
    terminal ``tids[i]`` to address i (two requests at once from one PIN pad would race
    for the KSN order: the later counter first makes the other a replay)."""
    with Host.open(db, demo=False, group_commit=False) as host:
        modules = {tid: _module(host, tid) for tid in tids}
    clients = [TcpHostClient(a) for a in addresses]
    links = [SignedHostLink(modules[tids[i % len(tids)]], c, terminal_id=tids[i % len(tids)], merchant_id="M100000001",
                            firmware_version="test", location="CN-SH") for i, c in enumerate(clients)]
    for link in links:
        link.logon()
    return links, clients


def _together(*calls):
    """Run the calls at the same moment (a barrier), return their results (or exceptions)."""
    barrier = threading.Barrier(len(calls))
    out: list[object] = [None] * len(calls)

    def run(i, fn):
        barrier.wait(30)
        try:
            out[i] = fn()
        except BaseException as exc:  # noqa: BLE001
            out[i] = exc
    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _pay(order: str, code: str = CODE[1], amount: int = 100, tid: str = "T0000001") -> h.AuthRequest:
    return h.AuthRequest(terminal_id=tid, order_id=order, amount_minor=amount, currency="CNY", payment_code=code)


def _trades(db: Path, order: str) -> list[tuple]:
    return raw_query(db, f"SELECT trade_no, status FROM trades WHERE order_id = '{order}'")


def test_same_ksn_at_two_workers_one_is_refused(db, two):
    (la, lb), clients = _links(db, [two[0].address, two[1].address])
    signed = la.sign(_pay("W-KSN-1"))          # one request, one KSN, sent to both processes at once
    ra, rb = _together(lambda: clients[0].request(signed, 30), lambda: clients[1].request(signed, 30))
    replies = sorted([ra, rb], key=lambda r: type(r).__name__)
    assert isinstance(replies[0], h.AuthResponse) and replies[0].status is S.APPROVED
    assert isinstance(replies[1], h.HostError) and replies[1].reason == h.Reason.REPLAY_DETECTED
    assert len(_trades(db, "W-KSN-1")) == 1
    for c in clients:
        c.close()


def test_same_one_time_code_at_two_workers_pays_once(db, two):
    with Host.open(db, demo=False, group_commit=False) as host:
        code = host.issue_code("demo-001")
    (la, lb), clients = _links(db, [two[0].address, two[1].address], ("T0000001", "T0000002"))
    ra, rb = _together(lambda: la.request(_pay("W-CODE-A", code), 30),
                       lambda: lb.request(_pay("W-CODE-B", code, tid="T0000002"), 30))
    statuses = sorted([ra.status.name, rb.status.name])
    assert statuses == ["APPROVED", "DECLINED"]
    declined = ra if ra.status is S.DECLINED else rb
    assert declined.reason == h.Reason.CODE_USED
    approved = [t for o in ("W-CODE-A", "W-CODE-B") for t in _trades(db, o) if t[1] == "APPROVED"]
    assert len(approved) == 1
    for c in clients:
        c.close()


def test_same_order_at_two_workers_is_one_trade(db, two):
    (la, lb), clients = _links(db, [two[0].address, two[1].address], ("T0000001", "T0000002"))
    ra, rb = _together(lambda: la.request(_pay("W-ORDER-1"), 30),
                       lambda: lb.request(_pay("W-ORDER-1", tid="T0000002"), 30))   # two terminals of the merchant
    assert ra.status is S.APPROVED and rb.status is S.APPROVED and ra.trade_no == rb.trade_no
    assert len(_trades(db, "W-ORDER-1")) == 1
    for c in clients:
        c.close()


def _pin(link: SignedHostLink, order: str, pin: str, code: str) -> h.AuthResponse:
    sm = link.module
    sm.begin_pin_entry(pin_pan(code[-4:]))
    for d in pin:
        sm.press(d)
    e = sm.finish()
    return link.request(h.PinVerify(terminal_id=link.terminal_id, order_id=order, pin_block=e.block, pin_ksn=e.ksn,
                                    pin_format=e.format), 30)


def test_pin_tries_count_across_workers(db, two):
    (la, lb), clients = _links(db, [two[0].address, two[1].address])
    assert la.request(_pay("W-PIN-1", CODE[3]), 30).status is S.NEED_PIN
    assert _pin(la, "W-PIN-1", "000000", CODE[3]).pin_tries_left == 2
    assert _pin(lb, "W-PIN-1", "111111", CODE[3]).pin_tries_left == 1     # the other process counts on
    locked = _pin(la, "W-PIN-1", "222222", CODE[3])
    assert locked.status is S.DECLINED and locked.reason == h.Reason.PIN_LOCKED
    assert lb.request(_pay("W-PIN-2", CODE[3]), 30).status is S.NEED_PIN
    r = _pin(lb, "W-PIN-2", PIN, CODE[3])                                  # locked for every process
    assert r.status is S.DECLINED and r.reason == h.Reason.PIN_LOCKED
    for c in clients:
        c.close()


@pytest.mark.parametrize("store_kind", ["sqlite"])   # the store does not matter here: SQLite only, to keep the PostgreSQL run short
def test_kill_9_of_a_worker_mid_payment_loses_and_doubles_nothing(db):
    """Four terminals pay without pause through two workers; one worker is killed (SIGKILL)
    among them; the supervisor restarts it. Every approval a terminal saw is in the books,
    every order whose answer was lost is queried and found approved (charged once) or
    absent (not charged), and the books balance."""
    tids = [f"T00000{n:02d}" for n in range(1, 5)]
    with Host.open(db, demo=False, group_commit=False) as host:
        before = host.account("demo-001")["balance_minor"]
        modules = {tid: _module(host, tid) for tid in tids}
    approved: list[str] = []
    lost: list[tuple[str, str]] = []         # (terminal, order) whose answer never came
    lock = threading.Condition()
    stop = threading.Event()
    with Supervisor(_config(db), 2).start() as sup:
        def pay(tid: str) -> None:
            link = SignedHostLink(modules[tid], TcpHostClient(sup.address), terminal_id=tid,
                                  merchant_id="M100000001", firmware_version="test", location="CN-SH")
            n = 0
            while not stop.is_set() and n < 2000:
                n += 1
                order = f"K-{tid}-{n}"
                try:
                    r = link.request(_pay(order, tid=tid), 30)
                except PosError:
                    with lock:
                        lost.append((tid, order))
                    link.logged_on = False   # a new connection: maybe another worker
                    continue
                assert r.status is S.APPROVED, r
                with lock:
                    approved.append(order)
                    lock.notify_all()
            link.client.close()
        threads = [threading.Thread(target=pay, args=(tid,)) for tid in tids]
        for t in threads:
            t.start()
        try:
            with lock:
                assert lock.wait_for(lambda: len(approved) >= 40, 120)
            victim = sup.pids()[0]
            os.kill(victim, signal.SIGKILL)
            sup._workers[0].proc.wait(30)
            with lock:
                seen = len(approved)
                assert lock.wait_for(lambda: len(approved) >= seen + 40, 120)   # the other worker serves on
            sup.check()
            assert sup.restarts == 1 and victim not in sup.pids()
            with lock:
                seen = len(approved)
                assert lock.wait_for(lambda: len(approved) >= seen + 20, 120)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        links, clients = {}, {}
        print(f"orders approved {len(approved)}, answers lost to the kill {len(lost)}")
        for tid, order in lost:   # recover: what does the host say of each order whose answer was lost?
            if tid not in links:
                clients[tid] = TcpHostClient(sup.address)
                links[tid] = SignedHostLink(modules[tid], clients[tid], terminal_id=tid, merchant_id="M100000001",
                                            firmware_version="test", location="CN-SH")
            r = links[tid].request(h.HostQuery(terminal_id=tid, order_id=order), 30)
            assert r.status in (S.APPROVED, S.NOT_FOUND), r
            if r.status is S.APPROVED:
                approved.append(order)
        for c in clients.values():
            c.close()
    rows = raw_query(db, "SELECT order_id, status, amount_minor FROM trades WHERE order_id LIKE 'K-%'")
    in_books = {o for o, s, _ in rows if s == "APPROVED"}
    assert set(approved) == in_books and len(approved) == len(set(approved))   # nothing lost, nothing twice
    assert all(s == "APPROVED" for _, s, _ in rows)
    with Host.open(db, demo=False, group_commit=False) as host:
        assert host.account("demo-001")["balance_minor"] == before - sum(a for _, _, a in rows)
        assert host.check_books() == []


@pytest.mark.parametrize("store_kind", ["sqlite"])   # the store does not matter here: SQLite only, to keep the PostgreSQL run short
def test_restarts_are_capped(db):
    sup = Supervisor(_config(db), 1, max_restarts=2, restart_window=600).start()
    try:
        for _ in range(2):
            w = sup._workers[0]
            os.kill(w.proc.pid, signal.SIGKILL)
            w.proc.wait(30)
            sup.check()
        assert sup.restarts == 2
        w = sup._workers[0]
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait(30)
        with pytest.raises(TooManyRestarts):
            sup.check()
        assert all(w.proc.poll() is not None for w in sup._workers)   # it stopped the rest
    finally:
        sup.stop()


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _serve(db: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "posterm", "host", "serve", "--db", str(db), "--no-demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = proc.stdout.readline().strip()
    if not address.startswith("tcp://"):
        proc.kill()
        proc.wait(30)
        raise AssertionError(f"serve did not start: {address!r} {proc.stderr.read()}")
    return proc, address


def _gone(pids: list[int], timeout: float = 30) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(Path(f"/proc/{p}").exists() and b"posterm.host.workers" in Path(f"/proc/{p}/cmdline").read_bytes()
                   for p in pids if Path(f"/proc/{p}").exists()):
            return True
        time.sleep(0.05)
    return False


def test_serve_workers_pays_and_stops_on_sigterm(db):
    proc, address = _serve(db, "--workers", "2")
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2
        (link,), clients = _links(db, [address])
        assert link.request(_pay("W-CLI-1"), 30).status is S.APPROVED
        clients[0].close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert _gone(workers)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("store_kind", ["sqlite"])   # the store does not matter here: SQLite only, to keep the PostgreSQL run short
def test_workers_follow_a_killed_supervisor(db):
    proc, _ = _serve(db, "--workers", "2")
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2
        proc.kill()                    # kill -9 of the supervisor: its workers' lifeline ends
        proc.wait(30)
        assert _gone(workers)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
