"""python -m posterm.bench fleet [--sizes 50,200,1000] [--seconds S] [--drivers D] [--no-idle]: fleets of emulated terminals.

For each size N, one ``posterm emulate --count N --listen tcp://127.0.0.1:0`` runs the
fleet (its default processes: one up to 250 terminals, then one per 250, the parent
serving the embedded host to them); this process plays the cash registers: D driver
threads (``--drivers``, default 100, at most N), each owning every D-th terminal and
paying on its terminals in turn with the password-free test code, as fast as the answers
come, for ``--seconds``. Every terminal pays once first (its logon, its first key use),
outside the clock. Every flow must be approved; anything else fails the benchmark.

Figures per size: approved flows per second over the fleet, the p99 and median of one
flow (ms), the fleet's resident memory per terminal (the RSS of the fleet's processes,
summed, after every terminal paid once, divided by N), the fleet's CPU per flow; each
with its ratio to the first size's figure (``ratio_to_first``: how it grows with the
work). ``rss_marginal`` is the memory one more terminal costs between the first and the
last size.

Memory per idle terminal (``idle_rss_per_terminal``, each size, unless ``--no-idle``): the
RSS growth of this process per terminal of ``Fleet.start(N)`` started beside a running
one-terminal fleet (host, imports and shared host workers not counted; nothing paid), with
its ratio to the first size's. ``--idle`` measures only that.
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

from posterm.bench import emit, percentile, stop_process

CODE = "289900000000000001"


def _rss_kb(pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its children (one level: the fleet's parent and its processes)."""
    out = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _cpu(pids: list[int]) -> float | None:
    """CPU seconds (user + system) used so far by ``pids``; None off Linux."""
    total = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


