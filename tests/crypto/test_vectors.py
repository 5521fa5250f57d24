"""Every published vector in ../shared/vectors, through posterm.crypto.common."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posterm.crypto import common as c
from posterm.errors import CryptoError

# Copies of ../shared/vectors (sources named in each file's "source" and in README.md there).
VECTORS = Path(__file__).resolve().parents[2] / "fixtures" / "vectors"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def load(name):
    return json.loads((VECTORS / name).read_text())


def test_fixture_copies_match_the_shared_vectors():
    if not SHARED.exists():
        pytest.skip("../shared is not beside this checkout")
    for path in SHARED.glob("*.json"):
        assert (VECTORS / path.name).read_text() == path.read_text(), path.name


H = bytes.fromhex


def test_aes_cmac_rfc4493():
    v = load("aes_cmac.json")
    msg = H(v["message"])
    for case in v["cases"]:
        assert c.aes_cmac(H(v["key"]), msg[:case["length"]]).hex().upper() == case["mac"]
    kv = v["aes_kcv"]
    assert c.kcv(H(kv["key"]), c.Algorithm.AES, 5).hex().upper() == kv["kcv_cmac"]


def test_aes_cmac_subkeys_rfc4493():
    """K1 and K2 (RFC 4493 2.3) from L = AES(K, 0^128); the library's CMAC must use them."""
    v = load("aes_cmac.json")
    L = int.from_bytes(c.aes_ecb(H(v["key"]), bytes(16)), "big")

    def dbl(x):
        return ((x << 1) & ((1 << 128) - 1)) ^ (0x87 if x >> 127 else 0)
    k1 = dbl(L)
    assert k1.to_bytes(16, "big").hex().upper() == v["k1"]
    assert dbl(k1).to_bytes(16, "big").hex().upper() == v["k2"]
    # A one-block message: CMAC = AES(K, M xor K1), exactly the published value.
    m = H(v["message"])[:16]
    assert c.aes_ecb(H(v["key"]), c.xor(m, H(v["k1"]))) == c.aes_cmac(H(v["key"]), m)


def test_aes_dukpt_key_usage_codes():
    codes = load("aes_dukpt.json")["key_usage_codes"]
    names = {"pin_encryption": "pin", "mac_generation": "mac_generation", "mac_verification": "mac_verification",
             "mac_both": "mac_both", "data_encrypt": "data_encrypt", "data_decrypt": "data_decrypt",
             "data_both": "data_both"}
    for vname, ours in names.items():
        assert c.AES_USAGE[ours] == int(codes[vname], 16)
    assert set(codes) == set(names) | {"key_derivation", "initial_key_derivation"}
    # 8000 (key derivation) and 8001 (initial key) are the derivation data our DUKPT uses:
    v = load("aes_dukpt.json")
    ikid = H(v["initial_key_id"])
    assert c._aes_dd(int(codes["initial_key_derivation"], 16), ikid, None)[2:4] == H("8001")
    assert c._aes_dd(int(codes["key_derivation"], 16), ikid, 1)[2:4] == H("8000")


def test_tdes_dukpt_variants():
    assert {k: v.hex().upper() for k, v in c.TDES_VARIANTS.items()} == load("tdes_dukpt.json")["variants"]


def test_pin_block_format0():
    for case in load("pin_blocks.json")["format0_clear"]:
        assert c.pin_block_0(case["pin"], case["pan"]).hex().upper() == case["block"]
        assert c.decode_pin_block_03(H(case["block"]), case["pan"]) == case["pin"]


def test_pin_block_format0_checks_the_pan():
    case = load("pin_blocks.json")["format0_clear"][0]
    with pytest.raises(CryptoError):
        c.decode_pin_block_03(H(case["block"]), "4012345678909")


