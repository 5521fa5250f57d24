"""A fleet over several processes (`posterm emulate --count N --processes K`): every terminal
pays, the children stop with the parent (also when it is killed), none is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from posterm.emulator.fleet import ProcessFleet, default_processes, shares
from posterm.emulator.runner import EmulatedTerminal, Fleet
from posterm.errors import ConfigError
from posterm.families.native.ecr import Terminal
from posterm.transport.fd import wait_ready

CODE = "289900000000000001"


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still running after ``timeout`` (polled: they are not our children to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


def test_default_processes_and_shares():
    assert [default_processes(n) for n in (1, 250, 251, 1000, 4096)] == [1, 1, 2, 4, 17]
    assert shares(300, 2) == [(1, 150), (151, 150)]
    assert shares(7, 3) == [(1, 3), (4, 2), (6, 2)]


def test_bad_fleet_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="--processes"):
        ProcessFleet.start(2, processes=3, home=tmp_path)
    with pytest.raises(ConfigError, match="--count"):
        ProcessFleet.start(4097, processes=2, home=tmp_path)


def test_a_fleet_over_2_processes_each_pay_once(tmp_path):
    """Terminals over two processes, each paying once (python -m posterm.bench fleet pays 1,000)."""
    count = 80
    home = tmp_path / "home"
    with ProcessFleet.start(count, processes=2, home=home, listen="tcp://127.0.0.1:0",
                            child_args=["--poll-interval", "0.2"]) as fleet:
        children = [c.pid for c in fleet.children]
        assert len(fleet.ports) == len(set(fleet.ports)) == count
        assert set(_children_of(os.getpid())) >= set(children)

        def pay(n_port):
            n, port = n_port
            with Terminal.open(port, journal=str(tmp_path / f"d{n}.db")) as term:
                info = term.hello()
                r = term.pay(100 + n, "CNY", payment_code=CODE, timeout=120)
                return info.terminal_id, r

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(pay, enumerate(fleet.ports)))
        assert [tid for tid, _ in got] == [f"T{n:07d}" for n in range(1, count + 1)]   # ports in terminal order
        assert all(r.approved for _, r in got), [r for _, r in got if not r.approved][:3]
        host = fleet.host   # the parent's embedded host, served to both children
        assert all(host.order_status(r.order_id) == "APPROVED" for _, r in got)
        assert host.check_books() == []
        assert fleet.poll() is None
    assert fleet.children == [] and _wait_gone(children, 5) == []


def _start_cli(tmp_path, *args) -> tuple[subprocess.Popen, list[str]]:
    p = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--home", str(tmp_path / "home"), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    count = int(args[args.index("--count") + 1])
    ports: list[str] = []
    buf = b""
    deadline = time.monotonic() + 300
    while len(ports) < count:
        ready, _ = wait_ready([p.stdout.fileno()], (), max(0.0, deadline - time.monotonic()))
        assert ready, "the fleet did not start"
        data = os.read(p.stdout.fileno(), 4096)
        assert data, p.stderr.read().decode(errors="replace")
        buf += data
        *lines, buf = buf.split(b"\n")
        ports += [ln.decode() for ln in lines]
    return p, ports


def test_cli_fleet_stops_its_children_on_sigterm(tmp_path):
    p, ports = _start_cli(tmp_path, "--count", "4", "--processes", "2")
    try:
        kids = _children_of(p.pid)
        assert len(kids) == 2 and len(ports) == 4
        with Terminal.open(ports[3], journal=str(tmp_path / "d.db")) as term:
            assert term.hello().terminal_id == "T0000004"
            assert term.pay(100, "CNY", payment_code=CODE, timeout=60).approved
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stdout.close()
        p.stderr.close()
    assert _wait_gone(kids, 5) == []


def test_children_stop_when_the_parent_is_killed(tmp_path):
    p, _ = _start_cli(tmp_path, "--count", "2", "--processes", "2")
    try:
        kids = _children_of(p.pid)
        assert len(kids) == 2
        p.kill()                      # no cleanup in the parent: its children must notice alone
        p.wait(10)
    finally:
        p.stdout.close()
        p.stderr.close()
    left = _wait_gone(kids, 60)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


def test_idle_terminals_share_the_host_workers(tmp_path):
    """Host requests run on the process's bounded host workers: no host thread per terminal."""
    import threading

    before = set(threading.enumerate())
    with Fleet.start(6, home=tmp_path, host_connections=2) as fleet:
        with Terminal.open(fleet.ports[5], journal=str(tmp_path / "d.db")) as term:
            assert term.pay(100, "CNY", payment_code=CODE, timeout=60).approved
        pools = {id(t._worker._pool): t._worker._pool for t in fleet.terminals}
        assert len(pools) == 1                                          # one pool for the fleet ...
        (pool,) = pools.values()
        assert pool.size == 2 and 1 <= len(pool._threads) <= 2          # ... of at most 2 host threads
        new = set(threading.enumerate()) - before
        assert sum(t.name.startswith("emu-T") for t in new) == 6        # a line thread each
        assert len(new) <= 6 + 2                                        # and the pool's: nothing per terminal else
        assert all(t.error is None and t._worker.is_alive() for t in fleet.terminals)
    with EmulatedTerminal.start(home=tmp_path / "b") as emu:         # the pool stopped, a new one starts
        with Terminal.open(emu.port, journal=str(tmp_path / "e.db")) as term:
            assert term.pay(100, "CNY", payment_code=CODE, timeout=60).approved


def test_the_fleet_benchmark_runs_and_prints_ratios(capsys):
    """A smoke run of `python -m posterm.bench fleet` (figures printed, never asserted)."""
    import json

    from posterm.bench import fleet as bench

    assert bench.main(["--sizes", "2,3", "--seconds", "0.3", "--drivers", "2"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    metrics = {(r["metric"], r.get("terminals")) for r in rows}
    assert {("flows_per_s", 2), ("flows_per_s", 3), ("flow_p99", 3), ("rss_per_terminal", 3)} <= metrics
    assert all("ratio_to_first" in r for r in rows if r["metric"] == "flows_per_s")


def test_a_fleet_shares_a_bounded_number_of_connections_to_a_remote_host(tmp_path):
    from posterm.host import Host
    from posterm.host.server import serve

    host = Host.open(tmp_path / "host.db")
    server = serve(host)
    try:
        with Fleet.start(6, home=tmp_path, host=server.address, host_connections=2) as fleet:
            for n, emu in enumerate(fleet.terminals):
                with Terminal.open(emu.port, journal=str(tmp_path / f"d{n}.db")) as term:
                    r = term.pay(100, "CNY", payment_code=CODE, timeout=60)
                assert r.approved and host.order_status(r.order_id) == "APPROVED"
            held, pending = server.connections()
            assert 1 <= held <= 2 and pending == 0        # 6 terminals, 2 shared connections, all logged on
    finally:
        server.close()
        host.close()
