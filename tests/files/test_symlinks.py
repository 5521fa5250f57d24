"""posterm refuses to follow a symlink it did not make, wherever it writes.

For each file (and directory) posterm creates, a symlink to a victim is planted before
first use: posterm must refuse (``UnsafePath``, a ConfigError; the CLI exits 2 with one
line) and the victim must be unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from posterm.cli import main
from posterm.safefs import UnsafePath
from tests.files.conftest import env_for, posterm

PRECIOUS = b"the victim's own bytes\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    d = tmp_path / "victim"
    d.mkdir()
    (d / "dir").mkdir()
    f = d / "file"
    f.write_bytes(PRECIOUS)
    return d


def plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def untouched(victim: Path) -> bool:
    return (victim / "file").read_bytes() == PRECIOUS and list((victim / "dir").iterdir()) == []


def _host(home: Path) -> None:
    from posterm.host import Host

    Host.open(home / "host.db").close()


def _driver_journal(home: Path) -> None:
    from posterm.ecr.journal import Journal

    Journal().close()  # the default: $POSTERM_HOME/driver-journal.db


def _terminal_journal(home: Path) -> None:
    from posterm.emulator.orders import OrderStore, journal_path

    OrderStore(journal_path("T0000001", home)).close()


def _pinpad(home: Path) -> None:
    from posterm.crypto.pinpad import SecureModule

    SecureModule(home / "terminals" / "T0000001" / "pinpad.sealed").inject_kbpk(os.urandom(16))


def _operator(home: Path) -> None:
    from posterm.crypto.pinpad import OperatorPassword

    OperatorPassword(home / "terminals" / "T0000001" / "operator.sealed", password="246810")


def _emulator(home: Path) -> None:
    from posterm.emulator.runner import EmulatedTerminal

    with EmulatedTerminal.start(home=home):
        pass


def _home(home: Path) -> None:
    from posterm.home import posterm_home

    posterm_home()


def _recording(home: Path) -> None:
    from posterm.record.format import Recorder

    Recorder(home / "session.jsonl").close()


CASES: list[tuple[str, str, Callable[[Path], None]]] = [
    ("host.db", "file", _host),
    ("host.db-wal", "file", _host),
    ("host.db-shm", "file", _host),
    ("host.db-journal", "file", _host),
    ("hsm", "dir", _host),
    ("hsm/hsm.keys", "file", _host),
    ("hsm/hsm.keys.devkey", "file", _host),
    ("hsm/security.keys", "file", _host),           # the security centre's keys (code MAC, seals)
    ("hsm/security.keys.devkey", "file", _host),
    ("hsm/security.keys.lock", "file", _host),
    ("driver-journal.db", "file", _driver_journal),
    ("driver-journal.db-wal", "file", _driver_journal),
    ("terminals/T0000001/journal.db", "file", _terminal_journal),
    ("terminals/T0000001/journal.db-wal", "file", _terminal_journal),
    ("terminals/T0000001/pinpad.sealed", "file", _pinpad),
    ("terminals/T0000001/pinpad.sealed.devkey", "file", _pinpad),
    ("terminals/T0000001/operator.sealed", "file", _operator),
    ("terminals/T0000001/operator.sealed.devkey", "file", _operator),
    ("terminals", "dir", _emulator),
    ("terminals/T0000001", "dir", _emulator),
    ("terminals/T0000001/journal.db", "file", _emulator),
    ("hsm/hsm.keys", "file", _emulator),
    ("host.db", "file", _emulator),
    ("session.jsonl", "file", _recording),
]


@pytest.mark.parametrize("planted, kind, use", CASES, ids=[f"{c[0]}-{c[2].__name__.strip('_')}" for c in CASES])
def test_a_planted_symlink_is_refused(tmp_path, victim, monkeypatch, planted, kind, use):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("POSTERM_HOME", str(home))
    plant(home / planted, victim / kind)
    with pytest.raises(UnsafePath, match="symlink"):
        use(home)
    assert untouched(victim)


def test_posterm_home_itself_a_symlink_is_refused(tmp_path, victim, monkeypatch):
    home = tmp_path / "home"
    plant(home, victim / "dir")
    monkeypatch.setenv("POSTERM_HOME", str(home))
    with pytest.raises(UnsafePath, match="symlink"):
        _home(home)
    assert untouched(victim)


def test_a_sealed_store_is_never_read_through_a_planted_link(tmp_path, victim):
    """Reading matters too: a linked device key would let someone else choose the terminal's keys."""
    from posterm.crypto import sealed

    store = tmp_path / "s" / "x.sealed"
    sealed.save(store, {"k": 1})
    other = tmp_path / "other" / "x.sealed"
    sealed.save(other, {"k": "attacker's"})
    for name in ("x.sealed", "x.sealed.devkey"):
        (store.parent / name).unlink()
        plant(store.parent / name, other.parent / name)
    with pytest.raises(UnsafePath, match="symlink"):
        sealed.load(store)


