"""`posterm host backup|backup verify|restore` and a backup of the real host database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from posterm.cli import main
from posterm.host import demo
from posterm.host.backup import ledger_hash, restore, verify
from tests.backup.conftest import OTHER_KEY, SECRETS


def run(*args: str):
    return CliRunner().invoke(main, ["host", *args], catch_exceptions=False)


def test_cli_backup_verify_restore(tmp_path, db, key_file):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    r = run("backup", "--to", str(a), "--to", str(b), "--to", str(tmp_path / "missing"),
            "--key-file", str(key_file), "--db", str(db), "--keep", "2")
    assert r.exit_code == 1  # one destination failed, the two others written
    paths = r.stdout.split()
    assert len(paths) == 2 and all(Path(p).exists() for p in paths)
    assert "missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    r = run("backup", "verify", paths[1], "--key-file", str(key_file))
    assert r.exit_code == 0 and "OK" in r.stdout and "integrity_check: ok" in r.stdout

    target = tmp_path / "new" / "host.db"
    target.parent.mkdir()
    r = run("restore", paths[0], "--db", str(target), "--key-file", str(key_file))
    assert r.exit_code == 0, r.output
    assert ledger_hash(sqlite3.connect(target)) == ledger_hash(sqlite3.connect(db))

    # tampered: one line, exit 2, the database untouched
    bad = tmp_path / "bad.ptbk"
    data = bytearray(Path(paths[0]).read_bytes())
    data[-5] ^= 1
    bad.write_bytes(bytes(data))
    before = target.read_bytes()
    r = run("restore", str(bad), "--db", str(target), "--key-file", str(key_file))
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "failed authentication" in r.stderr
    assert "Traceback" not in r.output and target.read_bytes() == before

    other = tmp_path / "other.key"
    other.write_bytes(OTHER_KEY)
    r = run("backup", "verify", paths[0], "--key-file", str(other))
    assert r.exit_code == 2 and "wrong key" in r.stderr

    r = run("backup", "--to", str(a), "--key-file", str(tmp_path / "nokey"), "--db", str(db))
    assert r.exit_code == 2 and "key file" in r.stderr


def test_cli_keygen_and_env_key(tmp_path, db, monkeypatch):
    k = tmp_path / "k"
    r = run("backup", "keygen", str(k))
    assert r.exit_code == 0 and "key id" in r.stdout
    assert k.read_text().strip() not in r.output
    assert run("backup", "keygen", str(k)).exit_code == 2  # never overwrites a key
    monkeypatch.setenv("POSTERM_BACKUP_KEY", k.read_text().strip())
    out = tmp_path / "o"
    out.mkdir()
    r = run("backup", "--to", str(out), "--db", str(db), "--json")
    assert r.exit_code == 0 and '"error": null' in r.stdout


def test_real_host_database(tmp_path, key_file):
    host_mod = pytest.importorskip("posterm.host")
    h = host_mod.Host.open(tmp_path / "host" / "host.db")
    try:
        db = h.store.path
        out = tmp_path / "out"
        out.mkdir()
        from posterm.host.backup import backup

        res = backup(db, [out], key_file)
        assert res[0].ok
        live = ledger_hash(h.store.read())
    finally:
        h.close()
    rep = verify(res[0].path, key_file)
    assert rep.ok and rep.ledger_hash == live
    data = res[0].path.read_bytes()
    for secret in SECRETS + [b"M100000001", b"T0000001"]:
        assert secret not in data
    target = tmp_path / "restored" / "host.db"
    target.parent.mkdir()
    restore(res[0].path, target, key_file)
    h2 = host_mod.Host.open(target, hsm=None, demo=False)
    try:
        assert ledger_hash(h2.store.read()) == live
        assert h2.store.read().execute("SELECT COUNT(*) FROM terminals").fetchone()[0] == len(demo.TERMINALS)
    finally:
        h2.close()


def test_serve_with_scheduled_backups_end_to_end(tmp_path, key_file):
    """`posterm host serve --backup-every`: lose one destination, keep serving, restore from the other."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    db = tmp_path / "home" / "host.db"
    env = dict(os.environ, POSTERM_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "posterm", "host", "serve", "--db", str(db),
                             "--backup-every", "0.2s", "--backup-to", str(a), "--backup-to", str(b),
                             "--keep", "3", "--backup-key-file", str(key_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def wait(pred, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not pred():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:")
        wait(lambda: list(a.glob("*.ptbk")) and list(b.glob("*.ptbk")))
        shutil.rmtree(a)
        seen = {p.name for p in b.glob("*.ptbk")}
        wait(lambda: {p.name for p in b.glob("*.ptbk")} - seen)
        seen = {p.name for p in b.glob("*.ptbk")}
        wait(lambda: {p.name for p in b.glob("*.ptbk")} - seen)  # two more runs after the loss
        host, port = address[len("tcp://"):].rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()  # still serving
        assert not a.exists()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
    assert str(a) in err  # the lost destination was reported
    newest = sorted(b.glob("*.ptbk"))[-1]
    assert len(list(b.glob("*.ptbk"))) <= 3
    target = tmp_path / "restored.db"
    rep = restore(newest, target, key_file)
    assert rep.ledger_hash == rep.header.ledger_hash
    assert sqlite3.connect(target).execute("SELECT COUNT(*) FROM terminals").fetchone()[0] == len(demo.TERMINALS)
