"""Driver fuzz: a seeded hostile terminal (tests/driver/hostile_line.py) against posterm.families.native.ecr.Terminal.

The rule: whatever the line does, the driver raises nothing but its typed errors
(posterm.errors.PosError), the journal never downgrades an approved row, its memory stays bounded, and afterwards a good payment
succeeds on the same Terminal object. Fake clock: no real waiting, exact replay by seed.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import tempfile
import threading
import tracemalloc

import pytest

from posterm.families.native.ecr import Terminal
from posterm.errors import PosError
from posterm.ecr.journal import Journal
from posterm.testing.clock import FakeClock
from tests.driver.hostile_line import HostileLine

INPUTS = 20_000
SEED = 20261201
PEAK_BOUND = 8 * 2**20  # bytes traced by tracemalloc during the whole fuzz


def _one_operation(term: Terminal, rng: random.Random, n: int) -> None:
    op = rng.randrange(10)
    oid = f"FZ{n % 50}"  # few order ids: re-sends, conflicts, stale answers
    if op <= 3:
        term.pay(rng.randint(1, 10**6), rng.choice(["CNY", "EUR"]), order_id=oid,
                 payment_code="289900000000000001", timeout=rng.choice([0.3, 0.6, 1.0]))
    elif op == 4:
        term.query(oid, timeout=0.5)
    elif op == 5:
        term.refund(oid, rng.randint(1, 1000), f"RF{n % 20}", "246810", currency="CNY", timeout=0.5)
    elif op == 6:
        term.cancel(oid, timeout=0.5)
    elif op == 7:
        term.status(timeout=0.5)
    elif op == 8:
        term.recover(timeout=0.5, operator_password=rng.choice([None, "246810"]))
    else:
        term.abort(timeout=0.5)


@pytest.mark.slow
def test_driver_fuzz_only_typed_errors_bounded_memory_then_a_good_payment(tmp_path):
    # The journal is real (its rules are part of what is fuzzed) but on tmpfs where there is
    # one: thousands of fsyncs on a shared disk would measure the disk, not the driver.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm or tmp_path) as where:
        _fuzz(os.path.join(where, "fuzz.db"))


def _fuzz(journal_path: str) -> None:
    clock = FakeClock()
    line = HostileLine(SEED, clock)
    rng = random.Random(SEED + 1)
    errors: dict[str, int] = {}
    logging.disable(logging.CRITICAL)  # pytest keeps every log record: that is not the driver's memory
    tracemalloc.start()
    try:
        with Journal(journal_path, clock=clock) as journal:
            term = Terminal(line, journal=journal, clock=clock, sleep=clock.sleep)
            peek = sqlite3.connect(journal_path)  # a reader beside the driver's connection (WAL)
            n = 0
            approved: set[tuple[str, str, str]] = set()
            while line.inputs < INPUTS:
                n += 1
                try:
                    _one_operation(term, rng, n)
                except PosError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                except Exception as exc:  # noqa: BLE001 - the point of the test
                    pytest.fail(f"seed {SEED}, operation {n}, input {line.inputs}: untyped"
                                f" {type(exc).__name__}: {exc}")
                # The journal never downgrades: what was once approved stays approved (checked
                # every 8 operations: a downgrade is permanent, so it is still there to see).
                if n % 8:
                    continue
                now_approved = set(peek.execute(
                    "SELECT order_id, kind, ref_id FROM orders WHERE outcome = 'approved'").fetchall())
                lost = approved - now_approved
                assert not lost, f"seed {SEED}, operation {n}: approved rows downgraded: {sorted(lost)}"
                approved = now_approved
            _, peak = tracemalloc.get_traced_memory()
            alone = threading.active_count() == 1
            line.benign = True
            line.pending.clear()
            good = term.pay(1234, "CNY", order_id="FZ-GOOD", payment_code="289900000000000001", timeout=5)
            assert good.approved and good.amount_minor == 1234
            assert journal.get("FZ-GOOD").outcome == "approved"
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    print(f"\nfuzz: {line.inputs} hostile inputs, {n} operations, typed errors {errors},"
          f" peak {peak / 2**20:.1f} MiB, fake time {clock.now:.0f} s")
    # tracemalloc counts every thread: the peak is only the driver's when this test is alone
    # in its process (other tests' leftover threads may allocate meanwhile under xdist).
    if alone:
        assert peak < PEAK_BOUND, f"peak {peak} bytes"
