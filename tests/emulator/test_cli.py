"""`posterm emulate` and `posterm demo` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_emulate_prints_port_first_and_stops_on_sigterm(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--home", str(tmp_path), "--count", "2",
                          "--port-file", str(tmp_path / "ports")], stdout=subprocess.PIPE, text=True)
    try:
        first, second = p.stdout.readline().strip(), p.stdout.readline().strip()
        assert first.startswith("/dev/pts/") and second.startswith("/dev/pts/") and first != second
        # The port file is replaced into place before the ports are printed: it is there now.
        assert (tmp_path / "ports").read_text().split() == [first, second]
        r = subprocess.run([sys.executable, "-m", "posterm", "pay", "--port", second, "--amount", "12.34",
                            "--payment-code", "289900000000000001", "--json", "--journal", str(tmp_path / "j.db")],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["result"] == "approved" and out["amount_minor"] == 1234
    finally:
        p.terminate()
        assert p.wait(10) == 0


def test_emulate_bad_flags_are_usage_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "posterm", "emulate", "--home", str(tmp_path), "--faults", "drop=2"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "between 0 and 1" in r.stderr


def test_demo_runs_a_day_and_exits_0():
    r = subprocess.run([sys.executable, "-m", "posterm", "demo"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all as expected" in r.stdout and "books balanced: True" in r.stdout
    assert "147258" not in r.stdout + r.stderr and "289900000000000001" not in r.stdout


def test_emulate_shows_the_screen_and_the_dynamic_qr_as_text(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--home", str(tmp_path), "--show-display",
                          "--poll-interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = p.stdout.readline().strip()
        r = subprocess.run([sys.executable, "-m", "posterm", "pay", "--port", port, "--amount", "3.00", "--qr",
                            "--json", "--journal", str(tmp_path / "j.db")], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["result"] == "approved"
    finally:
        p.terminate()
        assert p.wait(10) == 0
    err = p.stderr.read()
    assert "[T0000001 screen] Scan with your wallet" in err
    assert "QR data: " in err and ("\u2588" in err or "\u2580" in err)  # segno's block characters
    assert "Traceback" not in err


def test_emulate_stops_cleanly_on_ctrl_c(tmp_path):
    import signal

    p = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--home", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("/dev/pts/")
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert "Traceback" not in p.stderr.read()


@pytest.mark.parametrize("args, says", [
    (["--terminal-id", "bad id"], "--terminal-id"),
    (["--host", "tcp://127.0.0.1:notaport"], "--host"),
    (["--listen", "tcp://0.0.0.0:7000"], "loopback only"),
])
def test_emulate_refuses_bad_identity_and_addresses_at_start(tmp_path, args, says):
    r = subprocess.run([sys.executable, "-m", "posterm", "emulate", "--home", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""      # nothing was served


def test_emulate_prints_scenario_expectations_and_exits_5_when_one_fails(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[payment]]\nexpect = "approved"\n\n[[payment]]\nexpect = "declined"\n')
    p = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--home", str(tmp_path), "--scenario",
                          str(scenario)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = p.stdout.readline().strip()
        for order in ("SC-1", "SC-2"):
            r = subprocess.run([sys.executable, "-m", "posterm", "pay", "--port", port, "--amount", "1.00",
                                "--order-id", order, "--payment-code", "289900000000000001", "--json",
                                "--journal", str(tmp_path / "j.db")], capture_output=True, text=True, timeout=30)
            assert json.loads(r.stdout)["result"] == "approved", r.stderr
    finally:
        p.terminate()
        code = p.wait(10)
    err = p.stderr.read()
    assert code == 5, err
    lines = [line for line in err.splitlines() if line.startswith("scenario:")]
    assert lines == ["scenario: pass T0000001 payment 1 order SC-1: expected approved, got approved/none",
                     "scenario: FAIL T0000001 payment 2 order SC-2: expected declined, got approved/none"]
