"""python -m posterm.bench ledger [--seconds S]: durably committed authorisations/s.

Measured next to the raw SQLite durable-commit ceiling on the same disk in the same run:
a loop of one-row committed inserts with the same settings (WAL, synchronous=FULL).
Each authorisation is a signed AuthRequest through Host.handle: MAC check, KSN check
(its own commit), limits, risk, capture and the ledger rows (another commit).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from posterm.bench import emit


def ceiling(path: Path, seconds: float) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES ('x')")
        db.execute("COMMIT")
        n += 1
    rate = n / (time.perf_counter() - start)
    db.close()
    return rate


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench ledger")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    from firmware_protocol import host as h
    from posterm.crypto.terminal import SecureModule
    from posterm.emulator.hostlink import SignedHostLink
    from posterm.host import Host

    with tempfile.TemporaryDirectory() as tmp:
        base = ceiling(Path(tmp) / "ceiling.db", args.seconds)
        emit("ledger", "sqlite_durable_commits", round(base), "commits/s")
        host = Host.open(Path(tmp) / "host.db")
        sm = SecureModule()
        sm.inject_kbpk(host.hsm.kbpk_for_injection("T0000001"))
        sm.load_key_block(host.hsm.initial_key_block("T0000001").block)
        term = SignedHostLink(sm, host.client(), terminal_id="T0000001", merchant_id="M100000001",
                              firmware_version="bench")
        term.logon()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            r = term.request(h.AuthRequest(terminal_id="T0000001", order_id=f"B{n}", amount_minor=1, currency="CNY",
                                           payment_code="289900000000000001"), 5)
            assert r.status is h.HostStatus.APPROVED
            n += 1
        rate = n / (time.perf_counter() - start)
        problems = host.check_books()
        host.close()
    emit("ledger", "authorisations", round(rate), "auth/s", commits_per_auth=2,
         ratio_to_ceiling=round(rate / base, 3), books_balanced=not problems)
    return 0
