"""posterm.record on ZVT sessions, serial (a pty) and TCP: record both sides of a real
session (the family's driver against the emulated terminal, password 123456), show it,
convert it to pcapng, replay it both ways; secrets never in clear, whatever the chunking."""

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

from firmware_protocol.native.messages import Outcome
from firmware_protocol.zvt import (
    ACK,
    NAK,
    Ack,
    Authorisation,
    Completion,
    PrintLine,
    Registration,
    Reversal,
    StatusInformation,
    encode_serial,
)
from posterm.ecr.journal import Journal
from posterm.ecr.results import OutcomeMismatch
from posterm.families.zvt.ecr import ZvtRefused, ZvtTerminal
from posterm.families.zvt.record import (
    ZvtObserver,
    ZvtReplayTerminal,
    line_transport,
    message_of,
    substitute,
)
from posterm.record import Recorder, load
from posterm.record.pcapng import INBOUND, OUTBOUND, read_pcapng, write_pcapng
from posterm.record.replay import Script, build_script, replay_ecr
from posterm.transport import VirtualTransport

PASSWORD = "123456"
PAN = "4761739001010119"
TRACK2 = PAN + "D2512101"
SESSIONS = Path(__file__).resolve().parents[2] / "fixtures" / "sessions"
LINKTYPE_ZVT = 150
COMMANDS = ["Registration", "Authorisation", "Authorisation", "Reversal", "StatusEnquiry", "EndOfDay"]


def start_emulator(home: Path, transport: str, record: Path | None = None, password: str = PASSWORD):
    from posterm.emulator.runner import EmulatedTerminal

    return EmulatedTerminal.start(home=home, protocol="zvt", operator_password=password, record=record,
                                  listen="tcp://127.0.0.1:0" if transport == "tcp" else None)


def flow(term) -> list:
    """The recorded flow: registration, 12.50 CNY approved, 5,000.01 declined (over the
    limit), the approval reversed, the status enquiry, the end of day."""
    assert term.hello().terminal_id == "00000001"
    paid = term.pay(1250, "CNY")
    assert paid.outcome is Outcome.APPROVED and paid.code_last4 == "0001", paid
    no = term.pay(500_001, "CNY")
    assert no.outcome is Outcome.DECLINED, no
    assert term.cancel(paid.order_id, PASSWORD).outcome is Outcome.CANCELLED
    term.status()
    assert term.settle(PASSWORD).outcome is Outcome.APPROVED
    return [paid, no]


@pytest.fixture(scope="module", params=["serial", "tcp"])
def session(request, tmp_path_factory):
    """One ZVT session recorded on both sides (the driver's file and the emulator's), on a pty or over TCP."""
    transport = request.param
    tmp = tmp_path_factory.mktemp(f"zvt-{transport}")
    with start_emulator(tmp / "emu", transport, record=tmp / "rec") as emu:
        term = ZvtTerminal.open(emu.port, journal=str(tmp / "j.db"), password=PASSWORD, currency="CNY",
                                record=str(tmp / "ecr.jsonl"))
        try:
            results = flow(term)
        finally:
            term.close()
        assert emu.error is None
    (emu_file,) = sorted((tmp / "rec").glob("T0000001-*.jsonl"))
    return {"transport": transport, "ecr": tmp / "ecr.jsonl", "terminal": emu_file, "results": results, "tmp": tmp}


def side_stream(path: Path, side: str) -> bytes:
    return b"".join(bytes.fromhex(r["hex"]) for r in (json.loads(x) for x in path.read_text().splitlines())
                    if r.get("type") == "chunk" and r.get("from") == side)


def assert_no_secrets(path: Path, secrets: tuple[str, ...] = (PASSWORD,), card: tuple[str, ...] = ()) -> None:
    """No password (its BCD bytes, its digits) and no card number but its last 4 digits in
    the file: in its text, and in each direction's chunks put back together."""
    text = path.read_text()
    streams = [side_stream(path, side) for side in ("ecr", "terminal")]
    for secret in secrets:
        assert secret not in text, f"{secret} in {path}"
        assert bytes.fromhex(secret) not in streams[0] + b"|" + streams[1]
    for number in card:
        head = number[:-4]
        assert head not in text.upper(), f"{head} in {path}"
        assert bytes.fromhex(head[:12]) not in streams[0] + b"|" + streams[1]


# ------------------------------------------------------------------ recording


