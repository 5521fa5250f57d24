"""The driver commands with ``--protocol zvt`` against the emulated ZVT terminal (the real
emulator: ``EmulatedTerminal.start(protocol="zvt")``, what ``posterm emulate --protocol zvt``
runs), on a pty (serial framing) and on TCP (``tcp://`` and pyserial's ``socket://``): the
same result objects and exit codes as the other families, receipts from the terminal's
print lines, the terminal password from the command line, stdin or the environment and
never shown, traces masked, abort on --timeout and on Ctrl-C, and recovery of a payment
whose result never reached the register."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from firmware_protocol.zvt import TcpFramer, ZvtFrame

from posterm.cli import main
from posterm.emulator.runner import DEMO_OPERATOR_PASSWORD, EmulatedTerminal

PASSWORD = DEMO_OPERATOR_PASSWORD   # the emulated terminal's password (registration, reversal, end of day)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path / "ecr"))
    for name in ("POSTERM_TERMINAL_PASSWORD", "POSTERM_PROTOCOL", "POSTERM_PORT", "POSTERM_OPERATOR_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pty_port(tmp_path):
    with EmulatedTerminal.start(home=tmp_path / "home", protocol="zvt") as emu:
        yield emu, emu.port
        assert emu.error is None


@pytest.fixture
def tcp_emu(tmp_path):
    with EmulatedTerminal.start(home=tmp_path / "home", protocol="zvt", listen="tcp://127.0.0.1:0") as emu:
        yield emu
        assert emu.error is None


@pytest.fixture(params=["pty", "tcp", "socket"])
def port(request, tmp_path):
    """The emulated terminal and the --port that reaches it: a pty, tcp://, socket://."""
    if request.param == "pty":
        yield request.getfixturevalue("pty_port")
        return
    emu = request.getfixturevalue("tcp_emu")
    yield emu, emu.port if request.param == "tcp" else emu.port.replace("tcp://", "socket://")


def run(*args, input: str | None = None, env: dict | None = None):
    try:
        runner = CliRunner(mix_stderr=False)  # click 8.1
    except TypeError:
        runner = CliRunner()  # click >= 8.2 keeps stderr apart already
    return runner.invoke(main, list(args), input=input, env=env, catch_exceptions=False)


def zvt(command: str, port: str, *args: str, password: bool = True):
    extra = ["--terminal-password", PASSWORD] if password else []
    return run(command, "--protocol", "zvt", "--port", port, *extra, *args)


