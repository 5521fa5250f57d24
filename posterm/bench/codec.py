"""python -m posterm.bench codec [--seconds S]: whole link frames built and parsed per second.

One "frame" is a full round through our schemas: ``encode_message`` + ``encode_frame``
to build it, then ``Framer.feed``/``pop`` + ``decode_message`` to get the validated
message back, for a typical PayRequest (amount, currency, order id, payment code,
description) and a typical PayResult.

Baseline in the same run: a hand-written ``struct`` encoder/decoder of the very same
bytes (checked byte for byte at start). It checks what the wire needs (start byte,
version, kind, length and its check field, CRC, item widths, UTF-8) and returns a dict;
it does not validate field ranges or patterns as the message classes do, so the ratio
is what the declarative schemas plus validation cost over bare ``struct`` code.
``ratio`` is our time per frame over the baseline's (goal: at most 3).

The two are measured in alternating slices (``--slices``), so a machine shared with
other work slows both alike; ``best_slice`` is the fastest slice, the figure an idle
core would give.
"""

from __future__ import annotations

import argparse
import binascii
import struct
from typing import Any, Callable

from firmware_protocol import FrameKind, Framer, LinkFrame, decode_message, encode_frame, encode_message
from firmware_protocol.native.messages import Outcome, PayRequest, PayResult, Reason

from posterm.bench import emit, interleaved

GOAL_FRAMES_PER_S = 50_000
GOAL_RATIO = 3.0

PAY_REQUEST = PayRequest(amount_minor=12345, currency="CNY", order_id="ORD-20261201-000123",
                         payment_code="289900000000000001", description="2x coffee, 1x croissant")
PAY_RESULT = PayResult(order_id="ORD-20261201-000123", outcome=Outcome.APPROVED, amount_minor=12345,
                       currency="CNY", trade_no="2026120122001400001", code_last4="0001",
                       paid_at="2026-12-01T06:35:12Z")

# ------------------------------------------------------------ hand-written baseline

_HEADER = struct.Struct(">BBBBHH")
_TYPE = struct.Struct(">H")
_ITEM = struct.Struct(">BH")
_U8_ITEM = struct.Struct(">BHB")
_U16_ITEM = struct.Struct(">BHH")
_U64_ITEM = struct.Struct(">BHQ")
_CRC = struct.Struct(">H")


def _text(tag: int, value: str, encoding: str = "ascii") -> bytes:
    raw = value.encode(encoding)
    return _ITEM.pack(tag, len(raw)) + raw


def _frame(seq: int, payload: bytes) -> bytes:
    n = len(payload)
    body = _HEADER.pack(0xA5, 1, 1, seq, n, n ^ 0xFFFF) + payload
    return body + _CRC.pack(binascii.crc_hqx(body, 0))


def baseline_build_pay_request(seq: int, f: dict[str, Any]) -> bytes:
    return _frame(seq, b"".join((
        _TYPE.pack(0x0010),
        _U64_ITEM.pack(0x01, 8, f["amount_minor"]),
        _text(0x02, f["currency"]),
        _text(0x03, f["order_id"]),
        _text(0x04, f["payment_code"]),
        _text(0x05, f["description"], "utf-8"),
        _U8_ITEM.pack(0x06, 1, f["dynamic_qr"]),
    )))


def baseline_build_pay_result(seq: int, f: dict[str, Any]) -> bytes:
    return _frame(seq, b"".join((
        _TYPE.pack(0x0012),
        _text(0x01, f["order_id"]),
        _U8_ITEM.pack(0x02, 1, f["outcome"]),
        _U64_ITEM.pack(0x03, 8, f["amount_minor"]),
        _text(0x04, f["currency"]),
        _U16_ITEM.pack(0x05, 2, f["reason"]),
        _text(0x06, f["reason_text"], "utf-8"),
        _text(0x07, f["trade_no"]),
        _text(0x08, f["code_last4"]),
        _U64_ITEM.pack(0x09, 8, f["refunded_minor"]),
        _text(0x0A, f["paid_at"], "utf-8"),
    )))


def _uint(width: int) -> Callable[[bytes], int]:
    def conv(raw: bytes) -> int:
        if len(raw) != width:
            raise ValueError("bad integer width")
        return int.from_bytes(raw, "big")
    return conv


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii")


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8")


def _flag(raw: bytes) -> bool:
    if raw not in (b"\x00", b"\x01"):
        raise ValueError("bad flag")
    return raw == b"\x01"


