"""Concert frames and the sans-IO link: our codec against pyTeliumManager's, LRC, fuzz, the handshake."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_protocol.concert import (
    ACK, ENQ, EOT, NAK, STX, ETX,
    AnswerFlag, BadLrc, ConcertAnswer, ConcertFrameError, ConcertFramer, ConcertGarbage, ConcertRequest,
    MAX_FRAME, Status, TxnType, frame, lrc,
)
from firmware_protocol.errors import ProtocolError
from posterm.families.concert.link import ConcertConfig, ConcertLink, Delivered, FrameRejected, MessageReceived, SendFailed

telium = pytest.importorskip("telium")  # the independent implementation (test extra)
from telium.payment import TeliumAsk, TeliumResponse  # noqa: E402

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10)
requests = st.builds(
    ConcertRequest, amount_minor=st.integers(0, 99_999_999), currency_numeric=st.integers(1, 999),
    pos_number=st.integers(0, 99), txn_type=st.sampled_from(list(TxnType)),
    answer_flag=st.sampled_from(list(AnswerFlag)), mode=st.sampled_from(list("01C2356789AOUF")),
    private=printable.map(str.rstrip), delay=st.sampled_from(["A010", "A011"]),
    authorization=st.sampled_from(["B010", "B011"]))
answers = st.builds(
    ConcertAnswer, status=st.sampled_from(list(Status)), amount_minor=st.integers(0, 99_999_999),
    currency_numeric=st.integers(1, 999), pos_number=st.integers(0, 99), mode=st.sampled_from(list("01C")),
    report=st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=55)
                     .map(str.rstrip)),
    private=printable.map(str.rstrip))


@given(requests)
def test_request_round_trip(req):
    raw = req.encode()
    assert len(raw) == 37 and raw[0] == STX and raw[-2] == ETX and raw[-1] == lrc(raw[1:-1])
    assert ConcertRequest.decode(raw) == req


@given(answers)
def test_answer_round_trip(ans):
    raw = ans.encode()
    assert len(raw) == (83 if ans.report is not None else 28)
    assert ConcertAnswer.decode(raw) == ans


@pytest.mark.parametrize("amount, mode, currency", [(1.0, "debit", "EUR"), (12.5, "credit", "CNY"),
                                                    (99999.99, "refund", "USD"), (3.07, "debit", "CNY")])
def test_requests_are_byte_identical_to_pyteliummanager(amount, mode, currency):
    ask = TeliumAsk.new_payment(amount, payment_mode=mode, target_currency=currency, checkout_unique_id="7")
    theirs = ask.encode().encode("ascii")
    minor = int(round(amount * 100))
    ours = ConcertRequest(amount_minor=minor, currency_numeric={"EUR": 978, "CNY": 156, "USD": 840}[currency],
                          pos_number=7, txn_type={"debit": "0", "credit": "1", "refund": "2"}[mode]).encode()
    assert ours == theirs
    assert ConcertRequest.decode(theirs).amount_minor == minor


@pytest.mark.parametrize("report", ["", "**************0001", None])
def test_answers_decode_both_ways_with_pyteliummanager(report):
    ours = ConcertAnswer(Status.ACCEPTED, 1250, 156, pos_number=1, report=report, private="PABC123456")
    theirs = TeliumResponse.decode(ours.encode())
    assert (theirs.transaction_result, theirs.amount, theirs.private, theirs.currency_numeric) == (
        0, 12.5, "PABC123456", "156")
    if report is not None:
        their_frame = TeliumResponse("01", 7, 12.5, "1", report.ljust(55), "156", "PABC123456").encode()
        back = ConcertAnswer.decode(their_frame.encode("ascii"))
        assert (back.status, back.amount_minor, back.report, back.private) == (Status.REFUSED, 1250, report,
                                                                                "PABC123456")


def test_bad_lrc_wrong_length_and_bad_fields_are_typed_errors():
    raw = bytearray(ConcertRequest(amount_minor=100, currency_numeric=978).encode())
    raw[-1] ^= 0x01
    with pytest.raises(BadLrc):
        ConcertRequest.decode(bytes(raw))
    with pytest.raises(ConcertFrameError, match="34"):
        ConcertRequest.decode(frame(b"0100000100"))
    with pytest.raises(ConcertFrameError):
        ConcertRequest.decode(frame(b"01000001X0110978" + b" " * 10 + b"A010B010"))   # amount not digits
    with pytest.raises(ConcertFrameError, match="28 or 83"):
        ConcertAnswer.decode(frame(b"0"))


def test_fuzz_only_typed_errors_escape():
    rng = random.Random(9)
    seeds = [ConcertRequest(amount_minor=1234, currency_numeric=156, private="P1").encode(),
             ConcertAnswer(Status.ACCEPTED, 1234, 156, report="x").encode(),
             ConcertAnswer(Status.REFUSED, 1, 978, report=None).encode()]
    for i in range(20_000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            pos = rng.randrange(len(raw)) if raw else 0
            if op == 0 and raw:
                raw[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                raw.insert(pos, rng.randrange(256))
            elif op == 2 and raw:
                del raw[pos]
            else:
                raw = raw[:pos]
        if i % 4 == 0:
            raw = bytearray(rng.randbytes(rng.randrange(0, 90)))
        data = bytes(raw)
        for decode in (ConcertRequest.decode, ConcertAnswer.decode):
            try:
                decode(data)
            except ProtocolError:
                pass
        items = _items(ConcertFramer(), data)
        assert all(isinstance(x, (int, bytes, ConcertGarbage)) for x in items)


def _items(framer, data):
    framer.feed(data)
    return list(iter(framer.pop, None))


def test_framer_any_split_and_garbage_and_cap():
    raw = ConcertRequest(amount_minor=5, currency_numeric=156).encode()
    stream = b"\xff\x00" + bytes([ENQ]) + raw + bytes([EOT])
    for cut in range(len(stream) + 1):
        f = ConcertFramer()
        items = _items(f, stream[:cut]) + _items(f, stream[cut:])
        assert [x for x in items if not isinstance(x, ConcertGarbage)] == [ENQ, raw, EOT]
    f = ConcertFramer()
    items = _items(f, bytes([STX]) + b"A" * (MAX_FRAME + 10))
    assert f.pending == 0 and isinstance(items[-1], ConcertGarbage)   # dropped at once, not held


# ------------------------------------------------------------------ the link


class Wire:
    """Two ConcertLinks joined by a wire that can drop or corrupt what one side writes."""

    def __init__(self, ecr_cfg=None, term_cfg=None):
        self.ecr, self.term = ConcertLink("ecr", ecr_cfg), ConcertLink("terminal", term_cfg)
        self.now = 0.0
        self.mangle = {"ecr": None, "terminal": None}

    def run(self, seconds=30.0, step=0.05):
        end = self.now + seconds
        while self.now < end:
            for src, dst, name in ((self.ecr, self.term, "ecr"), (self.term, self.ecr, "terminal")):
                data = src.data_to_send()
                if data and self.mangle[name]:
                    data = self.mangle[name](data)
                if data:
                    dst.receive_data(data, self.now)
            self.now += step
            self.ecr.tick(self.now)
            self.term.tick(self.now)

    @staticmethod
    def events(link):
        out = []
        while (e := link.next_event()) is not None:
            out.append(e)
        return out


REQ = ConcertRequest(amount_minor=1250, currency_numeric=156, private="P000000001")


def test_handshake_delivers_once_both_ways():
    w = Wire()
    w.ecr.enqueue(REQ, 0.0)
    w.run(1)
    assert [e.message for e in w.events(w.term) if isinstance(e, MessageReceived)] == [REQ]
    assert any(isinstance(e, Delivered) for e in w.events(w.ecr))
    ans = ConcertAnswer(Status.ACCEPTED, 1250, 156, private="P000000001")
    w.term.enqueue(ans, w.now)
    w.run(1)
    assert [e.message for e in w.events(w.ecr) if isinstance(e, MessageReceived)] == [ans]
    assert w.ecr.idle and w.term.idle


def test_bad_lrc_is_naked_and_the_frame_sent_again():
    w = Wire()
    hits = {"n": 0}

    def corrupt_first_frame(data):
        if STX in data and hits["n"] == 0:
            hits["n"] += 1
            data = bytearray(data)
            data[-1] ^= 0x01      # the LRC
        return bytes(data)

    w.mangle["ecr"] = corrupt_first_frame
    w.ecr.enqueue(REQ, 0.0)
    w.run(2)
    term_events = w.events(w.term)
    assert any(isinstance(e, FrameRejected) for e in term_events)
    assert [e.message for e in term_events if isinstance(e, MessageReceived)] == [REQ]
    assert w.term.stats["naks_sent"] == 1 and w.ecr.stats["retransmitted"] == 1


def test_lost_ack_frame_delivered_once():
    w = Wire()
    dropped = {"n": 0}

    def drop_first_frame_ack(data):
        # the terminal's second ACK (the one for the frame) is lost once
        if data == bytes([ACK]):
            dropped["n"] += 1
            if dropped["n"] == 2:
                return b""
        return data

    w.mangle["terminal"] = drop_first_frame_ack
    w.ecr.enqueue(REQ, 0.0)
    w.run(8)
    assert [e.message for e in w.events(w.term) if isinstance(e, MessageReceived)] == [REQ]
    assert w.term.stats["duplicates"] == 1
    assert any(isinstance(e, Delivered) for e in w.events(w.ecr))


def test_terminal_that_never_answers_fails_after_three_enqs():
    link = ConcertLink("ecr")
    out = link.send(REQ, 0.0)
    assert out == bytes([ENQ])
    t, written = 0.0, [out]
    while t < 10:
        t += 0.1
        link.tick(t)
        written.append(link.data_to_send())
    assert b"".join(written) == bytes([ENQ]) * 3
    failed = [e for e in Wire.events(link) if isinstance(e, SendFailed)]
    assert len(failed) == 1 and failed[0].cause == "no ACK to ENQ" and failed[0].attempts == 3
    assert link.idle


def test_missing_ack_after_frame_retries_then_fails():
    link = ConcertLink("ecr", ConcertConfig(ack_timeout=1.0))
    link.send(REQ, 0.0)
    link.receive_data(bytes([ACK]), 0.1)
    frames = [link.data_to_send()]
    for i in range(1, 40):
        link.tick(0.1 + i * 0.1)
        frames.append(link.data_to_send())
    sent = b"".join(frames)
    assert sent.count(REQ.encode()) == 3 and sent.endswith(bytes([EOT]))
    assert any(isinstance(e, SendFailed) and e.cause == "frame not ACKed" for e in Wire.events(link))


def test_nak_three_times_gives_up():
    link = ConcertLink("ecr")
    link.send(REQ, 0.0)
    link.receive_data(bytes([ACK]), 0.0)
    for _ in range(3):
        link.receive_data(bytes([NAK]), 0.0)
    assert link.data_to_send().count(REQ.encode()) == 3
    assert any(isinstance(e, SendFailed) for e in Wire.events(link))


def test_enq_collision_the_ecr_gives_way():
    w = Wire()
    ans = ConcertAnswer(Status.ACCEPTED, 1, 156)
    w.ecr.enqueue(REQ, 0.0)
    w.term.enqueue(ans, 0.0)       # both ENQ at once
    w.run(5)
    assert [e.message for e in w.events(w.ecr) if isinstance(e, MessageReceived)] == [ans]
    assert [e.message for e in w.events(w.term) if isinstance(e, MessageReceived)] == [REQ]


def _exchange(a, b, now, rounds=400, dt=0.05, on_b=None):
    """Move bytes both ways on a fake clock; ``on_b(event)`` sees b's events."""
    for _ in range(rounds):
        now += dt
        b.receive_data(a.data_to_send(), now)
        b.tick(now)
        while (ev := b.next_event()) is not None:
            if on_b:
                on_b(ev)
        a.receive_data(b.data_to_send(), now)
        a.tick(now)
    return now


