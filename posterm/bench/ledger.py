"""python -m posterm.bench ledger [--seconds S] [--slices N]: durably committed authorisations/s.

Measured next to the raw SQLite durable-commit ceiling on the same disk in the same run:
a loop of one-row committed inserts with the same settings (WAL, synchronous=FULL).
Each authorisation is a signed AuthRequest through Host.handle: MAC check, then one
write transaction (KSN replay guard, limits, risk, capture and the ledger rows), then
the signed answer; the terminal's signing runs in the same process.

The ceiling and the authorisations run in alternating slices (``--slices``), so a disk
whose fsync rate swings from minute to minute (a shared VM's does, tenfold) slows both
alike and the ratio means something. ``commits_per_auth`` is counted (the host store's
committed write transactions over the authorisations), not assumed.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path
from typing import Callable

from posterm.bench import emit, interleaved


def _ceiling_step(path: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    """One durable one-row commit per call, and a close function."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")

    def step() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES ('x')")
        db.execute("COMMIT")
    return step, db.close


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench ledger")
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure (default 3)")
    ap.add_argument("--slices", type=int, default=6, help="alternating slices ceiling/host (default 6)")
    args = ap.parse_args(argv)
    from firmware_protocol.host import messages as h
    from posterm.crypto.pinpad import SecureModule
    from posterm.emulator.hostlink import SignedHostLink
    from posterm.host import Host

    with tempfile.TemporaryDirectory() as tmp:
        ceiling, close_ceiling = _ceiling_step(Path(tmp) / "ceiling.db")
        host = Host.open(Path(tmp) / "host.db")
        sm = SecureModule()
        sm.inject_kbpk(host.hsm.kbpk_for_injection("T0000001"))
        sm.load_key_block(host.hsm.initial_key_block("T0000001").block)
        term = SignedHostLink(sm, host.client(), terminal_id="T0000001", merchant_id="M100000001",
                              firmware_version="bench")
        term.logon()
        orders = iter(range(10 ** 12))

        def authorise() -> None:
            r = term.request(h.AuthRequest(terminal_id="T0000001", order_id=f"B{next(orders)}", amount_minor=1,
                                           currency="CNY", payment_code="289900000000000001"), 5)
            assert r.status is h.HostStatus.APPROVED

        commits_before = host.store.commits
        (base_n, base_s, base_best), (n, spent, best) = interleaved([ceiling, authorise], args.seconds,
                                                                     max(1, args.slices))
        commits = host.store.commits - commits_before
        problems = host.check_books()
        host.close()
        close_ceiling()
    base, rate = base_n / base_s, n / spent
    emit("ledger", "sqlite_durable_commits", round(base), "commits/s", best_slice=round(base_best))
    emit("ledger", "authorisations", round(rate), "auth/s", best_slice=round(best),
         commits_per_auth=round(commits / n, 3), ratio_to_ceiling=round(rate / base, 3), books_balanced=not problems)
    return 0
