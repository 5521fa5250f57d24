"""The fast paths against the interpreted reference schemas, on a mutated corpus.

frame.py builds and parses frames on a fast path (``_HEADER``, a ``struct`` of the
fixed-size ``FrameHeader``, plus ``binascii.crc_hqx``) and keeps ``Frame``
(interpreted construct: RawCopy + Checksum + Terminated) as the reference;
tlv.py splits payloads with a bounded loop and keeps ``Envelope``. A fast path
takes shortcuts on corrupt input (construct's compiled code did, see PITFALLS.md),
so each is held to its reference's accept/reject decision and fields.
"""

from __future__ import annotations

import dataclasses
import random

from construct import ConstructError

from firmware_protocol import (
    FieldError,
    FrameError,
    FrameKind,
    Framer,
    LinkFrame,
    MessageError,
    ProtocolError,
    UnknownMandatoryField,
    UnknownMessageType,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
    message_types,
)
from firmware_protocol.native.frame import _HEADER, MAX_PAYLOAD, SOF, Frame, FrameHeader, decode_frame_reference
from firmware_protocol.native.messages import Outcome, Reason, Stage
from firmware_protocol.native.tlv import decode_reference, split_items

from tests.protocol.mutate import corpus, mutate
from tests.protocol.strategies import catalogue, random_message

SEED = 5000
CASES = 6_000


def _outcome(fn, data):
    try:
        return fn(data)
    except (FrameError, MessageError) as exc:
        return type(exc)


def test_frame_fast_path_agrees_with_reference_schema():
    rng = random.Random(SEED)
    payloads, frames = corpus(rng, per_type=2)
    accepted = rejected = 0
    for i in range(CASES):
        data = mutate(rng.choice(frames), rng, frames, is_frame=True) if i % 10 else rng.choice(frames)
        fast = _outcome(decode_frame, data)
        ref = _outcome(decode_frame_reference, data)
        assert fast == ref, (i, data.hex(), fast, ref)
        framer = Framer()
        framer.feed(data)
        first = framer.pop()
        if isinstance(fast, LinkFrame):
            accepted += 1
            # The stream framer delivers the same frame and consumes exactly it.
            assert first == fast and framer.pending == 0, (i, data.hex())
            assert encode_frame(fast.kind, fast.seq, fast.payload) == data
        else:
            rejected += 1
            assert not (isinstance(first, LinkFrame) and first.raw == data), (i, data.hex())
    # Both sides of the decision are well exercised.
    assert accepted >= CASES // 5 and rejected >= CASES // 5, (accepted, rejected)


def test_fast_header_agrees_with_interpreted_header():
    """Every 8-byte header: same fields or both refuse; built bytes identical."""
    rng = random.Random(SEED + 1)
    compiled = FrameHeader.compile()
    names = ("sof", "version", "kind", "seq", "length", "length_check")
    samples = [bytes([0xA5]) + rng.randbytes(7) for _ in range(4000)] + [rng.randbytes(8) for _ in range(1000)]
    for raw in samples:
        fields = dict(zip(names, _HEADER.unpack(raw)))
        fast = fields if fields["sof"] == SOF else None
        try:
            ref = dict(FrameHeader.parse(raw))
            ref.pop("_io", None)
            ref["sof"] = ref["sof"][0]
        except ConstructError:
            ref = None
        assert fast == ref, raw.hex()
    for kind in FrameKind:
        for seq in (0, 1, 0xA5, 255):
            for n in (0, 1, 255, 256, MAX_PAYLOAD):
                payload = rng.randbytes(n)
                want = Frame.build({"body": {"value": {"kind": int(kind), "seq": seq, "payload": payload}}})
                assert encode_frame(kind, seq, payload) == want
                fields = {"version": 1, "kind": int(kind), "seq": seq, "payload_length": n}
                assert FrameHeader.build(fields) == compiled.build(fields) == want[:8]
                assert _HEADER.unpack(want[:8]) == (SOF, 1, kind, seq, n, n ^ 0xFFFF)


