"""Concert: never keep money the register was not told about. Every window where an approval
can miss the ECR, over a real pty against the emulator, with the host's final state asserted."""

from __future__ import annotations

import os
import select
import threading
import tty

import pytest

from firmware_protocol.concert import ACK, ENQ, EOT, ConcertRequest, TxnType
from firmware_protocol.native.messages import Outcome
from posterm.families.concert.ecr import ConcertTerminal
from posterm.emulator.runner import EmulatedTerminal
from posterm.errors import PosTimeout

CODE5 = "289900000000000005"       # demo-005: confirms only when the scenario says so
SCENARIO = """
[terminal]
poll_interval = 0.2
poll_attempts = 50
[[payment]]
actions = [{{ action = "present_code", code = "{code}" }}, {{ action = "confirm_on_phone", after = {after} }}]
"""


def wait_until(pred, timeout=30.0, what="condition"):
    ev = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if pred():
            return
        ev.wait(0.05)                   # polling the host's state: nothing here to block on
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def emu(tmp_path):
    with EmulatedTerminal.start(home=tmp_path / "home", protocol="concert") as e:
        yield e


def balance(emu):
    return emu.host.account("demo-005")["balance_minor"]


def phone_after(emu, tmp_path, after):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(code=CODE5, after=after))
    emu.set_scenario(path)


class RawEcr:
    """An ECR written with bytes, to stop at any point of the handshake."""

    def __init__(self, port):
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)

    def read_until(self, byte, timeout=15.0):
        buf = b""
        for _ in range(int(timeout / 0.05)):
            if select.select([self.fd], [], [], 0.05)[0]:
                buf += os.read(self.fd, 512)
                if byte in buf:
                    return buf
        raise AssertionError(f"no {byte!r} from the terminal; got {buf!r}")

    def send_request(self, req):
        os.write(self.fd, bytes([ENQ]))
        self.read_until(bytes([ACK]))
        os.write(self.fd, req.encode())
        self.read_until(bytes([ACK]))
        os.write(self.fd, bytes([EOT]))

    def close(self):
        os.close(self.fd)


def debit(private, amount=1500):
    return ConcertRequest(amount_minor=amount, currency_numeric=156, txn_type=TxnType.DEBIT, private=private)


def assert_reversed(emu, order_id, before):
    wait_until(lambda: emu.host.order_status(order_id) in ("CANCELLED", "REFUNDED"), 40, "the reversal")
    wait_until(lambda: emu.journal.get(order_id).final, 10, "the terminal journal")
    assert emu.journal.get(order_id).outcome is Outcome.CANCELLED
    assert balance(emu) == before


def test_ecr_gives_up_before_the_customer_confirms(emu, tmp_path):
    phone_after(emu, tmp_path, 1.0)
    before = balance(emu)
    with ConcertTerminal.open(emu.port, journal=str(tmp_path / "j.db")) as term:
        with pytest.raises(PosTimeout):
            term.pay(1500, "CNY", order_id="U000000001", timeout=0.5)
    # approved after the ECR left: its ENQs go unanswered, the terminal gives the money back
    wait_until(lambda: emu.host.order_status("U000000001") is not None, 10, "the order at the host")
    assert_reversed(emu, "U000000001", before)


def test_ecr_gone_during_the_enq_ack_handshake(emu, tmp_path):
    phone_after(emu, tmp_path, 0.3)
    before = balance(emu)
    ecr = RawEcr(emu.port)
    ecr.send_request(debit("U000000002"))
    ecr.read_until(bytes([ENQ]))           # the answer is ready
    os.write(ecr.fd, bytes([ACK]))          # ... we ACK its ENQ, then never ACK the frame
    raw = ecr.read_until(b"\x03")
    assert emu.host.order_status("U000000002") == "APPROVED"      # it was approved ...
    ecr.close()
    assert_reversed(emu, "U000000002", before)                   # ... and is not kept
    assert b"\x02" in raw


def test_answer_ready_but_the_frame_is_nakked(emu, tmp_path):
    phone_after(emu, tmp_path, 0.3)
    before = balance(emu)
    ecr = RawEcr(emu.port)
    try:
        ecr.send_request(debit("U000000003"))
        ecr.read_until(bytes([ENQ]))
        os.write(ecr.fd, bytes([ACK]))
        for _ in range(3):                  # every send NAKed (a register that cannot record it)
            ecr.read_until(b"\x03")
            os.write(ecr.fd, b"\x15")
        assert_reversed(emu, "U000000003", before)
    finally:
        ecr.close()


def test_delivered_approval_is_kept(emu, tmp_path):
    phone_after(emu, tmp_path, 0.3)
    before = balance(emu)
    with ConcertTerminal.open(emu.port, journal=str(tmp_path / "j.db")) as term:
        r = term.pay(1500, "CNY", order_id="U000000004", timeout=30)
    assert r.approved
    wait_until(lambda: emu.journal.get("U000000004").final, 10, "the terminal journal")
    assert emu.journal.get("U000000004").outcome is Outcome.APPROVED
    assert emu.host.order_status("U000000004") == "APPROVED" and balance(emu) == before - 1500


def test_terminal_restart_with_an_undelivered_approval(tmp_path):
    home = tmp_path / "home"
    with EmulatedTerminal.start(home=home, protocol="concert") as emu:
        phone_after(emu, tmp_path, 0.3)
        before = balance(emu)
        ecr = RawEcr(emu.port)
        ecr.send_request(debit("U000000005"))
        ecr.read_until(bytes([ENQ]))        # approved, answer on its way: the terminal dies now
        assert emu.host.order_status("U000000005") == "APPROVED"
        assert not emu.journal.get("U000000005").final
        ecr.close()
        emu._stop.set()                     # as a kill: no orderly end of the line loop's work
    from posterm.emulator import runner

    assert not [p for p in runner._hosts if str(p).startswith(str(tmp_path))]   # its host let go all the same
    with EmulatedTerminal.start(home=home, protocol="concert") as emu:
        assert_reversed(emu, "U000000005", before)


def test_an_order_the_ecr_gave_up_on_is_resolved_by_recover(emu, tmp_path):
    phone_after(emu, tmp_path, 0.8)
    before = balance(emu)
    with ConcertTerminal.open(emu.port, journal=str(tmp_path / "j.db")) as term:
        with pytest.raises(PosTimeout):
            term.pay(1500, "CNY", order_id="U000000006", timeout=0.3)
        assert [e.order_id for e in term.journal.unfinished()] == ["U000000006"]
        (r,) = term.recover()                  # the ECR never ACKed an answer: not charged
        assert r.outcome is Outcome.CANCELLED and "never acknowledged" in r.reason_text
        assert term.journal.unfinished() == [] and term.journal.get("U000000006").outcome == "cancelled"
        assert_reversed(emu, "U000000006", before)   # ... and the terminal makes it true