def one_error_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.startswith("posterm: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# -- every driver command, serial and TCP ------------------------------------------------------


def test_every_driver_command_with_the_documented_exit_codes(port):
    emu, p = port
    r = zvt("status", p, "--json")
    assert r.exit_code == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["terminal_id"] == "00000001" and st["state"] == "idle"

    r = zvt("pay", p, "--amount", "12.34", "--currency", "CNY", "--json")
    assert r.exit_code == 0, r.stderr
    paid = json.loads(r.stdout)
    assert paid["result"] == "approved" and paid["amount_minor"] == 1234 and paid["currency"] == "CNY"
    assert paid["code_last4"] == "0001" and paid["trade_no"]
    # the receipt the terminal printed, sent as print lines because the ECR prints (0xDE)
    assert "SALE" in paid["receipt"] and any("12.34 CNY" in line for line in paid["receipt"])
    assert "[" in r.stderr                                # progress from the intermediate statuses

    r = zvt("pay", p, "--amount", "6000", "--currency", "CNY", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["result"] == "declined"

    r = zvt("refund", p, paid["order_id"], "--amount", "2", "--currency", "CNY", "--refund-id", "RF-1", "--json")
    assert r.exit_code == 0, r.stderr
    refund = json.loads(r.stdout)
    assert refund["result"] == "approved" and refund["refunded_total_minor"] == 200
    r = zvt("refund", p, paid["order_id"], "--amount", "2", "--currency", "CNY", "--refund-id", "RF-1", "--json")
    assert r.exit_code == 0 and "not sent again" in json.loads(r.stdout)["reason_text"]

    r = zvt("cancel", p, paid["order_id"], "--json")     # the terminal's password is the operator's
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "cancelled"
    r = zvt("cancel", p, "NOT-IN-THE-JOURNAL")
    assert r.exit_code == 2 and "receipt number" in one_error_line(r)

    r = zvt("settle", p, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "approved"

    r = zvt("recover", p)
    assert r.exit_code == 0 and "nothing to recover" in r.stdout

    r = zvt("query", p, paid["order_id"])
    assert r.exit_code == 2 and "no query" in one_error_line(r) and r.stdout == ""
    # the terminal's own journal agrees: one payment reversed, one declined, nothing else
    assert sorted(o.outcome.name for o in emu.journal_orders()) == ["CANCELLED", "DECLINED"]


def test_doctor_names_what_answered_and_what_is_missing(pty_port):
    _, p = pty_port
    r = run("doctor", "--protocol", "zvt", "--port", p, "--quick", "--json", "--terminal-password", PASSWORD)
    assert r.exit_code == 0, r.stdout
    assert json.loads(r.stdout)["answered_with"] == "9600 8N2"
    r = run("doctor", "--protocol", "zvt", "--port", p, "--quick")
    assert r.exit_code == 2 and "--terminal-password" in one_error_line(r)


# -- the terminal password -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["pay", "--amount", "1", "--currency", "CNY"],
                                     ["cancel", "ORDER-1"]])
def test_no_terminal_password_is_one_line_naming_the_option(pty_port, command):
    emu, p = pty_port
    r = run(command[0], "--protocol", "zvt", "--port", p, *command[1:])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    line = one_error_line(r)
    assert "--terminal-password" in line and "open(" not in line.split("(Python")[0]
    assert emu.journal_orders() == []                      # nothing was paid unregistered


def test_terminal_password_from_stdin_and_from_the_environment(pty_port):
    _, p = pty_port
    r = run("status", "--protocol", "zvt", "--port", p, "--terminal-password-stdin", "--json", input=PASSWORD + "\n")
    assert r.exit_code == 0, r.stderr
    r = run("status", "--protocol", "zvt", "--port", p, "--json", env={"POSTERM_TERMINAL_PASSWORD": PASSWORD})
    assert r.exit_code == 0, r.stderr
    # --password-stdin first, then the terminal's on the next line
    r = run("settle", "--protocol", "zvt", "--port", p, "--password-stdin", "--terminal-password-stdin", "--json",
            input=f"{PASSWORD}\n{PASSWORD}\n")
    assert r.exit_code == 0, r.stderr
    r = run("status", "--protocol", "zvt", "--port", p, "--terminal-password", PASSWORD,
            "--terminal-password-stdin", input=PASSWORD + "\n")
    assert r.exit_code == 2 and "not both" in r.stderr


@pytest.mark.parametrize("bad", ["98765", "98765x", "9876543"])
def test_a_bad_terminal_password_is_refused_and_never_shown(pty_port, bad):
    _, p = pty_port
    r = run("status", "--protocol", "zvt", "--port", p, "--terminal-password", bad)
    assert r.exit_code == 2 and "6 decimal digits" in one_error_line(r)
    assert bad not in r.stderr + r.stdout


def test_a_wrong_terminal_password_is_refused_by_the_terminal(pty_port):
    _, p = pty_port
    r = run("status", "--protocol", "zvt", "--port", p, "--terminal-password", "135790", "--json")
    assert r.exit_code == 4 and "registration refused" in one_error_line(r)
    assert "135790" not in r.stderr + r.stdout


def test_the_zvt_options_are_refused_by_a_family_that_has_none(pty_port):
    _, p = pty_port
    for option in (["--terminal-password", PASSWORD], ["--zvt-config", "0xDE"], ["--zvt-framing", "tcp"]):
        r = run("status", "--protocol", "posterm", "--port", p, *option)
        assert r.exit_code == 2 and option[0] in r.stderr and "'posterm'" in r.stderr
    # set in the environment for the ZVT terminal, it does not stand in the way of another family
    r = run("query", "--protocol", "concert", "--port", p, "ORDER-1", env={"POSTERM_TERMINAL_PASSWORD": PASSWORD})
    assert r.exit_code == 2 and "no query message" in one_error_line(r)


# -- the config byte decides who prints ------------------------------------------------------------


def test_the_config_byte_decides_who_prints_the_receipt(pty_port):
    _, p = pty_port
    r = zvt("pay", p, "--amount", "1", "--currency", "CNY", "--json", "--zvt-config", "0x00")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["receipt"] == []            # the terminal printed it
    assert "[" not in r.stderr                              # and sent no intermediate status
    r = zvt("pay", p, "--amount", "1", "--currency", "CNY", "--json", "--zvt-config", "222")
    assert r.exit_code == 0 and "SALE" in json.loads(r.stdout)["receipt"]
    r = zvt("pay", p, "--amount", "1", "--currency", "CNY", "--zvt-config", "0x1FF")
    assert r.exit_code == 2 and "--zvt-config" in r.stderr


# -- secrets ---------------------------------------------------------------------------------------


def test_the_trace_shows_zvt_decoded_with_password_pan_and_tracks_masked(port, tmp_path):
    _, p = port
    journal = tmp_path / "journal.db"
    r = zvt("pay", p, "--amount", "3", "--currency", "CNY", "--trace", "--journal", str(journal))
    assert r.exit_code == 0, r.stderr
    trace = r.stderr
    assert "Registration" in trace and "Authorisation" in trace and "Status information" in trace
    assert '"password": "<masked>"' in trace and "2A 2A 2A" in trace
    assert '"pan"' in trace and "EEEE0001" not in trace           # the PAN read <masked>
    assert "(hex withheld" in trace                                  # no dump of the APDU that holds it
    for secret in (PASSWORD, "24 68 10"):
        assert secret not in trace + r.stdout
    with sqlite3.connect(journal) as db:
        dump = "\n".join(db.iterdump())
    assert PASSWORD not in dump and "EEEE0001" not in dump


# -- abort: --timeout and Ctrl-C -------------------------------------------------------------------


def _customer_does_nothing(emu, tmp_path) -> None:
    scenario = tmp_path / "slow.toml"
    scenario.write_text('[[payment]]\nactions = [{ action = "do_nothing" }]\n')
    emu.set_scenario(scenario)


def test_timeout_aborts_the_payment_on_the_terminal(pty_port, tmp_path):
    emu, p = pty_port
    _customer_does_nothing(emu, tmp_path)
    r = zvt("pay", p, "--amount", "7", "--currency", "CNY", "--timeout", "1", "--json")
    assert r.exit_code == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["result"] == "cancelled" and out["reason"] == "aborted_by_ecr"
    assert "gave up after 1 s and aborted" in r.stderr
    assert [o.outcome.name for o in emu.journal_orders()] == ["CANCELLED"]
    r = zvt("recover", p)
    assert r.exit_code == 0 and "nothing to recover" in r.stdout


def _wait_for_port_file(proc, path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the emulator never wrote its port file"
        time.sleep(0.05)  # poll interval of a bounded wait on a condition
    return path.read_text().strip().splitlines()[0]


@pytest.mark.parametrize("listen", [None, "tcp://127.0.0.1:0"])
def test_ctrl_c_aborts_the_payment_and_the_journal_has_the_outcome(tmp_path, listen):
    """The CLI in a subprocess, the emulator too (``posterm emulate --protocol zvt``); SIGINT
    once the terminal asks the customer: the register sends 06 B0, the terminal answers 06 1E,
    the payment ends cancelled (aborted by the ECR), exit 1, journaled final."""
    env = {**os.environ, "POSTERM_HOME": str(tmp_path / "ecr"), "POSTERM_TERMINAL_PASSWORD": PASSWORD,
           "PYTHONPATH": ROOT}
    scenario = tmp_path / "slow.toml"
    scenario.write_text('[[payment]]\nactions = [{ action = "do_nothing" }]\n')
    port_file = tmp_path / "port"
    emu = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--protocol", "zvt", "--home",
                            str(tmp_path / "home"), "--scenario", str(scenario), "--port-file", str(port_file),
                            *(["--listen", listen] if listen else [])],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = _wait_for_port_file(emu, port_file)
        journal = tmp_path / "journal.db"
        pay = subprocess.Popen([sys.executable, "-m", "posterm", "pay", "--protocol", "zvt", "--port", port,
                                "--amount", "8", "--currency", "CNY", "--order-id", "CTRL-C-1", "--json",
                                "--journal", str(journal)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Wait for the first progress line: the terminal holds control and asks the customer.
            seen = []
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, f"no progress line: {seen}"
                ready, _, _ = select.select([pay.stderr], [], [], deadline - time.monotonic())
                line = pay.stderr.readline() if ready else ""
                assert line or pay.poll() is None, seen
                seen.append(line)
                if line.startswith("["):
                    break
            pay.send_signal(signal.SIGINT)
            out, err = pay.communicate(timeout=60)
        finally:
            if pay.poll() is None:
                pay.kill()
                pay.wait()
        err = "".join(seen) + err
        assert pay.returncode == 1, err
        assert "aborting the payment on the terminal" in err and "Traceback" not in err
        result = json.loads(out)
        assert result["result"] == "cancelled" and result["reason"] == "aborted_by_ecr"
        with sqlite3.connect(journal) as db:
            row = db.execute("SELECT state, outcome FROM orders WHERE order_id='CTRL-C-1'").fetchone()
        assert row == ("final", "cancelled")
    finally:
        emu.terminate()
        emu.wait(10)


# -- a result that never reached the register ------------------------------------------------------


class CuttingRelay:
    """A TCP relay between the register and the emulated terminal that stops passing the
    terminal's APDUs from its first status information (04 0F) on: the approval is made at
    the terminal and never reaches the register (a cable cut at the worst moment)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.cut = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                ecr, _ = self.server.accept()
            except OSError:
                continue
            pt = socket.create_connection(self.target, timeout=5)
            framer = TcpFramer()
            try:
                while not self.stop.is_set():
                    ready, _, _ = select.select([ecr, pt], [], [], 0.1)
                    if ecr in ready:
                        data = ecr.recv(4096)
                        if not data:
                            break
                        pt.sendall(data)
                    if pt in ready:
                        data = pt.recv(4096)
                        if not data:
                            break
                        framer.feed(data)
                        while (item := framer.pop()) is not None:
                            if isinstance(item, ZvtFrame) and item.apdu[:2] == b"\x04\x0f":
                                self.cut.set()
                            if not self.cut.is_set():
                                ecr.sendall(item.raw)
            finally:
                ecr.close()
                pt.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()


def test_an_approval_that_never_reached_the_register_is_recovered_as_the_terminal_reversed_it(tcp_emu, tmp_path):
    """No payment lost or doubled: the terminal approved, the register never got the status
    information (so never acknowledged it); the register aborts, hears nothing, says unknown
    (exit 3) and journals the order unfinished; the terminal, unacknowledged, reverses the
    approval; ``recover`` records the order cancelled without sending anything, and the two
    journals agree."""
    relay = CuttingRelay(tcp_emu.port)
    try:
        r = zvt("pay", relay.port, "--amount", "9", "--currency", "CNY", "--order-id", "CUT-1", "--timeout", "2",
                "--json")
        assert relay.cut.is_set()
        assert r.exit_code == 3, (r.stdout, r.stderr)
        assert json.loads(r.stdout)["result"] == "unknown" and "run recover" in one_error_line(r)
        r = zvt("pay", tcp_emu.port, "--amount", "9", "--currency", "CNY", "--order-id", "CUT-1")
        assert r.exit_code == 2 and "charge twice" in one_error_line(r)      # never sent again
    finally:
        relay.close()
    deadline = time.monotonic() + 60
    while [o.outcome.name for o in tcp_emu.journal_orders()] != ["CANCELLED"]:
        assert time.monotonic() < deadline, [o.outcome.name for o in tcp_emu.journal_orders()]
        time.sleep(0.05)  # poll interval of a bounded wait on the terminal's reversal
    r = zvt("recover", tcp_emu.port, "--json")
    assert r.exit_code == 0, r.stderr
    (rec,) = json.loads(r.stdout)
    assert rec["order_id"] == "CUT-1" and rec["result"] == "cancelled" and "never acknowledged" in rec["reason_text"]
    r = zvt("recover", tcp_emu.port)
    assert r.exit_code == 0 and "nothing to recover" in r.stdout
    assert len(tcp_emu.journal_orders()) == 1
