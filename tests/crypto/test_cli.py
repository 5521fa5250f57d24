"""Every published vector through `posterm crypto` too, and its usage errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from posterm.cli import main
from tests.crypto.test_vectors import load


def run(*args):
    r = CliRunner().invoke(main, ["crypto", *args])
    return r.exit_code, r.output.strip()


def ok(*args):
    code, out = run(*args)
    assert code == 0, out
    return out


def test_aes_dukpt_vectors_via_cli():
    v = load("aes_dukpt.json")
    ksn0 = v["initial_key_id"] + "00000000"
    assert ok("dukpt", "initial-key", "--bdk", v["bdk"], "--ksn", ksn0) == v["initial_key"]
    for t in v["transactions"]:
        assert ok("dukpt", "derive", "--bdk", v["bdk"], "--ksn", t["ksn"]) == t["transaction_key"]
        assert ok("dukpt", "derive", "--bdk", v["bdk"], "--ksn", t["ksn"], "--usage", "pin") == t["pin_key"]
        assert ok("dukpt", "derive", "--bdk", v["bdk"], "--ksn", t["ksn"], "--usage", "mac-gen") == \
            t["mac_generation_key"]
        assert ok("dukpt", "derive", "--bdk", v["bdk"], "--ksn", t["ksn"], "--usage", "data-encrypt") == \
            t["data_encryption_key"]
        inp = v["pin_block_inputs"]
        assert ok("pinblock", "encode", "--format", "4", "--pin", inp["pin"], "--pan", inp["pan"], "--key",
                  t["pin_key"], "--fill", inp["random_fill"]) == t["encrypted_pin_block_iso4"]


def test_tdes_dukpt_vectors_via_cli():
    v = load("tdes_dukpt.json")
    assert ok("dukpt", "initial-key", "--bdk", v["bdk"], "--ksn", v["initial_ksn"]) == v["ipek"]
    for t in v["transactions"]:
        assert ok("dukpt", "derive", "--bdk", v["bdk"], "--ksn", t["ksn"]) == t["transaction_key"]
        pin_key = ok("dukpt", "derive", "--bdk", v["bdk"], "--ksn", t["ksn"], "--usage", "pin")
        assert ok("pinblock", "encode", "--format", "0", "--pin", v["pin"], "--pan", v["pan"], "--key",
                  pin_key) == t["encrypted_pin_block_iso0"]
        assert ok("pinblock", "decode", "--format", "0", "--block", t["encrypted_pin_block_iso0"], "--pan",
                  v["pan"], "--key", pin_key) == v["pin"]
        req_key = ok("dukpt", "derive", "--bdk", v["bdk"], "--ksn", t["ksn"], "--usage", "mac-gen")
        resp_key = ok("dukpt", "derive", "--bdk", v["bdk"], "--ksn", t["ksn"], "--usage", "mac-verify")
        assert ok("retail-mac", "--key", req_key, "--text", v["mac_message_ascii"], "--length", "4") == \
            t["request_mac_x919"]
        assert ok("retail-mac", "--key", resp_key, "--data", v["mac_message_ascii"].encode().hex(), "--length",
                  "4") == t["response_mac_x919"]
    assert ok("pinblock", "encode", "--format", "0", "--pin", v["pin"], "--pan", v["pan"]) == v["clear_pin_block_iso0"]


def test_pin_block_vectors_via_cli():
    d = load("pin_blocks.json")
    for case in d["format0_clear"]:
        assert ok("pinblock", "encode", "--format", "0", "--pin", case["pin"], "--pan", case["pan"]) == case["block"]
    for case in d["format4_pan_field"]:
        assert ok("pinblock", "pan-field", "--pan", case["pan"]) == case["field"]
    for case in d["format4_encrypted"]:
        assert ok("pinblock", "encode", "--format", "4", "--pin", case["pin"], "--pan", case["pan"], "--key",
                  case["key"], "--fill", case["random_fill"]) == case["block"]
        assert ok("pinblock", "decode", "--format", "4", "--block", case["block"], "--pan", case["pan"], "--key",
                  case["key"]) == case["pin"]


def test_cmac_kcv_tr31_vectors_via_cli():
    v = load("aes_cmac.json")
    for case in v["cases"]:
        data = v["message"][: 2 * case["length"]]
        assert ok("cmac", "--key", v["key"], "--data", data) == case["mac"]
    assert ok("kcv", "--key", v["aes_kcv"]["key"], "--length", "5") == v["aes_kcv"]["kcv_cmac"]
    for case in load("tr31.json")["cases"]:  # A (read-only), B and D
        assert ok("tr31", "unwrap", "--kbpk", case["kbpk"], case["block"]) == case["key"]
        assert case["key"] not in ok("tr31", "inspect", case["block"], "--json")
    block = ok("tr31", "wrap", "--kbpk", "00" * 32, "--header", "D0000B1AX00N0000", "11" * 16)
    assert json.loads(ok("tr31", "unwrap", "--kbpk", "00" * 32, block, "--json"))["usage"] == "B1"
    assert json.loads(ok("tr31", "inspect", block, "--json"))["exportability"] == "N"


@pytest.mark.parametrize("args", [
    ["kcv", "--key", "XYZ"], ["kcv", "--key", "0011"], ["dukpt", "derive", "--bdk", "00" * 16, "--ksn", "00" * 11],
    ["pinblock", "encode", "--format", "4", "--pin", "1234", "--pan", "41111111"],
    ["pinblock", "encode", "--format", "0", "--pin", "12", "--pan", "4111111111111111"],
    ["tr31", "unwrap", "--kbpk", "00" * 16, "B0080P0TE00E0000" + "00" * 32],
    ["tr31", "inspect", "garbage"], ["retail-mac", "--key", "00" * 16],
    ["retail-mac", "--key", "00" * 8, "--data", "00"], ["pinblock", "pan-field", "--pan", "12a4"]])
def test_bad_input_is_a_one_line_usage_error(args):
    r = CliRunner().invoke(main, ["crypto", *args])
    assert r.exit_code == 2 and "Traceback" not in r.output and "posterm: error: " in r.output


def test_bdk_file_prints_only_check_values(tmp_path):
    """A BDK read from a file is a real secret: only KCVs come out, and they match the vectors."""
    from posterm.crypto import common as c

    v = load("aes_dukpt.json")
    f = tmp_path / "bdk.hex"
    f.write_text(v["bdk"] + "\n")
    for t in v["transactions"]:
        out = ok("dukpt", "derive", "--bdk-file", str(f), "--ksn", t["ksn"], "--usage", "pin")
        assert out == c.kcv(bytes.fromhex(t["pin_key"])).hex().upper()
        got = json.loads(ok("dukpt", "derive", "--bdk-file", str(f), "--ksn", t["ksn"], "--json"))
        assert got["mac-gen_kcv"] == c.kcv(bytes.fromhex(t["mac_generation_key"])).hex().upper()
        assert got["derivation_kcv"] == c.kcv(bytes.fromhex(t["transaction_key"])).hex().upper()
        text = json.dumps(got)
        for secret in (v["bdk"], v["initial_key"], t["transaction_key"], t["pin_key"], t["mac_generation_key"]):
            assert secret not in text
    td = load("tdes_dukpt.json")
    (tmp_path / "tdes.bin").write_bytes(bytes.fromhex(td["bdk"]))  # 16 raw bytes work too
    t = td["transactions"][0]
    out = ok("dukpt", "derive", "--bdk-file", str(tmp_path / "tdes.bin"), "--ksn", t["ksn"])
    assert out == c.kcv(bytes.fromhex(t["transaction_key"]), c.Algorithm.TDES).hex().upper()
    assert ok("dukpt", "initial-key", "--bdk-file", str(f), "--ksn", v["initial_key_id"] + "00000000") == \
        c.kcv(bytes.fromhex(v["initial_key"])).hex().upper()


def test_pin_is_read_at_a_hidden_prompt():
    v = load("aes_dukpt.json")
    t, inp = v["transactions"][0], v["pin_block_inputs"]
    r = CliRunner().invoke(main, ["crypto", "pinblock", "encode", "--format", "4", "--pan", inp["pan"], "--key",
                                  t["pin_key"], "--fill", inp["random_fill"]], input=inp["pin"] + "\n")
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == t["encrypted_pin_block_iso4"]
    assert inp["pin"] not in r.output.replace(t["encrypted_pin_block_iso4"], "")  # not echoed


@pytest.mark.parametrize("args", [
    ["dukpt", "derive", "--ksn", "00" * 12],                                       # no BDK at all
    ["dukpt", "derive", "--bdk", "00" * 16, "--bdk-file", "x", "--ksn", "00" * 12],  # both
    ["dukpt", "derive", "--bdk-file", "/nonexistent/bdk", "--ksn", "00" * 12],
    ["dukpt", "derive", "--bdk", "00" * 16, "--ksn", "00" * 8 + "0001FFFF"],         # 17 one-bits
    ["dukpt", "derive", "--bdk", "00" * 16, "--ksn", "00" * 10, "--usage", "data-encrypt"],
    ["tr31", "unwrap", "--kbpk", "00" * 32, "D0016B1QX00N0000"],
    ["tr31", "wrap", "--kbpk", "00" * 32, "--header", "D0000B1AX00N0000", "1122"],
    ["pinblock", "decode", "--format", "0", "--block", "041261AAAAEDCBA9", "--pan", "4012345678909"],
])
def test_more_bad_input_is_a_usage_error(args):
    r = CliRunner().invoke(main, ["crypto", *args])
    assert r.exit_code == 2 and "Traceback" not in r.output and "posterm: error: " in r.output, r.output


@pytest.mark.parametrize("sub", [[], ["dukpt", "derive"], ["pinblock", "encode"], ["tr31", "inspect"], ["kcv"]])
def test_help_documents_every_command(sub):
    r = CliRunner().invoke(main, ["crypto", *sub, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_hexish = st.text("0123456789ABCDEFabcdefXZ ", max_size=70)
_digits = st.text("0123456789X", max_size=22)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from([
    lambda a, b, n: ["kcv", "--key", a], lambda a, b, n: ["cmac", "--key", a, "--data", b],
    lambda a, b, n: ["cmac", "--tdes", "--key", a, "--data", b],
    lambda a, b, n: ["dukpt", "derive", "--bdk", a, "--ksn", b],
    lambda a, b, n: ["dukpt", "initial-key", "--bdk", a, "--ksn", b],
    lambda a, b, n: ["pinblock", "encode", "--format", "0", "--pin", n, "--pan", n],
    lambda a, b, n: ["pinblock", "encode", "--format", "4", "--pin", n, "--pan", n, "--key", a],
    lambda a, b, n: ["pinblock", "decode", "--format", "3", "--block", a, "--pan", n, "--key", b],
    lambda a, b, n: ["pinblock", "decode", "--format", "4", "--block", a, "--pan", n, "--key", b],
    lambda a, b, n: ["tr31", "unwrap", "--kbpk", a, "B0080P0TE00E0000" + b],
    lambda a, b, n: ["tr31", "unwrap", "--kbpk", a, "D0112P0AE00E0000" + b],
    lambda a, b, n: ["tr31", "inspect", a + b],
    lambda a, b, n: ["tr31", "wrap", "--kbpk", a, "--header", "D0000" + n[:11], b],
    lambda a, b, n: ["retail-mac", "--key", a, "--data", b],
]), _hexish, _hexish, _digits)
def test_garbage_never_gives_a_traceback(make, a, b, n):
    r = CliRunner().invoke(main, ["crypto", *make(a, b, n)])
    assert r.exit_code in (0, 2), (r.exit_code, r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)


def test_next_ksn_skips_invalid_counters():
    assert ok("dukpt", "next-ksn", "--ksn", "1234567890123456" + "0000FFFF") == "1234567890123456" + "00010000"
    assert ok("dukpt", "next-ksn", "--ksn", "1234567890123456" + "0001FFFE") == "1234567890123456" + "00020000"
    assert ok("dukpt", "next-ksn", "--ksn", "FFFF9876543210E00001") == "FFFF9876543210E00002"
    assert ok("dukpt", "next-ksn", "--ksn", "FFFF9876543210E007FE") == "FFFF9876543210E00800"
    code, out = run("dukpt", "next-ksn", "--ksn", "1234567890123456" + "FFFF0000")
    assert code == 2 and "exhausted" in out
