"""Every X9.24-3 key type: AES-128/192/256 BDKs, AES and TDES working keys, their key blocks.

Reference values come from fixtures/vectors/aes_dukpt_key_types.json (published vectors,
sources in the file and in fixtures/vectors/README.md); format 4 PIN blocks and TR-31 D
blocks under AES-192/256 keys are checked against psec, an implementation nobody here wrote.
Each vector goes through the library and through ``posterm crypto``.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from posterm.cli import main
from posterm.crypto import common as c
from posterm.errors import CryptoError
from tests.crypto.test_vectors import load

try:
    import psec.pinblock as psec_pin
    import psec.tr31 as psec_tr31
except ImportError:  # pragma: no cover - psec is in the test extra
    psec_pin = psec_tr31 = None
needs_psec = pytest.mark.skipif(psec_pin is None, reason="psec (test extra) is not installed")
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # inside psec

H = bytes.fromhex
V = load("aes_dukpt_key_types.json")
SUITES = V["suites"]


def _cases():
    """(suite name, ksn, key type, usage, expected key) for every published working key."""
    for suite in SUITES:
        for t in suite.get("transactions", []):
            for kt, keys in t.get("working_keys", {}).items():
                for usage, key in keys.items():
                    yield pytest.param(suite["bdk"], t["ksn"], kt, usage, key, id=f"{len(suite['bdk']) * 4}-{t['ksn'][-8:]}-{kt}-{usage}")


def _cli(*args):
    r = CliRunner().invoke(main, ["crypto", *args])
    return r.exit_code, r.output.strip()


def ok(*args):
    code, out = _cli(*args)
    assert code == 0, out
    return out


# ---------------------------------------------------------------- library


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s["name"][:40])
def test_initial_keys(suite):
    ikid = H(suite.get("initial_key_id", V["initial_key_id"]))
    assert c.aes_dukpt_initial_key(H(suite["bdk"]), ikid).hex().upper() == suite["initial_key"]


@pytest.mark.parametrize("suite", [s for s in SUITES if "transactions" in s], ids=lambda s: s["name"][:40])
def test_intermediate_derivation_keys(suite):
    ik = c.aes_dukpt_initial_key(H(suite["bdk"]), H(V["initial_key_id"]))
    assert len(suite["transactions"]) >= 1
    for t in suite["transactions"]:
        assert c.aes_dukpt_transaction_key(ik, H(t["ksn"])).hex().upper() == t["derivation_key"], t["ksn"]


@pytest.mark.parametrize("bdk, ksn, key_type, usage, expected", list(_cases()))
def test_working_keys(bdk, ksn, key_type, usage, expected):
    ik = c.aes_dukpt_initial_key(H(bdk), H(V["initial_key_id"]))
    tk = c.aes_dukpt_transaction_key(ik, H(ksn))
    assert c.aes_dukpt_working_key(tk, H(ksn), usage, key_type).hex().upper() == expected


def test_every_key_type_and_usage_is_covered_by_a_vector():
    """What the vectors cover, so a gap is seen rather than assumed away."""
    seen = {(kt, u) for s in SUITES for t in s.get("transactions", []) for kt, ks in t.get("working_keys", {}).items()
            for u in ks}
    assert {kt for kt, _ in seen} == {"aes128", "aes256", "tdes2", "tdes3"}
    assert {u for kt, u in seen if kt == "aes128"} == set(c.AES_USAGE)
    assert {len(s["bdk"]) // 2 for s in SUITES} == {16, 24, 32}


@pytest.mark.parametrize("case", V["derivation_data"], ids=lambda d: d["what"][:40])
def test_derivation_data_layout(case):
    raw = H(case["hex"])
    usage, alg, bits = (int.from_bytes(raw[i:i + 2], "big") for i in (2, 4, 6))
    kt = next(t for t in c.AES_KEY_TYPES.values() if t.indicator == alg)
    assert kt.bits == bits
    counter = None if usage == c.AES_USAGE_INITIAL_KEY else int.from_bytes(raw[12:], "big")
    tail = raw[8:] if counter is None else b"\0\0\0\0" + raw[8:12]
    assert c._aes_dd(usage, tail, counter, kt, raw[1]) == raw


@pytest.mark.parametrize("bdk_type, working", V["strength_rule"]["refused"])
def test_a_working_key_is_never_stronger_than_its_bdk(bdk_type, working):
    bdk = bytes(c.AES_KEY_TYPES[bdk_type].size)
    ksn = H("123456789012345600000001")
    tk = c.aes_dukpt_transaction_key(c.aes_dukpt_initial_key(bdk, ksn[:8]), ksn)
    with pytest.raises(CryptoError, match="stronger"):
        c.aes_dukpt_working_key(tk, ksn, "pin", working)


def test_the_allowed_combinations_derive_keys_of_their_length():
    ksn = H("123456789012345600000003")
    for bdk_type in ("aes128", "aes192", "aes256"):
        bdk_kt = c.AES_KEY_TYPES[bdk_type]
        tk = c.aes_dukpt_transaction_key(c.aes_dukpt_initial_key(bytes(range(bdk_kt.size)), ksn[:8]), ksn)
        assert len(tk) == bdk_kt.size
        for kt in c.AES_KEY_TYPES.values():
            if kt.strength <= bdk_kt.strength:
                for usage in c.AES_USAGE:
                    assert len(c.aes_dukpt_working_key(tk, ksn, usage, kt.name)) == kt.size
        # default: the working key has the derivation key's own type
        assert len(c.aes_dukpt_working_key(tk, ksn, "pin")) == bdk_kt.size


@pytest.mark.parametrize("bad", [b"", bytes(8), bytes(20), bytes(33)])
def test_bad_bdk_lengths_are_refused_without_the_key(bad):
    with pytest.raises(CryptoError, match=f"not {len(bad)}") as exc:
        c.aes_dukpt_initial_key(bad, bytes(8))
    assert bad.hex() not in str(exc.value) or not bad


def test_unknown_working_key_type_and_usage():
    ksn = H("123456789012345600000001")
    tk = bytes(32)
    with pytest.raises(CryptoError, match="working key type"):
        c.aes_dukpt_working_key(tk, ksn, "pin", "aes512")
    with pytest.raises(CryptoError, match="key usage"):
        c.aes_dukpt_working_key(tk, ksn, "hmac", "aes128")


# ---------------------------------------------------------------- the same through the CLI


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s["name"][:40])
def test_initial_keys_via_cli(suite):
    ksn0 = suite.get("initial_key_id", V["initial_key_id"]) + "00000000"
    assert ok("dukpt", "initial-key", "--bdk", suite["bdk"], "--ksn", ksn0) == suite["initial_key"]


@pytest.mark.parametrize("suite", [s for s in SUITES if "transactions" in s], ids=lambda s: s["name"][:40])
def test_intermediate_keys_via_cli(suite):
    for t in suite["transactions"]:
        assert ok("dukpt", "derive", "--bdk", suite["bdk"], "--ksn", t["ksn"]) == t["derivation_key"]


CLI_USAGE = {"pin": "pin", "mac_generation": "mac-gen", "mac_verification": "mac-verify", "mac_both": "mac-both",
             "data_encrypt": "data-encrypt", "data_decrypt": "data-decrypt", "data_both": "data-both",
             "key_encryption": "kek"}


@pytest.mark.parametrize("bdk, ksn, key_type, usage, expected", list(_cases()))
def test_working_keys_via_cli(bdk, ksn, key_type, usage, expected):
    out = ok("dukpt", "derive", "--bdk", bdk, "--ksn", ksn, "--usage", CLI_USAGE[usage], "--working-key", key_type,
             "--json")
    got = json.loads(out)
    assert got["key"] == expected and got["key_type"] == key_type
    alg = c.AES_KEY_TYPES[key_type].algorithm
    assert got["kcv"] == c.kcv(H(expected), alg).hex().upper()


def test_bdk_file_with_an_aes256_bdk_prints_check_values_only(tmp_path):
    suite = SUITES[0]
    t = suite["transactions"][0]
    f = tmp_path / "bdk.bin"
    f.write_bytes(H(suite["bdk"]))                  # 32 raw bytes
    got = json.loads(ok("dukpt", "derive", "--bdk-file", str(f), "--ksn", t["ksn"], "--working-key", "aes128",
                        "--json"))
    assert got["pin_kcv"] == c.kcv(H(t["working_keys"]["aes128"]["pin"])).hex().upper()
    assert got["derivation_kcv"] == c.kcv(H(t["derivation_key"])).hex().upper()
    text = json.dumps(got)
    for secret in (suite["bdk"], suite["initial_key"], t["derivation_key"], t["working_keys"]["aes128"]["pin"]):
        assert secret not in text


@pytest.mark.parametrize("args, words", [
    (["dukpt", "initial-key", "--bdk", "00" * 20, "--ksn", "00" * 12], "20 bytes, expected 16, 24 or 32"),
    (["dukpt", "derive", "--bdk", "00" * 20, "--ksn", "00" * 11 + "01"], "20 bytes"),
    (["dukpt", "derive", "--bdk", "00" * 16, "--ksn", "00" * 11 + "01", "--working-key", "aes256"], "stronger"),
    (["dukpt", "derive", "--bdk", "00" * 24, "--ksn", "00" * 11 + "01", "--working-key", "aes256"], "stronger"),
    (["dukpt", "derive", "--bdk", "00" * 16, "--ksn", "00" * 11 + "01", "--working-key", "aes512"], "aes512"),
    (["dukpt", "derive", "--bdk", "00" * 32, "--ksn", "00" * 10, "--working-key", "aes128"], "TDES"),
    (["dukpt", "initial-key", "--bdk", "00" * 32, "--ksn", "FFFF9876543210E00000"], "16-byte BDK"),
    (["dukpt", "derive", "--bdk", "00" * 16, "--ksn", "FFFF9876543210E00001", "--usage", "kek"], "TDES"),
])
def test_bad_key_type_input_is_one_line_and_keeps_the_key_out(args, words):
    code, out = _cli(*args)
    assert code == 2 and out.startswith("posterm: error: ") and len(out.splitlines()) == 1, out
    assert words in out and "Traceback" not in out
    assert "00" * 16 not in out          # the key given is never echoed back


# ---------------------------------------------------------------- format 4 PIN blocks under AES-192/256 keys


@needs_psec
@pytest.mark.parametrize("key_type", ["aes128", "aes256"])
def test_format_4_under_the_published_pin_keys_against_psec(key_type):
    inp = V["pin_block_inputs"]
    for t in SUITES[0]["transactions"][:8]:
        raw = H(t["working_keys"][key_type]["pin"])
        k = c.Key(raw, c.Usage.PIN, c.Algorithm.AES)
        ours = c.encrypt_pin_block_4(k, inp["pin"], inp["pan"], H(inp["random_fill"]))
        assert psec_pin.decipher_pinblock_iso_4(raw, ours, inp["pan"]) == inp["pin"]
        # the clear PIN field inside is the published one
        inter = c.xor(c.aes_ecb(raw, ours, decrypt=True), H(inp["pan_field"]))
        assert c.aes_ecb(raw, inter, decrypt=True).hex().upper() == inp["clear_pin_field"]
        assert c.decrypt_pin_block_4(k, psec_pin.encipher_pinblock_iso_4(raw, inp["pin"], inp["pan"]),
                                     inp["pan"]) == inp["pin"]
        block = ok("pinblock", "encode", "--format", "4", "--pin", inp["pin"], "--pan", inp["pan"], "--key",
                   raw.hex().upper(), "--fill", inp["random_fill"])
        assert H(block) == ours
        assert ok("pinblock", "decode", "--format", "4", "--block", block, "--pan", inp["pan"], "--key",
                  raw.hex()) == inp["pin"]


@needs_psec
def test_format_4_under_an_aes192_key_against_psec():
    raw = bytes(range(24))
    k = c.Key(raw, c.Usage.PIN, c.Algorithm.AES)
    for pin, pan in (("1234", "4111111111111111"), ("147258", "289900000000000003"), ("123456789012", "1")):
        assert psec_pin.decipher_pinblock_iso_4(raw, c.encrypt_pin_block_4(k, pin, pan), pan) == pin
        assert c.decrypt_pin_block_4(k, psec_pin.encipher_pinblock_iso_4(raw, pin, pan), pan) == pin


# ---------------------------------------------------------------- TR-31 D under AES-192/256 KBPKs


def test_tr31_kbek_kbak_derivation_data_for_each_kbpk_length():
    """TR-31:2018 5.3.2.3: CMAC(KBPK, counter | usage 0000/0001 | 00 | algorithm | length), two
    blocks for AES-192/256. Checked by hand from the published layout, then against psec below."""
    for size, alg, bits in ((16, 2, 128), (24, 3, 192), (32, 4, 256)):
        kbpk = bytes(range(size))
        kbek, kbak = c._tr31_keys("D", kbpk)
        for usage, got in ((0, kbek), (1, kbak)):
            want = b"".join(c.aes_cmac(kbpk, bytes([i, 0, usage, 0, 0, alg]) + bits.to_bytes(2, "big"))
                            for i in range(1, 3))[:size]
            assert got == want


@needs_psec
@pytest.mark.parametrize("size", [24, 32])
def test_tr31_d_with_aes192_and_aes256_kbpks_against_psec(size):
    import os

    for _ in range(8):
        kbpk, key = os.urandom(size), os.urandom(32)
        header = c.TR31Header("D", 0, "B1", "A", "X", "01", "N",
                              (("IK", "1234567890123456"), ("KC", "01" + c.kcv(key, c.Algorithm.AES, 5).hex().upper())))
        ours = c.tr31_wrap(kbpk, header, key)
        h, got = psec_tr31.unwrap(kbpk, ours)
        assert got == key and h.key_usage == "B1" and h.blocks["IK"] == "1234567890123456"
        theirs = psec_tr31.wrap(kbpk, "D0000B1AX01N0000", key)
        assert c.tr31_unwrap(kbpk, theirs)[1] == key
        with pytest.raises(CryptoError, match="authentication"):
            c.tr31_unwrap(os.urandom(size), ours)


def test_tr31_aes256_vector_and_the_cli_inspect_header():
    case = next(x for x in load("tr31.json")["cases"] if x["name"].startswith("A.7.4"))
    assert len(H(case["kbpk"])) == 32
    assert c.tr31_unwrap(H(case["kbpk"]), case["block"])[1].hex().upper() == case["key"]
    text = ok("tr31", "inspect", case["block"])
    for line in ("version: D (AES key derivation binding)", "usage: P0 (PIN encryption)", "algorithm: A (AES)",
                 "mode: E (encrypt/wrap only)", "key version: 00", "exportability: E (exportable",
                 "optional blocks: 0"):
        assert line in text, text
    assert case["key"] not in text


def test_cli_inspect_names_the_optional_blocks_of_an_initial_key_block():
    block = ok("tr31", "wrap", "--kbpk", "11" * 32, "--header", "D0000B1AX03N0200IK141234567890123456KC0C01ABCDEF",
               "22" * 32)
    text = ok("tr31", "inspect", block)
    assert "usage: B1 (initial DUKPT key)" in text and "mode: X (key derivation only)" in text
    assert "IK: 1234567890123456 (initial key identifier (AES DUKPT))" in text
    assert "KC: 01ABCDEF (key check value" in text
    assert "exportability: N (non-exportable)" in text and "key version: 03" in text
    assert "22" * 32 not in text
    got = json.loads(ok("tr31", "inspect", block, "--json"))
    assert got["names"]["usage"] == "B1 (initial DUKPT key)" and got["optional_blocks"]["IK"] == "1234567890123456"


@pytest.mark.parametrize("block", ["", "D", "D0016B1QX00N0000", "X0016B1AX00N0000", "D0017B1AX00N0000",
                                   "D0024B1AX00N0100IK99" + "0000", "D0016B1AX00N00ZZ", "D001\u00e9B1AX00N0000"])
def test_cli_inspect_errors_are_one_line(block):
    code, out = _cli("tr31", "inspect", block)
    assert code == 2 and out.startswith("posterm: error: ") and len(out.splitlines()) == 1, out


def test_an_aes256_initial_key_wrapped_under_an_aes256_kbpk_via_cli():
    suite = SUITES[0]
    kcv = c.kcv(H(suite["initial_key"]), c.Algorithm.AES, 5).hex().upper()
    header = f"D0000B1AX01N0200IK14{V['initial_key_id']}KC0E01{kcv}"
    block = ok("tr31", "wrap", "--kbpk", "33" * 32, "--header", header, suite["initial_key"])
    got = json.loads(ok("tr31", "unwrap", "--kbpk", "33" * 32, block, "--json"))
    assert got["key"] == suite["initial_key"] and got["usage"] == "B1"
    if psec_tr31 is not None:
        assert psec_tr31.unwrap(H("33" * 32), block)[1].hex().upper() == suite["initial_key"]
