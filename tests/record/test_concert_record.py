"""posterm.record on Ingenico Concert sessions: record, redact, show, convert, tap, replay both ways."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from firmware_protocol.concert import (
    ACK,
    ENQ,
    EOT,
    NAK,
    ConcertAnswer,
    ConcertFramer,
    ConcertRequest,
    Status,
)
from firmware_protocol.native.messages import Outcome
from posterm.families.concert.ecr import ConcertTerminal
from posterm.errors import ConfigError
from posterm.families.native.ecr import Terminal
from posterm.record import Recorder, RecordingError, load
from posterm.families.concert.record import REPORT_OFFSET, ConcertReplayTerminal
from posterm.record.pcapng import INBOUND, LINKTYPE_USER1, OUTBOUND, read_pcapng, write_pcapng
from posterm.record.replay import build_script, replay_ecr
from posterm.record.tap import Tap
from posterm.transport import VirtualTransport

# The customer shows test code 0001 (approved) for the first payment, 0002 (balance 5.00 CNY:
# declined) for the second; the same scenario on a fresh emulator gives the same answers.
SCENARIO = """
[[payment]]
actions = [{ action = "present_code", code = "289900000000000001" }]
[[payment]]
actions = [{ action = "present_code", code = "289900000000000002" }]
"""
CARD = "4761739001010119"


def start_emulator(home: Path, record: Path | None = None):
    from posterm.emulator.runner import EmulatedTerminal
    from posterm.emulator.scenario import parse_scenario

    return EmulatedTerminal.start(home=home, protocol="concert", record=record, scenario=parse_scenario(SCENARIO))


def flow(term) -> list:
    """The recorded flow: 12.34 CNY approved, then 100.00 CNY declined."""
    ok = term.pay(1234, "CNY")
    assert ok.outcome is Outcome.APPROVED and ok.code_last4 == "0001", ok
    no = term.pay(10_000, "CNY")
    assert no.outcome is Outcome.DECLINED and no.code_last4 == "0002", no
    return [ok, no]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One Concert session recorded on both sides: the driver's file and the emulator's."""
    tmp = tmp_path_factory.mktemp("concert")
    with start_emulator(tmp / "emu", record=tmp / "rec") as emu:
        with Terminal.open(emu.port, protocol="concert", journal=str(tmp / "j.db"), record=str(tmp / "ecr.jsonl")) as term:
            assert isinstance(term, ConcertTerminal)
            results = flow(term)
    (emu_file,) = sorted((tmp / "rec").glob("T0000001-*.jsonl"))
    return {"ecr": tmp / "ecr.jsonl", "terminal": emu_file, "results": results}


def side_stream(path: Path, side: str) -> bytes:
    return b"".join(bytes.fromhex(r["hex"]) for r in (json.loads(x) for x in path.read_text().splitlines())
                    if r.get("type") == "chunk" and r.get("from") == side)


def assert_reports_masked(path: Path, secret: str | None = None) -> None:
    """No report keeps more than its last 4 characters: in msg, frame hex and the chunk stream."""
    rec = load(path)
    for f in rec.frames():
        if f["kind"] != "answer" or not f["msg"]["report"]:
            continue
        report = f["msg"]["report"]
        assert set(report[:-4]) <= {"*"}, report
        region = bytes.fromhex(f["hex"])[REPORT_OFFSET:REPORT_OFFSET + 55].decode("ascii")
        assert region.rstrip(" ") == report and f["redacted"] == ["report"]
    framer = ConcertFramer()
    framer.feed(side_stream(path, "terminal"))
    for item in iter(framer.pop, None):
        if isinstance(item, bytes) and len(item) == 83:   # a long answer as it crossed the port
            content = item[REPORT_OFFSET:REPORT_OFFSET + 55].decode("ascii").rstrip(" ")
            assert set(content[:-4]) <= {"*"}, content
    if secret:
        text = path.read_text().upper()
        for s in (secret[:-4], secret[-12:]):
            assert s not in text and s.encode().hex().upper() not in text
            assert s.encode().hex().upper() not in side_stream(path, "terminal").hex().upper()


