"""A hostile native-family ECR, seeded: garbage, broken frames, floods, false starts, disconnects and
out-of-state messages against an emulated terminal's pty or TCP port.

    ecr = HostileEcr(port, seed=7)
    ecr.run(20_000)          # inputs; ecr.counts says how many of each kind went out

Used by tests/emulator/test_fuzz.py; the same seed replays the same inputs.
"""

from __future__ import annotations

import os
import random
import socket
import tty
from collections import Counter

from firmware_protocol.native import frame as fr
from firmware_protocol.native import messages as m
from firmware_protocol.native.tlv import encode

# Valid messages the terminal must take in any state: requests that cannot charge or lock
# anything (no PayRequest, no operator password), and messages only a terminal sends.
_MESSAGES = [
    m.StatusRequest(), m.KeyStatusRequest(), m.Abort(), m.Abort(order_id="NOPE-1"), m.Query(order_id="NOPE-2"),
    m.Cancel(order_id="NOPE-3"), m.Hello(protocol_version=1),
    m.Status(state=m.TerminalState.IDLE), m.Error(code=m.ErrorCode.BUSY, text="x"),
    m.Progress(order_id="P-1", stage=m.Stage.AUTHORISING, text="hi"),
    m.PayResult(order_id="R-1", outcome=m.Outcome.APPROVED, amount_minor=1, currency="CNY"),
]
_PAYLOADS = [encode(msg) for msg in _MESSAGES]


class HostileEcr:
    """Writes hostile inputs to ``port`` (a pty path or ``tcp://HOST:PORT``), draining what
    comes back without looking at it."""

    KINDS = ("garbage", "bad_crc", "bad_length", "any_seq", "false_start", "flood", "undecodable",
             "out_of_state", "split", "disconnect")
    WEIGHTS = (20, 12, 10, 12, 10, 1, 10, 20, 5, 0.3)

    def __init__(self, port: str, seed: int = 0) -> None:
        self.port = port
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.bytes_written = 0
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._open()

    def _open(self) -> None:
        if self.port.startswith("tcp://"):
            host, _, num = self.port[len("tcp://"):].rpartition(":")
            self._sock = socket.create_connection((host, int(num)), timeout=5)
            self._sock.setblocking(False)
        else:
            self._fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(self._fd)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self._sock.send(view) if self._sock is not None else os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                self._drain(wait=0.05)
                continue
            except OSError:          # the terminal dropped us (a stall): reconnect
                self.close()
                self._open()
                return
            view = view[n:]
            self.bytes_written += n

    def _drain(self, wait: float = 0.0) -> None:
        import select

        fd = self._sock.fileno() if self._sock is not None else self._fd
        while True:
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return
            try:
                data = self._sock.recv(65536) if self._sock is not None else os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                self._open()
                return
            if not data:                      # TCP: the terminal closed this connection
                self.close()
                self._open()
                return
            wait = 0.0

    def one(self) -> str:
        """Write one hostile input; returns its kind."""
        rng = self.rng
        kind = rng.choices(self.KINDS, self.WEIGHTS)[0]
        seq = rng.randrange(256)
        payload = rng.choice(_PAYLOADS)
        if kind == "garbage":
            data = rng.randbytes(rng.randint(1, 64))
        elif kind == "bad_crc":
            good = fr.encode_frame(fr.FrameKind.DATA, seq, payload)
            data = good[:-2] + bytes([good[-2] ^ 0xFF, good[-1]])
        elif kind == "bad_length":
            good = bytearray(fr.encode_frame(fr.FrameKind.DATA, seq, payload))
            good[4:6] = rng.randrange(65536).to_bytes(2, "big")
            data = bytes(good)
        elif kind == "any_seq":
            data = fr.encode_frame(rng.choice(list(fr.FrameKind)), seq, payload if rng.random() < 0.7 else b"")
        elif kind == "false_start":
            n = rng.randrange(fr.MAX_PAYLOAD + 1)
            head = bytes([fr.SOF, 1, 1, seq]) + n.to_bytes(2, "big") + (n ^ 0xFFFF).to_bytes(2, "big")
            data = head + rng.randbytes(rng.randint(0, 32))
        elif kind == "flood":
            data = (b"\xa5" if rng.random() < 0.5 else rng.randbytes(1)) * rng.randint(1024, 8192)
        elif kind == "undecodable":
            data = fr.encode_frame(fr.FrameKind.DATA, seq, rng.randbytes(rng.randint(0, 48)))
        elif kind == "out_of_state":
            data = fr.encode_frame(fr.FrameKind.DATA, seq, payload)
        elif kind == "split":
            good = fr.encode_frame(fr.FrameKind.DATA, seq, payload)
            cut = rng.randint(1, len(good) - 1)
            self._write(good[:cut])
            self._drain()
            data = good[cut:]
        else:  # disconnect: hang up mid-frame (half a frame left behind), come back
            self._write(fr.encode_frame(fr.FrameKind.DATA, seq, payload)[:5])
            self.close()
            self._open()
            data = b""
        if data:
            self._write(data)
        self._drain()
        self.counts[kind] += 1
        return kind

    def settle(self, timeout: float = 30.0) -> bool:
        """End the fuzz like a well-behaved ECR: a Hello (the terminal drops what it still
        had for the fuzz), then a Query, reading (and ACKing) until its answer comes, so
        nothing stale is left for the next ECR. True if it did within ``timeout``."""
        import select
        import time

        from firmware_protocol.native.tlv import decode

        hello = fr.encode_frame(fr.FrameKind.DATA, 0, encode(m.Hello(protocol_version=1)))
        # Answers come in order: once the answer to this query (an order id used nowhere
        # else) is in, nothing stale from the fuzz is left on the line.
        query = fr.encode_frame(fr.FrameKind.DATA, 1, encode(m.Query(order_id="FUZZ-SETTLE")))
        greeted = False
        framer = fr.Framer()
        deadline = time.monotonic() + timeout
        next_hello = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_hello:       # the link's own retransmission rule
                self._write(query if greeted else hello)
                next_hello = time.monotonic() + 0.5
            fd = self._sock.fileno() if self._sock is not None else self._fd
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = self._sock.recv(65536) if self._sock is not None else os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            framer.feed(data)
            while (item := framer.pop()) is not None:
                if isinstance(item, fr.LinkFrame) and item.kind is fr.FrameKind.DATA:
                    self._write(fr.encode_frame(fr.FrameKind.ACK, item.seq))
                    try:
                        msg = decode(item.payload)
                    except Exception:  # noqa: BLE001, S112 - an undecodable answer is stale fuzz
                        continue
                    if isinstance(msg, m.HelloReply) and not greeted:
                        greeted, next_hello = True, 0.0
                    elif greeted and getattr(msg, "order_id", None) == "FUZZ-SETTLE" and not isinstance(msg, m.Progress):
                        return True
        return False

    def run(self, n: int) -> Counter[str]:
        for _ in range(n):
            self.one()
        return self.counts
