"""Seeded corpus and mutations for the fuzz and differential tests.

Mutations are what a serial line and a hostile peer do: flip bits, cut, insert,
delete, overwrite with start bytes, edit length fields (with and without fixing
the check field and the CRC, so the deeper checks are reached too), splice frames.
"""

from __future__ import annotations

import random
import struct

from firmware_protocol import FrameKind, encode_frame, encode_message, message_types
from firmware_protocol.native.frame import CRC_SIZE, HEADER_SIZE, MAX_PAYLOAD, SOF, crc16

from tests.protocol.strategies import catalogue, fixture_frames, random_message


def corpus(rng: random.Random, per_type: int = 3) -> tuple[list[bytes], list[bytes]]:
    """(payloads, frames): valid messages of every type plus the recorded fixture frames."""
    payloads = [encode_message(random_message(cls, rng)) for cls in catalogue() for _ in range(per_type)]
    recorded = fixture_frames()
    payloads += [f[HEADER_SIZE:-CRC_SIZE] for f in recorded if len(f) > HEADER_SIZE + CRC_SIZE]
    frames = [encode_frame(FrameKind.DATA, rng.randrange(256), p) for p in payloads]
    frames += [encode_frame(k, rng.randrange(256)) for k in (FrameKind.ACK, FrameKind.NAK)]
    frames += recorded
    assert {int.from_bytes(p[:2], "big") for p in payloads} >= set(message_types())
    return payloads, frames


def refresh(frame: bytes, rng: random.Random) -> bytes:
    """Make a mutated frame's header and CRC consistent again, sometimes only in part."""
    b = bytearray(frame)
    if len(b) < HEADER_SIZE:
        return bytes(b)
    r = rng.random()
    if r < 0.7:  # length and check from the real size
        n = max(0, len(b) - HEADER_SIZE - CRC_SIZE)
        struct.pack_into(">HH", b, 4, n & 0xFFFF, (n ^ 0xFFFF) & 0xFFFF)
    if r < 0.9 and len(b) >= HEADER_SIZE + CRC_SIZE:
        struct.pack_into(">H", b, len(b) - CRC_SIZE, crc16(bytes(b[:-CRC_SIZE])))
    return bytes(b)


def reframe(payload: bytes, rng: random.Random) -> bytes:
    """A valid frame around a (possibly mutated) payload, so the payload reaches the decoder."""
    return encode_frame(FrameKind.DATA, rng.randrange(256), payload[:MAX_PAYLOAD])


def _tlv_offsets(payload: bytes) -> list[int]:
    out, pos = [], 2
    while pos + 3 <= len(payload):
        out.append(pos)
        pos += 3 + int.from_bytes(payload[pos + 1:pos + 3], "big")
    return out


def mutate_once(data: bytes, rng: random.Random, pool: list[bytes], is_frame: bool) -> bytes:
    b = bytearray(data)
    n = len(b)
    op = rng.randrange(11)
    if op == 0 and n:  # flip 1..3 bits
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(n * 8)
            b[i // 8] ^= 1 << (i % 8)
    elif op == 1:  # truncate
        del b[rng.randrange(n + 1):]
    elif op == 2:  # insert random bytes or start bytes
        at = rng.randrange(n + 1)
        ins = rng.randbytes(rng.randint(1, 8)) if rng.random() < 0.6 else bytes([SOF]) * rng.randint(1, 3)
        b[at:at] = ins
    elif op == 3 and n:  # delete a range
        i = rng.randrange(n)
        del b[i:i + rng.randint(1, 8)]
    elif op == 4 and n:  # overwrite one byte with an edge value
        b[rng.randrange(n)] = rng.choice((0x00, 0xFF, SOF, 0x7F, 0x80, rng.randrange(256)))
    elif op == 5 and n:  # duplicate a slice
        i = rng.randrange(n)
        j = min(n, i + rng.randint(1, 16))
        b[j:j] = b[i:j]
    elif op == 6:  # splice with another corpus item
        other = rng.choice(pool)
        b = b[:rng.randrange(n + 1)] + other[rng.randrange(len(other) + 1):]
    elif op == 7 and is_frame and n >= HEADER_SIZE:  # frame length field edit
        length = rng.choice((0, 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xFFFF, rng.randrange(0x10000),
                             max(0, n - HEADER_SIZE - CRC_SIZE + rng.randint(-3, 3))))
        check = length ^ 0xFFFF if rng.random() < 0.8 else rng.randrange(0x10000)
        struct.pack_into(">HH", b, 4, length & 0xFFFF, check)
    elif op == 8 and is_frame and n >= HEADER_SIZE:  # version / kind / seq edit
        b[rng.choice((1, 2, 3))] = rng.choice((0, 1, 2, 3, 4, 0xFF, rng.randrange(256)))
    elif op == 9:  # TLV length edit (payload, or the payload inside a frame)
        base = HEADER_SIZE if is_frame else 0
        offsets = _tlv_offsets(bytes(b[base:]))
        if offsets:
            at = base + rng.choice(offsets) + 1
            if at + 2 <= len(b):
                old = int.from_bytes(b[at:at + 2], "big")
                new = rng.choice((0, (old + 1) & 0xFFFF, max(0, old - 1), 0xFFFF, rng.randrange(0x10000)))
                b[at:at + 2] = new.to_bytes(2, "big")
    elif op == 10 and not is_frame and n >= 2:  # message type edit
        b[0:2] = rng.choice((0, 1, 0x0100, 0x01FF, 0xFFFF, rng.randrange(0x10000))).to_bytes(2, "big")
    return bytes(b)


def mutate(data: bytes, rng: random.Random, pool: list[bytes], is_frame: bool) -> bytes:
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        data = mutate_once(data, rng, pool, is_frame)
    if is_frame and rng.random() < 0.5:
        data = refresh(data, rng)
    return data
