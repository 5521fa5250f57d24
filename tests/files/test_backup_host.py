"""A backup taken on another host is not restored over this host's database unless asked."""

from __future__ import annotations

import socket
import sqlite3

import pytest
from click.testing import CliRunner

from posterm.cli import main
from posterm.errors import ConfigError
from posterm.host.backup import BackupOtherHost, backup, ledger_hash, restore
from tests.backup.conftest import KEY, make_db


@pytest.fixture
def other_host_backup(tmp_path):
    db = make_db(tmp_path / "src.db")
    (tmp_path / "dest").mkdir()
    [r] = backup(db, [tmp_path / "dest"], KEY, host_id="till-7")
    assert r.ok
    (tmp_path / "live").mkdir()
    target = make_db(tmp_path / "live" / "host.db", rows=10)
    return r.path, db, target


def test_library_refuses_another_hosts_backup_by_default(other_host_backup):
    file, src, target = other_host_backup
    before = target.read_bytes()
    with pytest.raises(BackupOtherHost) as exc:
        restore(file, target, KEY)
    assert isinstance(exc.value, ConfigError)
    msg = str(exc.value)
    assert "till-7" in msg and repr(socket.gethostname()) in msg and "allow" in msg and "\n" not in msg
    assert target.read_bytes() == before
    assert list(target.parent.iterdir()) == [target]       # no temp file, no pre-restore copy

    with pytest.raises(BackupOtherHost):
        restore(file, target, KEY, host_id="till-8")
    rep = restore(file, target, KEY, host_id="till-7")      # this host says it is till-7
    assert rep.header.host_id == "till-7"


def test_library_restores_another_hosts_backup_when_asked(other_host_backup):
    file, src, target = other_host_backup
    rep = restore(file, target, KEY, allow_other_host=True)
    assert rep.previous is not None
    assert ledger_hash(sqlite3.connect(target)) == ledger_hash(sqlite3.connect(src))


def test_cli_refuses_with_one_line_and_restores_with_the_flag(other_host_backup, tmp_path):
    file, src, target = other_host_backup
    key = tmp_path / "k"
    key.write_bytes(KEY)
    before = target.read_bytes()
    runner = CliRunner()
    r = runner.invoke(main, ["host", "restore", str(file), "--db", str(target), "--key-file", str(key)],
                      catch_exceptions=False)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "till-7" in lines[0] and socket.gethostname() in lines[0]
    assert "--allow-other-host" in lines[0]
    assert target.read_bytes() == before

    r = runner.invoke(main, ["host", "restore", str(file), "--db", str(target), "--key-file", str(key),
                             "--allow-other-host"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "till-7" in r.stdout
    assert ledger_hash(sqlite3.connect(target)) == ledger_hash(sqlite3.connect(src))


def test_a_backup_of_this_host_restores_without_the_flag(tmp_path):
    db = make_db(tmp_path / "src.db")
    (tmp_path / "dest").mkdir()
    [r] = backup(db, [tmp_path / "dest"], KEY)                # default host id: this host's name
    restore(r.path, tmp_path / "new.db", KEY)
    assert ledger_hash(sqlite3.connect(tmp_path / "new.db")) == ledger_hash(sqlite3.connect(db))


def test_a_forged_host_id_is_named_as_tampering_not_as_another_host(tmp_path):
    from posterm.host.backup import BackupTampered

    db = make_db(tmp_path / "src.db")
    (tmp_path / "dest").mkdir()
    [r] = backup(db, [tmp_path / "dest"], KEY, host_id="till-7")
    data = r.path.read_bytes()
    forged = tmp_path / "forged.ptbk"
    forged.write_bytes(data.replace(b'"host_id":"till-7"', b'"host_id":"till-9"', 1))
    with pytest.raises(BackupTampered):
        restore(forged, tmp_path / "new.db", KEY)
    with pytest.raises(BackupTampered):
        restore(forged, tmp_path / "new.db", KEY, host_id="till-9")
    assert not (tmp_path / "new.db").exists()