# ------------------------------------------------------------------ recording


@pytest.mark.parametrize("side", ["ecr", "terminal"])
def test_concert_session_recorded_from_either_side(session, side):
    path = session[side]
    rec = load(path)
    assert rec.header["protocol"] == "concert" and rec.header["side"] == side
    frames = rec.frames()
    assert [f["kind"] for f in frames] == ["request", "answer", "request", "answer"]
    assert [f["from"] for f in frames] == ["ecr", "terminal", "ecr", "terminal"]
    req, ok, _, no = (f["msg"] for f in frames)
    assert req == {"type": "ConcertRequest", "amount_minor": 1234, "currency_numeric": 156, "pos_number": 1,
                   "txn_type": "0", "answer_flag": "1", "mode": "1", "private": session["results"][0].order_id,
                   "delay": "A010", "authorization": "B010"}
    assert ok["status"] == "0" and ok["report"] == "**************0001" and ok["private"] == req["private"]
    assert no["status"] == "7" and no["amount_minor"] == 10_000 and no["report"].endswith("0002")
    assert all("seq" not in f for f in frames)
    events = [(r["from"], r["event"]) for r in rec.records if r["type"] == "event"]
    # ENQ / ACK / frame / ACK / EOT, four times, each way in turn.
    assert events[:4] == [("ecr", "enq"), ("terminal", "ack"), ("terminal", "ack"), ("ecr", "eot")]
    assert len(events) == 16
    for who in ("ecr", "terminal"):   # the chunks are the whole stream: frames plus control bytes
        chunk_bytes = sum(r["n"] for r in rec.records if r["type"] == "chunk" and r["from"] == who)
        frame_bytes = sum(len(f["hex"]) // 2 for f in frames if f["from"] == who)
        assert chunk_bytes == frame_bytes + sum(1 for w, _ in events if w == who)
    assert_reports_masked(path)
    script = build_script(rec)
    assert [len(ex.answers) for ex in script] == [1, 1]
    assert script[1].answers[0].message.status is Status.REFUSED


def test_card_number_in_the_report_is_masked_whatever_the_chunking(tmp_path):
    """A real terminal may put the card number in the report: only its last 4 digits stay,
    also in a frame with a bad LRC, in garbage (an answer whose STX was lost) and in a partial one."""
    answer = ConcertAnswer(Status.ACCEPTED, 1234, 156, report=f"VISA {CARD}", private="P000000001").encode()
    bad = bytearray(answer)
    bad[-1] ^= 0xFF
    stream = (bytes([ENQ]) + bytes(bad) + bytes([ENQ]) + answer + bytes([EOT])   # NAKed, then sent again
              + answer[1:] + bytes([ENQ]) + answer[:60])                         # garbage, then a partial frame
    request = ConcertRequest(1234, 156, private="P000000001").encode()
    rng = random.Random(7)
    for trial in range(15):
        path = tmp_path / f"r{trial}.jsonl"
        with Recorder(path, side="tap", protocol="concert") as rec:
            rec.data("ecr", bytes([ENQ]))
            rec.data("ecr", request)
            i = 0
            while i < len(stream):
                n = rng.randint(1, 11)
                rec.data("terminal", stream[i:i + n])
                i += n
            rec.data("ecr", bytes([ACK]))
        assert_reports_masked(path, CARD)
        got = load(path)
        answers = [f for f in got.frames() if f["kind"] == "answer"]
        assert [f["msg"]["report"] for f in answers] == ["*" * 17 + "0119"]
        events = [r["event"] for r in got.records if r["type"] == "event"]
        assert {"bad_frame", "garbage", "partial"} <= set(events)
        bad_rec = next(r for r in got.records if r.get("event") == "bad_frame")
        assert bad_rec["reason"] == "bad LRC" and "2A" * 50 in bad_rec["hex"]
        assert sum(r["n"] for r in got.records if r["type"] == "chunk" and r["from"] == "terminal") == len(stream)
        assert build_script(got)[0].request.message.amount_minor == 1234


def test_a_resent_frame_is_marked_and_not_replayed(tmp_path):
    req = ConcertRequest(500, 156, private="P1").encode()
    with Recorder(tmp_path / "r.jsonl", protocol="concert") as rec:
        rec.data("ecr", bytes([ENQ]))
        rec.data("terminal", bytes([ACK]))
        rec.data("ecr", req)
        rec.data("terminal", bytes([NAK]))
        rec.data("ecr", req)
        rec.data("terminal", bytes([ACK]))
        rec.data("ecr", bytes([EOT]))
        rec.data("ecr", bytes([ENQ]) + req)   # a new transmission: not a resend
    got = load(tmp_path / "r.jsonl")
    assert [bool(f.get("retransmit")) for f in got.frames()] == [False, True, False]
    assert [r.get("cause") for r in got.records if r.get("event") == "retransmit"] == ["nak"]
    assert len(build_script(got)) == 2


def test_header_protocol_is_checked(tmp_path, session):
    lines = session["ecr"].read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    bad = tmp_path / "nosuch.jsonl"
    bad.write_text(json.dumps({**header, "protocol": "nosuch"}) + "\n" + "".join(lines[1:]))
    with pytest.raises(RecordingError) as exc:
        load(bad)
    assert exc.value.line == 1 and "protocol 'nosuch' is not supported (known families: posterm, concert" in str(exc.value)
    with pytest.raises(ConfigError, match="protocol 'nosuch' is not supported"):
        Recorder(tmp_path / "x.jsonl", protocol="nosuch")


# ------------------------------------------------------------------ show, convert, tap


def test_show_and_convert(session, tmp_path):
    from posterm.cli import main

    result = CliRunner().invoke(main, ["show", str(session["ecr"])])
    assert result.exit_code == 0, result.output
    assert "protocol concert" in result.output and "\x1b[" not in result.output
    assert "ECR ->  request" in result.output and "ConcertRequest(amount_minor=1234" in result.output
    assert "ConcertAnswer(status=7" in result.output and "report=**************0002" in result.output
    assert " enq" not in result.output and "4 frames, 0 retransmitted, 0 NAKs" in result.output
    assert " enq" in CliRunner().invoke(main, ["show", "--acks", str(session["ecr"])]).output
    out = tmp_path / "s.pcapng"
    result = CliRunner().invoke(main, ["convert", str(session["ecr"]), str(out)])
    assert result.exit_code == 0 and "4 packets" in result.output, result.output
    frames = load(session["ecr"]).frames()
    packets = list(read_pcapng(out.read_bytes()))
    assert len(packets) == len(frames) == 4
    for (linktype, _ts, data, flags), f in zip(packets, frames):
        assert linktype == LINKTYPE_USER1 and data.hex().upper() == f["hex"]
        assert flags == (OUTBOUND if f["from"] == "ecr" else INBOUND)
    assert b"Ingenico Concert" in out.read_bytes()


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_a_concert_capture(session, tmp_path):
    out = tmp_path / "s.pcapng"
    with out.open("wb") as fh:
        n = write_pcapng(load(session["terminal"]), fh)
    proc = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.len"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [int(x) for x in proc.stdout.split()] == [37, 83, 37, 83] and n == 4


def _replay_terminal(path: Path, **kw):
    ecr, term_side = VirtualTransport.pair()
    player = ConcertReplayTerminal(term_side, build_script(load(path)), fast=True, **kw)
    th = threading.Thread(target=player.run, kwargs={"timeout": 20}, daemon=True)
    th.start()
    return ecr, player, th


def test_tap_records_a_concert_line(session, tmp_path):
    ecr, tap_ecr = VirtualTransport.pair()
    tap_term, term = VirtualTransport.pair()
    player = ConcertReplayTerminal(term, build_script(load(session["ecr"])), fast=True)
    th = threading.Thread(target=player.run, kwargs={"timeout": 20}, daemon=True)
    th.start()
    tap = Tap(tap_ecr, tap_term, Recorder(tmp_path / "t.jsonl", side="tap", protocol="concert")).start()
    with ConcertTerminal(ecr) as t:
        flow(t)
    th.join(5)
    tap.close()
    got = load(tmp_path / "t.jsonl")
    assert got.header["side"] == "tap" and [f["kind"] for f in got.frames()] == ["request", "answer"] * 2
    assert_reports_masked(tmp_path / "t.jsonl")


# ------------------------------------------------------------------ replay


def test_replay_as_terminal_answers_a_live_concert_driver(session):
    ecr, player, th = _replay_terminal(session["terminal"])
    with ConcertTerminal(ecr) as term:
        ok, no = flow(term)   # new order ids: each answer carries the live request's
    th.join(5)
    assert player.done and player.divergences == [] and player.answered == 2
    assert ok.order_id != session["results"][0].order_id and no.order_id != session["results"][1].order_id


def test_replay_as_terminal_reports_where_the_ecr_diverged(session):
    ecr, player, th = _replay_terminal(session["ecr"])
    with ConcertTerminal(ecr) as term:
        r = term.pay(999, "CNY")            # another amount: the next recorded debit answers, reported
        assert r.approved
        c = term.cancel(r.order_id, amount_minor=999, currency="CNY")   # no cancel was recorded
        assert c.outcome is Outcome.DECLINED and c.reason_text == "concert status 9"
    player.stop.set()
    th.join(5)
    text = "\n".join(map(str, player.divergences))
    assert "#0: ConcertRequest amount_minor: recorded 1234, got 999" in text
    assert "the ECR sent ConcertRequest (txn_type=2, amount_minor=999, currency_numeric=156): not in the recording" in text


def test_replay_cli_as_terminal_on_a_pty(session, tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "posterm", "replay", str(session["ecr"]), "--as", "terminal",
                             "--fast", "--port-file", str(port_file), "--timeout", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # a loaded machine takes seconds to start a Python process
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the replayer never wrote its port file"
            time.sleep(0.05)  # poll interval of a bounded wait on a condition
        port = port_file.read_text().strip()
        with Terminal.open(port, protocol="concert", journal=str(tmp_path / "j.db")) as term:
            flow(term)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == port and "match: 2 ECR message(s) answered" in out


def test_replay_as_ecr_against_a_live_emulator_matches_and_a_tampered_recording_diffs(session, tmp_path):
    from posterm.cli import main

    lines = [json.loads(x) for x in session["terminal"].read_text().splitlines()]
    first = next(r for r in lines if r.get("type") == "frame" and r["kind"] == "answer")
    first["msg"]["amount_minor"] = 9999
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(r) + "\n" for r in lines))
    for path, code in ((session["terminal"], 0), (tampered, 1)):
        with start_emulator(tmp_path / f"emu{code}") as emu:
            result = CliRunner().invoke(main, ["replay", str(path), "--as", "ecr", "--port", emu.port, "--fast"])
        assert result.exit_code == code, result.output
        if code == 0:
            assert "match: 2 ECR message(s) sent" in result.output
        else:
            assert result.output.splitlines() == ["DIFF: 1 difference(s); 2 ECR message(s) sent",
                                                  "  #1: ConcertAnswer answer 1: amount_minor: recorded 9999, got 1234"]


def test_replay_ecr_api_dispatches_on_a_concert_script(session):
    """replay_ecr given a Concert script speaks Concert (here to a replaying terminal)."""
    ecr, player, th = _replay_terminal(session["ecr"])
    result = replay_ecr(ecr, build_script(load(session["terminal"])), fast=True)
    player.stop.set()
    th.join(5)
    assert result.ok and result.exchanges == 2 and result.frames == 4, result.diffs
