"""Benchmarks: ``python -m posterm.bench NAME [options]``.

Each benchmark is a module ``posterm.bench.NAME`` with ``main(argv: list[str]) -> int``
that prints one JSON object per line: ``{"bench": ..., "metric": ..., "value": ..., "unit": ...}``
(extra keys allowed).  Figures come with a baseline measured in the same run where the
issue names one, and the ratio.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable


def emit(bench: str, metric: str, value: float, unit: str, **extra: Any) -> None:
    """Print one benchmark figure as a JSON line."""
    row = {"bench": bench, "metric": metric, "value": round(value, 3) if isinstance(value, float) else value, "unit": unit}
    row.update(extra)
    print(json.dumps(row), flush=True)


def rate(fn: Callable[[], Any], min_seconds: float = 1.0, batch: int = 100) -> float:
    """Call ``fn`` repeatedly for at least ``min_seconds``; return calls per second."""
    n = 0
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile of ``samples`` (p in 0..100)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def interleaved(fns: list[Callable[[], Any]], seconds: float, slices: int,
                batch: int = 1) -> list[tuple[int, float, float]]:
    """Run each of ``fns`` for ``seconds`` in total, in ``slices`` alternating slices, so
    a figure and its baseline see the same load on a shared machine. ``batch`` calls are
    made between clock reads. Returns ``(calls, seconds spent, best slice calls/s)`` each.
    """
    calls, spent, best = [0] * len(fns), [0.0] * len(fns), [0.0] * len(fns)
    per_slice = seconds / slices
    for _ in range(slices):
        for i, fn in enumerate(fns):
            n, start = 0, time.perf_counter()
            while True:
                for _ in range(batch):
                    fn()
                n += batch
                elapsed = time.perf_counter() - start
                if elapsed >= per_slice:
                    break
            calls[i] += n
            spent[i] += elapsed
            best[i] = max(best[i], n / elapsed)
    return [(calls[i], spent[i], best[i]) for i in range(len(fns))]



def start_serve(db: str, workers: int, home, args: list[str], timeout: float, stderr_file=None):
    """``posterm host serve --db DB --workers W ARGS`` with ``POSTERM_HOME=home``, and the
    address it prints: ``(Popen, "tcp://...")``. Its stderr goes to ``stderr_file`` (a path,
    created 0600) or nowhere. Raises RuntimeError when it has not said its address within
    ``timeout`` seconds (it is killed then)."""
    import os
    import subprocess
    import sys

    from posterm.transport.fd import wait_ready

    err = (os.open(stderr_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if stderr_file is not None
           else subprocess.DEVNULL)
    try:
        p = subprocess.Popen([sys.executable, "-m", "posterm", "host", "serve", "--db", db, "--workers", str(workers),
                              *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                             env=dict(os.environ, POSTERM_HOME=str(home)))
    finally:
        if stderr_file is not None:
            os.close(err)
    ready, _ = wait_ready([p.stdout.fileno()], (), timeout)
    line = p.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("tcp://"):
        stop_process(p, 0)
        raise RuntimeError(f"posterm host serve --workers {workers} did not start")
    return p, line


def stop_process(proc, grace: float = 60.0) -> None:
    """SIGTERM, at most ``grace`` seconds for it to end, then SIGKILL; its stdout closed."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