@pytest.mark.parametrize("side", ["ecr", "terminal"])
def test_session_recorded_from_either_side(session, side):
    path = session[side]
    rec = load(path)
    serial = session["transport"] == "serial"
    assert rec.header["protocol"] == "zvt" and rec.header["side"] == side
    frames = rec.frames()
    assert [f["msg"]["type"] for f in frames if f["from"] == "ecr" and f["kind"] == "apdu"] == COMMANDS
    apdus = [f for f in frames if f["kind"] in ("apdu", "ack", "nack")]
    assert all(f["hex"].startswith("1002") == serial and ("apdu" in f) == serial for f in apdus)
    assert any(f["kind"] == "ACK" for f in frames) == serial            # the serial line's ACK bytes
    registration = next(f for f in frames if f.get("msg") and f["msg"]["type"] == "Registration")
    assert registration["msg"] == {"type": "Registration", "password": "<masked>", "config_byte": 0xDE, "currency": 156}
    assert registration["redacted"] == ["password"] and registration["masked"] == [[3, 6, "password"]]
    if serial:                    # the CRC of a frame holding a secret is masked too
        assert registration["hex"] == "100206000 62A2A2ADE015610032A2A".replace(" ", "")
    info = next(f for f in frames if f.get("msg") and f["msg"]["type"] == "StatusInformation")
    assert info["msg"]["pan"] == "E" * 14 + "0001" and info["msg"]["amount"] == 1250
    assert info["msg"]["card_name"] == "Alipay" and info["redacted"] == ["pan"]
    assert any(r["type"] == "identity" and r["terminal_id"] == "00000001" for r in rec.records)
    for who in ("ecr", "terminal"):   # the chunks are the whole stream: every byte is in a frame
        chunk_bytes = sum(r["n"] for r in rec.records if r["type"] == "chunk" and r["from"] == who)
        assert chunk_bytes == sum(len(f["hex"]) // 2 for f in frames if f["from"] == who)
    assert not [r for r in rec.records if r["type"] == "event"]          # a clean line: no NAK, garbage, resend
    assert_no_secrets(path)
    script = build_script(rec)
    assert [ex.request.fields["type"] for ex in script] == COMMANDS
    assert all(isinstance(ex.answers[0].message, Ack) for ex in script)  # the terminal's 80 00 00 first
    assert isinstance(script[0].answers[-1].message, Completion)


def test_the_transport_is_read_off_the_bytes():
    assert line_transport(b"") is None and line_transport(b"\x06") is None
    assert line_transport(b"\x10\x02") == "serial" and line_transport(b"\x15") == "serial"
    assert line_transport(b"\x06\x10") == "serial" and line_transport(b"\x06\x06") == "serial"
    assert line_transport(b"\x06\x00\x06") == "tcp" and line_transport(b"\x80\x00\x00") == "tcp"
    # TCP whose register's first APDU is class 06, one byte at a time
    obs = ZvtObserver()
    apdu = Registration(PASSWORD, 0xDE, 978).encode()
    seen = [o for b in apdu for o in obs.feed("ecr", bytes([b]), 0)]
    assert obs.transport == "tcp" and [o.record["msg"]["type"] for o in seen] == ["Registration"]
    # serial, the terminal heard first (a tap started mid-dialog): a lone ACK waits for its next byte
    obs = ZvtObserver()
    assert obs.feed("terminal", bytes([ACK]), 0) == [] and obs.transport is None and obs.pending("terminal") == 1
    seen = obs.feed("terminal", encode_serial(Ack().encode()), 1)
    assert obs.transport == "serial" and [o.record["kind"] for o in seen] == ["ACK", "ack"]


def _stream(serial: bool) -> tuple[bytes, bytes, list[str]]:
    """The register's and the terminal's bytes of a dialog holding every kind of secret and
    trouble, and the command types the register's frames decode to."""
    cmds = [Registration("101234", 0xDE, 978),                         # a DLE in the password: stuffed on serial
            Authorisation.make(amount=100, currency=978, pan=PAN, expiry="2512", track2=TRACK2),
            Reversal.make(password=PASSWORD, receipt_no=7)]
    answers = [StatusInformation.make(result_code=0, amount=100, currency=978, pan=PAN, card_name="VISA",
                                      receipt_no=7),
               PrintLine(0, "CARD ************0119"), Completion()]
    if not serial:
        return b"".join(c.encode() for c in cmds), b"".join(a.encode() for a in answers), [type(c).__name__ for c in cmds]
    framed = [encode_serial(c.encode()) for c in cmds]
    bad = bytearray(framed[1])
    bad[-1] ^= 0xFF                                                    # a bad CRC: NAKed, then sent again
    ecr = (bytes(bad) + framed[1] + framed[0] + framed[0]             # a resend (its ACK byte lost)
           + framed[2][:9] + framed[2]                                 # cut off by the next DLE STX: garbage
           + framed[2][:12])                                           # and a partial frame at the end
    term = bytes([NAK, ACK, ACK, ACK]) + b"".join(encode_serial(a.encode()) for a in answers)
    return ecr, term, ["Authorisation", "Registration", "Registration", "Reversal"]


@pytest.mark.parametrize("serial", [True, False], ids=["serial", "tcp"])
def test_secrets_masked_whatever_the_chunking(tmp_path, serial):
    """Password (one with a stuffed DLE), PAN, track 2: masked in frames and chunks, also in
    a frame with a bad CRC, in garbage (a frame cut off) and in a partial frame."""
    ecr, term, types = _stream(serial)
    rng = random.Random(16)
    for trial in range(12):
        path = tmp_path / f"r{trial}.jsonl"
        streams = {"ecr": ecr, "terminal": term}
        with Recorder(path, side="tap", protocol="zvt") as rec:
            for who, data in streams.items():     # the register's bytes, then the terminal's
                i = 0
                while i < len(data):
                    n = rng.randint(1, 9)
                    rec.data(who, data[i:i + n])
                    i += n
        assert_no_secrets(path, secrets=(PASSWORD, "101234"), card=(PAN, TRACK2))
        got = load(path)
        frames = [f for f in got.frames() if f["kind"] == "apdu"]
        assert [f["msg"]["type"] for f in frames if f["from"] == "ecr"] == types
        auth = next(f for f in frames if f["msg"]["type"] == "Authorisation")
        assert auth["redacted"] == ["pan", "track2"] and auth["msg"]["pan"] == "E" * 12 + "0119"
        assert auth["msg"]["track2"] == "<masked>"
        info = next(f for f in frames if f["msg"]["type"] == "StatusInformation")
        assert info["msg"]["pan"] == "E" * 12 + "0119"
        for who in ("ecr", "terminal"):
            assert sum(r["n"] for r in got.records if r["type"] == "chunk" and r["from"] == who) == len(streams[who])
        events = [r["event"] for r in got.records if r["type"] == "event"]
        if serial:
            assert {"bad_frame", "garbage", "partial", "nak", "retransmit"} <= set(events)
            assert [f.get("retransmit", False) for f in frames if f["msg"]["type"] == "Registration"] == [False, True]
        # replay puts values back: the password given, card data as masked digits
        script = build_script(got, {"password": "654321"})
        auth_msg = next(ex.request.message for ex in script if isinstance(ex.request.message, Authorisation))
        assert auth_msg.fields.pan == "E" * 12 + "0119" and auth_msg.fields.track2 == "E" * 24
        assert next(ex.request.message for ex in script if isinstance(ex.request.message, Registration)).password == "654321"


def test_a_serial_resend_is_marked_by_cause_and_identical_print_lines_are_not(tmp_path):
    empty = encode_serial(PrintLine(0, "").encode())
    ack_apdu = encode_serial(Ack().encode())
    with Recorder(tmp_path / "r.jsonl", protocol="zvt") as rec:
        rec.data("ecr", encode_serial(Authorisation.make(amount=5, currency=978).encode()))
        rec.data("terminal", bytes([ACK]) + ack_apdu)
        rec.data("ecr", bytes([ACK]))
        for _ in range(2):                         # two empty lines of a receipt: each taken
            rec.data("terminal", empty)
            rec.data("ecr", bytes([ACK]) + ack_apdu)
            rec.data("terminal", bytes([ACK]))
        rec.data("terminal", empty)
        rec.data("ecr", bytes([NAK]))
        rec.data("terminal", empty)                # after a NAK
        rec.data("terminal", empty)                # after no ACK byte at all
    got = load(tmp_path / "r.jsonl")
    lines = [f for f in got.frames() if f["kind"] == "apdu" and f["msg"]["type"] == "PrintLine"]
    assert [bool(f.get("retransmit")) for f in lines] == [False, False, False, True, True]
    assert [r["cause"] for r in got.records if r.get("event") == "retransmit"] == ["nak", "timeout"]
    assert len(build_script(got)[0].answers) == 4  # Ack and three lines: the resends are not replayed


def test_substitution_needs_a_six_digit_password():
    apdu = bytes.fromhex("0600062A2A2ADE0978")
    assert substitute(apdu, [[3, 6, "password"]], {"password": "112233"}) == bytes.fromhex("060006112233DE0978")
    assert substitute(apdu, [[3, 6, "password"]]) == bytes.fromhex("060006246810DE0978")  # the demo default
    from posterm.errors import ConfigError

    with pytest.raises(ConfigError, match="6 decimal digits"):
        substitute(apdu, [[3, 6, "password"]], {"password": "12ab56"})
    with pytest.raises(ConfigError, match="outside"):
        substitute(apdu, [[3, 60, "password"]])
    with pytest.raises(ConfigError, match="does not decode"):
        message_of({"msg": {"type": "Registration"}, "hex": "0600062A2A2ADE0978", "masked": [[3, 6, "pin"]]})


# ------------------------------------------------------------------ show and pcapng


def test_show_names_the_commands(session):
    from posterm.cli import main

    result = CliRunner().invoke(main, ["show", str(session["ecr"])])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "protocol zvt" in out and "\x1b[" not in out
    assert "ECR ->  apdu          Registration(password=<masked>, config_byte=222, currency=156)" in out
    assert "Authorisation(amount=1250, currency=156)" in out and "Reversal(password=<masked>, receipt_no=1)" in out
    assert "StatusInformation(result_code=0, amount=1250" in out and "pan=EEEEEEEEEEEEEE0001" in out
    assert "<- TRM  apdu          Completion(" in out and PASSWORD not in out
    assert " ack " not in out and " ACK " not in out           # 80 00 00 and ACK bytes only with --acks
    acks = CliRunner().invoke(main, ["show", "--acks", str(session["ecr"])]).output
    assert " ack " in acks and (" ACK " in acks) == (session["transport"] == "serial")


def test_convert_to_pcapng_for_wiresharks_zvt_dissector(session, tmp_path):
    from posterm.cli import main

    out = tmp_path / "s.pcapng"
    result = CliRunner().invoke(main, ["convert", str(session["ecr"]), str(out)])
    assert result.exit_code == 0, result.output
    frames = load(session["ecr"]).frames()
    packets = list(read_pcapng(out.read_bytes()))
    assert result.output.strip().endswith(f"{len(frames)} packets") and len(packets) == len(frames)
    for (linktype, _ts, data, flags), f in zip(packets, frames):
        assert linktype == LINKTYPE_ZVT and data.hex().upper() == f["hex"]
        assert flags == (OUTBOUND if f["from"] == "ecr" else INBOUND)
    first = packets[0][2]
    assert first[:2] == (b"\x10\x02" if session["transport"] == "serial" else b"\x06\x00")
    assert bytes.fromhex(PASSWORD) not in out.read_bytes() and b"posterm-zvt" in out.read_bytes()


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_decodes_the_capture_as_zvt(session, tmp_path):
    out = tmp_path / "s.pcapng"
    with out.open("wb") as fh:
        n = write_pcapng(load(session["terminal"]), fh)
    user_dlt = f'uat:user_dlts:"User {LINKTYPE_ZVT - 147} (DLT={LINKTYPE_ZVT})","zvt","0","","0",""'
    proc = subprocess.run(["tshark", "-r", str(out), "-o", user_dlt], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == n
    assert "Registration" in lines[0] and any("Authorisation" in x for x in lines)


# ------------------------------------------------------------------ replay


def _replay_terminal(path: Path, framing: str, **kw):
    ecr, term_side = VirtualTransport.pair()
    player = ZvtReplayTerminal(term_side, build_script(load(path), {"password": PASSWORD}), fast=True,
                               framing=framing, **kw)
    th = threading.Thread(target=player.run, kwargs={"timeout": 30}, daemon=True)
    th.start()
    return ecr, player, th


@pytest.mark.parametrize("side", ["ecr", "terminal"])
def test_replay_as_terminal_answers_a_live_zvt_driver(session, side, tmp_path):
    framing = session["transport"]
    ecr, player, th = _replay_terminal(session[side], framing)
    with ZvtTerminal(ecr, journal=Journal(tmp_path / "j.db"), framing=framing, password=PASSWORD,
                     currency="CNY") as term:
        paid, no = flow(term)
    th.join(5)
    assert player.done and player.divergences == [] and player.answered == len(COMMANDS)
    assert paid.order_id != session["results"][0].order_id and paid.code_last4 == "0001"


def test_tap_records_a_zvt_line(session, tmp_path):
    """``posterm tap --protocol zvt``'s machinery between a live driver and a replaying terminal."""
    from posterm.record.tap import Tap

    framing = session["transport"]
    ecr, tap_ecr = VirtualTransport.pair()
    tap_term, term = VirtualTransport.pair()
    player = ZvtReplayTerminal(term, build_script(load(session["ecr"]), {"password": PASSWORD}), fast=True,
                               framing=framing)
    th = threading.Thread(target=player.run, kwargs={"timeout": 30}, daemon=True)
    th.start()
    tap = Tap(tap_ecr, tap_term, Recorder(tmp_path / "t.jsonl", side="tap", protocol="zvt")).start()
    with ZvtTerminal(ecr, journal=Journal(tmp_path / "j.db"), framing=framing, password=PASSWORD,
                     currency="CNY") as t:
        flow(t)
    th.join(5)
    tap.close()
    got = load(tmp_path / "t.jsonl")
    assert got.header["side"] == "tap" and player.divergences == []
    assert [f["msg"]["type"] for f in got.frames() if f["from"] == "ecr" and f["kind"] == "apdu"] == COMMANDS
    assert_no_secrets(tmp_path / "t.jsonl")


def test_replay_as_terminal_reports_where_the_register_diverged(session, tmp_path):
    framing = session["transport"]
    ecr, player, th = _replay_terminal(session["ecr"], framing)
    with ZvtTerminal(ecr, journal=Journal(tmp_path / "j.db"), framing=framing, password=PASSWORD,
                     currency="CNY") as term:
        term.hello()
        with pytest.raises(OutcomeMismatch):       # another amount: the first recorded payment answers
            term.pay(999, "CNY")
        with pytest.raises(ZvtRefused):            # no refund was recorded: refused 84 83
            term.refund("ZV-NOT-RECORDED", 100, "RF1", PASSWORD, currency="CNY")
    player.stop.set()
    th.join(5)
    text = "\n".join(map(str, player.divergences))
    assert "Authorisation amount: recorded 1250, got 999" in text
    assert "the register sent Refund (amount=100, currency=156): not in the recording" in text


def test_replay_as_ecr_against_a_live_emulator_matches_and_a_tampered_recording_diffs(session, tmp_path):
    """The password went masked into the file: it is given back with --secret (the
    emulator's default, 246810, is refused by a terminal whose password is 123456)."""
    from posterm.cli import main

    lines = [json.loads(x) for x in session["terminal"].read_text().splitlines()]
    info = next(r for r in lines if r.get("type") == "frame" and r.get("msg") and r["msg"]["type"] == "StatusInformation")
    info["msg"]["amount"] = 9999
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(r) + "\n" for r in lines))
    for name, path, secret, code in (("ok", session["terminal"], ["--secret", f"password={PASSWORD}"], 0),
                                     ("tampered", tampered, ["--secret", f"password={PASSWORD}"], 1)):
        with start_emulator(tmp_path / name, session["transport"]) as emu:
            result = CliRunner().invoke(main, ["replay", str(path), "--as", "ecr", "--port", emu.port, "--fast",
                                               *secret])
        assert result.exit_code == code, result.output
        if name == "ok":
            assert result.output.strip() == f"match: {len(COMMANDS)} ECR message(s) sent"
        elif name == "tampered":
            assert result.output.splitlines()[1:] == [
                "  #2: StatusInformation answer 5: amount: recorded 9999, got 1250"]
    # Without --secret the demo password goes back in: this terminal refuses the registration.
    from posterm.transport import open_transport

    script = Script(build_script(load(session["ecr"]))[:1], "zvt")
    with start_emulator(tmp_path / "no-secret", session["transport"]) as emu:
        t = open_transport(emu.port)
        try:
            result = replay_ecr(t, script, fast=True)
        finally:
            t.close()
    assert [str(d) for d in result.diffs] == ["#1: Completion answer 2: recorded Completion(type_byte=0, terminal_id=00000001,"
                                              " currency=156), got Aborted(result_code=131)"]


