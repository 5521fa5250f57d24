"""Property tests: round trips over random inputs, and psec (an independent implementation) as oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posterm.crypto import common as c
from posterm.errors import CryptoError

pins = st.text("0123456789", min_size=4, max_size=12)
pans = st.text("0123456789", min_size=13, max_size=19)
aes_keys = st.binary(min_size=16, max_size=16)
tdes_keys = st.binary(min_size=16, max_size=16)
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(pins, pans, st.binary(min_size=16, max_size=16))
def test_format_0_and_3_round_trip(pin, pan, fill):
    assert c.decode_pin_block_03(c.pin_block_0(pin, pan), pan) == pin
    assert c.decode_pin_block_03(c.pin_block_3(pin, pan, fill), pan) == pin


@FAST
@given(pins, pans, aes_keys, st.binary(min_size=8, max_size=8))
def test_format_4_round_trip_and_pan_binding(pin, pan, key, fill):
    k = c.Key(key, c.Usage.PIN, c.Algorithm.AES)
    block = c.encrypt_pin_block_4(k, pin, pan, fill)
    assert c.decrypt_pin_block_4(k, block, pan) == pin
    other = ("1" if pan[0] != "1" else "2") + pan[1:]
    with pytest.raises(CryptoError):
        c.decrypt_pin_block_4(k, block, other)


@FAST
@given(st.sampled_from(["D", "B"]), st.sampled_from([16, 24]), st.binary(min_size=32, max_size=32),
       st.sampled_from(["P0", "M6", "B1", "D0", "K0"]))
def test_tr31_round_trip(version, key_len, material, usage):
    kbpk = material[:16] if version == "B" else material
    key = material[:key_len]
    header = c.TR31Header(version, 0, usage, "T" if version == "B" else "A", "X" if usage == "B1" else "E", "00", "N")
    block = c.tr31_wrap(kbpk, header, key)
    got_header, got = c.tr31_unwrap(kbpk, block)
    assert got == key and got_header.usage == usage and got_header.length == len(block)


# --- psec as an independent oracle ------------------------------------------------------

try:  # a test-only dependency: without it only these oracle tests skip
    import psec.pinblock as psec_pin
    import psec.tr31 as psec_tr31
except ImportError:  # pragma: no cover
    psec_pin = psec_tr31 = None
needs_psec = pytest.mark.skipif(psec_pin is None, reason="psec (test extra) is not installed")
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # inside psec


@needs_psec
@FAST
@given(pins, pans, aes_keys)
def test_psec_agrees_on_format_4(pin, pan, key):
    k = c.Key(key, c.Usage.PIN, c.Algorithm.AES)
    # each side decrypts what the other encrypted (the random fill differs, so compare PINs)
    assert psec_pin.decipher_pinblock_iso_4(key, c.encrypt_pin_block_4(k, pin, pan), pan) == pin
    assert c.decrypt_pin_block_4(k, psec_pin.encipher_pinblock_iso_4(key, pin, pan), pan) == pin


@needs_psec
@FAST
@given(pins, pans, st.binary(min_size=16, max_size=16))
def test_psec_agrees_on_formats_0_and_3(pin, pan, fill):
    assert psec_pin.encode_pinblock_iso_0(pin, pan) == c.pin_block_0(pin, pan)
    assert psec_pin.decode_pinblock_iso_3(c.pin_block_3(pin, pan, fill), pan) == pin
    assert c.decode_pin_block_03(psec_pin.encode_pinblock_iso_3(pin, pan), pan) == pin


@needs_psec
@FAST
@given(st.sampled_from(["B", "D"]), st.binary(min_size=32, max_size=32))
def test_psec_agrees_on_tr31(version, material):
    kbpk = material[:16] if version == "B" else material
    key = material[16:32] if version == "D" else material[:16][::-1]
    ours = c.tr31_wrap(kbpk, c.TR31Header(version, 0, "P0", "T" if version == "B" else "A", "E", "00", "N"), key)
    assert psec_tr31.unwrap(kbpk, ours)[1] == key
    theirs = psec_tr31.wrap(kbpk, f"{version}0000P0{'T' if version == 'B' else 'A'}E00N0000", key)
    assert c.tr31_unwrap(kbpk, theirs)[1] == key


@FAST
@given(st.integers(min_value=0, max_value=0xFFFEFFFF))
def test_aes_next_counter_is_the_next_valid_one(counter):
    nxt = c.aes_dukpt_next_counter(counter)
    assert nxt > counter and c.aes_dukpt_valid_counter(nxt)
    # nothing valid is skipped: every counter strictly between is invalid (checked on a bounded span)
    for between in range(counter + 1, min(nxt, counter + 4096)):
        assert not c.aes_dukpt_valid_counter(between)


@FAST
@given(st.integers(min_value=0, max_value=0x1FF7FF))
def test_tdes_next_counter_is_the_next_valid_one(counter):
    nxt = c.tdes_dukpt_next_counter(counter)
    assert nxt > counter and nxt.bit_count() <= 10 and nxt <= 0x1FFFFF
    for between in range(counter + 1, min(nxt, counter + 4096)):
        assert between.bit_count() > 10


@pytest.fixture(scope="module")
def hsm_and_pads():
    from posterm.crypto.hsm import Hsm
    from posterm.crypto.pinpad import SecureModule

    hsm = Hsm.ephemeral()
    pads = {}
    for alg in ("AES", "TDES"):
        sm = SecureModule()
        sm.inject_kbpk(hsm.kbpk_for_injection("T" + alg))
        sm.load_key_block(hsm.initial_key_block("T" + alg, alg).block)
        pads[alg] = sm
    return hsm, pads


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["AES", "TDES"]), st.integers(min_value=0, max_value=0x1FF000), st.binary(max_size=64))
def test_pad_and_hsm_agree_at_any_counter(hsm_and_pads, alg, counter, data):
    """Whatever counter the pad is at, the HSM derives the same MAC keys from the KSN alone."""
    hsm, pads = hsm_and_pads
    sm = pads[alg]
    sm._counter = counter
    ksn = sm.next_ksn()
    assert hsm.verify_request_mac(ksn, data, sm.request_mac(ksn, data))
    assert sm.verify_response_mac(ksn, data, hsm.response_mac(ksn, data))


@needs_psec
@pytest.mark.parametrize("alg", ["AES", "TDES"])
def test_psec_unwraps_the_hsm_issued_key_blocks(alg):
    """The HSM's B1 blocks (with IK/KS and KC optional blocks) are standard: psec reads them."""
    from posterm.crypto.hsm import Hsm

    hsm = Hsm.ephemeral()
    issued = hsm.initial_key_block("T0000001", alg)
    header, key = psec_tr31.unwrap(hsm.kbpk_for_injection("T0000001"), issued.block)
    assert header.key_usage == "B1" and header.exportability == "N" and "PB" in issued.block[:64]
    assert c.kcv(key, c.Algorithm.AES if alg == "AES" else c.Algorithm.TDES) == issued.kcv
    # and the other way: a psec-wrapped block with optional blocks loads through our unwrap
    h = psec_tr31.Header("D", "B1", "A", "X", "00", "N")
    h.blocks["IK"] = "0102030405060708"
    theirs = psec_tr31.wrap(hsm.kbpk_for_injection("T0000001"), h, bytes(range(16)))
    got_header, got = c.tr31_unwrap(hsm.kbpk_for_injection("T0000001"), theirs)
    assert got == bytes(range(16)) and dict(got_header.optional_blocks)["IK"] == "0102030405060708"