def test_ecr_link_acks_only_what_the_caller_accepts():
    cfg = ConcertConfig(enq_timeout=0.2, ack_timeout=0.3, frame_timeout=0.3, eot_timeout=0.4)
    ans = ConcertAnswer(Status.ACCEPTED, 100, 978, 1, "1", None, "P1")
    for decision in ("accept", "refuse", "undecided"):
        term, ecr = ConcertLink("terminal", cfg), ConcertLink("ecr", cfg, confirm_frames=True)
        term.send(ans, 0.0)
        seen = []

        def on_ecr(ev, seen=seen, decision=decision, ecr=ecr):
            if isinstance(ev, MessageReceived):
                seen.append(ev.message)
                if decision == "accept":
                    ecr.accept()
                elif decision == "refuse":
                    ecr.refuse()
        _exchange(term, ecr, 0.0, on_b=on_ecr)
        events = []
        while (ev := term.next_event()) is not None:
            events.append(ev)
        delivered = [e for e in events if isinstance(e, Delivered)]
        failed = [e for e in events if isinstance(e, SendFailed)]
        if decision == "accept":
            assert delivered and not failed and seen == [ans]
        else:   # refused or never decided: never ACKed, so the sender knows it was not delivered
            assert failed and not delivered and ecr.stats["received"] == 0, decision
        assert term.idle and ecr.idle


def test_front_reports_undelivered_answers_to_the_firmware():
    from firmware_protocol.native import messages as msgs
    from posterm.families.concert.front import ConcertFront
    from posterm.families.events import ResultDelivery
    from posterm.families.native.link import MessageReceived

    cfg = ConcertConfig(enq_timeout=0.2, ack_timeout=0.3, frame_timeout=0.3, eot_timeout=0.4)
    front = ConcertFront("246810", cfg)
    req = ConcertRequest(amount_minor=500, currency_numeric=156, private="Q000000001")
    front.receive_data(bytes([ENQ]), 0.0)
    front.receive_data(req.encode() + bytes([EOT]), 0.0)
    ev = front.next_event()
    assert isinstance(ev, MessageReceived)
    front.send(msgs.PayResult(order_id="Q000000001", outcome=msgs.Outcome.APPROVED, amount_minor=500,
                              currency="CNY"), 0.1)
    now = 0.1
    out = []
    for _ in range(100):                # the ECR is gone: nobody ACKs the ENQ
        now += 0.1
        front.tick(now)
        while (e := front.next_event()) is not None:
            out.append(e)
    assert out == [ResultDelivery("Q000000001", False, "no ACK to ENQ")]
