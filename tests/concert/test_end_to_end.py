"""Concert end to end over real ptys: an independent client (pyTeliumManager) drives our emulator,
our driver drives our emulator (8N1 and 7E1) and an independent fake terminal, and the CLI."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
import tty

import pytest

from firmware_protocol.native.messages import Outcome
from posterm.families.concert.ecr import ConcertTerminal, Unsupported
from posterm.families.concert.link import ConcertConfig
from posterm.families.native.ecr import Terminal
from posterm.emulator.runner import EmulatedTerminal
from posterm.errors import LinkFailed

telium = pytest.importorskip("telium")
from telium import Telium, TeliumAsk  # noqa: E402
from telium.payment import TeliumResponse  # noqa: E402

FAST = ConcertConfig(enq_timeout=0.3, ack_timeout=0.3, frame_timeout=0.5, eot_timeout=0.6)


@pytest.fixture
def emu_7e1(tmp_path):
    with EmulatedTerminal.start(home=tmp_path / "home", protocol="concert", line_format="7E1") as e:
        yield e
        assert e.error is None


def test_pyteliummanager_drives_the_emulator(emu):
    device = Telium(emu.port, timeout=2)
    try:
        ask = TeliumAsk.new_payment(12.5, target_currency="CNY", checkout_unique_id="3")
        assert device.ask(ask) is True
        answer = device.verify(ask, waiting_timeout=30)
        assert answer.has_succeeded and answer.transaction_result == 0
        assert answer.amount == 12.5 and answer.pos_number == "03" and answer.currency_numeric == "156"
        assert answer.card_id.rstrip().endswith("0001")            # the default test code, masked
        assert emu.host.order_status(answer.private) == "APPROVED"

        # over the per-transaction limit of the default test code: refused, short answer
        ask = TeliumAsk.new_payment(5000.01, target_currency="CNY", collect_payment_source_info=False)
        assert device.ask(ask) is True
        answer = device.verify(ask, waiting_timeout=30)
        assert answer.transaction_result == 7 and not answer.has_succeeded
        assert emu.host.order_status(answer.private) == "DECLINED"
        assert device.is_ok() is True
    finally:
        device.close()


def test_driver_pay_refund_cancel_decline(emu, tmp_path):
    # Concert has no query: an order whose outcome the ECR never learnt is reversed by the terminal
    assert emu.firmware.config.void_unfinished
    with Terminal.open(emu.port, protocol="concert", journal=str(tmp_path / "j.db")) as term:
        assert isinstance(term, ConcertTerminal)
        term.hello()
        paid = term.pay(1250, "CNY")
        assert paid.outcome is Outcome.APPROVED and paid.code_last4 == "0001"
        assert emu.host.order_status(paid.order_id) == "APPROVED"
        assert term.journal.get(paid.order_id).outcome == "approved"
        assert paid.order_id not in [e.order_id for e in term.journal.unfinished()]
        refund = term.refund(paid.order_id, 250, "RF-1")
        assert refund.approved
        declined = term.pay(500_001, "CNY")
        assert declined.outcome is Outcome.DECLINED
        assert emu.host.order_status(declined.order_id) == "DECLINED"
        other = term.pay(300, "CNY")
        voided = term.cancel(other.order_id)
        assert voided.outcome is Outcome.CANCELLED
        with pytest.raises(Unsupported):
            term.query(paid.order_id)
        with pytest.raises(Unsupported, match="payment code"):
            term.pay(100, "CNY", payment_code="289900000000000001")


def test_seven_bits_even_parity_both_sides(emu_7e1, tmp_path):
    with Terminal.open(emu_7e1.port, protocol="concert", bytesize=7, parity="E",
                       journal=str(tmp_path / "j.db")) as term:
        assert term.pay(999, "CNY").approved
    # an ECR left at 8N1 against a 7E1 terminal: the frame never passes, a typed error within bounds
    # LinkFailed, not PosTimeout: the link gives up on its own retry bound (no wall-clock bound).
    with ConcertTerminal.open(emu_7e1.port, journal=str(tmp_path / "j.db"), config=FAST) as term:
        with pytest.raises(LinkFailed, match="serial settings"):
            term.pay(999, "CNY", timeout=10)


def test_a_terminal_that_never_answers(tmp_path):
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with ConcertTerminal.open(os.ttyname(slave), journal=str(tmp_path / "j.db"), config=FAST) as term:
            with pytest.raises(LinkFailed, match="no ACK to ENQ"):
                term.pay(100, "EUR")
            unfinished = term.journal.unfinished()
            assert len(unfinished) == 1                       # journaled before the wire, never lost
            recovered = term.recover()
            assert [r.outcome for r in recovered] == [Outcome.CANCELLED]   # never ACKed: never charged
        assert os.read(master, 100) == b"\x05\x05\x05"          # three ENQs, nothing else
    finally:
        os.close(master)
        os.close(slave)


class FakeTelium(threading.Thread):
    """An independent terminal: pyTeliumManager's own codec (TeliumAsk.decode, TeliumResponse.encode)
    and raw bytes on a pty master. Approves everything up to 100.00, refuses above."""

    def __init__(self):
        super().__init__(daemon=True)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.asks = []
        self.stop = threading.Event()
        self.buf = b""

    def read(self, n, timeout=3.0):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n and time.monotonic() < deadline and not self.stop.is_set():
            if select.select([self.master], [], [], 0.05)[0]:
                self.buf += os.read(self.master, 512)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def run(self):
        while not self.stop.is_set():
            if self.read(1, 0.2) != b"\x05":
                continue
            os.write(self.master, b"\x06")
            raw = self.read(37)
            ask = TeliumAsk.decode(raw)
            self.asks.append(ask)
            os.write(self.master, b"\x06")
            assert self.read(1) == b"\x04"
            ok = ask.amount <= 100.0
            resp = TeliumResponse(ask.pos_number, 0 if ok else 7, ask.amount, ask.payment_mode,
                                  "4970100000000000".ljust(55) if ask.answer_flag == "1" else None,
                                  ask.currency_numeric, "FAKE000001")
            os.write(self.master, b"\x05")
            assert self.read(1) == b"\x06"
            os.write(self.master, resp.encode().encode("ascii"))
            assert self.read(1) == b"\x06"
            os.write(self.master, b"\x04")

    def close(self):
        self.stop.set()
        self.join(2)
        os.close(self.master)
        os.close(self.slave)


def test_driver_against_an_independent_fake_terminal(tmp_path):
    fake = FakeTelium()
    fake.start()
    try:
        with ConcertTerminal.open(fake.path, journal=str(tmp_path / "j.db")) as term:
            ok = term.pay(4200, "EUR", order_id="FAKE000001")
            assert ok.approved and ok.amount_minor == 4200 and ok.code_last4 == "0000"
            no = term.pay(10_001, "EUR", order_id="FAKE000001")
            assert no.outcome is Outcome.DECLINED
        assert [(a.amount, a.currency_numeric, a.transaction_type) for a in fake.asks] == [
            (42.0, "978", "0"), (100.01, "978", "0")]
    finally:
        fake.close()


def test_cli_emulate_and_pay_with_protocol_concert(tmp_path):
    env = {**os.environ, "POSTERM_HOME": str(tmp_path / "home")}
    port_file = tmp_path / "port"
    emu = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--protocol", "concert",
                            "--port-file", str(port_file)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # a loaded machine takes seconds to start a Python process
        while not port_file.exists():
            assert emu.poll() is None, emu.communicate()[1]
            assert time.monotonic() < deadline, "the emulator never wrote its port file"
            time.sleep(0.05)  # poll interval of a bounded wait on a condition
        port = port_file.read_text().strip()
        pay = subprocess.run([sys.executable, "-m", "posterm", "pay", "--protocol", "concert", "--port", port,
                              "--amount", "12.34", "--currency", "CNY", "--json"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert pay.returncode == 0, pay.stderr
        assert '"result": "approved"' in pay.stdout
        query = subprocess.run([sys.executable, "-m", "posterm", "query", "--protocol", "concert", "--port", port,
                                "P000000001"], env=env, capture_output=True, text=True, timeout=60)
        assert query.returncode == 2 and "no query message" in query.stderr
    finally:
        emu.terminate()
        emu.wait(10)
