"""The plug-in promise: a family from another package (the toy, tests/plugin/toyfam),
registered only through the ``posterm.protocols`` entry point, is paid through, emulated,
recorded, shown, replayed and tapped by an unchanged posterm.

Tests marked xfail(strict) need another issue-15 slice merged first (the reason names it):
recording is not family-agnostic on this branch yet. Strict, so the merge that makes them
pass must also drop the mark.
"""

from __future__ import annotations

import importlib
import json
import random

import pytest

from .conftest import posterm

CODE_OK = "289900000000000001"      # the host's test codes: approved
CODE_NO = "289900000000000007"      # ... always rejected by risk control


@pytest.fixture
def toy(registered):
    """The toy's modules, imported as posterm imports them (``toyfam``)."""
    registered()

    class Mods:
        wire = importlib.import_module("toyfam.wire")
        link = importlib.import_module("toyfam.link")
        front = importlib.import_module("toyfam.front")
        record = importlib.import_module("toyfam.record")
        ecr = importlib.import_module("toyfam.ecr")
    return Mods


def _pay(env, port, code=CODE_OK, *extra):
    return posterm(env, "pay", "--protocol", "toy", "--port", port, "--amount", "12.34", "--currency", "CNY",
                   "--payment-code", code, "--json", *extra)


# ------------------------------------------------------------------ pay against emulate (a pty)


def test_pay_against_the_emulated_toy_terminal(serve, toy_env):
    emu = serve("emulate", "--protocol", "toy")
    ok = _pay(toy_env, emu.port)
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["result"] == "approved" and result["amount_minor"] == 1234 and result["code_last4"] == "0001"
    no = _pay(toy_env, emu.port, CODE_NO)
    assert no.returncode == 1 and json.loads(no.stdout)["result"] == "declined", no.stderr
    env = {**toy_env, "POSTERM_PROTOCOL": "toy"}          # the family from the environment, as for the built-ins
    again = posterm(env, "pay", "--port", emu.port, "--amount-minor", "500", "--payment-code", CODE_OK)
    assert again.returncode == 0 and again.stdout.startswith("approved: order TY"), again.stderr
    query = posterm(toy_env, "query", "--protocol", "toy", "--port", emu.port, "TY1")
    assert query.returncode == 2 and query.stderr.strip() == "posterm: error: the toy protocol has no query message"
    recover = posterm(toy_env, "recover", "--protocol", "toy", "--port", emu.port)
    assert recover.returncode == 0 and "nothing to recover" in recover.stdout, recover.stderr
    code, _, err = emu.stop()
    assert code == 0, err
    assert CODE_OK not in err and CODE_NO not in err


# ------------------------------------------------------------------ recording, show, replay, tap


def _frames(path):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return lines[0], [r for r in lines if r.get("type") == "frame"]


def test_pay_with_record_then_show(serve, toy_env, tmp_path):
    emu = serve("emulate", "--protocol", "toy")
    rec = tmp_path / "pay.jsonl"
    ok = _pay(toy_env, emu.port, CODE_OK, "--record", str(rec))
    assert ok.returncode == 0, ok.stderr
    header, frames = _frames(rec)
    assert header["protocol"] == "toy"
    assert [f["kind"] for f in frames if not f.get("retransmit")] == ["hello", "info", "pay", "result"]
    assert CODE_OK not in rec.read_text() and CODE_OK.encode().hex().upper() not in rec.read_text()
    pay = next(f for f in frames if f["kind"] == "pay")
    assert pay["msg"]["code"].endswith("0001") and pay["redacted"] == ["code"]
    shown = posterm(toy_env, "show", str(rec))
    assert shown.returncode == 0, shown.stderr
    assert "protocol toy" in shown.stdout.splitlines()[0] and "result" in shown.stdout


def test_emulate_records_each_session(serve, toy_env, tmp_path):
    emu = serve("emulate", "--protocol", "toy", "--record", str(tmp_path / "sessions"))
    assert _pay(toy_env, emu.port).returncode == 0
    emu.stop()
    (path,) = (tmp_path / "sessions").glob("*.jsonl")
    header, frames = _frames(path)
    assert header["protocol"] == "toy" and header["side"] == "terminal"
    assert {"pay", "result"} <= {f["kind"] for f in frames}
    assert CODE_OK not in path.read_text()


