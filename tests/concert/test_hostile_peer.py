"""The Concert front and link against a hostile peer: garbage, floods, a peer that stops reading.
Only typed handling (never an exception), every buffer capped, and a good payment afterwards."""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest

from firmware_protocol.native import messages as m
from firmware_protocol.concert import ACK, ENQ, EOT, MAX_FRAME, NAK, STX, ETX, ConcertRequest, TxnType, frame
from firmware_protocol.native.messages import Outcome
from posterm.families.concert.ecr import ConcertTerminal
from posterm.families.concert.link import OUT_CAP, ConcertConfig, ConcertLink, MessageReceived
from posterm.families.concert.front import ConcertFront
from posterm.emulator.runner import EmulatedTerminal

CFG = ConcertConfig(enq_timeout=0.2, ack_timeout=0.3, frame_timeout=0.3, eot_timeout=0.4)
GOOD = ConcertRequest(amount_minor=1250, currency_numeric=156, txn_type=TxnType.DEBIT, private="F000000001")


def hostile(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:
        return bytes(rng.choice([STX, ENQ, ACK, NAK, EOT, ETX]) for _ in range(rng.randrange(1, 100)))
    if kind == 2:                                     # a good frame, then cut, flipped or doubled
        raw = bytearray(ConcertRequest(amount_minor=rng.randrange(0, 10**8), currency_numeric=rng.randrange(1, 1000),
                                       txn_type=rng.choice(list(TxnType)), private="Z%d" % rng.randrange(10**8)).encode())
        if rng.random() < 0.5:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes([ENQ]) + bytes(raw[:rng.randrange(1, len(raw) + 1)]) * rng.randrange(1, 3)
    if kind == 3:
        return bytes([STX]) + rng.randbytes(rng.randrange(0, MAX_FRAME + 64))    # no ETX: an endless frame
    if kind == 4:
        return frame(rng.randbytes(rng.randrange(0, 100)))                      # framed junk, right LRC
    if kind == 5:
        big = rng.random() < 0.03                                              # ENQ flood (8 KB at most)
        return bytes([ENQ]) * rng.randrange(1, 8192 if big else 64)
    if kind == 6:
        return bytes([ENQ]) + GOOD.encode() + bytes([EOT])                     # a real request
    return b""                                                                  # silence: time passes


def good_payment(front: ConcertFront, now: float) -> float:
    """A clean ECR pays through the front after the storm; returns the time."""
    ecr = ConcertLink("ecr", CFG)
    wire = ecr.send(GOOD, now)
    answered = None
    for _ in range(2000):
        now += 0.01
        front.receive_data(wire, now)
        front.tick(now)
        while (ev := front.next_event()) is not None:
            if isinstance(ev, MessageReceived) and isinstance(ev.message, m.PayRequest):
                front.send(m.PayResult(order_id=ev.message.order_id, outcome=Outcome.APPROVED,
                                       amount_minor=1250, currency="CNY"), now)
        back = front.data_to_send()
        ecr.receive_data(back, now)
        ecr.tick(now)
        wire = ecr.data_to_send()
        while (ev := ecr.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                answered = ev.message
        if answered is not None and ecr.idle and front._link.idle:
            assert answered.status.value == "0" and answered.private == "F000000001"
            return now
    raise AssertionError("the good payment did not go through after the hostile inputs")


@pytest.mark.slow
def test_seeded_fuzz_of_the_concert_front():
    rng = random.Random(20261201)
    front = ConcertFront("246810", CFG)
    now, inputs, deaf = 0.0, 0, False
    tracemalloc.start()
    try:
        for i in range(20_000):
            data = hostile(rng)
            inputs += 1
            now += rng.choice([0.0, 0.001, 0.05, 0.5])
            front.receive_data(data, now)        # anything but a typed event here is a crash
            front.tick(now)
            while (ev := front.next_event()) is not None:
                if isinstance(ev, MessageReceived):   # the firmware answers (busy), freeing the front
                    front.send(m.Error(code=m.ErrorCode.BUSY, text="fuzz"), now)
            if i % 500 == 0:
                deaf = not deaf                  # half the time the peer stops reading for a while
            if not deaf:
                front.data_to_send()
            link = front._link
            assert link._framer.pending <= MAX_FRAME
            assert len(link._out) <= OUT_CAP + 3 * 100       # control bytes capped; frames are few
            assert len(link._events) <= 4 and len(link._queue) <= 2
        front.data_to_send()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"
    print(f"concert fuzz: {inputs} inputs, 0 crashes, peak {peak // 1024} KiB, stats {front.stats}")
    good_payment(front, now + 10)


def test_flood_on_the_emulator_pty_then_a_payment(tmp_path):
    with EmulatedTerminal.start(home=tmp_path / "home", protocol="concert") as emu:
        fd = os.open(emu.port, os.O_RDWR | os.O_NOCTTY)
        try:
            rng = random.Random(7)
            os.write(fd, bytes(rng.choice([STX, ENQ, 0x41, 0xFF]) for _ in range(8192)))
        finally:
            os.close(fd)                          # and never reads the thousands of ACKs
        with ConcertTerminal.open(emu.port, journal=str(tmp_path / "j.db")) as term:
            assert term.pay(1250, "CNY", timeout=60).approved
        assert emu.error is None
