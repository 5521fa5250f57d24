"""The Framer and decode_frame under the standard attacks: whole, byte by byte, split at
every offset, garbage in front, truncated, every single-bit flip, oversize lengths."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol import (
    MAX_FRAME,
    MAX_PAYLOAD,
    BadFrame,
    FrameError,
    FrameKind,
    Framer,
    Garbage,
    LinkFrame,
    decode_frame,
    encode_frame,
    encode_message,
)
from firmware_protocol.native.frame import CRC_SIZE, HEADER_SIZE, SOF, crc16
from firmware_protocol.native.messages import Outcome, PayRequest, PayResult

PAY = PayRequest(amount_minor=12345, currency="CNY", order_id="ORD-20261201-000123",
                 payment_code="289900000000000001", description="2x coffee")
RESULT = PayResult(order_id="ORD-20261201-000123", outcome=Outcome.APPROVED, amount_minor=12345, currency="CNY",
                   trade_no="2026120122001400001", code_last4="0001")
FRAMES = [
    encode_frame(FrameKind.DATA, 0, encode_message(PAY)),
    encode_frame(FrameKind.ACK, 0),
    encode_frame(FrameKind.DATA, 0xA5, encode_message(RESULT)),  # seq equal to SOF: a false start inside
    encode_frame(FrameKind.NAK, 255),
    encode_frame(FrameKind.DATA, 7, b""),
]
STREAM = b"".join(FRAMES)


def header(length: int, kind: int = FrameKind.DATA, seq: int = 0, version: int = 1, check: int | None = None) -> bytes:
    return struct.pack(">BBBBHH", SOF, version, kind, seq, length, length ^ 0xFFFF if check is None else check)


def drain(framer: Framer) -> list:
    out = []
    while (ev := framer.pop()) is not None:
        out.append(ev)
    return out


def frames_of(events: list) -> list[bytes]:
    return [ev.raw for ev in events if isinstance(ev, LinkFrame)]


def feed_chunks(chunks) -> tuple[list, Framer]:
    framer = Framer()
    events = []
    for chunk in chunks:
        framer.feed(chunk)
        events += drain(framer)
        assert framer.pending < MAX_FRAME
    return events, framer


# ------------------------------------------------------------------ good input


def test_decoded_fields():
    f = decode_frame(FRAMES[2])
    assert (f.kind, f.seq, f.payload, f.raw) == (FrameKind.DATA, 0xA5, encode_message(RESULT), FRAMES[2])
    assert len(FRAMES[0]) == HEADER_SIZE + len(encode_message(PAY)) + CRC_SIZE
    assert FRAMES[1] == bytes.fromhex("A50102000000FFFF") + crc16(bytes.fromhex("A50102000000FFFF")).to_bytes(2, "big")


def test_whole_stream():
    events, framer = feed_chunks([STREAM])
    assert events == [decode_frame(f) for f in FRAMES]
    assert framer.pending == 0


def test_byte_by_byte():
    events, framer = feed_chunks(STREAM[i:i + 1] for i in range(len(STREAM)))
    assert events == [decode_frame(f) for f in FRAMES]
    assert framer.pending == 0


def test_split_at_every_offset():
    want = [decode_frame(f) for f in FRAMES]
    for i in range(len(STREAM) + 1):
        events, framer = feed_chunks([STREAM[:i], STREAM[i:]])
        assert events == want, i
        assert framer.pending == 0


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12))
@settings(deadline=None)
def test_split_anywhere(cuts):
    bounds = [0, *sorted(cuts), len(STREAM)]
    events, framer = feed_chunks(STREAM[a:b] for a, b in zip(bounds, bounds[1:]))
    assert frames_of(events) == FRAMES
    assert not [ev for ev in events if not isinstance(ev, LinkFrame)]


def test_max_payload_frame():
    raw = encode_frame(FrameKind.DATA, 1, bytes(range(256)) * (MAX_PAYLOAD // 256))
    assert len(raw) == MAX_FRAME
    events, framer = feed_chunks([raw[:1000], raw[1000:]])
    assert frames_of(events) == [raw]
    with pytest.raises(FrameError):
        encode_frame(FrameKind.DATA, 1, bytes(MAX_PAYLOAD + 1))


# ------------------------------------------------------------------ garbage


@pytest.mark.parametrize("junk", [
    b"\x00", b"\xff" * 50, b"\xa5", b"\xa5\xa5\xa5", b"hello\r\n", bytes(range(256)),
    header(4097), header(10, check=0), header(10, kind=9), header(3000)[:7], header(20) + b"short",
], ids=["nul", "ff", "sof", "sofs", "text", "all-bytes", "oversize", "bad-check", "bad-kind", "cut-header",
        "false-start"])
def test_garbage_in_front(junk):
    """After any junk, every real frame comes through (a false start may hold them back only
    until enough bytes arrived to refute it: the trailing padding)."""
    pad = bytes(32)
    events, framer = feed_chunks([junk, STREAM, pad])
    assert frames_of(events) == FRAMES
    # Bytes are accounted for: what was skipped is garbage or a rejected false start.
    skipped = b"".join(ev.data for ev in events if isinstance(ev, Garbage))
    assert len(skipped) + sum(isinstance(ev, BadFrame) for ev in events) == len(junk) + len(pad)
    assert framer.pending == 0


@given(junk=st.binary(max_size=300), seed=st.integers(0, 2**32 - 1))
@settings(deadline=None)
def test_random_garbage_then_frames(junk, seed):
    rng = random.Random(seed)
    stream = junk + STREAM + bytes(MAX_FRAME)  # padding refutes any false start in the junk
    cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(6)))
    bounds = [0, *cuts, len(stream)]
    events, framer = feed_chunks(stream[a:b] for a, b in zip(bounds, bounds[1:]))
    assert frames_of(events)[-len(FRAMES):] == FRAMES
    # Anything delivered before the real frames came out of the junk and passed its CRC.
    for raw in frames_of(events)[:-len(FRAMES)]:
        assert raw in junk
    assert framer.pending == 0


# ------------------------------------------------------------------ truncation


@pytest.mark.parametrize("raw", FRAMES, ids=["pay", "ack", "result-seq-a5", "nak", "empty-data"])
def test_truncated_frame_waits(raw):
    for k in range(1, len(raw)):
        framer = Framer()
        framer.feed(raw[:k])
        assert framer.pop() is None, k  # no event, no error: it waits
        assert framer.pending == k
        framer.feed(raw[k:])
        assert drain(framer) == [decode_frame(raw)]
        with pytest.raises(FrameError):
            decode_frame(raw[:k])


def test_stalled_partial_is_discarded_and_the_next_frame_still_comes():
    framer = Framer()
    framer.feed(FRAMES[0][:30])
    assert framer.pop() is None
    assert framer.discard_partial() == FRAMES[0][:30]
    assert framer.pending == 0
    framer.feed(FRAMES[2])
    assert drain(framer) == [decode_frame(FRAMES[2])]


# ------------------------------------------------------------------ corruption


@pytest.mark.parametrize("raw", FRAMES, ids=["pay", "ack", "result-seq-a5", "nak", "empty-data"])
def test_every_single_bit_flip(raw):
    """A flipped bit anywhere: decode_frame refuses it; the framer reports BadFrame or
    Garbage, never delivers a frame from it, and the good frame after it comes through."""
    good = FRAMES[0]
    for bit in range(len(raw) * 8):
        bad = bytearray(raw)
        bad[bit // 8] ^= 1 << (bit % 8)
        bad = bytes(bad)
        with pytest.raises(FrameError):
            decode_frame(bad)
        for chunks in ([bad + good], [bad, good], [bad[i:i + 1] for i in range(len(bad))] + [good]):
            events, framer = feed_chunks(chunks)
            assert frames_of(events) == [good], (bit, events)
            rejected = [ev for ev in events if not isinstance(ev, LinkFrame)]
            assert rejected and all(isinstance(ev, (BadFrame, Garbage)) for ev in rejected)
            assert framer.pending == 0


def test_bad_crc_is_a_bad_frame_with_its_seq():
    bad = FRAMES[2][:-1] + bytes([FRAMES[2][-1] ^ 0x01])
    events, _ = feed_chunks([bad])
    assert isinstance(events[0], BadFrame)
    assert (events[0].seq, events[0].raw) == (0xA5, bad)


def test_unsupported_version_with_good_crc_is_a_bad_frame():
    body = header(3, version=2) + b"abc"
    raw = body + crc16(body).to_bytes(2, "big")
    events, framer = feed_chunks([raw + FRAMES[1]])
    assert isinstance(events[0], BadFrame) and "version" in events[0].reason
    assert frames_of(events) == [FRAMES[1]]
    with pytest.raises(FrameError, match="version"):
        decode_frame(raw)


# ------------------------------------------------------------------ bounds


@pytest.mark.parametrize("length", [MAX_PAYLOAD + 1, 0x2000, 0xA5A5, 0xFFFF])
def test_oversize_length_rejected_as_soon_as_the_header_is_in(length):
    """A length over the cap (with a consistent check field) is refused on the 8-byte
    header alone: no waiting for, or buffering of, the body it claims."""
    framer = Framer()
    head = header(length)
    framer.feed(head[:-1])
    assert framer.pop() is None  # 7 bytes: cannot judge yet
    framer.feed(head[-1:])
    ev = framer.pop()
    assert ev == Garbage(bytes([SOF]))  # at once, not None
    drain(framer)
    assert framer.pending < HEADER_SIZE  # at most a new false start (0xA5A5 holds SOFs), never the body
    with pytest.raises(FrameError):
        decode_frame(head + bytes(length) + b"\x00\x00")


@given(length=st.integers(MAX_PAYLOAD + 1, 0xFFFF), kind=st.integers(0, 255), seq=st.integers(0, 255))
@settings(deadline=None)
def test_any_oversize_header_is_garbage_at_once(length, kind, seq):
    framer = Framer()
    framer.feed(header(length, kind=kind, seq=seq))
    assert isinstance(framer.pop(), Garbage)


def test_header_at_the_cap_waits_and_stays_bounded():
    framer = Framer()
    framer.feed(header(MAX_PAYLOAD))
    assert framer.pop() is None
    framer.feed(bytes(MAX_PAYLOAD + CRC_SIZE - 1))
    assert framer.pop() is None
    assert framer.pending == MAX_FRAME - 1
    framer.feed(b"\x00")  # complete, wrong CRC
    assert isinstance(framer.pop(), BadFrame)
    drain(framer)
    assert framer.pending == 0


@given(chunks=st.lists(st.one_of(
    st.binary(max_size=600),
    st.builds(header, st.integers(0, 0xFFFF), st.sampled_from(list(FrameKind)), st.integers(0, 255)),
    st.sampled_from(FRAMES),
), max_size=40))
@settings(deadline=None, max_examples=150)
def test_buffer_stays_bounded(chunks):
    """Whatever arrives, after draining the framer holds less than one maximal frame."""
    events, framer = feed_chunks(chunks)
    assert framer.pending < MAX_FRAME
    for ev in events:
        if isinstance(ev, LinkFrame):
            assert decode_frame(ev.raw) == ev


def test_a_real_frame_behind_a_false_start_survives_the_stall():
    # Line noise holding 0xA5 and a header that passes its checks (length 200, length check
    # right), then a whole real frame, then silence: the inter-byte timeout must drop the
    # false start only, and the real frame must still come out.
    import struct

    false_start = struct.pack(">BBBBHH", 0xA5, 1, 1, 9, 200, 200 ^ 0xFFFF) + b"\x00\x11"
    real = FRAMES[0]
    assert len(false_start) + len(real) < 8 + 200 + 2    # the false frame would swallow the real one
    framer = Framer()
    framer.feed(false_start + real)
    assert framer.pop() is None                            # waiting for the false frame's 40 bytes
    assert framer.discard_partial() == false_start
    assert drain(framer) == [decode_frame(real)]


def test_the_link_delivers_a_frame_hidden_behind_a_false_start():
    import struct

    from firmware_protocol import PayRequest, encode_message
    from firmware_protocol.native.frame import FrameKind, encode_frame
    from posterm.families.native.link import Link, MessageReceived

    msg = PayRequest(amount_minor=5, currency="CNY", order_id="X")
    real = encode_frame(FrameKind.DATA, 0, encode_message(msg))
    false_start = struct.pack(">BBBBHH", 0xA5, 1, 1, 9, 200, 200 ^ 0xFFFF)
    link = Link()
    link.receive_data(false_start + real, 0.0)
    assert not any(isinstance(e, MessageReceived) for e in iter(link.next_event, None))
    link.tick(1.0)                                          # past the inter-byte timeout
    got = [e.message for e in iter(link.next_event, None) if isinstance(e, MessageReceived)]
    assert got == [msg]
