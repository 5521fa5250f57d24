"""Fuzz: only firmware_protocol's typed errors ever come out of the parsers.

The Framer never raises at all (bad bytes become BadFrame or Garbage events);
decode_frame raises FrameError; decode_message raises MessageError subclasses. A
message that does decode is valid: it encodes again and round-trips.
"""

from __future__ import annotations

import collections
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_protocol import (
    MAX_FRAME,
    BadFrame,
    FrameError,
    FrameKind,
    Framer,
    Garbage,
    LinkFrame,
    Message,
    MessageError,
    ProtocolError,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
)

from tests.protocol.mutate import corpus, mutate, reframe
from tests.protocol.strategies import any_message

SEED = 20261201
CASES = 20_000


def _message(payload: bytes, stats: collections.Counter) -> Message | None:
    try:
        msg = decode_message(payload)
    except ProtocolError as exc:
        assert isinstance(exc, MessageError), type(exc)
        stats[type(exc).__name__] += 1
        return None
    stats["message"] += 1
    again = encode_message(msg)  # a decoded message is a valid message
    assert decode_message(again) == msg
    return msg


def _frame(data: bytes, stats: collections.Counter) -> LinkFrame | None:
    try:
        frame = decode_frame(data)
    except FrameError:
        stats["FrameError"] += 1
        return None
    stats["frame"] += 1
    assert encode_frame(frame.kind, frame.seq, frame.payload) == data
    return frame


def _stream(data: bytes, rng: random.Random, stats: collections.Counter) -> None:
    framer = Framer()
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 3, 8, 64, len(data)))
        framer.feed(data[pos:pos + step])
        pos += step
        while (ev := framer.pop()) is not None:
            stats[type(ev).__name__] += 1
            if isinstance(ev, LinkFrame):
                assert decode_frame(ev.raw) == ev
                if ev.kind is FrameKind.DATA:
                    _message(ev.payload, stats)
            else:
                assert isinstance(ev, (BadFrame, Garbage))
        assert framer.pending < MAX_FRAME


def _case(i: int, data: bytes, kind: str, rng: random.Random, stats: collections.Counter) -> None:
    try:
        if kind == "payload":
            _message(data, stats)
            _stream(reframe(data, rng), rng, stats)
        else:
            if (frame := _frame(data, stats)) is not None and frame.kind is FrameKind.DATA:
                _message(frame.payload, stats)
            _stream(data, rng, stats)
    except AssertionError:
        raise
    except ProtocolError as exc:  # only the calls above that promise a typed error may raise it
        pytest.fail(f"case {i} ({kind}): {type(exc).__name__} escaped where none is expected: {data.hex()}")
    except Exception as exc:
        pytest.fail(f"case {i} ({kind}): untyped {type(exc).__name__}: {exc} for {data.hex()}")


def test_seeded_fuzz_only_typed_errors():
    rng = random.Random(SEED)
    payloads, frames = corpus(rng)
    stats: collections.Counter = collections.Counter()
    for i in range(CASES):
        r = rng.random()
        if r < 0.45:
            kind, data = "payload", mutate(rng.choice(payloads), rng, payloads, is_frame=False)
        elif r < 0.9:
            kind, data = "frame", mutate(rng.choice(frames), rng, frames, is_frame=True)
        else:  # plain noise, half of it starting like a frame
            noise = rng.randbytes(rng.randrange(300))
            kind, data = rng.choice((("payload", noise), ("frame", bytes([0xA5, 1]) + noise)))
        _case(i, data, kind, rng, stats)
    # The corpus reaches every outcome; a fuzz that only ever hits one check proves little.
    for outcome in ("message", "FieldError", "MessageError", "UnknownMandatoryField", "UnknownMessageType",
                    "frame", "FrameError", "LinkFrame", "BadFrame", "Garbage"):
        assert stats[outcome] >= 50, (outcome, stats)



@given(data=st.binary(max_size=700))
@settings(max_examples=300, deadline=None)
def test_random_bytes_only_typed_errors(data):
    stats: collections.Counter = collections.Counter()
    rng = random.Random(len(data))
    _case(0, data, "payload", rng, stats)
    _case(0, data, "frame", rng, stats)
    _case(0, b"\xa5\x01" + data, "frame", rng, stats)


@given(msg=any_message(), seed=st.integers(0, 2**32 - 1), as_frame=st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
def test_mutated_messages_only_typed_errors(msg, seed, as_frame):
    rng = random.Random(seed)
    payload = encode_message(msg)
    pool = [payload, encode_frame(FrameKind.DATA, 1, payload)]
    data = mutate(pool[as_frame], rng, pool, is_frame=as_frame)
    _case(0, data, "frame" if as_frame else "payload", rng, collections.Counter())
