"""The ZVT sans-IO link: an ECR and a PT link talking through an in-memory wire that can
drop or corrupt any frame or control byte, on a fake clock (no sleeps), over the serial
framing and over TCP; and the real captures fed through the link as a terminal sends them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import pytest

from firmware_protocol.zvt import (
    ACK, NAK, Abort, Aborted, Ack, Authorisation, Completion, IntermediateStatus, LogOff, Nack, PrintLine,
    Registration, SerialFramer, StatusInformation, TcpFramer, ZvtBadFrame, ZvtFrame, ZvtGarbage, decode,
    encode_serial,
)

from posterm.errors import LocalProtocolError, SendQueueFull
from posterm.families.events import (
    ControlTrace, Delivered, DuplicateIgnored, FrameRejected, FrameTrace, GarbageSkipped, MessageReceived,
    PartialDiscarded, Retransmitted, SendFailed, UndecodableMessage,
)
from posterm.families.interfaces import Link
from posterm.families.pump import TIMED_OUT, Pump
from posterm.families.zvt import Refused, TimedOut, ZvtConfig, ZvtLink
from posterm.families.zvt.link import OUT_CAP, EventQueueFull

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "zvt"
TRANSPORTS = ["serial", "tcp"]
ACK_APDU = bytes.fromhex("800000")


def capture(stem: str) -> bytes:
    return (CAPTURES / f"{stem}.blob").read_bytes()


def items(transport: str, data: bytes) -> list[bytes]:
    """Split what one side wrote into its frames and control bytes (the wire works per item)."""
    framer = SerialFramer() if transport == "serial" else TcpFramer()
    framer.feed(data)
    out = []
    while (item := framer.pop()) is not None:
        if isinstance(item, int):
            out.append(bytes([item]))
        elif isinstance(item, (ZvtFrame, ZvtBadFrame)):
            out.append(item.raw)
        elif isinstance(item, ZvtGarbage):
            out.append(item.data)
    assert not framer.pending
    return out


Tamper = Callable[[int, bytes], "bytes | None"]


class Wire:
    """One direction: items pass unchanged unless ``tamper(n, item)`` (n counts the items
    sent so far, from 0) returns other bytes, or None to drop the item."""

    def __init__(self, transport: str, tamper: Tamper | None = None) -> None:
        self.transport = transport
        self.tamper = tamper
        self.sent: list[bytes] = []
        self._pending = bytearray()

    def put(self, data: bytes) -> None:
        for item in items(self.transport, data):
            n = len(self.sent)
            self.sent.append(item)
            if self.tamper is not None:
                item = self.tamper(n, item)
            if item:
                self._pending += item

    def take(self) -> bytes:
        out = bytes(self._pending)
        self._pending.clear()
        return out


def drop_nth(kind: bytes | Callable[[bytes], bool], nth: int = 0) -> Tamper:
    """Drop the ``nth`` item (0-based) equal to ``kind`` (or for which ``kind(item)`` holds)."""
    seen = [0]

    def tamper(n: int, item: bytes) -> bytes | None:
        match = kind(item) if callable(kind) else item == kind
        if match:
            seen[0] += 1
            if seen[0] == nth + 1:
                return None
        return item
    return tamper


def corrupt_first_frame(n: int, item: bytes) -> bytes | None:
    if n == 0:
        return item[:-1] + bytes([item[-1] ^ 0xFF])   # the CRC's high byte
    return item


class Pair:
    """An ECR link and a PT link on a fake clock. ``step`` moves both ways once."""

    def __init__(self, transport: str, config: ZvtConfig | None = None, *, ecr_to_pt: Tamper | None = None,
                 pt_to_ecr: Tamper | None = None) -> None:
        self.transport = transport
        self.now = 0.0
        self.ecr = ZvtLink("ecr", transport, config)
        self.pt = ZvtLink("pt", transport, config)
        self.to_pt = Wire(transport, ecr_to_pt)
        self.to_ecr = Wire(transport, pt_to_ecr)
        self.ecr_events: list = []
        self.pt_events: list = []

    def ecr_send(self, message) -> None:
        self.to_pt.put(self.ecr.send(message, self.now))

    def pt_send(self, message) -> None:
        self.to_ecr.put(self.pt.send(message, self.now))

    def step(self, dt: float = 0.01) -> None:
        self.now += dt
        self.pt.receive_data(self.to_pt.take(), self.now)
        self.ecr.receive_data(self.to_ecr.take(), self.now)
        self.ecr.tick(self.now)
        self.pt.tick(self.now)
        self.to_pt.put(self.ecr.data_to_send())
        self.to_ecr.put(self.pt.data_to_send())
        while (ev := self.ecr.next_event()) is not None:
            self.ecr_events.append(ev)
        while (ev := self.pt.next_event()) is not None:
            self.pt_events.append(ev)

    def settle(self, seconds: float = 1.0, dt: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step(dt)

    def run_until(self, predicate, max_time: float = 30.0, dt: float = 0.01) -> None:
        end = self.now + max_time
        while self.now < end:
            self.step(dt)
            if predicate():
                return
        raise AssertionError("condition not reached on the fake clock")


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def received(events):
    return [e.message for e in of(events, MessageReceived)]


REGISTRATION = Registration(password="123456", config_byte=0xDE, currency=978)
PAYMENT = Authorisation.make(amount=1250, currency=978)


def test_the_link_has_the_shared_shape():
    assert isinstance(ZvtLink("ecr", "serial"), Link)
    assert isinstance(ZvtLink("pt", "tcp"), Link)
    with pytest.raises(LocalProtocolError):
        ZvtLink("host")
    with pytest.raises(LocalProtocolError):
        ZvtLink("ecr", "usb")


# ------------------------------------------------------------------ the exchanges


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_registration_exchange(transport):
    p = Pair(transport)
    p.ecr_send(REGISTRATION)
    assert p.ecr.state == "command sent, not yet acknowledged"
    p.step()
    assert received(p.pt_events) == [REGISTRATION]
    p.pt_send(Ack())
    assert p.pt.master == "pt"
    p.pt_send(Completion.make(terminal_id="52523535", currency=978))
    p.settle(0.2)
    assert of(p.ecr_events, Delivered) == [Delivered(REGISTRATION)]
    [completion] = received(p.ecr_events)
    assert isinstance(completion, Completion) and completion.terminal_id == "52523535"
    assert p.ecr.master == "ecr" and p.ecr.idle and p.pt.idle
    # the PT's completion was acknowledged 80 00 00 by the ECR (the PT's 80 00 00 is its Ack, delivered)
    assert [type(e.message) for e in of(p.pt_events, Delivered)] == [Ack, Completion]
    assert not of(p.ecr_events, SendFailed) and not of(p.pt_events, SendFailed)
    if transport == "serial":
        assert p.ecr.stats["retransmits"] == 0 and bytes([ACK]) in p.to_pt.sent
    else:
        assert bytes([ACK]) not in p.to_pt.sent + p.to_ecr.sent   # TCP: no ACK byte
        assert p.to_pt.sent == [REGISTRATION.encode(), ACK_APDU]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_authorisation_with_intermediate_statuses_renewing_t4(transport):
    cfg = ZvtConfig(t4=10.0)
    p = Pair(transport, cfg)
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Ack())
    p.step()
    assert p.ecr.master == "pt"
    # Five statuses 8 s apart: 40 s in all, four times T4, each gap within it.
    for status in (0x17, 0x0A, 0x0E, 0x0B, 0x17):
        p.settle(8.0, dt=0.5)
        p.pt_send(IntermediateStatus(status))
        p.step()
        renewed_at = p.now
        p.step()
        p.step()     # serial: the PT's ACK byte for our 80 00 00 (its own timer gone)
        assert p.ecr.next_deadline() == pytest.approx(renewed_at + 10.0)
    p.pt_send(StatusInformation.make(result_code=0, amount=1250, currency=978, receipt_no=231))
    p.step()
    p.pt_send(PrintLine(0x00, "KUNDENBELEG"))
    p.step()
    p.pt_send(PrintLine(0x00, ""))
    p.step()
    p.pt_send(Completion())
    p.settle(0.2)
    assert not of(p.ecr_events, TimedOut)
    got = received(p.ecr_events)
    assert [type(m) for m in got] == [IntermediateStatus] * 5 + [StatusInformation, PrintLine, PrintLine, Completion]
    assert got[5].amount == 1250 and got[6].text == "KUNDENBELEG"
    # every one of the PT's messages was acknowledged 80 00 00
    assert len(of(p.pt_events, Delivered)) == 1 + 9
    assert p.ecr.stats["acks_sent"] == 9
    assert p.ecr.idle and p.pt.idle and p.ecr.master == "ecr"


def test_t4_is_not_renewed_by_print_lines():
    p = Pair("tcp", ZvtConfig(t4=10.0))
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Ack())
    p.step()
    for _ in range(3):
        p.settle(4.0, dt=0.5)
        p.pt_send(PrintLine(0, "x"))
        p.step()
    assert of(p.ecr_events, TimedOut) == [TimedOut("T4", PAYMENT)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_t4_expiry_gives_control_back_to_the_ecr(transport):
    p = Pair(transport, ZvtConfig(t4=20.0))
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Ack())
    p.step()
    p.pt_send(IntermediateStatus(0x0A))
    p.run_until(lambda: received(p.ecr_events))     # T4 runs again from here
    p.settle(19.9, dt=0.1)
    assert not of(p.ecr_events, TimedOut)
    p.settle(0.2, dt=0.1)
    assert of(p.ecr_events, TimedOut) == [TimedOut("T4", PAYMENT)]
    assert p.ecr.master == "ecr" and p.ecr.command is None and p.ecr.next_deadline() is None
    p.ecr_send(LogOff())     # the ECR may send again at once
    p.step()
    assert received(p.pt_events)[-1] == LogOff()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_abort_while_the_terminal_holds_control(transport):
    p = Pair(transport)
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Ack())
    p.pt_send(IntermediateStatus(0x0A))    # "insert card"
    p.step()
    p.step()
    p.ecr_send(Abort())                    # the customer walked away
    p.step()
    assert received(p.pt_events)[-1] == Abort()
    assert p.pt.master == "pt"
    p.pt_send(Ack())
    p.step()
    p.pt_send(Aborted(result_code=0x6C))
    p.settle(0.2)
    assert [e.message for e in of(p.ecr_events, Delivered)] == [PAYMENT, Abort()]
    assert received(p.ecr_events)[-1] == Aborted(result_code=0x6C)
    assert p.ecr.master == "ecr" and p.ecr.idle and p.pt.idle


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_negative_acknowledgement_is_refused_and_the_ecr_is_master_again(transport):
    p = Pair(transport)
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Nack(0x83))
    p.settle(0.1)
    [refused] = of(p.ecr_events, Refused)
    assert refused.message == PAYMENT and refused.error == 0x83
    assert not of(p.ecr_events, Delivered) and not of(p.ecr_events, SendFailed)
    assert p.ecr.master == "ecr" and p.ecr.idle and p.pt.idle


def test_an_unknown_command_reaches_the_terminal_undecoded():
    from firmware_protocol.zvt import Apdu
    p = Pair("tcp")
    p.ecr_send(Apdu(0x08, 0x99, b"\x01"))
    p.step()
    [undecodable] = of(p.pt_events, UndecodableMessage)
    assert undecodable.error.apdu == Apdu(0x08, 0x99, b"\x01")
    p.pt_send(Nack(0x83))
    p.settle(0.1)
    assert of(p.ecr_events, Refused)[0].error == 0x83


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_acknowledgement_within_t3(transport):
    p = Pair(transport)
    p.ecr_send(PAYMENT)
    limit = 5.0 if transport == "tcp" else 15.0   # serial: room for the 80 00 00 frame's own repeats
    p.settle(limit - 0.1, dt=0.1)
    assert not of(p.ecr_events, SendFailed)
    p.settle(0.3, dt=0.1)
    [failed] = of(p.ecr_events, SendFailed)
    assert failed.message == PAYMENT and "T3" in failed.cause
    assert p.ecr.master == "ecr"


def test_the_terminal_waits_t3_for_the_ecrs_80_00_00():
    p = Pair("tcp", pt_to_ecr=None, ecr_to_pt=lambda n, item: None if item == ACK_APDU else item)
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Ack())
    p.pt_send(IntermediateStatus(0x0A))
    p.pt_send(IntermediateStatus(0x0B))     # queued behind the first one's 80 00 00
    p.step()
    assert [type(m) for m in received(p.ecr_events)] == [IntermediateStatus]
    p.settle(5.1, dt=0.1)
    assert [e.message for e in of(p.pt_events, SendFailed)] == [IntermediateStatus(0x0A)]


def in_dialog(transport: str, command=PAYMENT) -> ZvtLink:
    """An ECR link whose command the PT has just acknowledged (its output taken)."""
    ecr = ZvtLink("ecr", transport)
    ecr.send(command, 0.0)
    ack_byte = bytes([ACK]) if transport == "serial" else b""
    ecr.receive_data(ack_byte + (encode_serial(ACK_APDU) if transport == "serial" else ACK_APDU), 0.1)
    ecr.data_to_send()
    list(iter(ecr.next_event, None))
    assert ecr.master == "pt"
    return ecr


def test_a_status_the_ecr_cannot_read_is_still_acknowledged():
    # A vendor BMP we do not know (0xFE is not in the catalogue) must not stall the payment.
    ecr = in_dialog("tcp")
    ecr.receive_data(bytes.fromhex("040f022700"), 1.0)      # fine: result code 00
    ecr.receive_data(bytes.fromhex("040f02fe00"), 1.1)              # unknown BMP FE
    events = list(iter(ecr.next_event, None))
    assert [type(e) for e in events] == [MessageReceived, UndecodableMessage]
    assert ecr.data_to_send() == ACK_APDU * 2
    ecr.receive_data(bytes.fromhex("060f00"), 1.2)
    assert ecr.master == "ecr" and ecr.data_to_send() == ACK_APDU


def test_what_no_terminal_sends_is_answered_84_83():
    ecr = in_dialog("tcp")
    ecr.receive_data(bytes.fromhex("089900"), 1.0)
    assert [type(e) for e in iter(ecr.next_event, None)] == [UndecodableMessage]
    assert ecr.data_to_send() == bytes.fromhex("848300")
    assert ecr.master == "pt"


def test_a_terminal_message_outside_a_dialog_is_acknowledged_and_counted():
    ecr = ZvtLink("ecr", "tcp")
    ecr.receive_data(IntermediateStatus(0x0A).encode(), 0.0)
    assert received(list(iter(ecr.next_event, None))) == [IntermediateStatus(0x0A)]
    assert ecr.data_to_send() == ACK_APDU and ecr.stats["unsolicited"] == 1 and ecr.master == "ecr"


def test_read_card_ends_at_its_status_information():
    read_card = decode(capture("1680722649.972316000_ecr_pt"))
    ecr = in_dialog("serial", read_card)
    ecr.receive_data(encode_serial(capture("1680728161.963129000_pt_ecr")), 1.0)   # 04 0F with the card's data
    assert isinstance(received(list(iter(ecr.next_event, None)))[0], StatusInformation)
    assert ecr.master == "ecr"


@pytest.mark.parametrize("command", [LogOff(), Abort()])
def test_log_off_and_abort_end_at_their_80_00_00(command):
    p = Pair("tcp")
    p.ecr_send(command)
    p.step()
    assert received(p.pt_events) == [command]
    p.pt_send(Ack())
    assert p.pt.master == "ecr"
    p.settle(0.1)
    assert of(p.ecr_events, Delivered) == [Delivered(command)] and p.ecr.master == "ecr" and p.ecr.idle


def test_a_terminal_that_skips_its_80_00_00():
    # Some terminals answer a registration with the completion alone.
    ecr = ZvtLink("ecr", "tcp")
    ecr.send(REGISTRATION, 0.0)
    ecr.receive_data(Completion().encode(), 0.5)
    events = list(iter(ecr.next_event, None))
    assert of(events, Delivered) == [Delivered(REGISTRATION)] and received(events) == [Completion()]
    assert ecr.master == "ecr" and ecr.idle and ecr.stats["implied_acks"] == 1


# ------------------------------------------------------------------ the serial line's faults


def test_nak_then_repeat():
    p = Pair("serial", ecr_to_pt=corrupt_first_frame)
    p.ecr_send(PAYMENT)
    p.step()
    p.step()
    p.step()
    assert len(of(p.pt_events, FrameRejected)) == 1 and p.pt.stats["naks_sent"] == 1
    assert bytes([NAK]) in p.to_ecr.sent
    assert of(p.ecr_events, Retransmitted) == [Retransmitted(PAYMENT, None, 2, "nak")]
    assert received(p.pt_events) == [PAYMENT]
    p.pt_send(Ack())
    p.pt_send(Completion())
    p.settle(0.2)
    assert of(p.ecr_events, Delivered) == [Delivered(PAYMENT)] and p.ecr.idle


def test_a_frame_nakked_three_times_fails():
    p = Pair("serial", ecr_to_pt=lambda n, item: item[:-1] + b"\x00" if len(item) > 1 else item)
    p.ecr_send(PAYMENT)
    p.settle(0.2)
    assert len(of(p.ecr_events, Retransmitted)) == 2   # a NAKed frame goes at most twice more
    [failed] = of(p.ecr_events, SendFailed)
    assert failed.attempts == 3 and failed.cause == "frame not ACKed"
    assert not received(p.pt_events) and p.ecr.master == "ecr"


def test_a_lost_ack_byte_with_a_slow_terminal_is_a_repeat_not_a_second_payment():
    p = Pair("serial", pt_to_ecr=drop_nth(bytes([ACK])))
    p.ecr_send(PAYMENT)
    p.step()
    assert received(p.pt_events) == [PAYMENT]
    p.settle(5.5, dt=0.1)         # the PT's application takes its time; the ECR repeats the frame
    assert of(p.ecr_events, Retransmitted) == [Retransmitted(PAYMENT, None, 2, "timeout")]
    assert of(p.pt_events, DuplicateIgnored) and received(p.pt_events) == [PAYMENT]
    p.pt_send(Ack())
    p.pt_send(Completion())
    p.settle(0.2)
    assert of(p.ecr_events, Delivered) == [Delivered(PAYMENT)]
    assert not of(p.ecr_events, SendFailed) and p.ecr.idle and p.pt.idle


def test_a_lost_ack_byte_is_implied_by_the_answer():
    p = Pair("serial", pt_to_ecr=drop_nth(bytes([ACK])))
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Ack())                # the 80 00 00 comes before the ECR's ACK timer runs out
    p.pt_send(Completion())
    p.settle(6.0, dt=0.1)
    assert not of(p.ecr_events, Retransmitted) and p.ecr.stats["implied_acks"] >= 1
    assert of(p.ecr_events, Delivered) == [Delivered(PAYMENT)] and received(p.ecr_events) == [Completion()]
    assert p.ecr.idle and p.pt.idle


def test_a_lost_answer_to_the_terminals_result_is_not_delivered_twice():
    # The ECR's ACK byte and its 80 00 00 for the status information are both lost: the PT
    # repeats the frame, the ECR takes it once.
    armed = [0]

    def lose_the_answer(n, item):
        if armed[0]:
            armed[0] -= 1
            return None
        return item

    p = Pair("serial", ecr_to_pt=lose_the_answer)
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Ack())
    p.settle(0.1)
    p.pt_send(StatusInformation.make(result_code=0, amount=1250))
    armed[0] = 2
    p.settle(12.0, dt=0.1)
    assert [type(m) for m in received(p.ecr_events)] == [StatusInformation]
    assert of(p.ecr_events, DuplicateIgnored)
    assert of(p.pt_events, Retransmitted)
    assert [type(e.message) for e in of(p.pt_events, Delivered)] == [Ack, StatusInformation]
    assert not of(p.pt_events, SendFailed) and not of(p.ecr_events, SendFailed)


def test_repeated_print_lines_and_statuses_are_all_delivered():
    # Identical lines in a row are meant (a receipt's empty lines); so is a repeated 04 FF.
    p = Pair("serial", pt_to_ecr=drop_nth(bytes([ACK]), 1))
    p.ecr_send(PAYMENT)
    p.step()
    p.pt_send(Ack())
    for msg in (IntermediateStatus(0x0A), IntermediateStatus(0x0A), PrintLine(0, ""), PrintLine(0, ""),
                Completion()):
        p.pt_send(msg)
    p.settle(1.0)
    assert [type(m).__name__ for m in received(p.ecr_events)] == [
        "IntermediateStatus", "IntermediateStatus", "PrintLine", "PrintLine", "Completion"]
    assert p.ecr.idle and p.pt.idle


def test_the_ack_byte_wait_allows_a_long_frame_its_time_on_a_slow_line():
    block = decode(capture("1680728215.585561000_pt_ecr"))        # 1 126 bytes: some 1.3 s at 9600 8N2
    pt = ZvtLink("pt", "serial", ZvtConfig(line_rate=9600 / 11))
    pt.receive_data(encode_serial(PAYMENT.encode()), 0.0)
    pt.send(Ack(), 0.0)
    pt.receive_data(bytes([ACK]), 0.01)
    wire = pt.send(block, 0.01)
    assert len(wire) > 1126 and pt.next_deadline() == pytest.approx(0.01 + 5.0 + len(wire) / (9600 / 11))
    with pytest.raises(ValueError):
        ZvtConfig(line_rate=0)


def test_garbage_split_reads_and_a_stalled_partial_frame_on_serial():
    ecr = ZvtLink("ecr", "serial", ZvtConfig(trace_frames=True))
    ecr.send(PAYMENT, 0.0)
    ecr.receive_data(bytes([ACK]) + encode_serial(ACK_APDU), 0.01)   # the PT's ACK byte and 80 00 00
    ecr.data_to_send()
    frame = encode_serial(IntermediateStatus(0x17).encode())
    stream = b"\x00\xffnoise" + frame
    for i, b in enumerate(stream):            # one byte a read
        ecr.receive_data(bytes([b]), 0.02 + i * 0.001)
    events = list(iter(ecr.next_event, None))
    assert of(events, GarbageSkipped) and received(events)[-1] == IntermediateStatus(0x17)
    assert [e.direction for e in of(events, FrameTrace)] == ["out", "in", "in", "out"]
    assert ControlTrace("out", ACK) in events
    assert ecr.data_to_send() == bytes([ACK]) + encode_serial(ACK_APDU)   # ACK byte, then 80 00 00
    # half a frame, then silence past T1: dropped
    ecr.receive_data(frame[:5], 1.0)
    assert ecr.next_deadline() == pytest.approx(1.2)
    ecr.tick(1.25)
    assert of(list(iter(ecr.next_event, None)), PartialDiscarded) == [PartialDiscarded(frame[:5])]


def test_split_reads_on_tcp():
    ecr = ZvtLink("ecr", "tcp")
    ecr.send(PAYMENT, 0.0)
    text_block = capture("1680728215.585561000_pt_ecr")          # 1 126 bytes, long LEN form
    stream = ACK_APDU + text_block
    for cut in range(0, len(stream), 97):
        ecr.receive_data(stream[cut:cut + 97], 0.01)
    events = list(iter(ecr.next_event, None))
    assert [type(m).__name__ for m in received(events)] == ["PrintTextBlock"]
    assert ecr.data_to_send() == ACK_APDU
    ecr.receive_data(text_block[:40], 1.0)   # an APDU that never completes: dropped after T2
    ecr.tick(16.1)
    assert of(list(iter(ecr.next_event, None)), PartialDiscarded)


def lossy(seed: int, p: float) -> Tamper:
    rng = random.Random(seed)

    def tamper(n: int, item: bytes) -> bytes | None:
        r = rng.random()
        if r < p / 2:
            return None                                   # lost
        if r < p and len(item) > 1:
            i = rng.randrange(len(item))
            return item[:i] + bytes([item[i] ^ (1 << rng.randrange(8))]) + item[i + 1:]   # one bit flipped
        return item
    return tamper


@pytest.mark.parametrize("seed", range(40))
def test_a_lossy_serial_line_never_doubles_the_payment_or_its_result(seed):
    p = Pair("serial", ZvtConfig(t4=30.0), ecr_to_pt=lossy(seed, 0.2), pt_to_ecr=lossy(seed + 1000, 0.2))
    dialog = [Ack(), IntermediateStatus(0x0A), StatusInformation.make(result_code=0, amount=1250, currency=978),
              PrintLine(0, ""), PrintLine(0, ""), Completion()]
    p.ecr_send(PAYMENT)
    end = p.now + 200.0
    step = 0            # the PT sends its next message when the last one was acknowledged
    while p.now < end:
        p.step(0.05)
        if step == 0 and received(p.pt_events):
            step = 1
            p.pt_send(dialog[0])
        elif 0 < step < len(dialog) and len(of(p.pt_events, Delivered)) == step:
            p.pt_send(dialog[step])
            step += 1
        if of(p.pt_events, SendFailed):
            step = len(dialog) + 1     # the terminal gives up (it would reverse the payment)
        if p.ecr.idle and p.pt.idle and p.ecr.master == "ecr" and (step or of(p.ecr_events, SendFailed)):
            break
    assert p.ecr.master == "ecr", "the ECR must get control back (completion, T3 or T4)"
    assert received(p.pt_events).count(PAYMENT) <= 1
    got = received(p.ecr_events)
    assert sum(isinstance(m, StatusInformation) for m in got) <= 1
    assert sum(isinstance(m, Completion) for m in got) <= 1
    # the payment ends exactly one way at the ECR
    outcomes = [e for e in p.ecr_events if isinstance(e, (Delivered, SendFailed, Refused)) and e.message == PAYMENT]
    assert len(outcomes) <= 1
    if Completion() in got:
        assert outcomes and isinstance(outcomes[0], Delivered)


# ------------------------------------------------------------------ out of turn, and bounds


def test_out_of_turn_sends_are_refused_locally():
    ecr, pt = ZvtLink("ecr", "tcp"), ZvtLink("pt", "tcp")
    with pytest.raises(LocalProtocolError):
        ecr.send(Ack())                                  # the ECR acknowledges by itself
    with pytest.raises(LocalProtocolError):
        ecr.send(Completion())                           # a terminal's message
    with pytest.raises(LocalProtocolError):
        pt.send(IntermediateStatus(0x0A))                # the ECR is master
    with pytest.raises(LocalProtocolError):
        pt.send(Ack())                                   # nothing to acknowledge
    with pytest.raises(LocalProtocolError):
        pt.send(REGISTRATION)                            # a command of the ECR's
    pt.receive_data(PAYMENT.encode(), 0.0)
    with pytest.raises(LocalProtocolError):
        pt.send(IntermediateStatus(0x0A))                # acknowledge the command first
    pt.send(Ack())
    pt.send(Completion())
    with pytest.raises(LocalProtocolError):
        pt.send(PrintLine(0, "after the end"))           # control went back with the completion
    with pytest.raises(LocalProtocolError):
        ecr.send("06 01")


def test_commands_wait_for_the_ecrs_turn_and_the_queue_is_bounded():
    p = Pair("tcp", ZvtConfig(max_queue=4))
    p.ecr_send(PAYMENT)
    for _ in range(4):
        p.ecr.send(LogOff(), p.now)
    with pytest.raises(SendQueueFull):
        p.ecr.send(LogOff(), p.now)
    p.step()
    assert received(p.pt_events) == [PAYMENT]     # the log-offs wait: the PT answers the payment first
    p.pt_send(Ack())
    p.pt_send(Completion())
    p.step()
    p.step()
    assert received(p.pt_events) == [PAYMENT, LogOff()]
    for _ in range(3):
        p.pt_send(Ack())                          # log off ends at its 80 00 00
        p.step()
        p.step()
    assert received(p.pt_events) == [PAYMENT] + [LogOff()] * 4
    p.pt_send(Ack())
    p.settle(0.1)
    assert p.ecr.idle and p.pt.idle


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_flood_the_ecr_never_reads_stays_bounded(transport):
    ecr = ZvtLink("ecr", transport, ZvtConfig(max_events=64))
    frame = encode_serial if transport == "serial" else (lambda apdu: apdu)
    chunk = b"".join(frame(IntermediateStatus(s).encode()) for s in range(20))
    for i in range(200):            # the events are taken, what is to be written never is
        ecr.receive_data(chunk, i * 0.001)
        list(iter(ecr.next_event, None))
    assert len(ecr.data_to_send()) <= OUT_CAP + 16
    assert ecr.stats["out_dropped"] > 0
    # events nobody takes: the link says so (the Pump turns it into the line's fault)
    with pytest.raises(EventQueueFull):
        for i in range(200):
            ecr.receive_data(chunk, 1 + i * 0.001)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_garbage_flood_never_raises_and_drops_diagnostics(transport):
    ecr = ZvtLink("ecr", transport, ZvtConfig(max_events=64))
    junk = bytes(range(0x20, 0x7F)) * 40 if transport == "serial" else b"\x84\x00\x00" * 1000
    for i in range(100):
        ecr.receive_data(junk, i * 0.001)
    assert len(ecr._events) <= 64
    if transport == "serial":
        assert ecr.stats["events_dropped"] > 0
    else:
        assert ecr.stats["stray_acks"] == 100 * 1000 and not ecr.data_to_send()


def test_reset_returns_what_was_never_acknowledged():
    ecr = ZvtLink("ecr", "serial")
    ecr.send(PAYMENT, 0.0)
    ecr.send(LogOff(), 0.0)
    assert ecr.reset() == [PAYMENT, LogOff()]
    assert ecr.idle and ecr.next_deadline() is None and not ecr.data_to_send()


# ------------------------------------------------------------------ the real captures


TERMINAL_DIALOG = ["1680728162.647465000_pt_ecr", "1680728165.675509000_pt_ecr", "1680728215.585561000_pt_ecr",
                   "1680728215.659492000_pt_ecr", "1680728165.827009000_pt_ecr"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_real_terminals_messages_through_the_ecr_link(transport):
    """A Feig cVEND's payment dialog as it sent it: 04 FF, 04 0F, 06 D3, 04 0F, 06 0F."""
    ecr = ZvtLink("ecr", transport)
    reservation = decode(capture("1680728162.033575000_ecr_pt"))
    wire = ecr.send(reservation, 0.0)
    assert wire == (encode_serial(reservation.encode()) if transport == "serial" else reservation.encode())
    frame = encode_serial if transport == "serial" else (lambda apdu: apdu)
    ack_byte = bytes([ACK]) if transport == "serial" else b""
    ecr.receive_data(ack_byte + frame(ACK_APDU), 0.1)
    assert ecr.master == "pt" and ecr.data_to_send() == ack_byte
    for i, stem in enumerate(TERMINAL_DIALOG):
        raw = frame(capture(stem))
        half = len(raw) // 2
        ecr.receive_data(raw[:half], 0.2 + i)
        ecr.receive_data(raw[half:], 0.25 + i)
        out = ecr.data_to_send()
        # serial: our ACK byte for the frame, then 80 00 00 framed; the PT's ACK byte for our
        # 80 00 00 is fed with the next message
        assert out == ack_byte + frame(ACK_APDU)
        ecr.receive_data(ack_byte, 0.3 + i)
    events = list(iter(ecr.next_event, None))
    got = received(events)
    assert not of(events, UndecodableMessage)
    assert [type(m).__name__ for m in got] == ["IntermediateStatus", "StatusInformation", "PrintTextBlock",
                                               "StatusInformation", "Completion"]
    assert got[1].amount == 2500 and got[1].receipt_no == 231 and got[3].receipt_no == 232
    assert ecr.master == "ecr" and ecr.idle
    assert [e.message for e in of(events, Delivered)] == [reservation]