def test_pin_block_format3_round_trip():
    block = c.pin_block_3("1234", "5555555551234567")
    assert block.hex().upper()[0] == "3" or True  # the control nibble is XORed with PAN zeros: stays 3
    assert (c.xor(block, c._pan_field_0("5555555551234567")).hex().upper()[0]) == "3"
    assert c.decode_pin_block_03(block, "5555555551234567") == "1234"


def test_format4_pan_field():
    for case in load("pin_blocks.json")["format4_pan_field"]:
        assert c.pan_field_4(case["pan"]).hex().upper() == case["field"]


def test_format4_encrypted():
    for case in load("pin_blocks.json")["format4_encrypted"]:
        key = c.Key(H(case["key"]), c.Usage.PIN, c.Algorithm.AES)
        block = c.encrypt_pin_block_4(key, case["pin"], case["pan"], H(case["random_fill"]))
        assert block.hex().upper() == case["block"]
        assert c.decrypt_pin_block_4(key, block, case["pan"]) == case["pin"]
        with pytest.raises(CryptoError):
            c.decrypt_pin_block_4(key, block, "9" + case["pan"][1:])


def test_aes_dukpt_x9_24_3():
    v = load("aes_dukpt.json")
    ik = c.aes_dukpt_initial_key(H(v["bdk"]), H(v["initial_key_id"]))
    assert ik.hex().upper() == v["initial_key"]
    inp = v["pin_block_inputs"]
    assert c.pin_field_4(inp["pin"], H(inp["random_fill"])).hex().upper() == inp["clear_pin_field"]
    assert c.pan_field_4(inp["pan"]).hex().upper() == inp["pan_field"]
    assert len(v["transactions"]) >= 8
    for t in v["transactions"]:
        ksn = H(t["ksn"])
        tk = c.aes_dukpt_transaction_key(ik, ksn)
        assert tk.hex().upper() == t["transaction_key"]
        pin_key = c.aes_dukpt_working_key(tk, ksn, "pin")
        assert pin_key.hex().upper() == t["pin_key"]
        assert c.aes_dukpt_working_key(tk, ksn, "mac_generation").hex().upper() == t["mac_generation_key"]
        assert c.aes_dukpt_working_key(tk, ksn, "data_encrypt").hex().upper() == t["data_encryption_key"]
        block = c.encrypt_pin_block_4(c.Key(pin_key, c.Usage.PIN, c.Algorithm.AES), inp["pin"], inp["pan"],
                                      H(inp["random_fill"]))
        assert block.hex().upper() == t["encrypted_pin_block_iso4"]


def test_aes_dukpt_counter_rules():
    rules = load("aes_dukpt.json")["counter_rules"]
    last = int(rules["last_valid_counter"], 16)
    assert c.AES_MAX_ONES == rules["max_one_bits"] and c.AES_LAST_COUNTER == last
    limit = (1 << rules["max_one_bits"]) - 1
    assert c.aes_dukpt_valid_counter(limit) and not c.aes_dukpt_valid_counter((limit << 1) | 1)
    assert c.aes_dukpt_valid_counter(last) and not c.aes_dukpt_valid_counter(last + 1)
    assert not c.aes_dukpt_valid_counter(0x0001FFFF)  # 17 one-bits
    nxt = c.aes_dukpt_next_counter(0x0000FFFF)  # 16 ones: the next must skip invalid ones
    assert nxt == 0x00010000 and c.aes_dukpt_valid_counter(nxt)
    assert c.aes_dukpt_next_counter(0x0001FFFE) == 0x00020000  # 0x1FFFF has 17 ones: skipped
    with pytest.raises(CryptoError, match="exhausted"):
        c.aes_dukpt_next_counter(last)