def test_replay_as_terminal_answers_a_live_toy_ecr(serve, toy_env, tmp_path):
    emu = serve("emulate", "--protocol", "toy")
    rec = tmp_path / "pay.jsonl"
    assert _pay(toy_env, emu.port, CODE_OK, "--record", str(rec)).returncode == 0
    emu.stop()
    player = serve("replay", str(rec), "--as", "terminal", "--fast", "--timeout", "30")
    ok = _pay(toy_env, player.port)
    assert ok.returncode == 0 and json.loads(ok.stdout)["result"] == "approved", ok.stderr
    code, out, err = player.wait()
    assert code == 0 and "match:" in out, err


def test_replay_as_ecr_against_a_live_emulator(serve, toy_env, tmp_path):
    emu = serve("emulate", "--protocol", "toy")
    rec = tmp_path / "pay.jsonl"
    assert _pay(toy_env, emu.port, CODE_OK, "--record", str(rec)).returncode == 0
    again = posterm(toy_env, "replay", str(rec), "--as", "ecr", "--port", emu.port, "--fast",
                    "--secret", f"code={CODE_OK}")
    assert again.returncode == 0 and "match:" in again.stdout, again.stdout + again.stderr


def test_tap_records_a_toy_line(serve, toy_env, tmp_path):
    emu = serve("emulate", "--protocol", "toy")
    rec = tmp_path / "tap.jsonl"
    tap = serve("tap", "--protocol", "toy", "--ecr", "pty://", "--terminal", emu.port, "--record", str(rec))
    ok = _pay(toy_env, tap.port)
    assert ok.returncode == 0, ok.stderr
    tap.stop()
    header, frames = _frames(rec)
    assert header["protocol"] == "toy" and header["side"] == "tap"
    assert [f["kind"] for f in frames if not f.get("retransmit")] == ["hello", "info", "pay", "result"]
    assert CODE_OK not in rec.read_text()


# ------------------------------------------------------------------ the toy's parts, as posterm declares them


def test_the_parts_have_the_declared_shapes(toy):
    from posterm.families import interfaces as i

    assert isinstance(toy.link.ToyLink(), i.Link)
    assert isinstance(toy.front.ToyFront(), i.TerminalFront)
    assert isinstance(toy.record.ToyRecordObserver(), i.RecordObserver)
    assert isinstance(toy.wire.Framer(), i.Framer)

    class Port:
        def read(self, n, timeout):
            return b""

        def write(self, data):
            pass

        def close(self):
            pass

    assert isinstance(toy.ecr.ToyTerminal(Port(), port_name="p"), i.EcrDriver)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0


def _wire(a, b, clock, drop=lambda data: False):
    """Move what each link wants to send to the other (``drop`` decides per write)."""
    for src, dst in ((a, b), (b, a)):
        data = src.data_to_send()
        if data and not drop(data):
            dst.receive_data(data, clock.now)


def _events(link):
    return list(iter(link.next_event, None))


def test_a_lost_ack_means_one_delivery_and_a_duplicate_acked_again(toy):
    from posterm.families.events import Delivered, DuplicateIgnored, MessageReceived, Retransmitted

    w, clock = toy.wire, _Clock()
    ecr, term = toy.link.ToyLink("ecr"), toy.link.ToyLink("terminal")
    term.receive_data(ecr.send(w.Pay("O1", 100, "EUR", CODE_OK), clock.now), clock.now)
    got = _events(term)
    assert [type(e) for e in got] == [MessageReceived] and got[0].message.payment_code == CODE_OK
    assert b'"k":"ack"' in term.data_to_send()            # ... and the ack is lost
    clock.now += ecr.config.ack_timeout
    ecr.tick(clock.now)
    assert [type(e) for e in _events(ecr)] == [Retransmitted]
    _wire(ecr, term, clock)                                # the frame again: acked again, not delivered again
    assert [type(e) for e in _events(term)] == [DuplicateIgnored]
    assert [type(e) for e in _events(ecr)] == [Delivered] and ecr.idle


