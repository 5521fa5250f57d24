"""Everything posterm writes is 0600 (files) / 0700 (directories), whatever the umask.

The commands run in subprocesses that inherit ``umask 000``: the worst case, where
anything created with the default mode would be world-writable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.files.conftest import bad_modes, env_for, mode, posterm, umask

CODE = "289900000000000001"


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def test_a_day_under_umask_000_leaves_only_private_files(tmp_path):
    home = tmp_path / "home"          # POSTERM_HOME, made by posterm
    out = tmp_path / "out"            # the user's own directory: its mode is theirs, not checked
    out.mkdir()
    out.chmod(0o777)
    for d in ("dest", "restored"):    # user-chosen directories, made private here so the walk can cover them
        (out / d).mkdir(mode=0o700)
    env = env_for(home)
    key = out / "backup.key"
    with umask(0o000):
        r = posterm("host", "backup", "keygen", str(key), env=env)
        assert r.returncode == 0, r.stderr
        serve = subprocess.Popen([sys.executable, "-m", "posterm", "host", "serve", "--backup-every", "1h",
                                  "--backup-to", str(out / "dest"), "--backup-key-file", str(key)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        emulate = None
        try:
            address = serve.stdout.readline().strip()
            assert address.startswith("tcp://"), serve.stderr.read()
            emulate = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--host", address,
                                        "--port-file", str(out / "ports"), "--record", str(out / "rec")],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            _wait_for(out / "ports", emulate)
            port = (out / "ports").read_text().strip()
            r = posterm("pay", "--port", port, "--amount", "12.34", "--payment-code", CODE, "--json",
                        "--record", str(out / "pay.jsonl"), env=env)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["result"] == "approved"
            r = posterm("convert", str(out / "pay.jsonl"), str(out / "pay.pcapng"), env=env)
            assert r.returncode == 0, r.stderr
            r = posterm("host", "backup", "--to", str(out / "dest"), "--key-file", str(key), env=env)
            assert r.returncode == 0, r.stderr
            backup_file = r.stdout.split()[0]
            # while everything runs: the WAL and shared-memory files exist now
            assert bad_modes(home) == []
            assert bad_modes(out, include_root=False) == []
        finally:
            if emulate is not None:
                _stop(emulate)
            _stop(serve)
        r = posterm("host", "restore", backup_file, "--db", str(out / "restored" / "host.db"),
                    "--key-file", str(key), env=env)
        assert r.returncode == 0, r.stderr
        r = posterm("host", "restore", backup_file, "--db", str(out / "restored" / "host.db"),
                    "--key-file", str(key), env=env)  # over an existing database: keeps the old one
        assert r.returncode == 0, r.stderr

    made = {p.relative_to(home).as_posix() for p in home.rglob("*")}
    assert {"host.db", "driver-journal.db", "hsm", "hsm/hsm.keys", "hsm/hsm.keys.devkey", "terminals/T0000001",
            "terminals/T0000001/journal.db", "terminals/T0000001/pinpad.sealed",
            "terminals/T0000001/operator.sealed"} <= made
    assert (out / "rec").is_dir() and list((out / "rec").glob("*.jsonl"))
    assert len(list((out / "dest").glob("*.ptbk"))) == 2          # the scheduler's and the command's
    assert list((out / "restored").glob("host.db.pre-restore-*"))
    assert bad_modes(home) == []
    assert bad_modes(out, include_root=False) == []
    assert mode(out) == 0o777                                      # a user's directory is left as it is


def test_existing_loose_directories_that_posterm_owns_are_tightened(tmp_path):
    """State left by an older posterm run under umask 000 is made private again on next use."""
    home = tmp_path / "home"
    for d in (home, home / "terminals", home / "terminals" / "T0000001", home / "hsm"):
        d.mkdir()
        d.chmod(0o777)
    with umask(0o000):
        r = subprocess.run([sys.executable, "-c",
                            "import sys; from posterm.emulator.runner import EmulatedTerminal as E\n"
                            "with E.start(home=sys.argv[1]) as t: pass", str(home)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert bad_modes(home) == []
