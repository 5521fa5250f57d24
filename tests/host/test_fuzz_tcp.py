"""Seeded fuzz of `posterm host serve`'s server, in process over loopback TCP.

Hostile inputs (garbage, bad lengths, truncated frames, undecodable and mutated messages,
bad MACs, replayed KSNs, half-open connections) in batches, one connection per batch:
the server survives (no connection ends in an unexpected error), its memory stays within
``MEMORY_BOUND`` (tracemalloc peak over the run, server and client together), and a good
authorisation succeeds afterwards.

    FUZZ_SEED=7 FUZZ_INPUTS=20000 python -m pytest tests/host/test_fuzz_tcp.py -s
"""

from __future__ import annotations

import os
import random
import socket
import tracemalloc

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.native.frame import CRC_SIZE, HEADER_SIZE, FrameKind, encode_frame
from firmware_protocol.native.tlv import encode as tlv_encode
from posterm.host.client import TcpHostClient
from posterm.host.server import ServerLimits, serve
from tests.protocol.mutate import mutate, reframe
from tests.protocol.strategies import random_message

from .conftest import CODE, terminal

SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
INPUTS = int(os.environ.get("FUZZ_INPUTS", "20000"))
BATCH = 250                      # inputs per connection
MEMORY_BOUND = 32 * 1024 * 1024  # bytes, tracemalloc peak (measured: about 6 MiB)
HOST_TYPES = [cls for cls in h.HOST_MESSAGES]


def _signed_frames(link, rng: random.Random, n: int) -> list[bytes]:
    """Frames of well-signed requests of a logged-on terminal (their KSNs then used up)."""
    out = []
    for i in range(n):
        msg = link.sign(h.HostQuery(terminal_id=link.terminal_id, order_id=f"FZ-{i}"))
        out.append(encode_frame(FrameKind.DATA, rng.randrange(256), tlv_encode(msg)))
    return out


def _bad_mac(frame: bytes, rng: random.Random) -> bytes:
    payload = bytearray(frame[HEADER_SIZE:-CRC_SIZE])
    payload[-1 - rng.randrange(h.MAC_SIZE)] ^= 1 << rng.randrange(8)   # the MAC item ends the payload
    return reframe(bytes(payload), rng)


def _inputs(rng: random.Random, pool: list[bytes], payloads: list[bytes], signed: list[bytes]):
    """(kind, bytes) forever, from the seeded ``rng``."""
    while True:
        r = rng.random()
        if r < 0.15:
            yield "garbage", rng.randbytes(rng.randint(1, 64))
        elif r < 0.40:
            yield "mutated frame", mutate(rng.choice(pool), rng, pool, True)
        elif r < 0.60:
            yield "mutated message", reframe(mutate(rng.choice(payloads), rng, payloads, False), rng)
        elif r < 0.75:
            yield "random message, bad MAC", rng.choice(pool)
        elif r < 0.85:
            yield "signed, MAC flipped", _bad_mac(rng.choice(signed), rng)
        elif r < 0.90:
            yield "replayed KSN", rng.choice(signed)
        elif r < 0.97:
            f = rng.choice(pool)
            yield "truncated", f[:rng.randrange(1, len(f))]
        else:
            yield "bad length", rng.choice(pool)[:HEADER_SIZE - 4] + rng.randbytes(4) + rng.randbytes(8)


def _connect(address: str) -> socket.socket:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["sqlite"])   # the store does not matter here: SQLite only, to keep the PostgreSQL run short
def test_host_server_survives_hostile_input_and_still_authorises(host, capsys):
    rng = random.Random(SEED)
    payloads = [tlv_encode(random_message(cls, rng)) for cls in HOST_TYPES for _ in range(20)]
    pool = [encode_frame(FrameKind.DATA, rng.randrange(256), p) for p in payloads]
    tracemalloc.start()
    limits = ServerLimits(max_connections=32, max_pending=8, logon_deadline=30.0, idle_timeout=30.0)
    with serve(host, limits=limits) as server:
        client = TcpHostClient(server.address)
        link = terminal(host, client=client)
        signed = _signed_frames(link, rng, 200)
        gen = _inputs(rng, pool, payloads, signed)
        kinds: dict[str, int] = {}
        half_open: list[socket.socket] = []
        sent = 0
        while sent < INPUTS:
            batch = []
            for _ in range(min(BATCH, INPUTS - sent)):
                kind, data = next(gen)
                kinds[kind] = kinds.get(kind, 0) + 1
                batch.append(data)
            sent += len(batch)
            if rng.random() < 0.2:
                # Half-open: a partial frame, then silence. Kept open; the pending cap evicts it.
                s = _connect(server.address)
                s.sendall(rng.choice(pool)[:rng.randrange(1, HEADER_SIZE + 4)])
                half_open.append(s)
                sent += 1
            s = _connect(server.address)
            s.sendall(b"".join(batch))
            s.shutdown(socket.SHUT_WR)            # then read until the server has handled it all
            while s.recv(65536):
                pass
            s.close()
        kinds["half-open connections"] = len(half_open)
        answered = link.request(h.AuthRequest(terminal_id="T0000001", order_id="AFTER-FUZZ", amount_minor=100,
                                              currency="CNY", payment_code=CODE[1]), 10.0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        for s in half_open:
            s.close()
        client.close()
        errors, rejected = server.errors, server.rejected
    with capsys.disabled():
        print(f"\nhost TCP fuzz: seed {SEED}, {sent} inputs {kinds}, {rejected} frames rejected undecodable, "
              f"{errors} crashes, tracemalloc peak {peak / 2 ** 20:.1f} MiB (bound {MEMORY_BOUND / 2 ** 20:.0f})")
    assert sent >= 20000 or INPUTS < 20000
    assert errors == 0
    assert peak < MEMORY_BOUND
    assert answered.status is h.HostStatus.APPROVED
    assert host.check_books() == []