def test_a_peer_that_never_acks_makes_send_fail_after_the_attempts(toy):
    from posterm.families.events import Retransmitted, SendFailed

    clock, ecr = _Clock(), toy.link.ToyLink("ecr")
    ecr.send(toy.wire.Hello(), 0.0)
    for _ in range(ecr.config.send_attempts):
        clock.now += ecr.config.ack_timeout
        ecr.tick(clock.now)
    evs = _events(ecr)
    assert [type(e) for e in evs] == [Retransmitted] * (ecr.config.send_attempts - 1) + [SendFailed]
    assert ecr.idle and ecr.next_deadline() is None


def test_the_ecr_side_acks_only_what_it_accepted(toy):
    from posterm.families.events import MessageReceived

    w = toy.wire
    ecr, term = toy.link.ToyLink("ecr", confirm=True), toy.link.ToyLink("terminal")
    frame = term.send(w.Result("O1", "approved", 100, "EUR"), 0.0)
    ecr.receive_data(frame, 0.0)
    assert [type(e) for e in _events(ecr)] == [MessageReceived]
    assert ecr.data_to_send() == b""                      # held: not acked yet
    ecr.receive_data(frame, 0.5)                          # sent again meanwhile: still undecided, no answer
    assert ecr.data_to_send() == b"" and _events(ecr) == []
    ecr.accept(0.6)
    assert b'"k":"ack"' in ecr.data_to_send()


def test_framer_whole_bytewise_split_and_after_garbage(toy):
    w = toy.wire
    frames = [w.encode(w.Pay("O1", 100, "EUR", CODE_OK), 7, 1), w.encode(w.Result("O1", "declined", 100, "EUR", 5), 9, 2)]
    stream = b"".join(frames)
    for chunks in ([stream], [bytes([b]) for b in stream], [stream[:40], stream[40:]],
                   [b"x" * 3000 + b"\n" + stream]):
        f = w.Framer()
        got = []
        for c in chunks:
            f.feed(c)
            got += iter(f.pop, None)
        assert [x for x in got if not isinstance(x, w.Garbage)] == frames
        assert f.pending == 0
    truncated = w.Framer()
    truncated.feed(frames[0][:-3])
    assert truncated.pop() is None and truncated.pending == len(frames[0]) - 3
    assert truncated.discard_partial() == frames[0][:-3] and truncated.pending == 0


def test_decode_raises_only_its_own_error(toy):
    w = toy.wire
    rnd = random.Random(15)
    good = w.encode(w.Pay("O1", 100, "EUR", CODE_OK), 7, 1)
    for _ in range(3000):
        raw = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        try:
            w.decode(bytes(raw))
        except w.ToyFrameError:
            pass
    for raw in (b"\n", b"|0000\n", b"[]|%04X\n", b'{"k":"pay"}|0000\n', b"x" * 2000 + b"\n"):
        with pytest.raises(w.ToyFrameError):
            w.decode(raw)


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_the_observer_masks_the_code_in_frames_and_chunks(toy, split):
    w = toy.wire
    raw = w.encode(w.Pay("O1", 100, "EUR", CODE_OK), 7, 1)
    obs = toy.record.ToyRecordObserver()
    seen, offset = [], 0
    for chunk in ([raw] if split == "whole" else [bytes([b]) for b in raw]):
        seen += obs.feed("ecr", chunk, offset)
        offset += len(chunk)
    (frame,) = seen
    assert frame.record["kind"] == "pay" and frame.record["msg"]["code"] == "*" * 14 + "0001"
    masked = bytes.fromhex(frame.record["hex"])
    assert CODE_OK.encode() not in masked and masked.replace(b"*" * 14 + b"0001", CODE_OK.encode()) == raw
    ((start, end),) = frame.masks
    assert raw[start:end] == CODE_OK[:14].encode()
    obs.feed("ecr", raw[:30], offset)                      # a frame that stalls: masked whole
    assert obs.pending("ecr") == 30 and obs.mask_pending("ecr", offset) == [(offset, offset + 30)]
