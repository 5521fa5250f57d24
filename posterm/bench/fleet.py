"""python -m posterm.bench fleet [--terminals 50] [--seconds S]: a fleet of emulated terminals.

One process runs the fleet (``posterm emulate --count N``: N terminals, one embedded
host); this process plays N cash registers, one driver thread each, paying with the
password-free test code as fast as the answers come for ``--seconds``. Reports
approved flows per second over the whole fleet and the p99 of one flow in ms.
Every flow must be approved; anything else fails the benchmark.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from posterm.bench import emit, percentile

CODE = "289900000000000001"


def _start_fleet(home: Path, count: int) -> tuple[subprocess.Popen, list[str]]:
    port_file = home / "ports"
    p = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--count", str(count), "--home", str(home),
                          "--port-file", str(port_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if p.poll() is not None:
            raise RuntimeError(f"the fleet did not start: {p.stderr.read().decode(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            p.kill()
            raise RuntimeError("the fleet did not start within 120 s")
        time.sleep(0.05)
    return p, port_file.read_text().split()


def _cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench fleet")
    ap.add_argument("--terminals", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--dir", default=None, help="where the state lives (default: the temp dir); try /dev/shm "
                    "to take the disk's fsync out of the figure")
    args = ap.parse_args(argv)
    from posterm import Terminal

    with tempfile.TemporaryDirectory(prefix="posterm-bench-fleet-", dir=args.dir) as tmp:
        home = Path(tmp)
        proc, ports = _start_fleet(home, args.terminals)
        times: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        go = threading.Event()
        stop_at = [0.0]

        def ecr(n: int, port: str) -> None:
            try:
                with Terminal.open(port, journal=str(home / f"driver-{n}.db")) as term:
                    term.hello()
                    term.pay(100, "CNY", payment_code=CODE, timeout=60)  # warm-up: logon
                    go.wait(120)
                    mine = []
                    while time.perf_counter() < stop_at[0]:
                        t0 = time.perf_counter()
                        r = term.pay(100, "CNY", payment_code=CODE, timeout=60)
                        mine.append(time.perf_counter() - t0)
                        if not r.approved:
                            raise RuntimeError(f"not approved: {r.outcome.name}")
                with lock:
                    times.extend(mine)
            except Exception as exc:  # noqa: BLE001 - reported below, fails the benchmark
                with lock:
                    failures.append(f"{port}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=ecr, args=(n, port), daemon=True) for n, port in enumerate(ports)]
        try:
            for t in threads:
                t.start()
            time.sleep(1.0)  # let the warm-up pays (logons) finish before the clock starts
            start = time.perf_counter()
            stop_at[0] = start + args.seconds
            go.set()
            cpu0 = _cpu(proc.pid), time.process_time()
            for t in threads:
                t.join(args.seconds + 120)
            elapsed = time.perf_counter() - start
            cpu1 = _cpu(proc.pid), time.process_time()
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if failures:
            print(f"fleet benchmark failed: {len(failures)} terminal(s): {failures[0]}", file=sys.stderr)
            return 1
        emit("fleet", "flows_per_s", len(times) / elapsed, "flows/s", terminals=args.terminals, n=len(times),
             cores=os.cpu_count(), goal_min=200)
        emit("fleet", "flow_p99", percentile([t * 1000 for t in times], 99), "ms", terminals=args.terminals)
        if cpu0[0] is not None and cpu1[0] is not None and times:
            # Where the two cores went: the fleet process vs. the 50 drivers in this one.
            emit("fleet", "fleet_cpu_per_flow", (cpu1[0] - cpu0[0]) / len(times) * 1000, "ms")
            emit("fleet", "drivers_cpu_per_flow", (cpu1[1] - cpu0[1]) / len(times) * 1000, "ms")
        emit("fleet", "flow_median", percentile([t * 1000 for t in times], 50), "ms", terminals=args.terminals)
    return 0
