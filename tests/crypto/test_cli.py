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


def test_pin_block_vectors_via_cli():
    d = load("pin_blocks.json")
    for case in d["format0_clear"]:
        assert ok("pinblock", "encode", "--format", "0", "--pin", case["pin"], "--pan", case["pan"]) == case["block"]
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
    ["tr31", "inspect", "garbage"]])
def test_bad_input_is_a_one_line_usage_error(args):
    r = CliRunner().invoke(main, ["crypto", *args])
    assert r.exit_code == 2 and "Traceback" not in r.output and "Error:" in r.output
