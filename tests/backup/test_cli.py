"""`posterm host backup|backup verify|restore` and a backup of the real host database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from posterm.cli import main
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
        assert h2.store.read().execute("SELECT COUNT(*) FROM terminals").fetchone()[0] == 64
    finally:
        h2.close()
