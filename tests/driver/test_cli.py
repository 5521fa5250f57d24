"""The driver CLI over a real pty: JSON out, progress on stderr, exit codes, usage errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from posterm.cli import main

CODE_OK = "289900000000000001"


@pytest.fixture
def port(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path))
    from posterm.transport import PtyTransport
    from tests.driver.fake_terminal import FakeTerminal

    master, path = PtyTransport.create()
    fake = FakeTerminal(master)
    fake.start()
    yield path
    fake.stop.set()
    fake.join(2)
    master.close()
    assert fake.error is None


def run(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # click 8.1
    except TypeError:
        runner = CliRunner()  # click >= 8.2 keeps stderr apart already
    return runner.invoke(main, list(args), catch_exceptions=False)


def test_pay_approved_json(port):
    r = run("pay", "--port", port, "--amount", "12.34", "--currency", "CNY", "--payment-code", CODE_OK, "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["result"] == "approved" and out["amount_minor"] == 1234 and out["currency"] == "CNY"
    assert out["order_id"] and "reason" in out


def test_pay_declined_exit_1(port):
    r = run("pay", "--port", port, "--amount-minor", "900", "--payment-code", "289900000000000002", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["result"] == "declined"


def test_cancel_that_cancels_exits_0_and_one_refused_exits_1(port):
    paid = json.loads(run("pay", "--port", port, "--amount", "3", "--payment-code", CODE_OK, "--json").stdout)
    r = run("cancel", "--port", port, paid["order_id"], "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "cancelled"
    r = run("cancel", "--port", port, "NO-SUCH-ORDER", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["result"] == "declined"


def test_trace_goes_to_stderr_masked(port):
    r = run("pay", "--port", port, "--amount", "1", "--payment-code", CODE_OK, "--trace")
    assert r.exit_code == 0
    assert "-> DATA" in r.stderr and CODE_OK not in r.stderr + r.stdout


@pytest.mark.parametrize("args, match", [
    (["--amount", "12.345", "--currency", "CNY"], "decimal"),
    (["--amount", "abc"], ""),
    (["--amount", "1", "--amount-minor", "100"], ""),
    (["--amount", "1", "--currency", "XXQ"], "currency"),
    (["--amount", "1", "--baud", "fast"], ""),
])
def test_bad_flags_are_usage_errors(port, args, match):
    r = run("pay", "--port", port, *args)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert match.lower() in r.stderr.lower()


def test_missing_port_is_exit_4(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path))
    r = run("status", "--port", "/dev/ttyUSB-nope")
    assert r.exit_code == 4 and "no such port" in r.stderr


def test_status_and_doctor(port):
    r = run("status", "--port", port, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["terminal_id"] == "T0000001"
    r = run("doctor", "--port", port, "--quick", "--json", "--no-exclusive")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["answered_with"] == "115200 8N1"


def test_ports_json_is_a_list():
    r = run("ports", "--json")
    assert r.exit_code == 0 and isinstance(json.loads(r.stdout), list)
