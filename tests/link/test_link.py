"""posterm.families.native.link: ACK/NAK, retransmission, duplicate suppression, resync, bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol.native import frame as fr
from firmware_protocol.native.messages import PayRequest, Query, StatusRequest
from firmware_protocol.native.tlv import encode
from posterm.errors import LocalProtocolError
from posterm.families.native.link import (
    Delivered,
    DuplicateIgnored,
    FrameRejected,
    FrameTrace,
    GarbageSkipped,
    Link,
    LinkConfig,
    MessageReceived,
    PartialDiscarded,
    Retransmitted,
    SendFailed,
    UndecodableMessage,
)
from posterm.families.native.linkpair import LinkPair, LossyWire


def drain(link: Link) -> list:
    out = []
    while (ev := link.next_event()) is not None:
        out.append(ev)
    return out


def q(i: int) -> Query:
    return Query(order_id=f"ORDER-{i}")


def test_send_ack_delivered():
    a, b = Link(), Link()
    wire = a.send(q(1), now=0.0)
    assert wire[0] == fr.SOF
    b.receive_data(wire, now=0.01)
    (ev,) = drain(b)
    assert isinstance(ev, MessageReceived) and ev.message == q(1)
    a.receive_data(b.data_to_send(), now=0.02)
    (ev,) = drain(a)
    assert isinstance(ev, Delivered) and ev.message == q(1)
    assert a.idle


def test_second_message_waits_for_ack():
    a, b = Link(), Link()
    first = a.send(q(1), now=0)
    assert a.send(q(2), now=0) == b""  # stop-and-wait: queued
    b.receive_data(first, now=0)
    a.receive_data(b.data_to_send(), now=0)
    second = a.data_to_send()
    assert fr.decode_frame(second).seq == 1
    b.receive_data(second, now=0)
    assert [e.message for e in drain(b)] == [q(1), q(2)]


def test_timeout_retransmits_then_fails():
    a = Link(LinkConfig(ack_timeout=0.5, max_retries=3))
    first = a.send(q(1), now=0.0)
    for i, t in enumerate((0.5, 1.0, 1.5), start=1):
        a.tick(t)
        assert a.data_to_send() == first  # byte-identical retransmission
        (ev,) = drain(a)
        assert isinstance(ev, Retransmitted) and ev.attempt == i and ev.cause == "timeout"
    a.tick(1.99)
    assert drain(a) == []
    a.tick(2.0)
    (ev,) = drain(a)
    assert isinstance(ev, SendFailed) and ev.attempts == 4 and ev.message == q(1)
    assert a.idle


def test_nak_triggers_retransmission():
    a, b = Link(), Link()
    wire = bytearray(a.send(q(1), now=0))
    wire[-1] ^= 0x01  # corrupt the CRC
    b.receive_data(bytes(wire), now=0)
    ev, *rest = drain(b)
    assert isinstance(ev, FrameRejected)
    assert all(isinstance(e, GarbageSkipped) for e in rest)  # the framer resyncs past it
    nak = b.data_to_send()
    assert fr.decode_frame(nak).kind is fr.FrameKind.NAK
    a.receive_data(nak, now=0.01)
    (ev,) = drain(a)
    assert isinstance(ev, Retransmitted) and ev.cause == "nak"
    b.receive_data(a.data_to_send(), now=0.02)
    assert [type(e) for e in drain(b)] == [MessageReceived]


def test_lost_ack_gives_one_delivery():
    a, b = Link(), Link()
    wire = a.send(q(1), now=0)
    b.receive_data(wire, now=0)
    b.data_to_send()  # the ACK is lost
    a.tick(0.6)
    b.receive_data(a.data_to_send(), now=0.6)
    events = drain(b)
    assert [type(e) for e in events] == [MessageReceived, DuplicateIgnored]
    a.receive_data(b.data_to_send(), now=0.7)  # the second ACK arrives
    assert any(isinstance(e, Delivered) for e in drain(a))


def test_restarted_peer_with_seq_zero_is_not_a_duplicate():
    a, b = Link(), Link()
    b.receive_data(a.send(q(1), now=0), now=0)
    a2 = Link()  # the peer restarted: seq 0 again, different content
    b.receive_data(a2.send(q(2), now=1), now=1)
    assert [e.message for e in drain(b) if isinstance(e, MessageReceived)] == [q(1), q(2)]


def test_garbage_before_and_between_frames():
    a, b = Link(), Link()
    w1 = a.send(q(1), now=0)
    b.receive_data(b"\x00\xa5\xff" + w1[:5], now=0)
    b.receive_data(w1[5:] + b"noise\xa5\xa5", now=0)
    events = drain(b)
    assert [e.message for e in events if isinstance(e, MessageReceived)] == [q(1)]
    assert sum(len(e.data) for e in events if isinstance(e, GarbageSkipped)) >= 3


def test_stalled_partial_frame_discarded():
    a, b = Link(LinkConfig(inter_byte_timeout=0.2)), Link(LinkConfig(inter_byte_timeout=0.2))
    w = a.send(q(1), now=0)
    b.receive_data(w[:-3], now=0)
    b.tick(0.1)
    assert drain(b) == []
    b.tick(0.25)
    (ev,) = drain(b)
    assert isinstance(ev, PartialDiscarded) and ev.data == w[:-3]
    assert b.next_deadline() is None


def test_undecodable_payload_is_acked_and_reported():
    b = Link()
    raw = fr.encode_frame(fr.FrameKind.DATA, 7, b"\x7f\x7f")  # unknown message type
    b.receive_data(raw, now=0)
    (ev,) = drain(b)
    assert isinstance(ev, UndecodableMessage) and ev.seq == 7
    assert fr.decode_frame(b.data_to_send()).kind is fr.FrameKind.ACK


def test_caller_misuse_is_local_protocol_error():
    a = Link(LinkConfig(max_queue=2))
    with pytest.raises(LocalProtocolError):
        a.send(b"raw bytes", now=0)  # type: ignore[arg-type]
    a.send(q(1), now=0)  # goes out
    a.send(q(2), now=0)
    a.send(q(3), now=0)
    with pytest.raises(LocalProtocolError):
        a.send(q(4), now=0)


def test_event_queue_is_bounded():
    b = Link(LinkConfig(max_events=16))
    with pytest.raises(LocalProtocolError):
        for i in range(40):
            b.receive_data(fr.encode_frame(fr.FrameKind.DATA, i, encode(q(i))), now=0)


def test_trace_frames_reports_both_directions():
    cfg = LinkConfig(trace_frames=True)
    a, b = Link(cfg), Link(cfg)
    b.receive_data(a.send(StatusRequest(), now=0), now=0)
    a.receive_data(b.data_to_send(), now=0)
    kinds_a = [(e.direction, e.kind) for e in drain(a) if isinstance(e, FrameTrace)]
    assert kinds_a == [("out", fr.FrameKind.DATA), ("in", fr.FrameKind.ACK)]


def test_receive_buffer_stays_bounded_under_garbage():
    b = Link()
    rng = random.Random(1)
    for _ in range(200):
        b.receive_data(bytes(rng.randrange(256) for _ in range(512)), now=0)
        drain(b)
        assert b._framer.pending <= fr.MAX_FRAME


PAY = PayRequest(amount_minor=1234, currency="CNY", order_id="A-1", payment_code="289900000000000001")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drop=st.sampled_from([0.0, 0.05, 0.2]),
       dup=st.sampled_from([0.0, 0.05, 0.2]), corrupt=st.sampled_from([0.0, 0.05, 0.2]))
def test_exactly_once_under_faults(seed, drop, dup, corrupt):
    """Every message is delivered exactly once and in order, both ways, when the
    wire drops, duplicates, corrupts and reorders ACKs (jitter) — given enough retries."""
    rng = random.Random(seed)
    cfg = LinkConfig(ack_timeout=0.05, max_retries=20)
    pair = LinkPair(cfg,
                    LossyWire(drop, dup, corrupt, latency=0.002, jitter=0.01, rng=random.Random(rng.random())),
                    LossyWire(drop, dup, corrupt, latency=0.002, jitter=0.01, rng=random.Random(rng.random())))
    sent_a = [q(i) for i in range(15)]
    sent_b = [PayRequest(amount_minor=i + 1, currency="CNY", order_id=f"B-{i}") for i in range(15)]
    for ma, mb in zip(sent_a, sent_b):
        pair.send_a(ma)
        pair.send_b(mb)
    pair.run(max_time=120)
    assert pair.received_by("b") == sent_a
    assert pair.received_by("a") == sent_b
    assert pair.outcomes_of("a") == (sent_a, [])
    assert pair.outcomes_of("b") == (sent_b, [])


def test_failed_send_is_reported_not_silent():
    """A dead wire: every message ends in SendFailed; nothing is delivered."""
    cfg = LinkConfig(ack_timeout=0.05, max_retries=2)
    pair = LinkPair(cfg, LossyWire(drop=1.0), LossyWire(drop=1.0))
    msgs = [q(i) for i in range(3)]
    for m in msgs:
        pair.send_a(m)
    pair.run(max_time=5)
    assert pair.outcomes_of("a") == ([], msgs)
    assert pair.received_by("b") == []


def test_ack_timer_allows_for_the_frame_on_a_slow_line():
    from firmware_protocol import Print, encode_message
    from posterm.families.native.link import Link, LinkConfig

    big = Print(lines=tuple("x" * 40 for _ in range(60)))
    frame_len = 8 + len(encode_message(big)) + 2
    fast = Link(LinkConfig())
    fast.send(big, 0.0)
    assert fast.next_deadline() == pytest.approx(0.5)
    slow = Link(LinkConfig(line_rate=960.0))            # 9600 baud 8N1
    slow.send(big, 0.0)
    assert slow.next_deadline() == pytest.approx(0.5 + (frame_len + 10) / 960.0)
    slow.tick(2.0)                                      # still going out at 9600: no retransmission
    assert slow.stats["retransmits"] == 0


def test_the_driver_gives_serial_lines_their_rate():
    from posterm.ecr.session import line_rate as _line_rate

    assert _line_rate("/dev/ttyUSB0", {"baudrate": 9600}) == pytest.approx(960.0)
    assert _line_rate("/dev/ttyS0", {"baudrate": 9600, "bytesize": 7, "parity": "E"}) == pytest.approx(960.0)
    assert _line_rate("rfc2217://127.0.0.1:2217", {"baudrate": 19200}) == pytest.approx(1920.0)
    assert _line_rate("socket://127.0.0.1:7000", {"baudrate": 9600}) is None
    assert _line_rate("tcp://127.0.0.1:7000", {}) is None


def test_overflow_is_typed_and_a_flood_of_false_starts_is_one_event():
    from posterm.families.native.link import EventQueueFull, GarbageSkipped, SendQueueFull

    a = Link(LinkConfig(max_queue=2))
    for i in range(3):
        a.send(q(i), now=0)
    with pytest.raises(SendQueueFull):       # a LocalProtocolError, typed so callers can tell
        a.send(q(9), now=0)
    b = Link(LinkConfig(max_events=16))
    head = bytes([fr.SOF, 1, 1, 0]) + (4096).to_bytes(2, "big") + (4096 ^ 0xFFFF).to_bytes(2, "big")
    b.receive_data(head + b"\xa5" * 8192, now=0)          # never raises: diagnostics are dropped
    b.tick(1.0)
    b.receive_data(fr.encode_frame(fr.FrameKind.DATA, 1, encode(q(1))), now=1.0)
    events = drain(b)
    assert sum(isinstance(e, GarbageSkipped) for e in events) <= 4
    assert any(isinstance(e, MessageReceived) for e in events)
    with pytest.raises(EventQueueFull):      # messages the caller never takes still raise
        for i in range(40):
            b.receive_data(fr.encode_frame(fr.FrameKind.DATA, 100 + i, encode(q(i))), now=2)


def test_control_frames_for_a_peer_that_takes_nothing_are_bounded():
    from posterm.families.native.link import MAX_CONTROL_BACKLOG

    b = Link()
    bad = bytearray(fr.encode_frame(fr.FrameKind.DATA, 3, encode(q(3))))
    bad[-1] ^= 0xFF
    for _ in range(5000):                    # 5000 NAKs owed, never collected with data_to_send
        b.receive_data(bytes(bad), now=0)
        drain(b)
    assert len(b._out) <= MAX_CONTROL_BACKLOG + fr.HEADER_SIZE + fr.CRC_SIZE
    assert b.stats["control_dropped"] > 0
