"""The supervisor password resets a locked operator password: over the wire (OperatorReset),
with its own 3-try lock, sealed at rest, never in clear in a trace or a recording."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason
from posterm.cli import main
from posterm.crypto.pinpad import SUPERVISOR_LOCK_SECONDS, OperatorPassword, SecureModule, SupervisorPassword
from posterm.emulator.firmware import Firmware, FirmwareConfig, Identity
from posterm.emulator.orders import OrderStore
from posterm.emulator.peripherals import OperatorKeypad, PinPad
from posterm.families.native.ecr import Terminal

SUPERVISOR = "975310"
NEW = "135792"


@pytest.fixture
def term(posterm_terminal, tmp_path):
    with Terminal.open(posterm_terminal.port, journal=str(tmp_path / "drv.db")) as t:
        t.emu = posterm_terminal
        yield t
    assert posterm_terminal.error is None


def _lock_operator(term) -> None:
    for _ in range(5):
        assert term.settle("000000", timeout=30).reason in (Reason.OPERATOR_PASSWORD_WRONG, Reason.OPERATOR_LOCKED)
    assert term.settle("246810", timeout=30).reason == Reason.OPERATOR_LOCKED   # even the right one


def test_locked_operator_password_is_reset_by_the_supervisor_and_the_new_one_works(term):
    _lock_operator(term)
    wrong = term.reset_operator_password("111111", NEW)
    assert (wrong.outcome, wrong.reason, wrong.supervisor_tries_left) == (
        Outcome.DECLINED, Reason.SUPERVISOR_PASSWORD_WRONG, 2)
    assert term.settle("246810", timeout=30).reason == Reason.OPERATOR_LOCKED  # a refused reset changed nothing
    same = term.reset_operator_password(SUPERVISOR, SUPERVISOR)
    assert (same.outcome, same.reason) == (Outcome.DECLINED, Reason.PASSWORD_NOT_ALLOWED)
    done = term.reset_operator_password(SUPERVISOR, NEW)
    assert done.done and done.reason == Reason.NONE and done.supervisor_tries_left == 3
    assert term.settle("246810", timeout=30).reason == Reason.OPERATOR_PASSWORD_WRONG   # the old one is gone
    st = term.settle(NEW, timeout=30)
    assert st.outcome is Outcome.APPROVED and st.reason == Reason.NONE
    r = term.pay(100, "CNY", payment_code="289900000000000001", timeout=30)
    assert term.refund(r.order_id, 100, "RF-" + r.order_id, NEW, timeout=30).approved


@pytest.mark.parametrize("weak", ["111111", "aaaa", "123456", "654321", "3456789"])
def test_the_terminal_refuses_a_guessable_new_operator_password(term, weak):
    """The strict rules of every password setting, at the supervisor's reset too: one
    character repeated, a run of digits up or down. The locked operator stays locked."""
    _lock_operator(term)
    out = term.reset_operator_password(SUPERVISOR, weak)
    assert (out.outcome, out.reason, out.supervisor_tries_left) == (Outcome.DECLINED, Reason.PASSWORD_NOT_ALLOWED, 3)
    assert term.settle(weak, timeout=30).reason == Reason.OPERATOR_LOCKED
    assert term.reset_operator_password(SUPERVISOR, NEW).done


def test_wrong_supervisor_passwords_count_and_lock_it(term):
    _lock_operator(term)
    left = [term.reset_operator_password("111111", NEW).supervisor_tries_left for _ in range(2)]
    assert left == [2, 1]
    third = term.reset_operator_password("222222", NEW)
    assert (third.outcome, third.reason, third.supervisor_tries_left) == (Outcome.DECLINED, Reason.SUPERVISOR_LOCKED, 0)
    assert third.locked_until and third.locked_until.endswith("+00:00")
    right = term.reset_operator_password(SUPERVISOR, NEW)       # locked: not even checked
    assert (right.outcome, right.reason) == (Outcome.DECLINED, Reason.SUPERVISOR_LOCKED)
    assert term.settle(NEW, timeout=30).reason == Reason.OPERATOR_LOCKED
    # the lock is in the sealed state: a restarted terminal still refuses
    (state,) = _terminal_dirs(term)
    assert SupervisorPassword(state / "supervisor.sealed").locked


def _terminal_dirs(term):
    return [p for p in (Path(os.environ["POSTERM_HOME"]) / "terminals").iterdir() if p.is_dir()]


def test_supervisor_state_is_sealed_0600_and_holds_no_password(term):
    assert term.reset_operator_password(SUPERVISOR, NEW).done
    (state,) = _terminal_dirs(term)
    path = state / "supervisor.sealed"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    blobs = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())
    assert SUPERVISOR.encode() not in blobs and NEW.encode() not in blobs


@pytest.fixture
def fw(tmp_path):
    journal = OrderStore(tmp_path / "journal.db")
    keypad = OperatorKeypad(OperatorPassword(password="246810"), SupervisorPassword(password=SUPERVISOR))
    firmware = Firmware(Identity(), journal, PinPad(SecureModule()), keypad, config=FirmwareConfig(print_time=0.01))
    firmware.start(0.0)
    yield firmware
    journal.close()


def test_reset_is_busy_while_a_payment_runs_and_changes_nothing(fw):
    fw.on_message(m.PayRequest(amount_minor=100, currency="CNY", order_id="B-1",
                               payment_code="289900000000000001"), 1.0)
    assert fw.state is not m.TerminalState.IDLE
    fw.take_ecr()
    fw.on_message(m.OperatorReset(supervisor_password=SUPERVISOR, new_operator_password=NEW), 1.1)
    (err,) = [x for x in fw.take_ecr() if isinstance(x, m.Error)]
    assert (err.code, err.in_reply_to) == (m.ErrorCode.BUSY, m.OperatorReset.TYPE)
    assert fw.keypad.check("246810") is Reason.NONE


def test_a_terminal_without_a_supervisor_password_answers_not_allowed(tmp_path):
    journal = OrderStore(tmp_path / "journal.db")
    try:
        fw = Firmware(Identity(), journal, PinPad(SecureModule()), OperatorKeypad(OperatorPassword(password="246810")))
        fw.start(0.0)
        fw.on_message(m.OperatorReset(supervisor_password=SUPERVISOR, new_operator_password=NEW), 1.0)
        (err,) = fw.take_ecr()
        assert isinstance(err, m.Error) and err.code == m.ErrorCode.NOT_ALLOWED
        assert fw.state is m.TerminalState.IDLE
    finally:
        journal.close()


# ------------------------------------------------------------------ the store alone (a fake clock)


def test_supervisor_lock_expires_then_each_wrong_try_locks_again(tmp_path):
    now = [1_000_000.0]
    sup = SupervisorPassword(tmp_path / "s.sealed", password=SUPERVISOR, clock=lambda: now[0])
    assert [sup.verify("000000").tries_left for _ in range(2)] == [2, 1]
    locked = sup.verify("000000")
    assert not locked.ok and locked.locked_until == now[0] + SUPERVISOR_LOCK_SECONDS
    assert not sup.verify(SUPERVISOR).ok                      # refused unchecked while locked
    again = SupervisorPassword(tmp_path / "s.sealed", clock=lambda: now[0])   # survives a restart
    assert again.locked and again.failures == 3
    now[0] += SUPERVISOR_LOCK_SECONDS + 1
    assert not again.locked and again.tries_left == 1
    relock = again.verify("000000")                           # after the lock: one wrong try locks again
    assert not relock.ok and relock.locked_until == now[0] + SUPERVISOR_LOCK_SECONDS
    now[0] += SUPERVISOR_LOCK_SECONDS + 1
    assert again.verify(SUPERVISOR).ok and again.failures == 0 and again.tries_left == 3
    assert "975310" not in repr(again)


# ------------------------------------------------------------------ the CLI


def test_cli_reset_password_reads_both_passwords_from_stdin(posterm_terminal):
    runner = CliRunner()
    port = ["--port", posterm_terminal.port]
    refused = runner.invoke(main, ["terminal", "reset-password", *port, "--passwords-stdin"], input="111111\n" + NEW + "\n")
    assert refused.exit_code == 1, refused.output
    assert "supervisor_password_wrong" in refused.output and "2 supervisor tries left" in refused.output
    ok = runner.invoke(main, ["terminal", "reset-password", *port, "--passwords-stdin", "--json"],
                       input=f"{SUPERVISOR}\n{NEW}\n")
    assert ok.exit_code == 0, ok.output
    assert '"result": "reset"' in ok.output
    assert SUPERVISOR not in ok.output and NEW not in ok.output
    with Terminal.open(posterm_terminal.port) as t:
        assert t.settle(NEW, timeout=30).outcome is Outcome.APPROVED


@pytest.mark.parametrize("weak, why", [("777777", "one digit repeated"), ("123456", "a run of digits"),
                                       ("654321", "a run of digits"), ("zzzz", "one character repeated")])
def test_cli_reset_password_names_the_rule_a_new_password_breaks(posterm_terminal, weak, why):
    r = CliRunner().invoke(main, ["terminal", "reset-password", "--port", posterm_terminal.port, "--passwords-stdin"],
                           input=f"{SUPERVISOR}\n{weak}\n")
    assert r.exit_code == 2, r.output
    (line,) = [x for x in r.output.splitlines() if x.strip()][-1:]
    assert line.startswith("posterm: error:") and f"the new operator password may not be {why}" in line
    assert weak not in r.output
    with Terminal.open(posterm_terminal.port) as t:             # nothing was sent: the old one still works
        assert t.settle("246810", timeout=30).outcome is Outcome.APPROVED


def test_cli_reset_password_prompts_hidden(posterm_terminal):
    r = CliRunner().invoke(main, ["terminal", "reset-password", "--port", posterm_terminal.port],
                           input=f"{SUPERVISOR}\n{NEW}\n{NEW}\n")
    assert r.exit_code == 0, r.output
    assert "operator password reset" in r.output
    assert SUPERVISOR not in r.output and NEW not in r.output


# ------------------------------------------------------------------ never in clear on the way


def test_passwords_are_masked_in_recordings_and_traces(posterm_terminal, tmp_path, caplog):
    from posterm.record import RecordingTransport
    from posterm.transport import open_transport

    path = tmp_path / "reset.jsonl"
    caplog.set_level(logging.DEBUG)
    with Terminal(RecordingTransport(open_transport(posterm_terminal.port), path, side="ecr"), trace=True) as t:
        assert t.reset_operator_password(SUPERVISOR, NEW).done
    text = path.read_text()
    for secret in (SUPERVISOR, NEW):
        assert secret not in text and secret.encode().hex().upper() not in text.upper()
        assert secret not in caplog.text and secret.encode().hex().upper() not in caplog.text.upper()
    assert '"supervisor_password": "<redacted>"' in text.replace('":"', '": "')
    msg = m.OperatorReset(supervisor_password=SUPERVISOR, new_operator_password=NEW)
    assert SUPERVISOR not in repr(msg) and NEW not in repr(msg)
