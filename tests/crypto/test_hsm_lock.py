"""The HSM's device-number allocation is atomic across processes (a file lock on hsm.lock)."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys

import pytest

from posterm.crypto import hsm as hsm_mod
from posterm.crypto.hsm import Hsm
from posterm.errors import CryptoError

# Each child opens the HSM, says so, waits for "go" on stdin (both then allocate at once),
# and allocates a device number (an initial key) for 60 terminals of its own.
CHILD = """
import sys
from posterm.crypto.hsm import Hsm
hsm = Hsm.open(sys.argv[1])
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
for n in range(60):
    hsm.initial_key_block(f"{sys.argv[2]}{n:03d}")
print("done", flush=True)
"""


def test_two_processes_allocating_at_once_never_share_a_device_number(tmp_path):
    state = tmp_path / "hsm"
    Hsm.open(state)   # the store exists, as the host made it
    kids = [subprocess.Popen([sys.executable, "-c", CHILD, str(state), prefix], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True) for prefix in ("A", "B")]
    try:
        for k in kids:
            assert k.stdout.readline().strip() == "ready"
        for k in kids:
            k.stdin.write("go\n")
            k.stdin.flush()
        for k in kids:
            assert k.stdout.readline().strip() == "done"
            assert k.wait(60) == 0
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()
                k.wait(10)
    again = Hsm.open(state)
    names = [f"{p}{n:03d}" for p in "AB" for n in range(60)]
    devices = {t: again._tdes_devices.get(t) for t in names}
    assert None not in devices.values()                          # both processes' numbers were kept
    assert len(set(devices.values())) == len(names)              # ... and no number twice
    keys = {again.initial_key_block(t).ksn[:8] for t in names}
    assert len(keys) == len(names)                               # so no initial key twice
    mode = stat.S_IMODE(os.stat(state / "hsm.lock").st_mode)
    assert mode == 0o600


def test_reserve_devices_allocates_in_one_go_and_keeps_numbers(tmp_path):
    hsm = Hsm.open(tmp_path / "hsm")
    first = hsm.initial_key_block("T0000001").ksn
    assert hsm.reserve_devices([f"T{n:07d}" for n in range(1, 301)]) == 299   # T0000001 had one
    assert hsm.reserve_devices(["T0000005", "T0000300"]) == 0
    again = Hsm.open(tmp_path / "hsm")
    assert again.initial_key_block("T0000001").ksn == first
    assert len({again.initial_key_block(f"T{n:07d}").ksn for n in range(1, 301)}) == 300


def test_a_lock_held_elsewhere_is_waited_for_a_bounded_time(tmp_path, monkeypatch):
    hsm = Hsm.open(tmp_path / "hsm")
    monkeypatch.setattr(hsm_mod, "LOCK_TIMEOUT", 0.2)
    fd = os.open(tmp_path / "hsm" / "hsm.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)    # another process's hold, as flock sees it (a new open file)
        with pytest.raises(CryptoError, match="locked by another process"):
            hsm.initial_key_block("T0000002")
    finally:
        os.close(fd)
    assert hsm.initial_key_block("T0000002").ksn   # free again: allocates