def test_replay_as_ecr_crosses_transports(tmp_path):
    """The golden was recorded on a pty (serial framing); replayed over TCP it frames as TCP."""
    script = build_script(load(SESSIONS / "zvt_day.jsonl"))
    from posterm.transport import open_transport

    with start_emulator(tmp_path / "emu", "tcp", password="246810") as emu:
        t = open_transport(emu.port)
        try:
            result = replay_ecr(t, script, fast=True)
        finally:
            t.close()
    assert result.ok, "\n".join(map(str, result.diffs))
    assert result.exchanges == len(script) == 8        # the zvt_day golden: 8 commands


def test_replay_cli_as_terminal_on_a_pty_then_the_driver(tmp_path):
    """The golden (recorded with the emulator's default password: no --secret needed)."""
    from tests.record.flows import FLOWS, OPEN

    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "posterm", "replay", str(SESSIONS / "zvt_day.jsonl"), "--as",
                             "terminal", "--fast", "--port-file", str(port_file), "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # a loaded machine takes seconds to start a Python process
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the replayer never wrote its port file"
            time.sleep(0.05)  # poll interval of a bounded wait on a condition
        port = port_file.read_text().strip()
        with ZvtTerminal.open(port, journal=str(tmp_path / "j.db"), **OPEN["zvt"]) as term:
            FLOWS["zvt_day"](term)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == port and "match: 8 ECR message(s) answered" in out


