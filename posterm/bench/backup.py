"""python -m posterm.bench backup [--trades N] [--dir DIR]: encrypted backup/restore MB/s and peak memory.

Builds a host database (the real posterm.host schema when importable, else a trades table of
the same shape) with N trades and two ledger rows per trade, in one transaction. Then times,
end to end: ``backup`` (online snapshot, integrity_check, ledger hash, AES-256-GCM stream,
fsync, rename) into two destinations, and ``restore`` (decrypt, integrity_check, ledger hash,
atomic swap). MB/s is database bytes per wall-clock second. Memory: a second, traced run
gives the peak of Python allocations (tracemalloc) for each; ``ru_maxrss`` is the process
high-water mark (it includes SQLite's page cache and the generation phase).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import tempfile
import time
import tracemalloc
from pathlib import Path

from posterm.bench import emit

FALLBACK_SCHEMA = """
CREATE TABLE trades (
    trade_no TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, order_id TEXT NOT NULL, terminal_id TEXT NOT NULL,
    account_id TEXT, amount_minor INTEGER NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL,
    reason INTEGER NOT NULL DEFAULT 0, reason_text TEXT NOT NULL DEFAULT '', params_hash TEXT NOT NULL,
    code_last4 TEXT, created_at REAL NOT NULL, paid_at REAL, asked_at REAL,
    refunded_minor INTEGER NOT NULL DEFAULT 0, qr_data TEXT, description TEXT, settled_batch INTEGER,
    UNIQUE (merchant_id, order_id));
CREATE INDEX trades_account ON trades (account_id, created_at);
CREATE INDEX trades_terminal ON trades (terminal_id, created_at);
CREATE TABLE ledger (id INTEGER PRIMARY KEY, txn TEXT NOT NULL, account TEXT NOT NULL, delta INTEGER NOT NULL,
    currency TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX ledger_account ON ledger (account);
"""


def build(path: Path, trades: int) -> None:
    try:
        from posterm.host.store import SCHEMA
    except ImportError:
        SCHEMA = FALLBACK_SCHEMA
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.executescript(SCHEMA)
    t0 = 1_795_000_000.0
    c.execute("BEGIN")
    c.executemany(
        "INSERT INTO trades (trade_no, merchant_id, order_id, terminal_id, account_id, amount_minor, currency, "
        "status, params_hash, code_last4, created_at, paid_at, description) "
        "VALUES (?, 'M100000001', ?, ?, ?, ?, 'CNY', 'PAID', ?, '0001', ?, ?, 'bench')",
        ((f"TN{i:012d}", f"O{i:012d}", f"T{1 + i % 64:07d}", f"U{i % 5000:06d}", 100 + i % 99_900,
          f"{i * 2654435761 % (1 << 64):016x}{i:016x}", t0 + i, t0 + i + 0.5) for i in range(trades)))
    c.executemany(
        "INSERT INTO ledger (txn, account, delta, currency, kind, created_at) VALUES (?, ?, ?, 'CNY', 'sale', ?)",
        ((f"TN{i // 2:012d}", f"U{i // 2 % 5000:06d}" if i % 2 == 0 else "M100000001",
          (-1 if i % 2 == 0 else 1) * (100 + i // 2 % 99_900), t0 + i // 2) for i in range(2 * trades)))
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench backup")
    ap.add_argument("--trades", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None, help="Work directory (default: a temp dir; needs ~3x the DB size).")
    ap.add_argument("--no-memory", action="store_true", help="Skip the traced (slower) memory run.")
    args = ap.parse_args(argv)
    from posterm.host.backup import backup, ledger_hash, restore

    key = os.urandom(32)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        db = tmp / "host.db"
        t = time.perf_counter()
        build(db, args.trades)
        size = db.stat().st_size
        mb = size / 1e6
        emit("backup", "db_size", round(mb, 1), "MB", trades=args.trades, build_s=round(time.perf_counter() - t, 1))
        emit("backup", "rss_after_build", round(maxrss_mib(), 1), "MiB")
        # where the time goes: the two checks done on the snapshot and again on restore
        c = sqlite3.connect(db)
        t = time.perf_counter()
        c.execute("PRAGMA integrity_check").fetchall()
        emit("backup", "integrity_check", mb / (time.perf_counter() - t), "MB/s")
        t = time.perf_counter()
        ledger_hash(c)
        emit("backup", "ledger_hash", mb / (time.perf_counter() - t), "MB/s")
        c.close()
        dests = [tmp / "a", tmp / "b"]
        for d in dests:
            d.mkdir()

        t = time.perf_counter()
        res = backup(db, dests, key)
        dt = time.perf_counter() - t
        assert all(r.ok for r in res), [r.error for r in res]
        emit("backup", "backup", mb / dt, "MB/s", seconds=round(dt, 2), destinations=len(dests))
        emit("backup", "backup_file_size", round(res[0].size / 1e6, 1), "MB")

        target = tmp / "restored" / "host.db"
        target.parent.mkdir()
        t = time.perf_counter()
        restore(res[1].path, target, key)
        dt = time.perf_counter() - t
        emit("backup", "restore", mb / dt, "MB/s", seconds=round(dt, 2))
        emit("backup", "rss_after_backup_restore", round(maxrss_mib(), 1), "MiB")

        if not args.no_memory:
            for d in dests:
                shutil.rmtree(d)
                d.mkdir()
            target.unlink()
            tracemalloc.start()
            res = backup(db, dests, key)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            emit("backup", "backup_peak_python_memory", round(peak / 2**20, 2), "MiB", db_mb=round(mb, 1))
            tracemalloc.start()
            restore(res[0].path, target, key)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            emit("backup", "restore_peak_python_memory", round(peak / 2**20, 2), "MiB", db_mb=round(mb, 1))
            emit("backup", "rss_final", round(maxrss_mib(), 1), "MiB")
    return 0