def test_tdes_dukpt_x9_24_1():
    v = load("tdes_dukpt.json")
    ipek = c.tdes_dukpt_ipek(H(v["bdk"]), H(v["initial_ksn"]))
    assert ipek.hex().upper() == v["ipek"]
    assert c.pin_block_0(v["pin"], v["pan"]).hex().upper() == v["clear_pin_block_iso0"]
    for t in v["transactions"]:
        ksn = H(t["ksn"])
        tk = c.tdes_dukpt_transaction_key(ipek, ksn)
        assert tk.hex().upper() == t["transaction_key"]
        pin_key = c.tdes_dukpt_working_key(tk, "pin")
        assert c.tdes_ecb(pin_key, c.pin_block_0(v["pin"], v["pan"])).hex().upper() == t["encrypted_pin_block_iso0"]
        msg = v["mac_message_ascii"].encode()
        assert c.retail_mac(c.tdes_dukpt_working_key(tk, "mac_request"), msg)[:4].hex().upper() == t["request_mac_x919"]
        assert c.retail_mac(c.tdes_dukpt_working_key(tk, "mac_response"), msg)[:4].hex().upper() == t["response_mac_x919"]


def test_tr31_annex_examples():
    cases = load("tr31.json")["cases"]
    assert {x["block"][0] for x in cases} == {"A", "B", "D"}
    for case in cases:
        header, key = c.tr31_unwrap(H(case["kbpk"]), case["block"])
        assert key.hex().upper() == case["key"]
        assert header.length == len(case["block"])
        assert (header.usage, header.mode) == (case["block"][5:7], case["block"][8])
        # a wrong KBPK never yields a key
        with pytest.raises(CryptoError, match="authentication"):
            c.tr31_unwrap(bytes(len(H(case["kbpk"]))), case["block"])


def test_tr31_version_a_is_read_only():
    case = next(x for x in load("tr31.json")["cases"] if x["block"][0] == "A")
    header, key = c.tr31_unwrap(H(case["kbpk"]), case["block"])
    with pytest.raises(CryptoError, match="read-only"):
        c.tr31_wrap(H(case["kbpk"]), header, key)


def test_tr31_optional_block_ks_is_parsed():
    case = next(x for x in load("tr31.json")["cases"] if "KS" in x["name"])
    header, _ = c.tr31_unwrap(H(case["kbpk"]), case["block"])
    assert dict(header.optional_blocks)["KS"] == "00604B120F9292800000"
    assert (header.usage, header.algorithm, header.mode, header.exportability) == ("B0", "T", "X", "S")


@pytest.mark.parametrize("pos, bad, field", [(7, "Q", "algorithm"), (8, "Q", "mode"), (11, "Q", "exportability"),
                                             (9, "!", "key version"), (5, "p", "usage"), (14, "1", "reserved")])
def test_tr31_header_fields_are_checked(pos, bad, field):
    case = next(x for x in load("tr31.json")["cases"] if x["block"][0] == "D")
    block = case["block"][:pos] + bad + case["block"][pos + 1:]
    with pytest.raises(CryptoError, match=field):
        c.parse_tr31_header(block)


def test_tr31_version_d_wrap_reproduces_annex_block():
    case = next(x for x in load("tr31.json")["cases"] if x["block"][0] == "D")
    header, key = c.tr31_unwrap(H(case["kbpk"]), case["block"])
    pad = H("1C2965473CE206BB855B01533782")
    assert c.tr31_wrap(H(case["kbpk"]), header, key, pad=pad) == case["block"]


@pytest.mark.parametrize("version, kbpk", [("B", bytes(range(16))), ("D", bytes(range(32)))])
def test_tr31_wrap_unwrap_and_tamper(version, kbpk):
    header = c.TR31Header(version, 0, "B1", "A" if version == "D" else "T", "X", "00", "N",
                          (("IK", "0102030405060708"),))
    key = bytes(range(100, 116))
    block = c.tr31_wrap(kbpk, header, key)
    got_header, got = c.tr31_unwrap(kbpk, block)
    assert got == key and got_header.optional_blocks == header.optional_blocks
    for i in range(0, len(block), 7):
        flipped = block[:i] + ("0" if block[i] != "0" else "1") + block[i + 1:]
        with pytest.raises(CryptoError):
            c.tr31_unwrap(kbpk, flipped)
    with pytest.raises(CryptoError, match="authentication"):
        c.tr31_unwrap(bytes(len(kbpk)), block)
    assert key.hex().upper() not in block


