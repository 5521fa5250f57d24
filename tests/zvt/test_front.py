"""The emulated ZVT terminal end to end: ``EmulatedTerminal.start(protocol="zvt")`` (what
``posterm emulate --protocol zvt`` runs) on a pty (serial framing) and on a TCP listener,
driven by a register written here from firmware_protocol.zvt and the ZVT link (ECR role),
not by the family's driver."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
import tty

import pytest

from firmware_protocol.zvt import (
    Abort, Aborted, Authorisation, Completion, EndOfDay, IndividualTotals, IntermediateStatus, LogOff, Nack,
    PrintLine, PrintTextBlock, Registration, Reversal, StatusEnquiry, StatusInformation, Tlv, TlvContainer,
    Apdu, Fields, Refund,
)
from posterm.emulator.runner import EmulatedTerminal
from posterm.families import family
from posterm.families.events import Delivered, MessageReceived, SendFailed
from posterm.families.pump import TIMED_OUT, Pump
from posterm.families.zvt.front import ZvtFront
from posterm.families.zvt.link import ACK_ONLY, Refused, TimedOut, ZvtLink

PASSWORD = "246810"            # the emulator's operator password (DEMO_OPERATOR_PASSWORD)
CNY = 156                      # the demo host's test accounts are in CNY
# ECR prints payment and administration receipts, by print commands; wants intermediate status
CONFIG = 0x02 | 0x04 | 0x08 | 0x80


class Ecr:
    """A ZVT cash register: a ZvtLink in the ECR role on a file descriptor or socket."""

    def __init__(self, transport: str, read, write) -> None:
        self.link = ZvtLink("ecr", transport)
        self.pump = Pump(self.link, read, write)

    def command(self, cmd, timeout: float = 30.0) -> list:
        """Send ``cmd``; the terminal's messages until it hands control back (06 0F / 06 1E),
        or a Nack for a refused command, or [] for a command that ends at its 80 00 00."""
        got: list = []
        self.pump.send(cmd)

        def on(ev):
            if isinstance(ev, MessageReceived):
                got.append(ev.message)
                if isinstance(ev.message, (Completion, Aborted)):
                    return True
            elif isinstance(ev, Refused) and ev.message is cmd:
                got.append(Nack(ev.error))
                return True
            elif isinstance(ev, Delivered) and ev.message is cmd and cmd.control in ACK_ONLY and not isinstance(cmd, Abort):
                return True
            elif isinstance(ev, (SendFailed, TimedOut)):
                raise AssertionError(f"the line failed: {ev}")
            return None

        assert self.pump.run(time.monotonic() + timeout, on) is not TIMED_OUT, f"no answer to {cmd}"
        return got

    def register(self, config: int = CONFIG, currency: int | None = CNY, tlv: TlvContainer | None = None) -> list:
        return self.command(Registration(PASSWORD, config, currency, Fields(tlv=tlv)))


def _fd_io(fd):
    def read(timeout: float) -> bytes:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 4096) if ready else b""

    def write(data: bytes) -> None:
        os.write(fd, data)
    return read, write


@pytest.fixture
def pty_ecr(tmp_path):
    with EmulatedTerminal.start(home=tmp_path / "home", protocol="zvt") as emu:
        fd = os.open(emu.port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            yield emu, Ecr("serial", *_fd_io(fd))
        finally:
            os.close(fd)
        assert emu.error is None


@pytest.fixture
def tcp_ecr(tmp_path):
    with EmulatedTerminal.start(home=tmp_path / "home", protocol="zvt", listen="tcp://127.0.0.1:0") as emu:
        host, port = emu.port.removeprefix("tcp://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5)

        def read(timeout: float) -> bytes:
            ready, _, _ = select.select([sock], [], [], timeout)
            return sock.recv(4096) if ready else b""
        try:
            yield emu, Ecr("tcp", read, sock.sendall)
        finally:
            sock.close()
        assert emu.error is None


@pytest.fixture(params=["pty", "tcp"])
def line(request):
    return request.getfixturevalue(f"{request.param}_ecr")


def _kinds(messages) -> list[str]:
    return [type(msg).__name__ for msg in messages]


def _info(messages) -> StatusInformation:
    infos = [msg for msg in messages if isinstance(msg, StatusInformation)]
    assert len(infos) == 1, _kinds(messages)
    return infos[0]


def _lines(messages) -> list[str]:
    out = [msg.text for msg in messages if isinstance(msg, PrintLine)]
    for block in (msg for msg in messages if isinstance(msg, PrintTextBlock)):
        out += [t.text() for t in block.fields.tlv.find(0x25).find_all(0x07)]
    return out


def test_the_family_is_registered():
    fam = family("zvt")
    assert fam.serial_defaults == {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 2}
    assert not fam.ecr_can_query
    assert isinstance(fam.make_terminal_link(operator_password=PASSWORD), ZvtFront)


def test_registration_payment_decline_reversal_end_of_day(line):
    emu, ecr = line
    done = ecr.register()
    assert _kinds(done) == ["Completion"]
    assert done[0].fields.terminal_id == "00000001" and done[0].fields.currency == CNY
    assert done[0].status_byte == 0

    # approved: intermediate statuses (scan, host), the status information, the receipt, completion
    paid = ecr.command(Authorisation.make(amount=1250, currency=CNY))
    kinds = _kinds(paid)
    assert kinds[-1] == "Completion" and "IntermediateStatus" in kinds
    assert kinds.index("IntermediateStatus") < kinds.index("StatusInformation") < kinds.index("PrintLine")
    scan = next(msg for msg in paid if isinstance(msg, IntermediateStatus))
    assert scan.status == 0x0A and "payment code" in " ".join(      # 0A "insert card": show the code
        t.text() for t in scan.fields.tlv.find(0x24).find_all(0x07))
    info = _info(paid)
    f = info.fields
    assert (f.result_code, f.amount, f.currency, f.receipt_no, f.card_name) == (0, 1250, CNY, 1, "Alipay")
    assert f.trace >= 1 and f.terminal_id == "00000001" and f.pan.endswith("0001") and len(f.time) == 6
    assert any("1250" in x.replace(".", "") or "12.50" in x for x in _lines(paid))
    order_id = emu._link.order_of(1)
    assert order_id and emu.host.order_status(order_id) == "APPROVED"
    assert emu.journal.get(order_id).outcome.name == "APPROVED"      # delivered: kept, not held

    # declined (over the test code's limit): the status information's result code, then 06 1E
    declined = ecr.command(Authorisation.make(amount=500_001, currency=CNY))
    # ISO 8583 61 "exceeds amount limit", as the binary byte 61 (0x3D)
    assert isinstance(declined[-1], Aborted) and declined[-1].result_code == 61
    assert _info(declined).fields.result_code == 61 and _info(declined).fields.receipt_no is None

    # reversal by receipt number, with the ZVT password (the operator's)
    reversed_ = ecr.command(Reversal(PASSWORD, Fields(receipt_no=1)))
    assert isinstance(reversed_[-1], Completion), _kinds(reversed_)
    # the reversal is a booking of its own: its own receipt number (the payment's was in BMP 87)
    assert _info(reversed_).fields.result_code == 0 and _info(reversed_).fields.receipt_no == 2
    assert emu.host.order_status(order_id) in ("CANCELLED", "REFUNDED")
    again = ecr.command(Reversal(PASSWORD, Fields(receipt_no=1)))
    assert isinstance(again[-1], Aborted) and again[-1].result_code == 0xB4
    unknown = ecr.command(Reversal(PASSWORD, Fields(receipt_no=77)))
    assert isinstance(unknown[-1], Aborted) and unknown[-1].result_code == 0xB5

    # a second payment, then end of day: its totals in the status information (BMP 04, BMP 60)
    second = ecr.command(Authorisation.make(amount=300, currency=CNY))
    assert _info(second).fields.receipt_no == 3
    eod = ecr.command(EndOfDay(PASSWORD))
    assert isinstance(eod[-1], Completion), _kinds(eod)
    totals = _info(eod).fields
    assert totals.result_code == 0 and totals.amount == 300
    single = IndividualTotals.decode(totals.single_amounts)
    assert single.totals["others"].count == 1 and single.totals["others"].total == 300
    assert single.receipt_end == 3
    assert any("SETTLEMENT" in x for x in _lines(eod))

    # status enquiry: completion with the software version and terminal status 00 (ready)
    status = ecr.command(StatusEnquiry())
    assert _kinds(status) == ["Completion"] and status[0].terminal_status == 0
    assert status[0].software_version
    assert ecr.command(LogOff()) == []


def test_refund_by_receipt_number_and_wrong_passwords(tcp_ecr):
    emu, ecr = tcp_ecr
    assert isinstance(ecr.command(Registration("000000", CONFIG, CNY))[-1], Aborted)   # wrong password
    ecr.register()
    paid = ecr.command(Authorisation.make(amount=2000, currency=CNY))
    no = _info(paid).fields.receipt_no
    refused = ecr.command(Refund("111111", Fields(receipt_no=no, amount=500, currency=CNY)))
    assert isinstance(refused[-1], Aborted) and refused[-1].result_code == 0x83
    refunded = ecr.command(Refund(PASSWORD, Fields(receipt_no=no, amount=500, currency=CNY)))
    assert isinstance(refunded[-1], Completion) and _info(refunded).fields.amount == 500
    no_receipt = ecr.command(Refund(PASSWORD, Fields(amount=500, currency=CNY)))
    assert isinstance(no_receipt[-1], Aborted)


def test_config_byte_decides_intermediate_status_and_receipts(tcp_ecr):
    emu, ecr = tcp_ecr
    ecr.register(config=0x00)                         # the PT prints; no intermediate status
    paid = ecr.command(Authorisation.make(amount=100, currency=CNY))
    assert _kinds(paid) == ["StatusInformation", "Completion"]
    # a register that lists 06 D3 among the permitted commands gets the receipt as one text block
    ecr.register(config=CONFIG, tlv=TlvContainer((Tlv(0x26, (Tlv(0x0A, b"\x06\xd3"),)),)))
    paid = ecr.command(Authorisation.make(amount=100, currency=CNY))
    assert "PrintTextBlock" in _kinds(paid) and "PrintLine" not in _kinds(paid)
    block = next(msg for msg in paid if isinstance(msg, PrintTextBlock)).fields.tlv
    assert block.find(0x1F07).value == b"\x02" and block.find(0x09).value == b"\xff"
    assert any("SALE" in x for x in _lines(paid))


def test_abort_while_the_customer_pays(tcp_ecr, tmp_path):
    emu, ecr = tcp_ecr
    scenario = tmp_path / "slow.toml"
    scenario.write_text('[[payment]]\nactions = [{ action = "do_nothing" }]\n')
    emu.set_scenario(scenario)
    ecr.register()
    got: list = []
    cmd = Authorisation.make(amount=700, currency=CNY)
    ecr.pump.send(cmd)

    def scan_asked(ev):
        if isinstance(ev, MessageReceived):
            got.append(ev.message)
            if isinstance(ev.message, IntermediateStatus):
                return True
        return None
    assert ecr.pump.run(time.monotonic() + 30, scan_asked) is True
    end = ecr.command(Abort())
    assert isinstance(end[-1], Aborted) and end[-1].result_code == 0x6C
    assert [o.outcome.name for o in emu.journal_orders()] == ["CANCELLED"]


def test_unknown_and_busy_commands(tcp_ecr):
    emu, ecr = tcp_ecr
    nack = ecr.command(Apdu(0x06, 0x93, b""))           # initialisation: not offered here
    assert nack == [Nack(0x83)]
    nack = ecr.command(Apdu(0x06, 0x01, b"\x04\x00"))     # an amount cut short: malformed
    assert nack == [Nack(0x9A)]
    assert isinstance(ecr.register()[-1], Completion)       # the line is fine afterwards


def test_cli_emulate_protocol_zvt_over_tcp(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--protocol", "zvt",
                             "--listen", "tcp://127.0.0.1:0", "--home", str(tmp_path / "home")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = None
        deadline = time.monotonic() + 60
        while address is None and time.monotonic() < deadline:
            text = proc.stdout.readline()
            if not text:
                break
            for word in text.split():
                if word.startswith("tcp://127.0.0.1:"):
                    address = word.rstrip(".,")
        assert address, "the emulator printed no address"
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5)

        def read(timeout: float) -> bytes:
            ready, _, _ = select.select([sock], [], [], timeout)
            return sock.recv(4096) if ready else b""
        ecr = Ecr("tcp", read, sock.sendall)
        assert isinstance(ecr.register()[-1], Completion)
        paid = ecr.command(Authorisation.make(amount=1250, currency=CNY))
        assert _info(paid).fields.result_code == 0 and isinstance(paid[-1], Completion)
        sock.close()
    finally:
        proc.terminate()
        proc.wait(10)


# -- the front alone, sans-IO, against the ECR role of the link -----------------------------

from firmware_protocol.native import messages as m  # noqa: E402
from firmware_protocol.zvt import Ack, decode  # noqa: E402
from posterm.families.events import ResultDelivery  # noqa: E402


class _Pair:
    """A front and an ECR link joined in memory over TCP framing; ``lossy``: the ECR's
    80 00 00 answers never reach the front."""

    def __init__(self) -> None:
        self.front = ZvtFront(PASSWORD, transport="tcp")
        self.ecr = ZvtLink("ecr", "tcp")
        self.now = 0.0
        self.lossy = False
        self.seen: list = []

    def to_front(self, data: bytes) -> list:
        self.front.receive_data(data, self.now)
        return self._front_events()

    def _front_events(self) -> list:
        self.to_ecr(self.front.data_to_send())
        out = []
        while (ev := self.front.next_event()) is not None:
            out.append(ev)
        return out

    def to_ecr(self, data: bytes) -> None:
        for _ in range(100):     # each 80 00 00 lets the front's next message out
            if not data:
                return
            self.ecr.receive_data(data, self.now)
            while (ev := self.ecr.next_event()) is not None:
                if isinstance(ev, MessageReceived):
                    self.seen.append(ev.message)
            back = self.ecr.data_to_send()
            if not back or self.lossy:
                return
            self.front.receive_data(back, self.now)
            data = self.front.data_to_send()

    def firmware_says(self, msg) -> list:
        self.to_ecr(self.front.send(msg, self.now))
        return self._front_events()



def _approved(pair: _Pair) -> str:
    events = pair.to_front(pair.ecr.send(Registration(PASSWORD, CONFIG, CNY), pair.now))
    assert isinstance(events[0].message, m.Hello)
    pair.firmware_says(m.HelloReply(protocol_version=1, capabilities=0, terminal_id="T0000009",
                                    merchant_id="M100000001", firmware_version="fw-1"))
    assert isinstance(pair.seen[-1], Completion) and pair.seen[-1].fields.terminal_id == "00000009"
    events = pair.to_front(pair.ecr.send(Authorisation.make(amount=990, currency=CNY), pair.now))
    pay = events[0].message
    assert isinstance(pay, m.PayRequest) and (pay.amount_minor, pay.currency, pay.payment_code) == (990, "CNY", None)
    pair.firmware_says(m.Print(lines=("SALE", "AMOUNT 9.90"), order_id=pay.order_id))
    return pay.order_id


def test_an_approval_the_ecr_takes_is_reported_delivered_and_the_receipt_follows_it():
    pair = _Pair()
    order_id = _approved(pair)
    events = pair.firmware_says(m.PayResult(order_id=order_id, outcome=m.Outcome.APPROVED, amount_minor=990,
                                            currency="CNY", code_last4="0001", paid_at="2026-12-02T01:02:03Z"))
    assert ResultDelivery(order_id, True) in events
    assert _kinds(pair.seen[-4:]) == ["StatusInformation", "PrintLine", "PrintLine", "Completion"]
    info = pair.seen[-4].fields
    assert (info.time, info.date, info.vu_number) == ("010203", "1202", "M100000001")
    assert pair.front.order_of(info.receipt_no) == order_id and pair.front.idle


def test_an_approval_the_ecr_never_acknowledges_is_undelivered_and_the_dialog_aborts():
    pair = _Pair()
    order_id = _approved(pair)
    pair.lossy = True
    events = pair.firmware_says(m.PayResult(order_id=order_id, outcome=m.Outcome.APPROVED, amount_minor=990,
                                            currency="CNY"))
    assert not any(isinstance(e, ResultDelivery) for e in events)
    assert isinstance(pair.seen[-1], StatusInformation)
    pair.now += pair.ecr.config.t3 + 0.1                      # T3: no 80 00 00 for the 04 0F
    pair.front.tick(pair.now)
    events = pair._front_events()
    assert [e for e in events if isinstance(e, ResultDelivery)] == [ResultDelivery(order_id, False, "no 80 00 00 within T3")]
    assert isinstance(pair.seen[-1], Aborted) and pair.seen[-1].result_code == 0x6C   # never 06 0F after it
    assert not any(isinstance(x, (Completion, PrintLine)) for x in pair.seen[-2:])


def test_a_line_reset_with_the_approval_queued_reports_it_undelivered():
    pair = _Pair()
    order_id = _approved(pair)
    pair.lossy = True
    pair.firmware_says(m.PayResult(order_id=order_id, outcome=m.Outcome.APPROVED, amount_minor=990, currency="CNY"))
    pending = pair.front.reset()
    assert any(isinstance(p, StatusInformation) for p in pending)
    assert ResultDelivery(order_id, False, "line reset") in pair._front_events()
    assert pair.front.idle and pair.front.transport == "tcp"       # made for TCP: it stays TCP


def test_serial_is_read_from_the_first_byte_and_sticks():
    front = ZvtFront(PASSWORD)
    front.receive_data(b"\x10\x02" + Registration(PASSWORD, 0, CNY).encode()[:1], 0.0)
    assert front.transport == "serial"
    front.reset()
    front.receive_data(Ack().encode(), 1.0)
    assert front.transport == "serial"
    tcp = ZvtFront(PASSWORD)
    tcp.receive_data(LogOff().encode(), 0.0)
    assert tcp.transport == "tcp" and decode(tcp.data_to_send()) == Ack()


def test_the_front_is_a_terminal_front():
    from posterm.families.interfaces import TerminalFront

    assert isinstance(ZvtFront(PASSWORD), TerminalFront)


@pytest.mark.parametrize("transport", ["serial", "tcp"])
def test_garbage_from_the_register_never_raises_and_gives_the_firmware_only_its_own_messages(transport):
    import random

    rng = random.Random(16)
    valid = [Registration(PASSWORD, CONFIG, CNY).encode(), Authorisation.make(amount=5, currency=CNY).encode(),
             StatusEnquiry().encode(), Abort().encode(), Apdu(0x06, 0x01, b"\x04\x00").encode()]
    from firmware_protocol.zvt import encode_serial

    for _ in range(200):
        front = ZvtFront(PASSWORD, transport=transport)
        now = 0.0
        for _ in range(rng.randint(1, 12)):
            pick = rng.random()
            if pick < 0.4:
                chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
            else:
                apdu = rng.choice(valid)
                if pick < 0.6:
                    apdu = bytearray(apdu)
                    apdu[rng.randrange(len(apdu))] = rng.randrange(256)
                    apdu = bytes(apdu)
                chunk = encode_serial(apdu) if transport == "serial" else apdu
            front.receive_data(chunk, now)
            now += rng.choice((0.01, 0.3, 6.0))
            front.tick(now)
            while (ev := front.next_event()) is not None:
                assert isinstance(ev, (MessageReceived, ResultDelivery)), ev
                if isinstance(ev, MessageReceived):
                    assert isinstance(ev.message, m.Message)
            front.data_to_send()


def test_the_family_driver_drives_the_emulated_terminal(line, tmp_path):
    """A cross-check, not the reference (the register above is): the family's own ECR driver."""
    from firmware_protocol.native.messages import Outcome
    from posterm.families.zvt.ecr import ZvtTerminal

    emu, _ = line            # on TCP the driver's connection replaces the fixture's idle one
    term = ZvtTerminal.open(emu.port, journal=str(tmp_path / "j.db"), password=PASSWORD, currency="CNY")
    try:
        assert term.hello().terminal_id == "00000001"
        paid = term.pay(1250, "CNY")
        assert paid.outcome is Outcome.APPROVED and paid.code_last4 == "0001"
        assert term.pay(500_001, "CNY").outcome is Outcome.DECLINED
        assert term.cancel(paid.order_id, PASSWORD).outcome is Outcome.CANCELLED
        assert term.settle(PASSWORD).outcome is Outcome.APPROVED
    finally:
        term.close()