_BASELINE_TAGS: dict[int, dict[int, tuple[str, Callable[[bytes], Any]]]] = {
    0x0010: {1: ("amount_minor", _uint(8)), 2: ("currency", _ascii), 3: ("order_id", _ascii),
             4: ("payment_code", _ascii), 5: ("description", _utf8), 6: ("dynamic_qr", _flag),
             7: ("timeout_s", _uint(2))},
    0x0012: {1: ("order_id", _ascii), 2: ("outcome", _uint(1)), 3: ("amount_minor", _uint(8)),
             4: ("currency", _ascii), 5: ("reason", _uint(2)), 6: ("reason_text", _utf8),
             7: ("trade_no", _ascii), 8: ("code_last4", _ascii), 9: ("refunded_minor", _uint(8)),
             10: ("paid_at", _utf8)},
}


def baseline_parse(frame: bytes) -> dict[str, Any]:
    """Check and split one whole frame, then its TLV payload. Raises ValueError."""
    sof, version, kind, _seq, length, check = _HEADER.unpack_from(frame, 0)
    if sof != 0xA5 or version != 1 or kind not in (1, 2, 3) or length > 4096 or length ^ check != 0xFFFF:
        raise ValueError("bad header")
    end = 8 + length
    if len(frame) != end + 2 or binascii.crc_hqx(frame[:end], 0) != _CRC.unpack_from(frame, end)[0]:
        raise ValueError("bad length or CRC")
    (type_code,) = _TYPE.unpack_from(frame, 8)
    tags = _BASELINE_TAGS[type_code]
    out: dict[str, Any] = {"type": type_code}
    pos = 10
    while pos < end:
        tag, n = _ITEM.unpack_from(frame, pos)
        pos += 3
        if pos + n > end:
            raise ValueError("item runs past the end")
        name, conv = tags[tag]
        out[name] = conv(frame[pos:pos + n])
        pos += n
    return out


# ------------------------------------------------------------------ the bench


def _fields(msg: Any) -> dict[str, Any]:
    return {spec.name: getattr(msg, spec.name) for spec in msg.FIELDS if getattr(msg, spec.name) is not None}


def _ours(msg: Any) -> Callable[[], Any]:
    framer = Framer()
    kind = FrameKind.DATA

    def round_trip() -> Any:
        framer.feed(encode_frame(kind, 7, encode_message(msg)))
        frame = framer.pop()
        return decode_message(frame.payload)
    return round_trip


def _baseline(build: Callable[[int, dict[str, Any]], bytes], fields: dict[str, Any]) -> Callable[[], Any]:
    def round_trip() -> Any:
        return baseline_parse(build(7, fields))
    return round_trip


def _interleaved(fns: list[Callable[[], Any]], seconds: float, slices: int) -> list[tuple[float, float]]:
    """(mean calls/s, best slice calls/s) of each of ``fns``, run in alternating slices."""
    return [(n / spent, best) for n, spent, best in interleaved(fns, seconds, slices, batch=50)]


def _check_same_bytes() -> None:
    """The baseline must be a codec of the very same bytes, both ways."""
    for msg, build in ((PAY_REQUEST, baseline_build_pay_request), (PAY_RESULT, baseline_build_pay_result)):
        fields = _fields(msg)
        ours = encode_frame(FrameKind.DATA, 7, encode_message(msg))
        theirs = build(7, fields)
        assert theirs == ours, f"baseline bytes differ for {type(msg).__name__}"
        assert baseline_parse(ours) == {"type": msg.TYPE, **fields}
        framer = Framer()
        framer.feed(theirs)
        frame = framer.pop()
        assert isinstance(frame, LinkFrame) and decode_message(frame.payload) == msg
        assert _ours(msg)() == msg


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench codec")
    ap.add_argument("--seconds", type=float, default=1.5, help="measuring time per figure (default 1.5)")
    ap.add_argument("--slices", type=int, default=10, help="alternating slices ours/baseline (default 10)")
    args = ap.parse_args(argv)
    _check_same_bytes()
    assert PAY_RESULT.reason == Reason.NONE
    for name, msg, build in (("pay_request", PAY_REQUEST, baseline_build_pay_request),
                             ("pay_result", PAY_RESULT, baseline_build_pay_result)):
        size = len(encode_frame(FrameKind.DATA, 7, encode_message(msg)))
        (ours, ours_best), (base, base_best) = _interleaved(
            [_ours(msg), _baseline(build, _fields(msg))], args.seconds, max(1, args.slices))
        emit("codec", f"{name}_frames", round(ours), "frames/s", frame_bytes=size, best_slice=round(ours_best),
             goal_min=GOAL_FRAMES_PER_S)
        emit("codec", f"{name}_frames_baseline", round(base), "frames/s", frame_bytes=size,
             best_slice=round(base_best))
        emit("codec", f"{name}_ratio", base / ours, "x", goal_max=GOAL_RATIO)
    return 0