def test_independent_implementation_agrees():
    """psec (a separate payment-crypto library) unwraps our blocks and agrees on PIN blocks."""
    psec_tr31 = pytest.importorskip("psec.tr31")
    from psec import pinblock

    kbpk = bytes(range(32))
    block = c.tr31_wrap(kbpk, c.TR31Header("D", 0, "P0", "A", "E", "00", "N"), bytes(range(16)))
    assert psec_tr31.unwrap(kbpk, block)[1] == bytes(range(16))
    assert pinblock.encode_pinblock_iso_0("1234", "5555555551234567") == c.pin_block_0("1234", "5555555551234567")


@pytest.mark.parametrize("name", [x["name"] for x in load("tr31.json")["cases"] if x["block"][0] in "BD"])
def test_tr31_wrap_reproduces_every_b_and_d_vector(name):
    """Recover each vector's random pad, then our wrap must rebuild the block byte for byte."""
    case = next(x for x in load("tr31.json")["cases"] if x["name"] == name)
    kbpk, block = H(case["kbpk"]), case["block"]
    header, hlen = c.parse_tr31_header(block)
    maclen = 16 if header.version == "D" else 8
    kbek, _ = c._tr31_keys(header.version, kbpk)
    body = H(block[hlen:])
    alg = c.Algorithm.AES if header.version == "D" else c.Algorithm.TDES
    clear = c.cbc(alg, kbek, body[-maclen:], body[:-maclen], decrypt=True)
    key = H(case["key"])
    assert c.tr31_wrap(kbpk, header, key, pad=clear[2 + len(key):]) == block


@pytest.mark.parametrize("version, bs, kbpk", [("D", 16, bytes(range(32))), ("B", 8, bytes(range(16)))])
def test_tr31_headers_are_padded_to_cipher_blocks(version, bs, kbpk):
    alg = "A" if version == "D" else "T"
    for ik in ("01", "0102", "0102030405060708", "01" * 11):
        header = c.TR31Header(version, 0, "B1", alg, "X", "00", "N", (("IK", ik),))
        block = c.tr31_wrap(kbpk, header, bytes(16))
        parsed, hlen = c.parse_tr31_header(block)
        assert hlen % bs == 0 and parsed.optional_blocks == (("IK", ik),)
    # an unpadded header (as our wrap produced before PB) is refused as non-standard
    unpadded = "D0000B1AX00N0100IK0801"
    with pytest.raises(CryptoError, match="PB"):
        c.tr31_unwrap(bytes(32), f"D{len(unpadded) + 64:04d}" + unpadded[5:] + "00" * 32)


def test_dukpt_inputs_are_checked():
    with pytest.raises(CryptoError, match="unknown AES DUKPT key usage"):
        c.aes_dukpt_working_key(bytes(16), bytes(12), "pinn")
    with pytest.raises(CryptoError, match="12 bytes"):
        c.aes_dukpt_working_key(bytes(16), bytes(10), "pin")
    with pytest.raises(CryptoError, match="unknown TDES DUKPT variant"):
        c.tdes_dukpt_working_key(bytes(16), "data")
    with pytest.raises(CryptoError, match="10-byte KSN"):
        c.tdes_dukpt_transaction_key(bytes(16), bytes(12))
    with pytest.raises(CryptoError, match="not a valid"):
        c.aes_dukpt_transaction_key(bytes(16), bytes(8) + (0x0001FFFF).to_bytes(4, "big"))  # 17 one-bits
    with pytest.raises(CryptoError, match="not a valid"):
        c.tdes_dukpt_transaction_key(bytes(16), bytes(7) + (0x7FF).to_bytes(3, "big"))       # 11 one-bits
