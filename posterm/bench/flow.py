"""python -m posterm.bench flow [--count N] [--paced-count N] [--baud B]: one full approved pay.

Measures ``Terminal.pay`` of the driver over a real pty: driver -> emulated terminal ->
embedded host (signed AuthRequest, MAC-verified answer, ledger commits on both journals)
-> PayResult -> receipt -> back to the driver, with the password-free test code
289900000000000001. Unpaced: median and p99 in ms. Paced at ``--baud`` (both ends pace
their writes to the baud rate, 10 bits a byte): the median, the bytes-on-wire bound of
one pay (every byte that crossed the line in either direction, at 10 bits a byte: the
protocol is request/answer, so the directions barely overlap) and the ratio of the two.
The first pay (logon, key derivations warming up) is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from posterm.bench import emit, percentile

CODE = "289900000000000001"


def _run(home: Path, count: int, pace: bool, baud: int) -> tuple[list[float], float]:
    """``count`` timed pays; returns (durations in s, mean wire bytes per pay)."""
    from posterm import Terminal
    from posterm.emulator.runner import EmulatedTerminal

    with EmulatedTerminal.start(home=home, pace=pace, baudrate=baud) as emu:
        settings = {"pace": True, "baudrate": baud} if pace else {}
        with Terminal.open(emu.port, journal=str(home / "driver.db"), **settings) as term:
            term.hello()
            if not term.pay(100, "CNY", payment_code=CODE, timeout=30).approved:  # warm-up: logon
                raise RuntimeError("warm-up payment was not approved")
            times: list[float] = []
            bytes0 = emu.bytes_received + emu.bytes_sent
            for i in range(count):
                start = time.perf_counter()
                r = term.pay(100 + i % 50, "CNY", payment_code=CODE, timeout=30)
                times.append(time.perf_counter() - start)
                if not r.approved:
                    raise RuntimeError(f"payment {i} was not approved: {r.outcome.name}")
            per_pay = (emu.bytes_received + emu.bytes_sent - bytes0) / count
        if emu.error is not None:
            raise RuntimeError(f"emulator failed: {emu.error}")
    return times, per_pay


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench flow")
    ap.add_argument("--count", type=int, default=300, help="timed unpaced pays")
    ap.add_argument("--paced-count", type=int, default=30, help="timed pays paced at --baud (0: skip)")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--dir", default=None, help="where the state lives (default: the temp dir); try /dev/shm "
                    "to take the disk's fsync out of the figure")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="posterm-bench-flow-", dir=args.dir) as tmp:
        times, per_pay = _run(Path(tmp) / "unpaced", args.count, False, args.baud)
        ms = [t * 1000 for t in times]
        emit("flow", "pay_median", statistics.median(ms), "ms", n=len(ms), goal_max=10)
        emit("flow", "pay_p99", percentile(ms, 99), "ms", n=len(ms))
        emit("flow", "wire_bytes_per_pay", per_pay, "bytes")
        if args.paced_count > 0:
            times, per_pay = _run(Path(tmp) / "paced", args.paced_count, True, args.baud)
            median = statistics.median(times) * 1000
            bound = per_pay * 10 / args.baud * 1000
            emit("flow", "paced_pay_median", median, "ms", baud=args.baud, n=len(times))
            emit("flow", "paced_wire_bound", bound, "ms", baud=args.baud, bytes=round(per_pay))
            emit("flow", "paced_ratio_to_wire_bound", median / bound, "x", goal_max=1.2)
    return 0