# ---------------------------------------------------------------- the CLI: exit 2, one line


def _one_line_exit_2(r) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "symlink" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_cli_host_command_on_a_planted_host_db(tmp_path, victim):
    home = tmp_path / "home"
    plant(home / "host.db", victim / "file")
    _one_line_exit_2(posterm("host", "cases", env=env_for(home)))
    assert untouched(victim)


def test_cli_pay_with_a_planted_journal_or_recording(tmp_path, victim):
    home = tmp_path / "home"
    plant(home / "driver-journal.db", victim / "file")
    _one_line_exit_2(posterm("pay", "--port", "loop://", "--amount", "1.00", "--payment-code", "289900000000000001",
                             env=env_for(home), timeout=30))
    plant(tmp_path / "rec.jsonl", victim / "file")
    _one_line_exit_2(posterm("pay", "--port", "loop://", "--amount", "1.00", "--payment-code", "289900000000000001",
                             "--journal", str(tmp_path / "j.db"), "--record", str(tmp_path / "rec.jsonl"),
                             env=env_for(home), timeout=30))
    assert untouched(victim)


def test_cli_port_file_link_is_refused_and_its_temp_name_is_not_predictable(tmp_path, victim):
    home = tmp_path / "home"
    env = env_for(home)
    plant(tmp_path / "ports", victim / "file")
    try:
        r = posterm("emulate", "--port-file", str(tmp_path / "ports"), env=env, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("emulate wrote its port file through the link and kept running")
    _one_line_exit_2(r)
    assert untouched(victim)

    (tmp_path / "ports").unlink()
    plant(tmp_path / "ports.tmp", victim / "file")   # the old fixed temporary name
    p = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--port-file", str(tmp_path / "ports")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = p.stdout.readline().strip()
        for _ in range(600):
            if (tmp_path / "ports").exists() or p.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "ports").read_text().strip() == port
        assert not (tmp_path / "ports").is_symlink()
    finally:
        p.terminate()
        p.wait(20)
    assert untouched(victim)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _cli_exit_2(r) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "symlink" in lines[0], r.stderr


def test_cli_keygen_refuses_a_link(tmp_path, victim):
    plant(tmp_path / "k.key", victim / "file")
    _cli_exit_2(run("host", "backup", "keygen", str(tmp_path / "k.key")))
    assert untouched(victim)


@pytest.fixture
def a_backup(tmp_path):
    from tests.backup.conftest import make_db

    key = tmp_path / "good.key"
    assert run("host", "backup", "keygen", str(key)).exit_code == 0
    db = make_db(tmp_path / "host.db")
    (tmp_path / "dest").mkdir()
    r = run("host", "backup", "--to", str(tmp_path / "dest"), "--key-file", str(key), "--db", str(db))
    assert r.exit_code == 0, r.output
    return key, r.stdout.split()[0]


def test_cli_backup_of_a_linked_database_is_refused(tmp_path, victim, a_backup):
    key, _ = a_backup
    plant(tmp_path / "linked.db", victim / "file")
    _cli_exit_2(run("host", "backup", "--to", str(tmp_path / "dest"), "--key-file", str(key),
                    "--db", str(tmp_path / "linked.db")))
    assert untouched(victim)


@pytest.mark.parametrize("planted", ["linked.db", "linked.db-wal"])
def test_cli_restore_over_a_link_is_refused(tmp_path, victim, a_backup, planted):
    key, file = a_backup
    plant(tmp_path / planted, victim / "file")
    _cli_exit_2(run("host", "restore", file, "--db", str(tmp_path / "linked.db"), "--key-file", str(key)))
    assert (tmp_path / planted).is_symlink() and untouched(victim)


def test_cli_convert_refuses_a_link(tmp_path, victim):
    from posterm.record.format import Recorder

    Recorder(tmp_path / "r.jsonl").close()
    plant(tmp_path / "r.pcapng", victim / "file")
    _cli_exit_2(run("convert", str(tmp_path / "r.jsonl"), str(tmp_path / "r.pcapng")))
    assert untouched(victim)
