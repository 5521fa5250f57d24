"""A hostile terminal as a synchronous, seeded, in-process transport on a fake clock.

The ECR side's ``read``/``write`` drive it directly: no thread, no real time, so a fuzz
of tens of thousands of inputs runs in seconds and replays exactly from its seed.
Every request the driver sends gets one to four hostile inputs (garbage, truncated or
corrupted frames, frames with a wrong seq, oversized headers, answers of the wrong type,
for the wrong order or amount, stale Errors, Print floods, silence, dropped ACKs...) and
then, half the time, a correct answer. ``benign = True`` makes it a well-behaved terminal.
"""

from __future__ import annotations

import random

from firmware_protocol.native import frame as fr
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason
from firmware_protocol.native.tlv import encode

from posterm.families.native.link import Link, LinkConfig, MessageReceived
from posterm.testing.clock import FakeClock

MAX_PENDING = 1 << 20  # bytes queued towards the ECR (the harness's own bound)


class HostileLine:
    def __init__(self, seed: int, clock: FakeClock) -> None:
        self.rng = random.Random(seed)
        self.clock = clock
        self.link = Link(LinkConfig(max_events=1 << 16))
        self.pending = bytearray()
        self.seq = 0
        self.inputs = 0
        self.benign = False
        self.orders: dict[str, m.PayResult] = {}
        self.last_frame = b""

    # -- the transport API the driver uses ------------------------------------------------

    def read(self, max_bytes: int, timeout: float) -> bytes:
        if not self.pending:
            self.clock.now += max(timeout, 0.001)
            return b""
        n = self.rng.randint(1, max_bytes) if not self.benign and self.rng.random() < 0.3 else max_bytes
        data = bytes(self.pending[:n])
        del self.pending[:n]
        return data

    def write(self, data: bytes) -> None:
        self.link.receive_data(data, self.clock.now)
        acks = self.link.data_to_send()
        if self.benign or self.rng.random() > 0.05:  # sometimes the ACK is lost
            self._out(acks)
        while (ev := self.link.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                self._answer(ev.message)

    def close(self) -> None:
        pass

    # -- the terminal --------------------------------------------------------------------

    def _out(self, data: bytes) -> None:
        if len(self.pending) + len(data) <= MAX_PENDING:
            self.pending += data

    def _frame(self, msg: m.Message | bytes, seq: int | None = None) -> bytes:
        payload = msg if isinstance(msg, bytes) else encode(msg)
        if seq is None:
            seq, self.seq = self.seq, (self.seq + 1) & 0xFF
        raw = fr.encode_frame(fr.FrameKind.DATA, seq, payload)
        self.last_frame = raw
        return raw

    def _good(self, req: m.Message) -> m.Message | None:
        if isinstance(req, m.Hello):
            self.link.start_session()
            return m.HelloReply(protocol_version=1, capabilities=0, terminal_id="T0000009",
                                merchant_id="M100000001", firmware_version="hostile 1")
        if isinstance(req, m.StatusRequest):
            return m.Status(state=m.TerminalState.IDLE)
        if isinstance(req, m.PayRequest):
            res = self.orders.get(req.order_id) or m.PayResult(
                order_id=req.order_id, outcome=Outcome.APPROVED, amount_minor=req.amount_minor,
                currency=req.currency, trade_no="2026120100000001")
            if len(self.orders) < 10_000:
                self.orders[req.order_id] = res
            return res
        if isinstance(req, (m.Query, m.Cancel)):
            res = self.orders.get(req.order_id)
            if res is None:
                return m.PayResult(order_id=req.order_id, outcome=Outcome.DECLINED, amount_minor=0, currency="XXX",
                                   reason=Reason.ORDER_NOT_FOUND)
            if isinstance(req, m.Cancel):
                res = m.PayResult(order_id=res.order_id, outcome=Outcome.CANCELLED, amount_minor=res.amount_minor,
                                  currency=res.currency, refunded_minor=res.amount_minor)
            return res
        if isinstance(req, m.Refund):
            return m.RefundResult(order_id=req.order_id, refund_id=req.refund_id, outcome=Outcome.APPROVED,
                                  amount_minor=req.amount_minor, currency=req.currency,
                                  refunded_total_minor=req.amount_minor)
        if isinstance(req, m.Settle):
            return m.SettleReport(batch_no=1, totals=())
        if isinstance(req, (m.KeyStatusRequest, m.KeyLoad)):
            return m.KeyStatus(loaded=False)
        if isinstance(req, m.Abort):
            return m.Error(code=m.ErrorCode.UNEXPECTED, text="nothing in flight", in_reply_to=m.Abort.TYPE)
        return None

    def _answer(self, req: m.Message) -> None:
        good = self._good(req)
        if self.benign:
            if good is not None:
                self._out(self._frame(good))
            return
        for _ in range(self.rng.randint(1, 4)):
            self.inputs += 1
            self._out(self._hostile(req, good))
        if good is not None and self.rng.random() < 0.5:
            self._out(self._frame(good))

    def _hostile(self, req: m.Message, good: m.Message | None) -> bytes:
        rng = self.rng
        order_id = getattr(req, "order_id", None) or "X"
        kind = rng.randrange(14)
        if kind == 0:  # line noise, sometimes full of start bytes
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        if kind == 1:  # a truncated frame
            raw = self._frame(good or m.Status(state=m.TerminalState.IDLE))
            return raw[: rng.randint(1, len(raw) - 1)]
        if kind == 2:  # a corrupted frame (one to three bit flips)
            b = bytearray(self._frame(good or m.Status(state=m.TerminalState.IDLE)))
            for _ in range(rng.randint(1, 3)):
                bit = rng.randrange(len(b) * 8)
                b[bit // 8] ^= 1 << (bit % 8)
            return bytes(b)
        if kind == 3:  # a good frame with a wrong (random) seq
            return self._frame(good or m.Status(state=m.TerminalState.BUSY), seq=rng.randrange(256))
        if kind == 4:  # an answer of the wrong type
            return self._frame(rng.choice([
                m.Status(state=m.TerminalState.IDLE),
                m.RefundResult(order_id=order_id, refund_id="R" + str(rng.randrange(9)), outcome=Outcome.APPROVED,
                               amount_minor=rng.randrange(1, 10**6), currency="CNY"),
                m.SettleReport(batch_no=rng.randrange(1000), totals=()),
                m.KeyStatus(loaded=True),
                m.HelloReply(protocol_version=rng.randrange(1, 9), capabilities=rng.getrandbits(32),
                             terminal_id="T0000008", merchant_id="M100000002", firmware_version="?"),
                m.Progress(order_id=order_id, stage=rng.randrange(0, 12), text="..."),
            ]))
        if kind == 5:  # a PayResult that is a lie: other order, amount, currency, outcome
            return self._frame(m.PayResult(
                order_id=rng.choice([order_id, "OTHER-" + str(rng.randrange(99))]),
                outcome=rng.choice(list(Outcome)), amount_minor=rng.randrange(0, 10**7),
                currency=rng.choice(["CNY", "EUR", "XXX", "JPY"]), reason=rng.randrange(0, 40),
                trade_no=rng.choice([None, "1" * 20])))
        if kind == 6:  # an Error, stale or not
            return self._frame(m.Error(code=rng.randrange(1, 12), text="hostile",
                                       in_reply_to=rng.choice([None, rng.randrange(0x10000),
                                                               getattr(req, "TYPE", None)])))
        if kind == 7:  # a Print flood
            payload = encode(m.Print(order_id=order_id, lines=("#" * 64,) * rng.randint(1, 40)))
            return b"".join(self._frame(payload) for _ in range(rng.randint(1, 20)))
        if kind == 8:  # silence
            return b""
        if kind == 9:  # the last frame again (a duplicate)
            return self.last_frame
        if kind == 10:  # stray ACK / NAK
            return fr.encode_frame(rng.choice([fr.FrameKind.ACK, fr.FrameKind.NAK]), rng.randrange(256), b"")
        if kind == 11:  # a header announcing a huge payload, then nothing
            raw = bytearray(self._frame(b"\x00\x12"))
            return bytes(raw[:4]) + b"\xff\xff\x00\x00"
        if kind == 12:  # an undecodable payload in a good frame
            return self._frame(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        # a valid frame of a random ECR-side (request) message: not an answer
        return self._frame(rng.choice([m.StatusRequest(), m.Query(order_id=order_id), m.Abort(order_id=None)]))
