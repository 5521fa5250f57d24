"""The ZVT serial and TCP framers, attacked the STYLE.md 11 way: whole, byte by byte, split
in two anywhere, garbage before, truncated; bad CRC, broken DLE sequences, oversize frames;
and the serial framer against the declarative SerialFrame schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol.errors import ProtocolError
from firmware_protocol.zvt import (
    ACK, MAX_APDU, NAK, SerialFramer, TcpFramer, ZvtBadFrame, ZvtFrame, ZvtFrameError, ZvtGarbage, crc_kermit,
    decode, decode_serial, encode_serial,
)
from firmware_protocol.zvt.framing import SerialFrame

CAPTURES = sorted((Path(__file__).resolve().parents[2] / "fixtures" / "zvt").glob("*.blob"))
APDUS = [p.read_bytes() for p in CAPTURES]


def drain(framer, chunks):
    out = []
    for chunk in chunks:
        framer.feed(chunk)
        while (item := framer.pop()) is not None:
            out.append(item)
    return out


def frames(items):
    return [i.apdu for i in items if isinstance(i, ZvtFrame)]


# ------------------------------------------------------------------ CRC and the frame


def test_crc_kermit_check_values():
    assert crc_kermit(b"123456789") == 0x2189            # the catalogue's check value for CRC-16/KERMIT
    assert crc_kermit(b"") == 0


def test_the_readme_worked_examples():
    assert encode_serial(bytes.fromhex("800000")) == bytes.fromhex("1002 800000 1003 f51f")
    assert encode_serial(bytes.fromhex("050103123456"))[-2:] == bytes.fromhex("e043")


def test_dle_is_doubled_and_the_crc_covers_the_unstuffed_apdu():
    apdu = bytes.fromhex("06d1031010aa")
    raw = encode_serial(apdu)
    assert raw == bytes.fromhex("1002 06d103 10101010 aa 1003") + crc_kermit(apdu + b"\x03").to_bytes(2, "little")
    assert decode_serial(raw) == apdu


@given(st.binary(max_size=600))
def test_serial_frame_round_trip_and_schema_agree(apdu):
    raw = encode_serial(apdu)
    assert decode_serial(raw) == apdu == SerialFrame.parse(raw).apdu
    assert frames(drain(SerialFramer(), [raw])) == [apdu]


def test_decode_serial_rejects():
    good = encode_serial(b"\x80\x00\x00")
    for bad in (good[:-1], good[:-1] + bytes([good[-1] ^ 1]), good + b"\x00", b"\x10\x02\x80\x10\x05\x10\x03\x00\x00"):
        with pytest.raises(ZvtFrameError):
            decode_serial(bad)


# ------------------------------------------------------------------ serial framer, STYLE.md 11


def stream_of(apdus):
    return b"".join(encode_serial(a) for a in apdus)


@pytest.mark.parametrize("apdu", APDUS, ids=[p.stem for p in CAPTURES])
def test_serial_whole_and_byte_by_byte(apdu):
    raw = encode_serial(apdu)
    assert drain(SerialFramer(), [raw]) == [ZvtFrame(apdu, raw)]
    assert drain(SerialFramer(), [raw[i:i + 1] for i in range(len(raw))]) == [ZvtFrame(apdu, raw)]


@pytest.mark.parametrize("apdu", APDUS[:6], ids=[p.stem for p in CAPTURES[:6]])
def test_serial_split_anywhere(apdu):
    raw = encode_serial(apdu)
    for cut in range(len(raw) + 1):
        f = SerialFramer()
        assert frames(drain(f, [raw[:cut], raw[cut:]])) == [apdu]
        assert f.pending == 0


def test_serial_garbage_before_and_between():
    a, b = APDUS[0], APDUS[1]
    items = drain(SerialFramer(), [b"\x00\xffnoise" + encode_serial(a) + b"\x10\x41" + encode_serial(b)])
    assert frames(items) == [a, b]
    assert b"".join(i.data for i in items if isinstance(i, ZvtGarbage)) == b"\x00\xffnoise\x10\x41"


def test_serial_control_bytes_between_frames_and_inside():
    apdu = bytes.fromhex("060f03061515")  # ACK and NAK values inside a frame are data
    items = drain(SerialFramer(), [b"\x06" + encode_serial(apdu) + b"\x15"])
    assert items[0] == ACK and items[-1] == NAK and frames(items) == [apdu]


def test_serial_truncated_frame_waits_then_is_discarded():
    raw = encode_serial(APDUS[2])
    f = SerialFramer()
    assert drain(f, [raw[:-3]]) == []
    assert f.pending == len(raw) - 3
    assert f.discard_partial() == raw[:-3] and f.pending == 0
    assert frames(drain(f, [raw])) == [APDUS[2]]


def test_serial_false_start_in_noise_does_not_swallow_the_real_frame():
    apdu = APDUS[3]
    items = drain(SerialFramer(), [b"\x10\x02\x01\x02" + encode_serial(apdu)])
    assert items[0] == ZvtGarbage(b"\x10\x02\x01\x02") and frames(items) == [apdu]


def test_serial_bad_crc_is_a_bad_frame_and_the_next_frame_is_read():
    raw = bytearray(encode_serial(APDUS[4]))
    raw[-1] ^= 0xFF
    items = drain(SerialFramer(), [bytes(raw) + encode_serial(APDUS[5])])
    assert isinstance(items[0], ZvtBadFrame) and items[0].reason == "CRC mismatch" and items[0].raw == bytes(raw)
    assert frames(items) == [APDUS[5]]


def test_serial_flipped_data_byte_is_caught_by_the_crc():
    raw = bytearray(encode_serial(bytes.fromhex("06010704000000001250")))
    raw[6] ^= 0x01
    assert isinstance(drain(SerialFramer(), [bytes(raw)])[0], ZvtBadFrame)


def test_serial_dle_followed_by_nonsense():
    items = drain(SerialFramer(), [b"\x10\x02\x06\x01\x10\x41\x00" + encode_serial(b"\x80\x00\x00")])
    assert isinstance(items[0], ZvtBadFrame) and "DLE followed by 41" in items[0].reason
    assert frames(items) == [b"\x80\x00\x00"]


def test_serial_frame_over_the_cap_is_dropped_without_waiting():
    f = SerialFramer()
    items = drain(f, [b"\x10\x02" + b"\x00" * (MAX_APDU + 10)])
    assert items and all(isinstance(i, ZvtGarbage) for i in items)
    assert f.pending <= 2 * MAX_APDU + 6
    assert frames(drain(f, [encode_serial(b"\x80\x00\x00")])) == [b"\x80\x00\x00"]


def test_serial_buffer_stays_bounded_under_endless_dle_pairs():
    f = SerialFramer()
    drain(f, [b"\x10\x02"])
    for _ in range(40):
        drain(f, [b"\x10\x10" * 1024])
        assert f.pending <= 2 * MAX_APDU + 6


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(APDUS), min_size=1, max_size=4), st.binary(max_size=40), st.data())
def test_serial_any_split_with_garbage_before(apdus, junk, data):
    junk = junk.replace(b"\x10", b"").replace(b"\x06", b"").replace(b"\x15", b"")
    raw = junk + stream_of(apdus)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    f = SerialFramer()
    items = drain(f, chunks)
    assert frames(items) == apdus and f.pending == 0
    assert b"".join(i.data for i in items if isinstance(i, ZvtGarbage)) == junk


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.data())
def test_serial_fuzz_never_raises_and_decodes_only_to_protocol_errors(noise, data):
    raw = bytearray(noise + stream_of(APDUS[:3]))
    for _ in range(data.draw(st.integers(0, 5))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    f = SerialFramer()
    for item in drain(f, [bytes(raw)]):
        assert isinstance(item, (ZvtFrame, ZvtBadFrame, ZvtGarbage, int))
        if isinstance(item, ZvtFrame):
            try:
                decode(item.apdu)
            except ProtocolError:
                pass
    assert f.pending <= 2 * MAX_APDU + 6


# ------------------------------------------------------------------ TCP framer


def test_tcp_whole_byte_by_byte_and_split():
    raw = b"".join(APDUS)
    assert frames(drain(TcpFramer(), [raw])) == APDUS
    assert frames(drain(TcpFramer(), [raw[i:i + 1] for i in range(len(raw))])) == APDUS
    for cut in range(0, len(raw), 7):
        f = TcpFramer()
        assert frames(drain(f, [raw[:cut], raw[cut:]])) == APDUS and f.pending == 0


def test_tcp_long_length_form_across_reads():
    block = next(a for a in APDUS if a[2] == 0xFF)
    f = TcpFramer()
    assert drain(f, [block[:4]]) == [] and f.pending == 4
    assert drain(f, [block[4:100]]) == []
    assert frames(drain(f, [block[100:]])) == [block]


def test_tcp_truncated_then_discarded():
    f = TcpFramer()
    drain(f, [APDUS[7][:-1]])
    assert f.pending == len(APDUS[7]) - 1
    assert f.discard_partial() == APDUS[7][:-1]
    assert frames(drain(f, [APDUS[0]])) == [APDUS[0]]


def test_tcp_oversize_length_is_reported_and_skipped_not_buffered():
    n = 0xFFFF
    f = TcpFramer()
    items = drain(f, [b"\x06\xd3\xff" + n.to_bytes(2, "little") + b"\x00" * 1000])
    assert len(items) == 1 and isinstance(items[0], ZvtBadFrame)
    assert f.pending == 0 and f.skipping == n - 1000
    drain(f, [b"\x00" * (n - 1000)])
    assert f.skipping == 0
    assert frames(drain(f, [APDUS[0]])) == [APDUS[0]]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.data())
def test_tcp_fuzz_yields_only_frames_and_typed_errors(noise, data):
    cut = data.draw(st.integers(0, len(noise)))
    f = TcpFramer()
    for item in drain(f, [noise[:cut], noise[cut:]]):
        assert isinstance(item, (ZvtFrame, ZvtBadFrame))
        if isinstance(item, ZvtFrame):
            try:
                decode(item.apdu)
            except ProtocolError:
                pass
    assert f.pending <= MAX_APDU


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(APDUS[:8]), st.data())
def test_serial_framer_agrees_with_the_declarative_schema(apdu, data):
    # Whatever the hand-written framer accepts, the construct schema accepts with the same
    # APDU; whatever it refuses as a bad frame, the schema refuses too.
    raw = bytearray(encode_serial(apdu))
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(2, len(raw) - 1))] = data.draw(st.integers(0, 255))
    for item in drain(SerialFramer(), [bytes(raw)]):
        if isinstance(item, ZvtFrame):
            assert decode_serial(item.raw) == item.apdu
        elif isinstance(item, ZvtBadFrame):
            with pytest.raises(ZvtFrameError):
                decode_serial(item.raw)
