"""Backup/restore timing of a PostgreSQL host: the demo data plus N synthetic trades (2 ledger rows each).

    eval "$(bash .ci/postgres.sh start)"; PYTHONPATH=. .venv/bin/python tools/pg_backup_figures.py 200000

Builds the data in a SQLite file (the demo database restored from its PostgreSQL backup, then
the trades added), backs it up, and times restoring it into a new PostgreSQL database and
backing that up again. Uses the test server (tests/pgstore.py: POSTERM_TEST_PG); the books of
the synthetic data do not balance (the restore does not check them).
"""
import os
import sqlite3
import sys
import tempfile
import time

from posterm.host.backup import backup, restore
from tests import pgstore

KEY = bytes(range(32))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
with tempfile.TemporaryDirectory() as d:
    os.environ["POSTERM_HOME"] = d + "/home"
    os.mkdir(d + "/out")
    with pgstore.fresh_database("demo") as demo, pgstore.fresh_database(None) as pg:
        [r] = backup(demo, [d + "/out"], KEY)
        lite = d + "/host.db"
        restore(r.path, lite, KEY)
        c = sqlite3.connect(lite, isolation_level=None)
        t0 = 1_795_000_000.0
        c.execute("BEGIN")
        c.executemany("INSERT INTO trades (trade_no, merchant_id, order_id, terminal_id, account_id, amount_minor, currency, "
                      "status, params_hash, code_last4, created_at, paid_at, description) "
                      "VALUES (?, 'M100000001', ?, ?, 'demo-001', ?, 'CNY', 'APPROVED', ?, '0001', ?, ?, 'bench')",
                      ((f"TN{i:012d}", f"O{i:012d}", f"T{1 + i % 64:07d}", 100 + i % 99_900,
                        f"{i * 2654435761 % (1 << 64):016x}{i:016x}", t0 + i, t0 + i + 0.5) for i in range(N)))
        c.executemany("INSERT INTO ledger (txn, account, delta, currency, kind, created_at) VALUES (?, ?, ?, 'CNY', 'sale', ?)",
                      ((f"TN{i // 2:012d}", "customer:demo-001" if i % 2 == 0 else "merchant:M100000001",
                        -(100 + i // 2 % 99_900) if i % 2 == 0 else 100 + i // 2 % 99_900, t0 + i) for i in range(2 * N)))
        c.execute("COMMIT")
        c.close()
        size = os.path.getsize(lite)
        [r] = backup(lite, [d + "/out"], KEY)
        t = time.perf_counter()
        restore(r.path, pg, KEY)
        tr = time.perf_counter() - t
        t = time.perf_counter()
        [r2] = backup(pg, [d + "/out"], KEY)
        tb = time.perf_counter() - t
        print(f"{N} trades, {2 * N} ledger rows, SQLite form {size / 1e6:.1f} MB: "
              f"restore into PostgreSQL {tr:.1f} s ({size / 1e6 / tr:.1f} MB/s), "
              f"backup of PostgreSQL {tb:.1f} s ({r2.size / 1e6 / tb:.1f} MB/s)")