def _start_fleet(home: Path, count: int, processes: int | None) -> tuple[subprocess.Popen, list[str]]:
    from posterm.transport.fd import wait_ready

    argv = [sys.executable, "-m", "posterm", "emulate", "--count", str(count), "--home", str(home),
            "--listen", "tcp://127.0.0.1:0"]
    if processes:
        argv += ["--processes", str(processes)]
    # stderr to a file, not a pipe nobody reads while the clock runs: a full pipe would block
    # every process of the fleet in its next log line.
    err = os.open(home / "fleet.stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
    finally:
        os.close(err)   # the child has its copy
    ports: list[str] = []
    buf = b""
    deadline = time.monotonic() + 300 + count
    while len(ports) < count:
        left = deadline - time.monotonic()
        ready, _ = wait_ready([p.stdout.fileno()], (), max(0.0, min(left, 1.0)))
        if left <= 0:
            p.kill()
            raise RuntimeError(f"the fleet of {count} did not start within {300 + count} s")
        if not ready:
            continue
        data = os.read(p.stdout.fileno(), 65536)
        if not data:
            p.wait(30)
            raise RuntimeError(f"the fleet did not start: {_tail(home / 'fleet.stderr')}")
        buf += data
        *lines, buf = buf.split(b"\n")
        ports += [ln.decode() for ln in lines if ln.strip()]
    return p, ports


def _why(result, n: int) -> str:
    """What a payment that was not approved says (the tail of the fleet's log follows it)."""
    reason = getattr(result, "reason", None)
    gave_up = getattr(result, "gave_up_after", None)
    return (f"{result.outcome.name} (reason {getattr(reason, 'name', reason)}, terminal {n + 1}"
            + (f", the driver gave up after {gave_up:g} s" if gave_up else "") + ")")


_stop = stop_process


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return ""


def run_size(home: Path, count: int, seconds: float, drivers: int, processes: int | None) -> dict:
    from posterm import Terminal

    proc, ports = _start_fleet(home, count, processes)
    try:
        pids = _tree(proc.pid)
        times: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        warm = threading.Barrier(min(drivers, count) + 1, timeout=600)
        go = threading.Event()
        stop_at = [0.0]

        def driver(k: int, mine: list[tuple[int, str]]) -> None:
            terms = []
            try:
                try:
                    for n, port in mine:
                        term = Terminal.open(port, journal=str(home / f"driver-{n}.db"))
                        terms.append(term)
                        term.hello()
                        r = term.pay(100, "CNY", payment_code=CODE, timeout=120)   # warm-up: logon, first key
                        if not r.approved:
                            raise RuntimeError(f"warm-up not approved: {_why(r, n)}")
                finally:
                    warm.wait()
                go.wait(600)
                done = []
                i = 0
                while time.perf_counter() < stop_at[0]:
                    at = i % len(terms)
                    term = terms[at]
                    i += 1
                    t0 = time.perf_counter()
                    r = term.pay(100, "CNY", payment_code=CODE, timeout=120)
                    done.append(time.perf_counter() - t0)
                    if not r.approved:
                        raise RuntimeError(f"not approved: {_why(r, mine[at][0])}")
                with lock:
                    times.extend(done)
            except Exception as exc:  # noqa: BLE001 - reported, fails the benchmark
                with lock:
                    failures.append(f"driver {k}: {type(exc).__name__}: {exc}")
            finally:
                for term in terms:
                    term.close()

        d = min(drivers, count)
        threads = [threading.Thread(target=driver, args=(k, [(n, ports[n]) for n in range(k, count, d)]), daemon=True)
                   for k in range(d)]
        for t in threads:
            t.start()
        warm.wait()
        rss = sum(_rss_kb(pid) for pid in pids)
        cpu0 = _cpu(pids)
        start = time.perf_counter()
        stop_at[0] = start + seconds
        go.set()
        for t in threads:
            t.join(seconds + 300)
        elapsed = time.perf_counter() - start
        cpu1 = _cpu(pids)
    finally:
        _stop(proc)
    if failures:
        raise RuntimeError(f"{len(failures)} driver(s) failed: {failures[0]}")
    return {"flows_per_s": len(times) / elapsed, "flow_p99": percentile([t * 1000 for t in times], 99),
            "flow_median": percentile([t * 1000 for t in times], 50), "rss_per_terminal": rss / count,
            "rss_total": rss, "processes": len(pids) - 1 or 1, "n": len(times),
            "fleet_cpu_per_flow": ((cpu1 - cpu0) / len(times) * 1000) if cpu0 is not None and cpu1 is not None
            and times else None}


def idle_one(n: int, home_dir: str | None) -> tuple[float, float]:
    """``(kB, s)``: the RSS growth of this process per idle terminal (``Fleet.start(n)`` beside
    a running one-terminal fleet, so the host, the imports and the shared host workers are
    not counted; nothing paid), and the start time per terminal."""
    from posterm.emulator.runner import Fleet

    with tempfile.TemporaryDirectory(prefix="posterm-bench-idle-", dir=home_dir) as tmp:
        with Fleet.start(1, home=tmp):
            before = _rss_kb()
            t0 = time.perf_counter()
            with Fleet.start(n, home=tmp, first=2):
                started = time.perf_counter() - t0
                per = (_rss_kb() - before) / n
    return per, started / n


def idle(sizes: list[int], home_dir: str | None) -> int:
    """RSS growth per idle terminal in this process (nothing paid), per size."""
    base_per = None
    for n in sizes:
        per, start_s = idle_one(n, home_dir)
        base_per = base_per or per
        emit("fleet", "idle_rss_per_terminal", per, "kB", terminals=n, ratio_to_first=round(per / base_per, 3),
             start_ms_per_terminal=round(start_s * 1000, 1), threads_per_terminal=1)
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench fleet")
    ap.add_argument("--sizes", default="50,200,1000", help="fleet sizes, comma-separated (default 50,200,1000)")
    ap.add_argument("--terminals", type=int, default=None, help="one size only (as --sizes N)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--drivers", type=int, default=100, help="driver threads in this process (at most N)")
    ap.add_argument("--processes", type=int, default=None, help="the fleet's --processes (default: its own)")
    ap.add_argument("--idle", action="store_true", help="measure idle terminals' memory in this process only")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-terminal memory figure of each size")
    ap.add_argument("--dir", default=None, help="where the state lives (default: the temp dir); try /dev/shm "
                    "to take the disk's fsync out of the figure")
    args = ap.parse_args(argv)
    try:
        sizes = [args.terminals] if args.terminals else [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        ap.error("--sizes: whole numbers, comma-separated")
    if not sizes or not all(1 <= n <= 4096 for n in sizes):
        ap.error("--sizes: 1 to 4096 terminals each")
    if args.idle:
        return idle(sizes, args.dir)
    first: dict | None = None
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="posterm-bench-fleet-", dir=args.dir) as tmp:
            try:
                res = run_size(Path(tmp), n, args.seconds, args.drivers, args.processes)
            except RuntimeError as exc:
                print(f"fleet benchmark failed at {n} terminals: {exc}", file=sys.stderr)
                log = _tail(Path(tmp) / "fleet.stderr")
                if log:
                    print(f"the fleet's log ended with:\n{log}", file=sys.stderr)
                return 1
        if not args.no_idle:
            res["idle_rss_per_terminal"], res["start_s_per_terminal"] = idle_one(n, args.dir)
        first = first or res
        results.append(res)

        def ratio(key: str) -> float | None:
            return round(res[key] / first[key], 3) if res[key] and first[key] else None

        common = {"terminals": n, "processes": res["processes"], "drivers": min(args.drivers, n)}
        emit("fleet", "flows_per_s", res["flows_per_s"], "flows/s", n=res["n"], cores=os.cpu_count(),
             ratio_to_first=ratio("flows_per_s"), **common)
        emit("fleet", "flow_p99", res["flow_p99"], "ms", ratio_to_first=ratio("flow_p99"), **common)
        emit("fleet", "flow_median", res["flow_median"], "ms", ratio_to_first=ratio("flow_median"), **common)
        emit("fleet", "rss_per_terminal", res["rss_per_terminal"], "kB", rss_total_kB=res["rss_total"],
             ratio_to_first=ratio("rss_per_terminal"), **common)
        if "idle_rss_per_terminal" in res:
            emit("fleet", "idle_rss_per_terminal", res["idle_rss_per_terminal"], "kB",
                 ratio_to_first=ratio("idle_rss_per_terminal"),
                 start_ms_per_terminal=round(res["start_s_per_terminal"] * 1000, 1), terminals=n,
                 measured="RSS delta / terminals of Fleet.start(N) in this process, nothing paid")
        if res["fleet_cpu_per_flow"] is not None:
            emit("fleet", "fleet_cpu_per_flow", res["fleet_cpu_per_flow"], "ms",
                 ratio_to_first=ratio("fleet_cpu_per_flow"), **common)
    if len(results) > 1 and sizes[-1] != sizes[0]:
        emit("fleet", "rss_marginal", (results[-1]["rss_total"] - results[0]["rss_total"]) / (sizes[-1] - sizes[0]),
             "kB per terminal", between=f"{sizes[0]}..{sizes[-1]}")
    return 0
