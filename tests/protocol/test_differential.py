"""The fast paths against the interpreted reference schemas, on a mutated corpus.

frame.py builds and parses frames on a fast path (``_HEADER``, a ``struct`` of the
fixed-size ``FrameHeader``, plus ``binascii.crc_hqx``) and keeps ``Frame``
(interpreted construct: RawCopy + Checksum + Terminated) as the reference;
tlv.py splits payloads with a bounded loop and keeps ``Envelope``. A fast path
takes shortcuts on corrupt input (construct's compiled code did, see PITFALLS.md),
so each is held to its reference's accept/reject decision and fields.
"""

from __future__ import annotations

import random

from construct import ConstructError

from firmware_protocol import FrameError, FrameKind, Framer, LinkFrame, MessageError, decode_frame, encode_frame
from firmware_protocol.frame import _HEADER, MAX_PAYLOAD, SOF, Frame, FrameHeader, decode_frame_reference
from firmware_protocol.tlv import decode_reference, split_items

from tests.protocol.mutate import corpus, mutate

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
