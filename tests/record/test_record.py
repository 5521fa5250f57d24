"""posterm.record: recording, redaction, the reader's errors, replay both ways, tap, pcapng."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from firmware_protocol.native import frame as fr
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome
from firmware_protocol.native.tlv import encode
from posterm.families.native.ecr import Terminal
from posterm.ecr.results import OutcomeMismatch
from posterm.ecr.journal import Journal
from posterm.record import Recorder, RecordingError, RecordingTransport, load, recording_path
from posterm.record.pcapng import INBOUND, LINKTYPE_USER0, OUTBOUND, read_pcapng, write_pcapng
from posterm.families.native.record import ReplayTerminal
from posterm.record.replay import build_script, replay_ecr
from posterm.record.tap import Tap
from posterm.transport import VirtualTransport
from posterm.transport.faults import FaultyTransport
from tests.driver.fake_terminal import FakeTerminal, make_pair

CODE_OK = "289900000000000001"
KEY_BLOCK = "D0144B1AX00N0000" + "0123456789ABCDEF" * 8
SECRETS = ["147258", "246810", KEY_BLOCK, *[f"2899000000000000{n:02d}" for n in range(100)]]
SESSIONS = Path(__file__).resolve().parents[2] / "fixtures" / "sessions"


def assert_no_secrets(path: Path) -> None:
    """No test secret in clear, nor as the hex of its bytes (frames and chunks are hex)."""
    raw = path.read_text()
    text = raw.upper()
    # Chunks split values: scan each direction's chunks joined up as well.
    records = [json.loads(line) for line in raw.splitlines()]
    for side in ("ecr", "terminal"):
        text += "\n" + "".join(r["hex"] for r in records if r.get("type") == "chunk" and r.get("from") == side)
    for secret in SECRETS:
        assert secret.upper() not in text, f"{secret} in {path}"
        assert secret.encode().hex().upper() not in text, f"hex of {secret} in {path}"


def record_fake_session(path: Path, journal: Journal, code: str = CODE_OK) -> list:
    ecr, fake = make_pair("virtual")
    results = []
    with Terminal(RecordingTransport(ecr, path, side="ecr"), journal=journal) as term:
        r = term.pay(1234, "CNY", payment_code=code)
        results.append(r)
        results.append(term.refund(r.order_id, 234, "RF" + r.order_id[2:], "246810"))
    fake.stop.set()
    return results


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.db") as j:
        yield j


# ------------------------------------------------------------------ recording and redaction


def test_recording_has_header_frames_chunks_events_and_no_secrets(tmp_path, journal):
    path = tmp_path / "s.jsonl"
    record_fake_session(path, journal)
    rec = load(path)
    assert rec.header["protocol_version"] == m.PROTOCOL_VERSION and rec.header["side"] == "ecr"
    types = [f["msg"]["type"] for f in rec.frames() if f["kind"] == "DATA"]
    assert types == ["Hello", "HelloReply", "PayRequest", "Progress", "Print", "PayResult", "Refund", "RefundResult"]
    pay = next(f for f in rec.frames() if f.get("msg", {}) and f["msg"]["type"] == "PayRequest")
    assert pay["redacted"] == ["payment_code"] and pay["msg"]["payment_code"] == "**************0001"
    refund = next(f for f in rec.frames() if f.get("msg", {}) and f["msg"]["type"] == "Refund")
    assert refund["redacted"] == ["operator_password"]
    assert any(r["type"] == "identity" and r["terminal_id"] == "T0000001" for r in rec.records)
    acks = [r for r in rec.records if r["type"] == "event" and r["event"] == "ack"]
    assert len(acks) == 8
    # Chunks put together are the whole stream each way, same length as the frames.
    for side in ("ecr", "terminal"):
        chunk_bytes = sum(r["n"] for r in rec.records if r["type"] == "chunk" and r["from"] == side)
        frame_bytes = sum(len(f["hex"]) // 2 for f in rec.frames() if f["from"] == side)
        assert chunk_bytes == frame_bytes
    assert all(r["t"] >= 0 and r["wall"] > 1e9 for r in rec.records if "t" in r)
    assert_no_secrets(path)


def test_secrets_masked_whatever_the_chunking_and_in_corrupt_frames(tmp_path):
    frames = [
        fr.encode_frame(fr.FrameKind.DATA, 0, encode(m.KeyLoad(key_block=KEY_BLOCK, operator_password="246810"))),
        fr.encode_frame(fr.FrameKind.DATA, 1, encode(m.PayRequest(amount_minor=5, currency="CNY", order_id="O1",
                                                                  payment_code="289900000000000003"))),
        fr.encode_frame(fr.FrameKind.DATA, 2, encode(m.Settle(operator_password="147258"))),
    ]
    corrupt = bytearray(frames[0])
    corrupt[-1] ^= 0xFF                      # a bad CRC: the framer resumes inside it
    bad_header = bytearray(frames[1])
    bad_header[6] ^= 0xFF                    # length check broken: the whole frame is garbage to the framer
    stream = (b"\x00\x01" + bytes(corrupt) + bytes(bad_header) + b"".join(frames)
              + frames[2][:20])  # ends in a partial frame
    rng = random.Random(5)
    for trial in range(20):
        path = tmp_path / f"r{trial}.jsonl"
        with Recorder(path, side="ecr") as rec:
            i = 0
            while i < len(stream):
                n = rng.randint(1, 9)
                rec.data("ecr", stream[i:i + n])
                i += n
        assert_no_secrets(path)
        got = load(path)
        names = [f["msg"]["type"] for f in got.frames()]
        assert names == ["KeyLoad", "PayRequest", "Settle"]
        assert got.frames()[0]["redacted"] == ["key_block", "operator_password"]
        events = [r["event"] for r in got.records if r["type"] == "event"]
        assert "bad_frame" in events and "partial" in events and "garbage" in events
        assert sum(r["n"] for r in got.records if r["type"] == "chunk") == len(stream)


def test_every_golden_recording_is_clean_and_readable():
    files = sorted(SESSIONS.glob("*.jsonl"))
    assert len(files) >= 8
    for path in files:
        assert_no_secrets(path)
        assert build_script(load(path))


def test_retransmission_and_nak_are_marked(tmp_path):
    data = fr.encode_frame(fr.FrameKind.DATA, 4, encode(m.StatusRequest()))
    with Recorder(tmp_path / "r.jsonl") as rec:
        rec.data("ecr", data)
        rec.data("terminal", fr.encode_frame(fr.FrameKind.NAK, 4))
        rec.data("ecr", data)
        rec.data("ecr", data)  # no NAK before this one: an ACK timeout
    events = [(r["event"], r.get("cause")) for r in load(tmp_path / "r.jsonl").records if r["type"] == "event"]
    assert events == [("nak", None), ("retransmit", "nak"), ("retransmit", "timeout")]
    assert len(build_script(load(tmp_path / "r.jsonl"))) == 1  # retransmissions are not replayed


def test_recording_path_is_new_each_time_and_private(tmp_path):
    a, b = recording_path(tmp_path / "d", "T1"), recording_path(tmp_path / "d", "T1")
    assert a != b and a.parent == tmp_path / "d" and a.name.startswith("T1-")
    assert a.stat().st_mode & 0o077 == 0


def test_one_file_per_ecr_session(tmp_path, journal):
    ecr, term_side = VirtualTransport.pair()
    fake = FakeTerminal(RecordingTransport(term_side, recording_path(tmp_path, "T0000001"), side="terminal"))
    fake.start()
    for _ in range(3):
        t = Terminal(ecr, journal=journal)
        t.status()
        t.info = None  # a new ECR session: the next call says Hello again
    t.pay(100, "CNY", payment_code=CODE_OK)
    fake.stop.set()
    fake.join(2)
    fake.t.close()
    files = sorted(tmp_path.glob("T0000001-*.jsonl"))
    assert len(files) == 4  # three status sessions, then the pay in a fourth
    for f in files:
        frames = [x for x in load(f).frames() if x["kind"] == "DATA"]
        assert frames[0]["msg"]["type"] == "Hello" and load(f).header["side"] == "terminal"


# ------------------------------------------------------------------ the reader's errors


def _lines(tmp_path, journal) -> list[str]:
    path = tmp_path / "s.jsonl"
    record_fake_session(path, journal)
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("damage, line, words", [
    (lambda ls: ls[:5] + [ls[5][:30]], 6, "truncated"),
    (lambda ls: ls[:3] + ['{"type": "frame", "t": 1, \n'] + ls[4:], 4, "not valid JSON"),
    (lambda ls: ls[:7] + [ls[7].replace('"hex":"A5', '"hex":"ZZ', 1)] + ls[8:], 8, "not hexadecimal"),
    (lambda ls: ls[:2] + ['{"type":"bogus"}\n'] + ls[3:], 3, "unknown record type"),
    (lambda ls: ls[:2] + ['{"type":"frame","t":0}\n'] + ls[3:], 3, "without from, kind, seq, hex"),
    (lambda ls: ls[1:], 1, "no header"),
    (lambda ls: [], 1, "empty"),
])
def test_corrupt_or_truncated_recording_names_the_line(tmp_path, journal, damage, line, words):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(damage(_lines(tmp_path, journal))))
    with pytest.raises(RecordingError) as exc:
        load(bad)
    assert exc.value.line == line and f"line {line}:" in str(exc.value) and words in str(exc.value)
    from posterm.cli import main
    result = CliRunner().invoke(main, ["show", str(bad)])
    assert result.exit_code == 2 and f"line {line}" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------ replay


def test_record_then_replay_as_ecr_matches_and_a_changed_terminal_diffs(tmp_path, journal):
    path = tmp_path / "s.jsonl"
    record_fake_session(path, journal)
    script = build_script(load(path))
    ecr, fake = make_pair("virtual")
    result = replay_ecr(ecr, script, fast=True)
    assert result.ok, result.diffs
    assert len(fake.pay_requests) == 1 and fake.pay_requests[0].payment_code == CODE_OK  # substituted back
    # A terminal that now declines: a readable diff, not a crash.
    ecr2, fake2 = make_pair("virtual")
    bad = FakeTerminal.result

    def declining(self, req, outcome, reason=m.Reason.NONE):
        return bad(self, req, Outcome.DECLINED, m.Reason.INSUFFICIENT_BALANCE)

    fake2.result = declining.__get__(fake2)
    result = replay_ecr(ecr2, script, fast=True, min_wait=0.5)
    text = "\n".join(map(str, result.diffs))
    assert "outcome: recorded 'APPROVED', got 'DECLINED'" in text
    fake.stop.set(), fake2.stop.set()


def _serve(script, **kw):
    ecr, term_side = VirtualTransport.pair()
    player = ReplayTerminal(term_side, script, fast=True, **kw)
    th = threading.Thread(target=player.run, kwargs={"timeout": 20}, daemon=True)
    th.start()
    return ecr, player, th


def test_record_then_replay_as_terminal_answers_a_live_driver(tmp_path, journal):
    path = tmp_path / "s.jsonl"
    first = record_fake_session(path, journal)
    ecr, player, th = _serve(build_script(load(path)))
    with Terminal(ecr, journal=Journal(tmp_path / "j2.db")) as term:
        r = term.pay(1234, "CNY", payment_code=CODE_OK)   # a new order id: mapped onto the recorded one
        assert r.approved and r.order_id != first[0].order_id and r.receipt == first[0].receipt
        rf = term.refund(r.order_id, 234, "RF" + r.order_id[2:], "246810")
        assert rf.approved and rf.order_id == r.order_id
    th.join(5)
    assert player.done and player.divergences == []


def test_replay_as_terminal_reports_where_the_ecr_diverged(tmp_path, journal):
    path = tmp_path / "s.jsonl"
    record_fake_session(path, journal)
    ecr, player, th = _serve(build_script(load(path)))
    with Terminal(ecr, journal=Journal(tmp_path / "j2.db")) as term:
        with pytest.raises(OutcomeMismatch):  # the recording answers 1234 (the driver checks amounts)
            term.pay(999, "CNY", payment_code=CODE_OK)
        with pytest.raises(Exception):
            term.settle("246810", timeout=1)
    player.stop.set()
    th.join(5)
    text = "\n".join(map(str, player.divergences))
    assert "amount_minor: recorded 1234, got 999" in text
    assert "the ECR sent Settle" in text and "not in the recording" in text


# ------------------------------------------------------------------ goldens against the current code


@pytest.mark.parametrize("golden", sorted(p.stem for p in SESSIONS.glob("*.jsonl")))
def test_golden_replays_against_the_emulator_and_the_driver(golden, tmp_path):
    from posterm.transport import open_transport
    from tests.record.flows import FLOWS, PROTOCOL, start_emulator

    protocol = PROTOCOL.get(golden, "posterm")
    script = build_script(load(SESSIONS / f"{golden}.jsonl"))
    with start_emulator(tmp_path / "emu", protocol) as emu:
        t = open_transport(emu.port)
        try:
            result = replay_ecr(t, script, fast=True)
        finally:
            t.close()
    assert result.ok, "\n".join(map(str, result.diffs))
    if protocol in ("concert", "zvt"):
        from posterm.record.replay import replay_terminal

        ecr, term_side = VirtualTransport.pair()
        player = replay_terminal(term_side, script, fast=True)   # the script's family's player
        th = threading.Thread(target=player.run, kwargs={"timeout": 20}, daemon=True)
        th.start()
        if protocol == "concert":
            from posterm.families.concert.ecr import ConcertTerminal

            driver = ConcertTerminal(ecr, journal=Journal(tmp_path / "j.db"))
        else:
            from posterm.families.zvt.ecr import ZvtTerminal
            from tests.record.flows import OPEN

            driver = ZvtTerminal(ecr, journal=Journal(tmp_path / "j.db"), **OPEN["zvt"])   # serial, as recorded
    else:
        ecr, player, th = _serve(script)
        driver = Terminal(ecr, journal=Journal(tmp_path / "j.db"))
    with driver as term:
        FLOWS[golden](term)
    th.join(5)
    assert player.done and player.divergences == []


# ------------------------------------------------------------------ tap


def _tap_line(spec_ecr=None, spec_term=None, recorder=None):
    ecr, tap_ecr = VirtualTransport.pair()
    tap_term, term = VirtualTransport.pair()
    a = FaultyTransport(tap_ecr, spec_ecr) if spec_ecr else tap_ecr
    b = FaultyTransport(tap_term, spec_term) if spec_term else tap_term
    return ecr, term, Tap(a, b, recorder).start()


def test_tap_forwards_every_byte_in_order_both_ways(tmp_path):
    ecr, term, tap = _tap_line(recorder=Recorder(tmp_path / "t.jsonl", side="tap"))
    rng = random.Random(1)
    sent = {"ecr": bytearray(), "term": bytearray()}
    got = {"ecr": bytearray(), "term": bytearray()}

    def writer(t, key):
        for _ in range(200):
            chunk = rng.randbytes(rng.randint(1, 300))
            sent[key] += chunk
            t.write(chunk)

    ws = [threading.Thread(target=writer, args=(ecr, "ecr")), threading.Thread(target=writer, args=(term, "term"))]
    for w in ws:
        w.start()
    for w in ws:
        w.join(10)
    for t, key, other in ((term, "ecr", "term"), (ecr, "term", "ecr")):
        for _ in range(500):
            if len(got[key]) >= len(sent[key]):
                break
            got[key] += t.read(65536, 0.05)
    tap.close()
    assert bytes(got["ecr"]) == bytes(sent["ecr"]) and bytes(got["term"]) == bytes(sent["term"])
    rec = load(tmp_path / "t.jsonl")
    assert sum(r["n"] for r in rec.records if r["type"] == "chunk" and r["from"] == "ecr") == len(sent["ecr"])


def test_tap_under_one_percent_line_faults_loses_nothing(tmp_path):
    spec = "drop=0.01,corrupt=0.01,seed={}"
    ecr, term, tap = _tap_line(spec.format(3), spec.format(4), Recorder(tmp_path / "t.jsonl", side="tap"))
    fake = FakeTerminal(term)
    fake.start()
    with Terminal(ecr, journal=Journal(tmp_path / "j.db")) as t:
        results = [t.pay(100 + i, "CNY", payment_code=CODE_OK) for i in range(40)]
    tap.close()
    fake.stop.set()
    assert all(r.approved for r in results)
    assert [r.amount_minor for r in results] == [100 + i for i in range(40)]
    assert len(fake.orders) == 40  # each charged once
    rec = load(tmp_path / "t.jsonl")
    paid = [f["msg"]["amount_minor"] for f in rec.frames()
            if f.get("msg") and f["msg"]["type"] == "PayResult" and not f.get("retransmit")]
    assert sorted(set(paid)) == [100 + i for i in range(40)]
    assert_no_secrets(tmp_path / "t.jsonl")


# ------------------------------------------------------------------ show and convert


def test_show_is_plain_when_piped_and_lists_the_flow():
    from posterm.cli import main

    result = CliRunner().invoke(main, ["show", str(SESSIONS / "refund.jsonl")])
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output
    assert re.search(r"ECR ->\s+DATA\s+\d+\s+Refund\(.*operator_password=<redacted>", result.output)
    assert "RefundResult(" in result.output


def test_convert_to_pcapng_reads_back(tmp_path):
    from posterm.cli import main

    out = tmp_path / "s.pcapng"
    result = CliRunner().invoke(main, ["convert", str(SESSIONS / "pay_approved.jsonl"), str(out)])
    assert result.exit_code == 0, result.output
    rec = load(SESSIONS / "pay_approved.jsonl")
    packets = list(read_pcapng(out.read_bytes()))
    assert len(packets) == len(rec.frames())
    for (linktype, ts, data, flags), f in zip(packets, rec.frames()):
        assert linktype == LINKTYPE_USER0 and data.hex().upper() == f["hex"]
        assert flags == (OUTBOUND if f["from"] == "ecr" else INBOUND)
    assert [p[1] for p in packets] == sorted(p[1] for p in packets)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_the_converted_capture(tmp_path):
    out = tmp_path / "s.pcapng"
    with out.open("wb") as fh:
        n = write_pcapng(load(SESSIONS / "refund.jsonl"), fh)
    proc = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.len",
                           "-e", "frame.packet_flags_direction"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line.strip()]
    assert len(rows) == n
    assert {r[1] for r in rows} <= {"1", "2", "0x1", "0x2", "0x00000001", "0x00000002"} and len({r[1] for r in rows}) == 2


def test_replay_cli_exit_codes(tmp_path):
    from posterm.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["replay", str(SESSIONS / "pay_approved.jsonl"), "--as", "ecr"])
    assert r.exit_code == 2 and "--port" in r.output
    bad = tmp_path / "x.jsonl"
    bad.write_text(json.dumps({"type": "header"}) + "\n")
    r = runner.invoke(main, ["replay", str(bad), "--as", "ecr", "--port", "loop://"])
    assert r.exit_code == 2 and "line 1" in r.output


def test_replay_cli_as_terminal_on_a_pty_then_the_driver(tmp_path):
    import os
    import sys
    import time

    from tests.record.flows import FLOWS

    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "posterm", "replay", str(SESSIONS / "refund.jsonl"), "--as",
                             "terminal", "--fast", "--port-file", str(port_file), "--timeout", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # a loaded machine takes seconds to start a Python process
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the replayer never wrote its port file"
            time.sleep(0.05)  # poll interval of a bounded wait on a condition
        port = port_file.read_text().strip()
        assert os.path.exists(port)
        with Terminal.open(port, journal=str(tmp_path / "j.db")) as term:
            FLOWS["refund"](term)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == port and "match" in out


def test_emulator_record_dir_one_file_per_session_no_secrets(tmp_path):
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal

    with EmulatedTerminal.start(home=tmp_path / "emu", record=tmp_path / "rec", config=FirmwareConfig()) as emu:
        for _ in range(2):
            with Terminal.open(emu.port, journal=str(tmp_path / "j.db")) as term:
                assert term.pay(1000, "CNY", payment_code="289900000000000003").approved  # PIN 147258 typed
    files = sorted((tmp_path / "rec").glob("T0000001-*.jsonl"))
    assert len(files) == 2
    for f in files:
        assert_no_secrets(f)
        assert load(f).header["side"] == "terminal"
        assert [x["msg"]["type"] for x in load(f).frames() if x["kind"] == "DATA"][:2] == ["Hello", "HelloReply"]


def test_pacing_step_and_loop(tmp_path, journal):
    from posterm.record.replay import Pacer

    assert Pacer(1.0, False, False, None).delay(2.0) == 2.0
    assert Pacer(4.0, False, False, None).delay(2.0) == 0.5
    assert Pacer(1.0, True, False, None).delay(2.0) == 0.0
    path = tmp_path / "s.jsonl"
    record_fake_session(path, journal)
    script = build_script(load(path))
    ecr, fake = make_pair("virtual")
    prompts: list[str] = []
    result = replay_ecr(ecr, script, step=True, wait_for=prompts.append, loops=2)
    assert result.ok and result.exchanges == 6 and len(prompts) == 6
    assert prompts[1].startswith("#2 PayRequest (order_id=")
    fake.stop.set()
    # --loop as terminal: a second ECR session is served from the start again.
    ecr, player, th = _serve(script, loop=True)
    term = Terminal(ecr, journal=journal)
    for _ in range(2):
        term.info = None  # a new ECR session: Hello again
        r = term.pay(1234, "CNY", payment_code=CODE_OK)
        assert r.approved and term.refund(r.order_id, 234, "RF" + r.order_id[2:], "246810").approved
    player.stop.set()
    th.join(5)
    assert player.answered == 6 and player.divergences == []