@needs_psec
@FAST
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=1, max_size=80))
def test_psec_agrees_on_retail_mac_and_tdes_cbc_mac(key, data):
    import psec.mac as psec_mac

    assert c.retail_mac(key, data) == psec_mac.generate_retail_mac(key[:8], key[8:], data, 1)
    # the TR-31 version A/C MAC: ISO 9797-1 algorithm 1 with TDES
    assert c._cbc_mac_tdes(key, data) == psec_mac.generate_cbc_mac(key, data, 1, 8, psec_mac.Algorithm.DES)


@FAST
@given(pins, pans, tdes_keys, st.binary(min_size=16, max_size=16))
def test_encrypted_format_0_and_3_round_trip(pin, pan, key, fill):
    k = c.Key(key, c.Usage.PIN, c.Algorithm.TDES)
    assert c.decrypt_pin_block_03(k, c.encrypt_pin_block_0(k, pin, pan), pan) == pin
    assert c.decrypt_pin_block_03(k, c.encrypt_pin_block_3(k, pin, pan, fill), pan) == pin
    with pytest.raises(CryptoError):
        c.encrypt_pin_block_3(c.Key(key, c.Usage.PIN, c.Algorithm.AES), pin, pan)


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=1, max_value=0xFFFF), st.integers(min_value=1, max_value=16))
def test_counters_left_arithmetic_matches_brute_force(limit, max_ones):
    """status().counters_left comes from this count; check it where brute force is cheap."""
    from posterm.crypto.pinpad import _count_valid_upto

    assert _count_valid_upto(limit, max_ones, 16) == sum(1 for v in range(1, limit + 1) if v.bit_count() <= max_ones)
