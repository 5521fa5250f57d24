"""python -m posterm.bench crypto: PIN blocks/s and DUKPT derivations/s.

Baseline in the same run: one raw AES block encryption (the primitive everything is
built from), so the ratios say how many AES operations each step costs. AES DUKPT is
measured for every X9.24-3 key type: each BDK type (AES-128/192/256: initial key,
transaction key) and each working key type it may derive (AES-128/192/256, TDES 2-key
and 3-key); ``aes_blocks`` says how many AES block encryptions the step takes (a
192/256-bit key takes two per derivation).
"""

from __future__ import annotations

import argparse
import os

from posterm.bench import emit, rate
from posterm.crypto import common as c


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m posterm.bench crypto",
                                     description="PIN blocks, DUKPT derivations, MACs and PIN checks per second,"
                                                 " with one raw AES block as the baseline.")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per figure (default 0.5)")
    secs = parser.parse_args(argv).seconds
    key = os.urandom(16)
    ik = c.aes_dukpt_initial_key(os.urandom(16), os.urandom(8))
    ksn = os.urandom(8) + (0x000F00F0).to_bytes(4, "big")  # 8 one-bits: 8 derivation steps
    pin_key = c.Key(key, c.Usage.PIN, c.Algorithm.AES)
    tdes_ipek = os.urandom(16)
    tdes_ksn = bytes.fromhex("FFFF9876543210E000FF")
    base = rate(lambda: c.aes_ecb(key, bytes(16)), secs)
    emit("crypto", "aes_block_baseline", round(base), "ops/s")
    for name, fn in (
        ("pin_block_iso4_encrypt", lambda: c.encrypt_pin_block_4(pin_key, "147258", "289900000000000003")),
        ("pin_block_iso4_decrypt", lambda: c.decrypt_pin_block_4(
            pin_key, c.encrypt_pin_block_4(pin_key, "147258", "289900000000000003"), "289900000000000003")),
        ("aes_dukpt_transaction_key", lambda: c.aes_dukpt_transaction_key(ik, ksn)),
        ("aes_dukpt_pin_key", lambda: c.aes_dukpt_working_key(c.aes_dukpt_transaction_key(ik, ksn), ksn, "pin")),
        ("tdes_dukpt_transaction_key", lambda: c.tdes_dukpt_transaction_key(tdes_ipek, tdes_ksn)),
    ):
        r = rate(fn, secs)
        emit("crypto", name, round(r), "ops/s", ratio_to_aes_block=round(base / r, 1))
    _key_types(secs, base, ksn)
    _modules(secs)
    return 0


def _key_types(secs: float, base: float, ksn: bytes) -> None:
    """Every BDK type and every working key type it may derive, beside the AES block baseline."""
    for size in (24, 32):
        key = os.urandom(size)
        r = rate(lambda: c.aes_ecb(key, bytes(16)), secs)
        emit("crypto", f"aes{size * 8}_block", round(r), "ops/s", ratio_to_aes_block=round(base / r, 2))
    ones = bin(int.from_bytes(ksn[8:], "big")).count("1")
    key128 = os.urandom(16)
    for bdk_type in ("aes128", "aes192", "aes256"):
        # The machine is shared: the baseline is measured again beside each group, so a ratio
        # compares figures taken a moment apart rather than one taken at the start.
        base = rate(lambda: c.aes_ecb(key128, bytes(16)), secs)
        emit("crypto", f"aes_block_baseline_beside_{bdk_type}", round(base), "ops/s")
        kt = c.AES_KEY_TYPES[bdk_type]
        blocks = -(-kt.bits // 128)
        bdk = os.urandom(kt.size)
        r = rate(lambda: c.aes_dukpt_initial_key(bdk, ksn[:8]), secs)
        emit("crypto", f"aes_dukpt_initial_key_{bdk_type}", round(r), "ops/s", ratio_to_aes_block=round(base / r, 1),
             aes_blocks=blocks)
        ik = c.aes_dukpt_initial_key(bdk, ksn[:8])
        r = rate(lambda: c.aes_dukpt_transaction_key(ik, ksn), secs)
        emit("crypto", f"aes_dukpt_transaction_key_{bdk_type}", round(r), "ops/s",
             ratio_to_aes_block=round(base / r, 1), aes_blocks=ones * blocks)
        tk = c.aes_dukpt_transaction_key(ik, ksn)
        for wk in c.AES_KEY_TYPES.values():
            if wk.strength > kt.strength:
                continue   # X9.24-3 6.1.3: never stronger than the BDK
            r = rate(lambda: c.aes_dukpt_working_key(tk, ksn, "pin", wk), secs)
            emit("crypto", f"aes_dukpt_working_key_{bdk_type}_{wk.name}", round(r), "ops/s",
                 ratio_to_aes_block=round(base / r, 1), aes_blocks=-(-wk.bits // 128))


def _modules(secs: float) -> None:
    """End to end through the two modules: a PIN entry on the pad, its check in the HSM.

    verify_pin is dominated by scrypt (deliberately slow: it is what makes a stolen
    verifier expensive to brute-force), so it is reported as its own figure.
    """
    from posterm.crypto.hsm import Hsm
    from posterm.crypto.pinpad import SecureModule

    hsm = Hsm.ephemeral()
    sm = SecureModule()
    sm.inject_kbpk(hsm.kbpk_for_injection("T0000001"))
    sm.load_key_block(hsm.initial_key_block("T0000001").block)
    code = "289900000000000003"

    def entry():
        sm.begin_pin_entry(code)
        for d in "147258":
            sm.press(d)
        return sm.finish()

    emit("crypto", "pinpad_pin_entries", round(rate(entry, secs)), "ops/s")
    # A signed message on the pad: advance the counter, derive, MAC (every message a fresh KSN).
    emit("crypto", "pinpad_signed_messages",
         round(rate(lambda: sm.request_mac(sm.next_ksn(), bytes(200)), secs)), "ops/s")
    ksn = sm.next_ksn()
    mac = sm.request_mac(ksn, bytes(200))

    def verify_fresh():  # the HSM's cost for a KSN it has not seen: its key cache emptied each time
        hsm._tk_cache.clear()
        return hsm.verify_request_mac(ksn, bytes(200), mac)
    emit("crypto", "hsm_verify_request_macs", round(rate(verify_fresh, secs)), "ops/s")
    emit("crypto", "hsm_response_macs_same_ksn",
         round(rate(lambda: hsm.response_mac(ksn, bytes(200)), secs)), "ops/s")
    verifier = hsm.payment_verifier("147258")
    e = entry()
    emit("crypto", "hsm_verify_pins", round(rate(lambda: hsm.verify_pin(
        ksn=e.ksn, pin_block=e.block, pin_format=e.format, pan=code, verifier=verifier, tries_used=0), max(secs, 0.5), batch=5), 1),
        "ops/s")