def test_tlv_split_agrees_with_envelope_schema():
    rng = random.Random(SEED + 2)
    payloads, _ = corpus(rng, per_type=2)
    accepted = rejected = 0
    for i in range(CASES):
        data = mutate(rng.choice(payloads), rng, payloads, is_frame=False)[:MAX_PAYLOAD]
        try:
            type_code, items = split_items(data)
            fast = (type_code, [(tag, value) for tag, _, value in items])
        except MessageError:
            fast = MessageError
        ref = _outcome(decode_reference, data)
        assert fast == ref, (i, data.hex())
        if fast is MessageError:
            rejected += 1
        else:
            accepted += 1
    assert accepted >= CASES // 5 and rejected >= CASES // 5, (accepted, rejected)


# ------------------------------------------------ generated message plans vs the codecs


class _Str(str):
    pass


class _Int(int):
    pass


def _walk_check(msg) -> None:
    """Field validation as a plain walk over the codecs' own check methods."""
    name = type(msg).__name__
    for spec in msg.FIELDS:
        value = getattr(msg, spec.name)
        if value is None:
            if spec.required:
                raise FieldError(f"{name}.{spec.name} is required")
            if not spec.nullable:
                raise FieldError(f"{name}.{spec.name} cannot be None (its default is not None)")
            continue
        if spec.repeated:
            if not isinstance(value, tuple):
                raise FieldError(f"{name}.{spec.name} must be a tuple")
            for item in value:
                spec.codec.check(f"{name}.{spec.name}[]", item)
        else:
            spec.codec.check(f"{name}.{spec.name}", value)
    msg.validate()


def _walk_encode(msg) -> bytes:
    parts = [msg.TYPE.to_bytes(2, "big")]
    for spec in msg.FIELDS:
        value = getattr(msg, spec.name)
        for item in (() if value is None else value if spec.repeated else (value,)):
            raw = spec.codec.encode(item)
            parts.append(bytes([spec.tag]) + len(raw).to_bytes(2, "big") + raw)
    return b"".join(parts)


def _walk_decode(payload: bytes):
    type_code, items = split_items(payload)
    cls = message_types().get(type_code)
    if cls is None:
        raise UnknownMessageType(type_code)
    values = {}
    for tag, _, raw in items:
        spec = cls.BY_TAG.get(tag)
        if spec is None:
            if tag & 0x80:
                continue
            raise UnknownMandatoryField(cls.__name__, tag)
        value = spec.codec.decode(raw)
        if spec.repeated:
            values[spec.name] = values.get(spec.name, ()) + (value,)
        elif spec.name in values:
            raise FieldError(f"{cls.__name__}.{spec.name} appears twice")
        else:
            values[spec.name] = value
    try:
        return cls(**values)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise FieldError(f"{cls.__name__}: {exc}") from None


def _result(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # compared by type and text
        return (type(exc), str(exc))


def test_generated_encode_and_decode_agree_with_the_codecs():
    rng = random.Random(SEED + 3)
    for cls in catalogue():
        for _ in range(20):
            msg = random_message(cls, rng)
            assert encode_message(msg) == _walk_encode(msg), cls.__name__
    payloads, _ = corpus(rng, per_type=2)
    for i in range(CASES):
        data = mutate(rng.choice(payloads), rng, payloads, is_frame=False)
        assert _result(decode_message, data) == _result(_walk_decode, data), (i, data.hex())


ODD_VALUES = [None, 0, 1, -1, 255, 256, 2**64, 10**15 + 1, True, False, 1.0, "", "A", "A" * 300, "é", "\ud800",
              "123456789012", _Str("ORDER-1"), _Int(5), b"", b"x" * 16, (), ("a",), ["a"], Outcome.APPROVED,
              Reason.NONE, Reason.OTHER, FrameKind.ACK, Stage.AUTHORISING]


def test_generated_checks_agree_with_the_codecs():
    """Valid and invalid values alike: the constructor accepts exactly what the codecs
    accept, and refuses with the codec's own error and text."""
    rng = random.Random(SEED + 4)
    for cls in catalogue():
        fields = dataclasses.fields(cls)
        for _ in range(150):
            kwargs = {f.name: getattr(random_message(cls, rng), f.name) for f in fields}
            for f in rng.sample(fields, k=min(len(fields), rng.randint(0, 2))):
                kwargs[f.name] = rng.choice(ODD_VALUES)
            reference = object.__new__(cls)
            for name, value in kwargs.items():
                object.__setattr__(reference, name, value)
            want = _result(_walk_check, reference)
            got = _result(cls, **kwargs)
            if isinstance(got, tuple):
                assert got == want, (cls.__name__, kwargs)
            else:
                assert want is None and got == reference, (cls.__name__, kwargs)
