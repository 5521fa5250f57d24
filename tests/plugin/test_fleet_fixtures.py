"""The pytest plugin's session fleet: ``posterm_fleet`` (N terminals for the session) and
``posterm_fleet_terminal`` (a free one leased to a test, returned after it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from posterm.families.native.ecr import Terminal

CODE = "289900000000000001"


def test_a_leased_terminal_pays(posterm_fleet_terminal):
    assert os.environ["POSTERM_PORT"] == posterm_fleet_terminal.port
    with Terminal.open() as term:
        assert term.hello().terminal_id == posterm_fleet_terminal.terminal_id
        r = term.pay(1234, "CNY", payment_code=CODE, timeout=60)
    assert r.approved
    assert posterm_fleet_terminal.host.order_status(r.order_id) == "APPROVED"
    assert posterm_fleet_terminal.emulated.journal.get(r.order_id) is not None


def test_leases_are_exclusive_and_come_back(posterm_fleet, posterm_fleet_terminal):
    mine = posterm_fleet_terminal
    others = [posterm_fleet.lease(timeout=1) for _ in range(posterm_fleet.size - 1)]
    assert len({mine.port, *(o.port for o in others)}) == posterm_fleet.size   # never one terminal twice
    with pytest.raises(TimeoutError):
        posterm_fleet.lease(timeout=0.05)                                      # all out: bounded wait
    posterm_fleet.release(others[-1])
    again = posterm_fleet.lease(timeout=1)
    assert again.port == others[-1].port
    for lease in [*others[:-1], again]:
        posterm_fleet.release(lease)


PROJECT_TEST = '''
import pytest
from posterm.families.native.ecr import Terminal


@pytest.mark.parametrize("n", range(12))
def test_checkout(n, posterm_fleet, posterm_fleet_terminal):
    assert posterm_fleet.size == {size}
    with Terminal.open(posterm_fleet_terminal.port) as term:
        assert term.hello().terminal_id == posterm_fleet_terminal.terminal_id
        assert term.pay(100 + n, "CNY", payment_code="289900000000000001", timeout=120).approved
    print("LEASED", posterm_fleet_terminal.terminal_id)
'''


def _run_project(tmp_path: Path, size: int, extra_ini: str = "", xdist: bool = False):
    (tmp_path / "test_lanes.py").write_text(PROJECT_TEST.format(size=size))
    (tmp_path / "pytest.ini").write_text(f"[pytest]\nposterm_fleet_size = {size}\n{extra_ini}")
    args = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_lanes.py",
            f"--basetemp={tmp_path / 'base'}"]
    if xdist:
        args += ["-n", "2"]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_a_project_session_fleet_under_xdist(tmp_path):
    r = _run_project(tmp_path, 12, xdist=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "12 passed" in r.stdout


def test_a_session_fleet_over_two_processes_leaves_no_process(tmp_path):
    r = _run_project(tmp_path, 4, "posterm_fleet_processes = 2\n")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "12 passed" in r.stdout
    # A lease is returned after each test, so one worker's tests all get T0000001.
    assert set(re.findall(r"LEASED (T\d{7})", r.stdout)) == {"T0000001"}
    base = str(tmp_path / "base")
    stray = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert not [ln for ln in stray.splitlines() if base in ln and "posterm" in ln and "emulate" in ln]