def test_the_observer_never_raises_on_a_hostile_line():
    """Random bytes, cut and spliced frames, either transport: records only, every byte accounted for."""
    ecr, term, _ = _stream(True)
    tcp_ecr, tcp_term, _ = _stream(False)
    pool = [ecr, term, tcp_ecr, tcp_term]
    rng = random.Random(99)
    for trial in range(150):
        obs = ZvtObserver()
        sent = {"ecr": 0, "terminal": 0}
        for _ in range(rng.randint(1, 12)):
            who = rng.choice(["ecr", "terminal"])
            src = rng.choice(pool)
            a = rng.randrange(len(src))
            chunk = bytearray(src[a:a + rng.randint(1, 40)] if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 30)))
            if chunk and rng.random() < 0.3:
                chunk[rng.randrange(len(chunk))] ^= 1 << rng.randrange(8)
            for o in obs.feed(who, bytes(chunk), sent[who]):
                assert o.record["type"] in ("frame", "event", "identity")
                assert all(sent[who] - 20_000 <= s <= e for s, e in o.masks)
            sent[who] += len(chunk)
        for who in sent:
            assert 0 <= obs.pending(who) <= sent[who]
            obs.mask_pending(who, sent[who] - obs.pending(who))


# ------------------------------------------------------------------ the commands that record


