"""``posterm decode``: every shared ZVT capture decodes to what ../shared/zvt/README.md says,
serial frames (CRC checked, a bad one flagged but still decoded), several APDUs in a row,
garbage and unknown commands as entries rather than tracebacks, stdin, native and Concert
frames, a plug-in family without a decoder, bad hex (one line, exit 2), secrets masked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from firmware_protocol import FrameKind, encode_frame, encode_message
from firmware_protocol.concert import ConcertAnswer, ConcertRequest, Status, TxnType
from firmware_protocol.native.messages import PayRequest, Settle
from firmware_protocol.zvt import Authorisation, Fields, Tlv, TlvContainer, encode_serial
from posterm.cli import main
from posterm.errors import ConfigError
from posterm.families import ProtocolFamily, family
from posterm.families.zvt.decode import decode as zvt_decode
from tests.cli import sweep
from tests.cli.test_bad_input import run_cases
from tests.plugin.conftest import make_site, PLUGIN_DIR

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "zvt"
PASSWORD = "123456"


def load(name: str) -> bytes:
    return (CAPTURES / f"{name}.blob").read_bytes()


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click 8.1
    except TypeError:
        return CliRunner()


def run(*args: str, stdin: bytes | str | None = None):
    return _runner().invoke(main, ["decode", *args], input=stdin)


def run_json(protocol: str, data: bytes, code: int = 0) -> list[dict]:
    r = run("--protocol", protocol, "--json", data.hex(" "))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.exit_code == code, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def flat(fields: list[dict], prefix: str = "") -> dict[str, object]:
    """Field name -> value, nested TLV items as 'parent/child' (the first of a name wins)."""
    out: dict[str, object] = {}
    for f in fields:
        key = prefix + f["name"]
        if "value" in f:
            out.setdefault(key, f["value"])
        if f.get("items"):
            for k, v in flat(f["items"], key + "/").items():
                out.setdefault(k, v)
    return out


def find(fields: list[dict], name: str) -> list[dict]:
    """Every field called ``name``, at any depth."""
    hits = []
    for f in fields:
        if f["name"] == name:
            hits.append(f)
        hits += find(f.get("items") or [], name)
    return hits


# ------------------------------------------------------------------ the shared captures

PAYMENT = {"result_code": 0, "amount": 2500, "card_type": 0x60, "currency": 978, "time": "225558",
           "date": "0405", "pan": "<masked>", "receipt_no": 231, "aid": "750071", "trace": 975,
           "terminal_id": "52523535", "expiry": "2405", "zvt_card_type": 6, "card_type_id": 1,
           "card_name": "MasterCard", "vu_number": "804011926"}

# The README's table: file -> (CLASS INSTR and command, fields as flat() gives them)
README = {
    "1681273860.511128000_ecr_pt": ("06 00 Registration", {"password": "<masked>", "config_byte": 0xDE,
                                                          "currency": 978}),
    "1681282621.302434000_ecr_pt": ("06 50 End of day", {"password": "<masked>"}),
    "1680722649.972316000_ecr_pt": ("06 C0 Read card", {"timeout": 15, "card_type": 16, "dialog_control": 2,
                                                       "tlv/card reading control": 0xD0, "tlv/card type": 0x07}),
    "1680728162.033575000_ecr_pt": ("06 22 Pre-authorisation", {
        "payment_type": 0x40, "currency": 978, "amount": 2500,
        "tlv/BMP-60 data/BMP-60 prefix": "AC", "tlv/BMP-60 data/BMP-60 data": "384HH2"}),
    "1680728213.562478000_ecr_pt": ("06 25 Pre-authorisation reversal", {"payment_type": 0x40, "receipt_no": 231,
                                                                        "currency": 978}),
    "1681455683.221609000_ecr_pt": ("06 23 Partial reversal", {
        "receipt_no": 491, "payment_type": 0x40, "currency": 978, "amount": 1295,
        "tlv/BMP-60 data/BMP-60 prefix": "AC", "tlv/BMP-60 data/BMP-60 data": "MF2246"}),
    # README: "timeout 0" is the EVerest crate reading an absent timeout byte (tests/zvt/test_captures.py)
    "1680728162.647465000_pt_ecr": ("04 FF Intermediate status", {"status": 0x17}),
    "1680728161.963129000_pt_ecr": ("04 0F Status information", {
        "result_code": 0, "tlv/UUID": "000000000000081ca72f", "tlv/ATS": "0578807002", "tlv/card type": 1,
        "tlv/sub type": "fe04", "tlv/ATQA": "0400", "tlv/SAK": 0x20, "tlv/application/application id": "a0000000041010"}),
    "1680728165.675509000_pt_ecr": ("04 0F Status information", PAYMENT),
    "1680728215.659492000_pt_ecr": ("04 0F Status information", {
        **PAYMENT, "amount": 0, "receipt_no": 232, "trace": 977,
        "additional_text": "AS-Proc-Code= 00 076 06\rCapt.-Ref.= 0099\rAID59= 081520\r DAUER   7 TAGE"}),
    "1680761828.489701000_pt_ecr": ("04 0F Status information", {
        "result_code": 0, "amount": 958, "trace": 982, "date": "0406", "time": "081706",
        "single_amounts/receipt_start": 233, "single_amounts/receipt_end": 234, "single_amounts/eurocard": 958}),
    "1680761818.641601000_pt_ecr": ("06 0F Completion", {"status_byte": 0x10, "terminal_id": "52523535",
                                                        "currency": 978}),
    # README: serial 18632442 is the crate's byte-wise reading of 17 FD 1E 3C (tests/zvt/test_captures.py)
    "1680728219.054216000_pt_ecr": ("06 0F Completion", {
        "software_version": "GER-APP-v2.0.9;cS02.01.01-10.10-2-2;CC26", "terminal_status": 0,
        "tlv/terminal id": "52523535", "tlv/device information/device name": "cVEND plug",
        "tlv/device information/software version": "GER-APP-v2.0.9;cS02.01.01-10.10-2-2;CC26",
        "tlv/device information/serial number": "17fd1e3c", "tlv/device information/device state": 0,
        "tlv/date and time/date": "20230405", "tlv/date and time/time": "225655"}),
    "1680728165.827009000_pt_ecr": ("06 0F Completion", {}),
    "1680728215.585561000_pt_ecr": ("06 D3 Print text block", {"tlv/receipt type": 2,
                                                              "tlv/print texts/end-of-line marker": 255}),
}


def test_the_table_covers_every_capture():
    assert set(README) == {p.stem for p in CAPTURES.glob("*.blob")}


@pytest.mark.parametrize("name", sorted(README))
def test_every_capture_decodes_as_the_readme_says(name):
    summary, expected = README[name]
    [entry] = run_json("zvt", load(name))
    assert entry["kind"] == "apdu" and entry["offset"] == 0 and "error" not in entry
    assert entry["summary"] == summary
    got = flat(entry["fields"])
    assert {k: got.get(k) for k in expected} == expected
    if name == "1680728165.675509000_pt_ecr":   # no more fields than the README lists
        assert set(got) == set(expected)


@pytest.mark.parametrize("name", sorted(README))
def test_every_capture_decodes_the_same_in_a_serial_frame(name):
    bare = run_json("zvt", load(name))
    [entry] = run_json("zvt", encode_serial(load(name)))
    assert entry["kind"] == "serial frame" and entry["crc"] == "ok"
    assert entry["fields"] == bare[0]["fields"] and entry["summary"] == bare[0]["summary"]


def test_the_print_text_block_nests_its_lines():
    [entry] = run_json("zvt", load("1680728215.585561000_pt_ecr"))
    lines = find(entry["fields"], "text line")
    assert len(lines) == 33 and lines[1]["value"].strip() == "** Customer Receipt **"


def test_the_end_of_day_totals_count_transactions():
    [entry] = run_json("zvt", load("1680761828.489701000_pt_ecr"))
    [euro] = find(entry["fields"], "eurocard")
    assert (euro["value"], euro["note"]) == (958, "2 transactions")


def test_the_library_shows_the_pan_only_when_asked():
    raw = load("1680728165.675509000_pt_ecr")
    assert flat(zvt_decode(raw)[0]["fields"])["pan"] == "<masked>"
    assert flat(zvt_decode(raw, mask=False)[0]["fields"])["pan"] == "559883EEEEEE8074"   # E: masked by the PT


def test_text_output_names_the_fields():
    r = run("--protocol", "zvt", load("1681273860.511128000_ecr_pt").hex())
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "#1 at byte 0: apdu  06 00 Registration"
    assert "  config_byte: 222 (0xDE)" in r.stdout and "  currency: 978 (EUR)" in r.stdout
    assert "  password: <masked>" in r.stdout and PASSWORD not in r.stdout
    r = run("--protocol", "zvt", load("1680728219.054216000_pt_ecr").hex())
    assert "  BMP 06 tlv:\n    1F44 terminal id: 52523535\n    E4 device information:\n" \
           "      1F40 device name: cVEND plug\n" in r.stdout


# ------------------------------------------------------------------ serial frames and what goes wrong


def test_the_readme_serial_example():
    r = run("--protocol", "zvt", "10", "02", "80", "00", "00", "10", "03", "F5", "1F")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("#1 at byte 0: serial frame  80 00 Ack\n  crc: ok\n")
    [entry] = run_json("zvt", bytes.fromhex("10 02 05 01 03 12 34 56 10 03 E0 43"))
    assert entry["summary"] == "05 01 Status enquiry" and flat(entry["fields"]) == {"password": "<masked>"}


def test_a_bad_crc_is_flagged_and_the_apdu_still_decoded():
    raw = load("1680761818.641601000_pt_ecr")           # holds a 10 byte: stuffed on the line
    frame = bytearray(encode_serial(raw))
    assert frame.count(b"\x10\x10") == 1
    frame[-1] ^= 0x01
    [entry] = run_json("zvt", bytes(frame), code=1)
    assert entry["crc"] == "bad" and entry["error"].startswith("CRC mismatch")
    assert entry["summary"] == "06 0F Completion"
    assert flat(entry["fields"]) == {"status_byte": 0x10, "terminal_id": "52523535", "currency": 978}


def test_acks_and_several_frames_in_a_row():
    reg, ack = load("1681273860.511128000_ecr_pt"), bytes.fromhex("800000")
    line = b"\x06" + encode_serial(reg) + b"\x06" + encode_serial(ack) + b"\x15"
    entries = run_json("zvt", line)
    assert [e["kind"] for e in entries] == ["ack", "serial frame", "ack", "serial frame", "nak"]
    assert [e["offset"] for e in entries] == [0, 1, 1 + len(encode_serial(reg)), 2 + len(encode_serial(reg)),
                                             len(line) - 1]
    bare = reg + ack + load("1680728162.647465000_pt_ecr") + load("1680728215.585561000_pt_ecr")
    entries = run_json("zvt", bare)
    assert [e["summary"] for e in entries] == ["06 00 Registration", "80 00 Ack", "04 FF Intermediate status",
                                               "06 D3 Print text block"]
    assert [e["offset"] for e in entries] == [0, 9, 12, 16]


@pytest.mark.parametrize("hex_input, kinds, error", [
    ("06 99 02 00 00", ["apdu"], "unknown ZVT command 06 99"),
    ("06 01 05 04 00 00", ["apdu"], "cut off: LEN says 5 data bytes, 3 follow"),
    ("06 01 04 99 00 00 00", ["apdu"], "unknown BMP 0x99"),
    ("06", ["ack"], None),
    ("10 02 80 00 00 10 03 F5 1F AA BB 10 02 80 00", ["serial frame", "garbage", "serial frame"], "garbage"),
    ("10 02 80 00 00 10 07 F5 1F", ["serial frame", "garbage"], "DLE followed by 07"),
    ("FF FF FF", ["apdu"], "cut off"),
    ("AA 10 02 80 00 00 10 03 F5 1F", ["garbage", "serial frame"], "garbage"),   # a stray byte before a frame
    ("06 01 07 04 00 00 00 10 02 00", ["apdu"], None),    # 10 02 inside an APDU: still an APDU
    ("06 00 02 12 34", ["apdu"], "Registration: the data matches none of its layouts"),
])
def test_garbage_and_unknown_commands_are_entries_not_tracebacks(hex_input, kinds, error):
    r = run("--protocol", "zvt", "--json", hex_input)
    assert r.exception is None or isinstance(r.exception, SystemExit)
    entries = json.loads(r.stdout)
    assert [e["kind"] for e in entries] == kinds
    assert r.exit_code == (1 if error else 0)
    if error:
        bad = [e for e in entries if "error" in e]
        assert bad and any(error in e["error"] or error in e["summary"] or error == e["kind"] for e in bad), entries
    text = run("--protocol", "zvt", hex_input)
    assert text.exit_code == r.exit_code and "Traceback" not in text.stdout + text.stderr
    assert text.stderr == ""


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), name=st.sampled_from(["zvt", "posterm", "concert"]),
       prefix=st.sampled_from([b"", b"\x10\x02", b"\xa5\x01\x01", b"\x02", b"\x06\x01"]))
def test_any_bytes_give_entries_never_an_exception(data, name, prefix):
    data = prefix + data
    entries = family(name).decode(data)
    json.dumps(entries)
    offsets = [e["offset"] for e in entries]
    assert offsets == sorted(offsets) and all(0 <= o < max(1, len(data)) for o in offsets)
    assert bool(entries) == bool(data)
    for e in entries:
        assert isinstance(e["kind"], str) and isinstance(e.get("summary", ""), str)


# ------------------------------------------------------------------ input


def test_hex_in_the_forms_logs_use():
    want = run_json("zvt", load("1681273860.511128000_ecr_pt"))
    for form in ("060006123456de0978", "06:00:06:12:34:56:DE:09:78", "0x06 0x00 0x06 0x12 0x34 0x56 0xDE 0x09 0x78",
                 "06 00 06\n12 34 56\r\n\tDE 09 78", "06-00-06-12-34-56-de-09-78, "):
        r = run("--protocol", "zvt", "--json", form)
        assert r.exit_code == 0 and json.loads(r.stdout) == want, form


def test_stdin():
    raw = load("1680728215.585561000_pt_ecr")
    xxd = "\n".join(raw[i:i + 30].hex() for i in range(0, len(raw), 30)) + "\n"   # as `xxd -p` prints
    r = run("--protocol", "zvt", "--json", "-", stdin=xxd)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == run_json("zvt", raw)


@pytest.mark.parametrize("stdin, why", [
    ("0" * (1024 * 1024 + 2), "more than 1048576 bytes"),
    (b"\x06\x00\x06\x12\x34\x56\xde\x09\x78", "not hex text"),
    ("", "no bytes given"),
    ("  \n", "no bytes given"),
    ("06 0", "odd number"),
])
def test_bad_stdin_is_one_line(stdin, why):
    r = run("--protocol", "zvt", "-", stdin=stdin)
    assert r.exit_code == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("posterm: error: ") and why in r.stderr, r.stderr


def _cases() -> list[sweep.Case]:
    d = ["decode", "--protocol", "zvt"]
    pan = "4111111111111111"
    return [
        sweep.Case([*d, "zz"], 2, ("HEX",)),
        sweep.Case([*d, "06 0"], 2, ("HEX",)),
        sweep.Case([*d, "0x"], 2, ("HEX",)),
        sweep.Case([*d, " "], 2, ("HEX",)),
        sweep.Case([*d, "06", "-"], 2, ("HEX",)),
        sweep.Case([*d, "ü06"], 2, ("HEX",)),
        sweep.Case([*d, pan + "zz"], 2, ("HEX",), secret=pan),
        sweep.Case([*d, "0" * (1024 * 1024 + 2)], 2, ("HEX",)),
        sweep.Case([*d, "-"], 2, ("HEX",), stdin="xyz"),
        sweep.Case(["decode", "--protocol", "nosuch", "00"], 2, ("--protocol",)),
        sweep.Case(["decode"], 2, ("HEX",)),
        sweep.Case(["decode", "--protocol", "zvt", "--no-such-flag", "00"], 2, ("--no-such-flag",)),
    ]


def test_bad_input_sweep_cases(tmp_path, monkeypatch):
    """Run through the sweep's own checker (tests/cli/test_bad_input.py): exit 2, one line
    naming HEX (or the option), no traceback, the input not echoed."""
    failures = run_cases(_cases(), tmp_path, monkeypatch)
    assert not failures, "\n".join(failures)


def test_the_generated_sweep_reaches_decode():
    path, cmd = next((p, c) for p, c in sweep.leaf_commands() if p == ("decode",))
    cases = sweep.cases_for(path, cmd, sweep.Files(Path("/nonexistent")))
    assert {c.argv[1] for c in cases} >= {"--protocol"} and any("x" * 100 in " ".join(c.argv) for c in cases)


def test_help_lists_the_exit_codes_and_an_example():
    r = run("--help")
    assert r.exit_code == 0
    assert "1  some frame did not decode" in r.stdout and "1681273860.511128000_ecr_pt" in r.stdout
    assert "06 00 06 12 34 56 DE 09 78" in r.stdout


# ------------------------------------------------------------------ the other built-in families


def test_a_native_frame_with_its_tlv_fields():
    msg = PayRequest(amount_minor=12345, currency="CNY", order_id="ORD-1", payment_code="289900000000000001",
                     description="coffee")
    frame = encode_frame(FrameKind.DATA, 7, encode_message(msg))
    entries = run_json("posterm", frame + encode_frame(FrameKind.ACK, 7))
    assert [e["kind"] for e in entries] == ["frame", "ack"]
    data = entries[0]
    assert data["summary"] == "DATA seq 7: PayRequest" and data["type"] == "0x0010"
    assert [(f["id"], f["name"]) for f in data["fields"]][:4] == [
        ("tag 01", "amount_minor"), ("tag 02", "currency"), ("tag 03", "order_id"), ("tag 04", "payment_code")]
    assert flat(data["fields"])["payment_code"] == "**************0001"
    r = run("--protocol", "posterm", frame.hex())
    assert "  tag 04 payment_code: **************0001" in r.stdout and "289900000000000001" not in r.stdout
    bad = bytearray(frame)
    bad[-1] ^= 1
    [entry] = run_json("posterm", bytes(bad), code=1)
    assert entry["error"] == "CRC mismatch" and flat(entry["fields"])["amount_minor"] == 12345


def test_a_native_password_is_masked():
    frame = encode_frame(FrameKind.DATA, 1, encode_message(Settle(operator_password="246810")))
    r = run("--protocol", "posterm", "--json", frame.hex())
    assert r.exit_code == 0 and "246810" not in r.stdout
    assert flat(json.loads(r.stdout)[0]["fields"]) == {"operator_password": "<redacted>"}


def test_a_concert_request_and_answer():
    req = ConcertRequest(amount_minor=1250, currency_numeric=978, txn_type=TxnType.DEBIT, private="ORD1")
    ans = ConcertAnswer(status=Status.ACCEPTED, amount_minor=1250, currency_numeric=978,
                        report="4111111111111111".ljust(55), private="ORD1")
    line = b"\x05" + req.encode() + b"\x04" + b"\x06" + ans.encode()
    entries = run_json("concert", line)
    assert [e["kind"] for e in entries] == ["enq", "frame", "eot", "ack", "frame"]
    assert entries[1]["summary"] == "request: debit 1250 (EUR)"
    assert flat(entries[1]["fields"])["amount_minor"] == 1250
    assert entries[4]["summary"] == "answer: accepted 1250 (EUR)"
    assert flat(entries[4]["fields"])["report"].endswith("1111") and "411111" not in json.dumps(entries)
    bad = bytearray(req.encode())
    bad[-1] ^= 0x20
    [entry] = run_json("concert", bytes(bad), code=1)
    assert entry["error"].startswith("bad LRC") and flat(entry["fields"])["private"] == "ORD1"


# ------------------------------------------------------------------ secrets


def test_zvt_secrets_are_masked_in_text_and_json():
    pan, track2 = "4111111111111111", "4111111111111111D2512"
    msg = Authorisation(Fields(amount=100, currency=978, pan=pan, track2=track2))
    for frame in (msg.encode(), encode_serial(msg.encode())):
        for fmt in ((), ("--json",)):
            r = run("--protocol", "zvt", *fmt, frame.hex())
            assert r.exit_code == 0, r.stderr
            assert "411111" not in r.stdout and "<masked>" in r.stdout
    emv = Authorisation(Fields(amount=100, tlv=TlvContainer((Tlv(0x5A, bytes.fromhex(pan)),
                                                            Tlv(0x1F44, bytes.fromhex("52523535"))))))
    [entry] = run_json("zvt", emv.encode())
    assert flat(entry["fields"])["tlv/tag 5A"] == "<masked>" and pan not in json.dumps(entry)
    assert flat(entry["fields"])["tlv/terminal id"] == "52523535"
    reg = load("1681273860.511128000_ecr_pt")
    for frame in (reg, encode_serial(reg)):
        r = run("--protocol", "zvt", "--json", frame.hex())
        assert PASSWORD not in r.stdout


# ------------------------------------------------------------------ a family without a decoder


@pytest.fixture
def toy_registered(tmp_path, monkeypatch):
    site = make_site(tmp_path / "site")
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.syspath_prepend(str(site))
    yield
    for name in [n for n in sys.modules if n == "toyfam" or n.startswith("toyfam.")]:
        del sys.modules[name]


def test_a_plugin_family_without_a_decoder_says_so(toy_registered):
    assert family("toy").decoder is None
    r = run("--protocol", "toy", "00 01")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == "posterm: error: protocol family 'toy' has no decoder: posterm decode cannot read its frames\n"


def test_the_real_entry_point_prints_one_line(tmp_path):
    site = make_site(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]),
           "POSTERM_HOME": str(tmp_path / "home")}
    for args, code in ((["--protocol", "toy", "00"], 2), (["--protocol", "zvt", "0g"], 2),
                       (["--protocol", "zvt", "06 99 00"], 1)):
        p = subprocess.run([sys.executable, "-m", "posterm", "decode", *args], env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == code, p.stderr
        assert "Traceback" not in p.stderr
        if code == 2:
            assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith("posterm: error: ")


def test_a_decoder_part_is_checked_like_the_others():
    with pytest.raises(ConfigError, match="decoder must be 'module:attribute'"):
        ProtocolFamily("x", "x", driver="a:b", terminal_link="a:b", decoder="not a spec")
    fam = ProtocolFamily("x", "x", driver="a:b", terminal_link="a:b", decoder="builtins:list")
    with pytest.raises(ConfigError, match="did not return a list of frame descriptions"):
        fam.decode(b"\x00")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        ProtocolFamily("x", "x", driver="a:b", terminal_link="a:b", decoder="no.such.module:f").decode(b"\x00")