@pytest.mark.parametrize("stem", sorted(p.stem for p in CAPTURES.glob("*_pt_ecr.blob")))
def test_every_terminal_capture_is_taken_and_acknowledged(stem):
    ecr = ZvtLink("ecr", "serial")
    ecr.send(PAYMENT, 0.0)
    ecr.receive_data(bytes([ACK]) + encode_serial(ACK_APDU), 0.1)
    ecr.data_to_send()
    ecr.receive_data(encode_serial(capture(stem)), 0.2)
    events = list(iter(ecr.next_event, None))
    assert received(events) == [decode(capture(stem))]
    assert ecr.data_to_send() == bytes([ACK]) + encode_serial(ACK_APDU)


@pytest.mark.parametrize("stem", sorted(p.stem for p in CAPTURES.glob("*_ecr_pt.blob")))
def test_every_register_capture_reaches_the_terminal_as_a_command(stem):
    pt = ZvtLink("pt", "tcp")
    pt.receive_data(capture(stem), 0.0)
    assert received(list(iter(pt.next_event, None))) == [decode(capture(stem))]
    assert pt.send(Ack(), 0.1) == ACK_APDU


# ------------------------------------------------------------------ with the shared Pump


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_link_driven_by_the_shared_pump(transport):
    """The ECR link on :class:`Pump` over a fake read / write; the terminal is a PT link
    answering in the read callback; time is a fake clock each read moves on."""
    clock = [0.0]
    pt = ZvtLink("pt", transport)
    to_pt = bytearray()
    pt_events: list = []
    script = [Ack(), IntermediateStatus(0x0A), IntermediateStatus(0x0E),
              StatusInformation.make(result_code=0, amount=1250, currency=978), Completion()]

    def write(data: bytes) -> None:
        to_pt.extend(data)

    def read(timeout: float) -> bytes:
        clock[0] += min(timeout, 0.01) or 0.001
        pt.receive_data(bytes(to_pt), clock[0])
        to_pt.clear()
        pt.tick(clock[0])
        out = bytearray()
        for ev in iter(pt.next_event, None):
            pt_events.append(ev)
            if isinstance(ev, MessageReceived) and ev.message == PAYMENT:
                for msg in script[:2]:
                    out += pt.send(msg, clock[0])
            elif isinstance(ev, Delivered) and ev.message in script[1:-1]:
                nxt = script.index(ev.message) + 1
                out += pt.send(script[nxt], clock[0])
        return bytes(out + pt.data_to_send())

    ecr = ZvtLink("ecr", transport)
    pump = Pump(ecr, read, write, clock=lambda: clock[0])
    seen = []

    def on_event(ev):
        if isinstance(ev, MessageReceived):
            seen.append(type(ev.message).__name__)
            if isinstance(ev.message, Completion):
                return ev.message
        return None

    pump.send(PAYMENT)
    answer = pump.run(clock[0] + 30.0, on_event)
    assert answer is not TIMED_OUT and isinstance(answer, Completion)
    assert seen == ["IntermediateStatus", "IntermediateStatus", "StatusInformation", "Completion"]
    pump.run(clock[0] + 0.5)       # let the last 80 00 00 go out and be taken
    assert ecr.idle and ecr.master == "ecr"
    assert [type(e.message).__name__ for e in pt_events if isinstance(e, Delivered)] == [
        "Ack", "IntermediateStatus", "IntermediateStatus", "StatusInformation", "Completion"]
    assert pt.idle and not of(pt_events, SendFailed)
