"""Messages: every registered type round-trips; TLV forward compatibility; typed rejections."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_protocol import (
    ECR_MESSAGES,
    FieldError,
    FrameKind,
    MessageError,
    UnknownMandatoryField,
    UnknownMessageType,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
    message_types,
)
from firmware_protocol.host.messages import HOST_MESSAGES
from firmware_protocol.native.messages import PayRequest, Print, Query
from firmware_protocol.native.tlv import OPTIONAL_TAG_BIT, Codec, decode_reference, encode, split_items

from tests.protocol.strategies import (
    any_message,
    catalogue,
    codec_values,
    message_values,
    random_message,
    random_value,
    struct_fields_match,
)

CATALOGUE = catalogue()
IDS = [cls.__name__ for cls in CATALOGUE]
SEQ = st.integers(0, 255)
_QUIET = [HealthCheck.filter_too_much, HealthCheck.too_slow]
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=_QUIET)
FORWARD = settings(max_examples=200, deadline=None, suppress_health_check=_QUIET)


def _items(payload: bytes) -> list[tuple[int, bytes]]:
    return [(tag, value) for tag, _, value in split_items(payload)[1]]


def _payload(type_code: int, items: list[tuple[int, bytes]]) -> bytes:
    return struct.pack(">H", type_code) + b"".join(struct.pack(">BH", t, len(v)) + v for t, v in items)


# ------------------------------------------------------------------ coverage


def test_catalogue_lists_are_the_registry():
    """ECR_MESSAGES + HOST_MESSAGES name every registered type, once, in its code range."""
    registered = set(message_types().values())
    listed = list(ECR_MESSAGES) + list(HOST_MESSAGES)
    assert len(listed) == len(set(listed))
    assert set(listed) == registered
    assert all(0x0001 <= cls.TYPE <= 0x00FF for cls in ECR_MESSAGES)
    assert all(0x0100 <= cls.TYPE <= 0x01FF for cls in HOST_MESSAGES)
    assert [cls.TYPE for cls in CATALOGUE] == sorted(message_types())


def test_every_registered_type_has_a_strategy():
    """Both generators know every field of every message; a new codec or struct fails here."""
    assert struct_fields_match()
    rng = random.Random(0)
    for cls in message_types().values():
        message_values(cls)  # raises LookupError for a field codec without a strategy
        msg = random_message(cls, rng)
        assert type(msg) is cls
    with pytest.raises(LookupError):
        codec_values(Codec())
    with pytest.raises(LookupError):
        random_value(Codec(), rng)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("cls", CATALOGUE, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_round_trip(cls, data):
    msg = data.draw(message_values(cls), label="msg")
    payload = encode_message(msg)
    assert payload[:2] == cls.TYPE.to_bytes(2, "big")
    tags = [tag for tag, _ in _items(payload)]
    assert tags == sorted(tags), "encoders emit items in tag order"
    back = decode_message(payload)
    assert type(back) is cls
    assert back == msg
    assert encode_message(back) == payload
    # The interpreted reference schema splits the payload the same way.
    assert decode_reference(payload) == (cls.TYPE, _items(payload))
    # And the whole thing survives a link frame.
    seq = data.draw(SEQ, label="seq")
    frame = decode_frame(encode_frame(FrameKind.DATA, seq, payload))
    assert (frame.kind, frame.seq, frame.payload) == (FrameKind.DATA, seq, payload)


@settings(max_examples=150, deadline=None, suppress_health_check=_QUIET)
@given(msg=any_message(), seed=st.integers(0, 2**32 - 1))
def test_items_in_any_order(msg, seed):
    """Receivers accept items in any order; a repeated field keeps its own order."""
    items = _items(encode_message(msg))
    perm = items[:]
    random.Random(seed).shuffle(perm)
    per_tag: dict[int, list[bytes]] = {}
    for tag, value in items:
        per_tag.setdefault(tag, []).append(value)
    shuffled = [(tag, per_tag[tag].pop(0)) for tag, _ in perm]
    assert decode_message(_payload(msg.TYPE, shuffled)) == msg


@given(st.lists(st.text(max_size=64).filter(lambda s: len(s.encode()) <= 64), max_size=20))
@settings(deadline=None)
def test_repeated_field_keeps_order_and_count(lines):
    msg = Print(lines=tuple(lines))
    assert decode_message(encode_message(msg)).lines == tuple(lines)


# ------------------------------------------------------- forward compatibility

UNKNOWN_OPTIONAL = {cls: st.sampled_from([t for t in range(OPTIONAL_TAG_BIT, 0x100) if t not in cls.BY_TAG])
                    for cls in CATALOGUE}
UNKNOWN_MANDATORY = {cls: st.sampled_from([t for t in range(OPTIONAL_TAG_BIT) if t not in cls.BY_TAG])
                     for cls in CATALOGUE}
VALUES = st.binary(max_size=40)


@FORWARD
@given(msg=any_message(), data=st.data())
def test_unknown_optional_tag_is_skipped(msg, data):
    cls = type(msg)
    tag = data.draw(UNKNOWN_OPTIONAL[cls])
    value = data.draw(VALUES)
    items = _items(encode_message(msg))
    at = data.draw(st.integers(0, len(items)))
    assert decode_message(encode(msg, extra=[(tag, value)])) == msg
    assert decode_message(_payload(cls.TYPE, items[:at] + [(tag, value)] + items[at:])) == msg


@FORWARD
@given(msg=any_message(), data=st.data())
def test_unknown_mandatory_tag_is_refused(msg, data):
    cls = type(msg)
    tag = data.draw(UNKNOWN_MANDATORY[cls])
    value = data.draw(VALUES)
    payload = encode(msg, extra=[(tag, value)])
    with pytest.raises(UnknownMandatoryField) as exc:
        decode_message(payload)
    assert (exc.value.tag, exc.value.message_name) == (tag, cls.__name__)
    # A caller that knows better (the host, for the MAC trailer) can let a tag through.
    assert decode_message(payload, allow_unknown_tags=[tag]) == msg


def test_optional_bit_is_the_top_bit_of_the_tag():
    base = encode_message(Query(order_id="A-1"))
    assert decode_message(base + bytes([0x80, 0, 1, 0xEE])) == Query(order_id="A-1")
    assert decode_message(base + bytes([0xFF, 0, 0])) == Query(order_id="A-1")
    with pytest.raises(UnknownMandatoryField):
        decode_message(base + bytes([0x7F, 0, 1, 0xEE]))
    with pytest.raises(UnknownMandatoryField):
        decode_message(base + bytes([0x02, 0, 0]))


@given(code=st.integers(0, 0xFFFF).filter(lambda c: c not in message_types()), tail=st.binary(max_size=30))
@settings(deadline=None)
def test_unknown_message_type(code, tail):
    payload = code.to_bytes(2, "big") + encode_message(Query(order_id="A-1"))[2:]
    with pytest.raises(UnknownMessageType) as exc:
        decode_message(payload)
    assert exc.value.code == code
    with pytest.raises(MessageError):  # unknown type wins over whatever follows, or the split fails
        decode_message(code.to_bytes(2, "big") + tail)


# ------------------------------------------------------------ typed rejections


PAY = PayRequest(amount_minor=1234, currency="CNY", order_id="A-1", payment_code="2899000000000001",
                 description="coffee")


def test_duplicate_field_is_refused():
    items = _items(encode_message(PAY))
    with pytest.raises(FieldError, match="twice"):
        decode_message(_payload(PayRequest.TYPE, items + [items[0]]))


def test_missing_required_field_is_refused():
    items = [(t, v) for t, v in _items(encode_message(PAY)) if t != 0x03]  # order_id
    with pytest.raises(FieldError):
        decode_message(_payload(PayRequest.TYPE, items))


@pytest.mark.parametrize("tag, value", [
    (0x01, b"\x00" * 7),            # u64 amount one byte short
    (0x01, b"\x00" * 8),            # amount 0: the message's own rule
    (0x01, (10**15 + 1).to_bytes(8, "big")),  # over MAX_AMOUNT_MINOR
    (0x02, b"cny"),                 # currency pattern
    (0x02, b"\xff\xfe\xfd"),        # not ASCII
    (0x03, b""),                    # order id too short
    (0x03, b"A" * 65),              # order id too long
    (0x04, b"12345"),               # payment code too short
    (0x05, b"\xc3"),                # truncated UTF-8
    (0x06, b"\x02"),                # flag neither 0 nor 1
    (0x06, b""),                    # flag empty
])
def test_bad_field_values_are_field_errors(tag, value):
    items = [(t, v) for t, v in _items(encode_message(PAY)) if t != tag] + [(tag, value)]
    with pytest.raises(FieldError):
        decode_message(_payload(PayRequest.TYPE, items))


@pytest.mark.parametrize("payload", [
    b"", b"\x00", encode_message(PAY)[:-1], encode_message(PAY) + b"\x01", encode_message(PAY) + b"\x01\x00",
    encode_message(PAY) + b"\x81\x00\x05abc",
], ids=["empty", "one-byte", "cut-value", "dangling-tag", "cut-length", "overlong-length"])
def test_malformed_payloads_are_message_errors(payload):
    with pytest.raises(MessageError):
        decode_message(payload)
    with pytest.raises(MessageError):
        decode_reference(payload)


def test_oversize_message_is_refused_on_encode():
    msg = Print(lines=tuple("x" * 64 for _ in range(64)))  # 64 * 67 bytes > 4096
    with pytest.raises(MessageError, match="cap"):
        encode_message(msg)


def test_package_names_do_not_shadow_its_modules():
    import types

    import firmware_protocol

    for name in ("native", "host", "currency", "errors", "concert"):
        __import__(f"firmware_protocol.{name}")
        assert isinstance(getattr(firmware_protocol, name), types.ModuleType), name
    for name in ("tlv", "frame", "messages"):
        __import__(f"firmware_protocol.native.{name}")
        assert isinstance(getattr(firmware_protocol.native, name), types.ModuleType), name