@pytest.mark.parametrize("transport", ["serial", "tcp"])
def test_emulate_and_pay_record_a_zvt_session(tmp_path, transport):
    """``posterm emulate --protocol zvt --record DIR`` and ``posterm pay --protocol zvt --record FILE``."""
    from posterm.cli import main

    port_file = tmp_path / "port"
    args = [sys.executable, "-m", "posterm", "emulate", "--protocol", "zvt", "--home", str(tmp_path / "home"),
            "--record", str(tmp_path / "rec"), "--port-file", str(port_file)]
    if transport == "tcp":
        args += ["--listen", "tcp://127.0.0.1:0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the emulator never wrote its port file"
            time.sleep(0.05)  # poll interval of a bounded wait on a condition
        port = port_file.read_text().strip()
        result = CliRunner().invoke(main, ["pay", "--protocol", "zvt", "--port", port, "--terminal-password", "246810",
                                           "--amount", "12.34",
                                           "--currency", "CNY", "--json", "--journal", str(tmp_path / "j.db"),
                                           "--record", str(tmp_path / "pay.jsonl")])
        assert result.exit_code == 0, result.output
        answer = next(line for line in result.output.splitlines() if line.startswith("{"))   # progress goes to stderr
        assert json.loads(answer)["result"] == "approved"
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    (emu_file,) = sorted((tmp_path / "rec").glob("T0000001-*.jsonl"))
    for path, side in ((tmp_path / "pay.jsonl", "ecr"), (emu_file, "terminal")):
        rec = load(path)
        assert rec.header["protocol"] == "zvt" and rec.header["side"] == side
        types = [f["msg"]["type"] for f in rec.frames() if f["kind"] == "apdu"]
        assert types[:2] == ["Registration", "Completion"] and "Authorisation" in types and "StatusInformation" in types
        assert_no_secrets(path, secrets=("246810",))
        shown = CliRunner().invoke(main, ["show", str(path)])
        assert shown.exit_code == 0 and "Authorisation(amount=1234, currency=156)" in shown.output
