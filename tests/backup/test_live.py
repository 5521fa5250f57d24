"""Backups of a database that is being written, on a schedule, to places that fail."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from posterm.host.backup import BackupScheduler, backup, ledger_hash, parse_interval, prune, restore, verify
from posterm.errors import ConfigError
from tests.backup.conftest import CHUNK, KEY, sums


class Writer(threading.Thread):
    """Moves money between accounts, one durable transaction per transfer, until stopped."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.stop, self.done, self.error = db, threading.Event(), 0, None

    def run(self) -> None:
        rnd = random.Random(1)
        c = sqlite3.connect(self.db, isolation_level=None, timeout=10)
        c.execute("PRAGMA synchronous=FULL")
        try:
            while not self.stop.is_set():
                a, b = rnd.sample(range(300), 2)
                amt = rnd.randint(1, 5)
                c.execute("BEGIN IMMEDIATE")
                c.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amt, f"A{a:04d}"))
                c.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amt, f"A{b:04d}"))
                c.execute("INSERT INTO transfers (src, dst, amount, at) VALUES (?, ?, ?, ?)",
                          (f"A{a:04d}", f"A{b:04d}", amt, time.time()))
                c.execute("UPDATE counters SET value = value + ? WHERE name = 'moved'", (amt,))
                c.execute("COMMIT")
                self.done += 1
        except Exception as exc:  # surfaced by the test
            self.error = exc
        finally:
            c.close()


def test_backup_under_concurrent_writes_is_consistent(tmp_path, db):
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN")  # bulk so the copy takes a while
    c.executemany("INSERT INTO notes VALUES (?, ?)", [(f"filler {i}", os.urandom(200)) for i in range(20000)])
    c.execute("COMMIT")
    c.close()
    out = tmp_path / "out"
    out.mkdir()
    w = Writer(db)
    w.start()
    try:
        deadline = time.monotonic() + 10
        while w.done < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        taken = []
        for i in range(3):
            before = w.done
            res = backup(db, [out], KEY, chunk_size=CHUNK * 16)
            assert res[0].ok, res[0].error
            taken.append((res[0].path, before, w.done))
    finally:
        w.stop.set()
        w.join(10)
    assert w.error is None
    assert any(after > before for _, before, after in taken), "the writer never ran during a backup"
    for i, (path, before, after) in enumerate(taken):
        rep = verify(path, KEY)
        assert rep.ok and rep.integrity == "ok" and rep.ledger_hash == rep.header.ledger_hash
        target = tmp_path / f"restored{i}.db"
        restore(path, target, KEY)
        total, moved, logged = sums(target)
        assert total == 300 * 1000            # no half-applied transfer in the snapshot
        assert moved == logged                # the counter and the log agree
        n = sqlite3.connect(target).execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
        assert before <= n <= after + 1       # the snapshot is the database at one instant of the run


def _wait(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_scheduled_backup_survives_a_lost_destination_and_restores(tmp_path, db, key_file):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    sched = BackupScheduler(db, [a, b], key_file, 0.2, 3)
    sched.start()
    try:
        _wait(lambda: sched.runs >= 2)
        assert all(r.ok for r in sched.last_results)
        assert list(a.glob("*.ptbk")) and list(b.glob("*.ptbk"))
        shutil.rmtree(a)              # one place lost mid-run
        runs = sched.runs
        _wait(lambda: sched.runs >= runs + 2)
        res = sched.last_results
        assert not res[0].ok and str(a) in res[0].error and res[1].ok
        a.write_bytes(b"not a directory")  # and then something else where it was
        runs = sched.runs
        _wait(lambda: sched.runs >= runs + 2)
        assert not sched.last_results[0].ok and sched.last_results[1].ok
        # the live database keeps changing while backups go on
        c = sqlite3.connect(db, isolation_level=None)
        c.execute("UPDATE accounts SET balance = 999 WHERE id = 'A0001'")
        c.execute("UPDATE accounts SET balance = 1001 WHERE id = 'A0002'")
        c.close()
        runs = sched.runs
        _wait(lambda: sched.runs >= runs + 2)
    finally:
        sched.stop()
    kept = sorted(b.glob("*.ptbk"))
    assert 1 <= len(kept) <= 3        # --keep 3
    assert not [p for p in b.iterdir() if p.name.startswith(".")]  # no temp files left
    target = tmp_path / "restored" / "host.db"
    target.parent.mkdir()
    rep = restore(kept[-1], target, key_file)
    live = ledger_hash(sqlite3.connect(db))
    assert rep.ledger_hash == rep.header.ledger_hash == live
    assert sqlite3.connect(target).execute("SELECT balance FROM accounts WHERE id='A0001'").fetchone()[0] == 999


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_destination_does_not_stop_the_others(tmp_path, db):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    a.chmod(0o500)
    try:
        res = backup(db, [a, b], KEY)
        assert not res[0].ok and "cannot write" in res[0].error and res[1].ok
    finally:
        a.chmod(0o700)


def test_missing_database_reported_by_scheduler(tmp_path, key_file):
    a = tmp_path / "a"
    a.mkdir()
    sched = BackupScheduler(tmp_path / "nope.db", [a], key_file, 0.2, 2)
    assert sched.run_once()[0].error and "no database" in sched.last_error


def test_key_file_inside_a_destination_is_refused(tmp_path, db, key_file):
    with pytest.raises(ConfigError, match="must not be kept with the backups"):
        BackupScheduler(db, [key_file.parent], key_file, 1, 2)


def test_prune_keeps_newest(tmp_path, db):
    out = tmp_path / "o"
    out.mkdir()
    paths = [backup(db, [out], KEY, host_id="h")[0].path for _ in range(4)]
    removed = prune(out, 2, host_id="h")
    assert sorted(removed) == sorted(paths[:2]) and sorted(out.iterdir()) == sorted(paths[2:])


def test_parse_interval():
    assert parse_interval("1h") == 3600 and parse_interval("15m") == 900 and parse_interval("0.2s") == 0.2
    assert parse_interval("90") == 90
    for bad in ("", "1x", "-1s", "0s", "1 hour"):
        with pytest.raises(ConfigError):
            parse_interval(bad)


def test_leftovers_of_a_killed_backup_are_swept(tmp_path, db):
    out = tmp_path / "o"
    out.mkdir()
    old_snap = db.parent / ".posterm-snapshot-dead.db"
    old_tmp = out / ".posterm-backup-h-x.ptbk.abc.tmp"
    fresh = out / ".posterm-backup-h-y.ptbk.def.tmp"  # maybe another backup in progress: kept
    for p in (old_snap, old_tmp, fresh):
        p.write_bytes(b"Zhang Wei")
    for p in (old_snap, old_tmp):
        os.utime(p, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    assert backup(db, [out], KEY)[0].ok
    assert not old_snap.exists() and not old_tmp.exists() and fresh.exists()
