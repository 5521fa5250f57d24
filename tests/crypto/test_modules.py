"""The PIN pad's secure module and the host's HSM, and the wall between them."""

from __future__ import annotations

from pathlib import Path

import pytest

from posterm.crypto import common as c
from posterm.crypto.hsm import Hsm
from posterm.crypto.pinpad import OperatorPassword, SecureModule
from posterm.errors import CryptoError

PIN = "147258"
CODE = "289900000000000003"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hsm(tmp_path_factory):
    return Hsm.open(tmp_path_factory.mktemp("hsm"))


@pytest.fixture(params=["AES", "TDES"])
def pad(request, hsm, tmp_path):
    sm = SecureModule(tmp_path / "pad")
    sm.inject_kbpk(hsm.kbpk_for_injection("T0000001"))
    sm.load_key_block(hsm.initial_key_block("T0000001", request.param).block)
    return sm


def enter(sm, pin, pan=CODE):
    sm.begin_pin_entry(pan)
    for d in pin:
        sm.press(d)
    return sm.finish()


def test_keys_refuse_other_uses():
    pin_key = c.Key(bytes(16), c.Usage.PIN, c.Algorithm.AES, c.Mode.ENCRYPT)
    with pytest.raises(CryptoError, match="cannot be used as a MAC key"):
        c.cmac_for(pin_key, b"data")
    mac_key = c.Key(bytes(16), c.Usage.MAC, c.Algorithm.AES, c.Mode.GENERATE)
    with pytest.raises(CryptoError, match="cannot be used as a PIN key"):
        c.encrypt_pin_block_4(mac_key, "1234", "4111111111111111")
    with pytest.raises(CryptoError, match="decrypt"):
        c.decrypt_pin_block_4(pin_key, bytes(16), "4111111111111111")  # encrypt-only key
    assert "00" * 16 not in repr(pin_key) and "kcv=" in repr(pin_key)


def test_mac_and_pin_across_the_boundary(pad, hsm):
    ksn = pad.next_ksn()
    mac = pad.request_mac(ksn, b"AuthRequest bytes")
    assert hsm.verify_request_mac(ksn, b"AuthRequest bytes", mac)
    assert not hsm.verify_request_mac(ksn, b"AuthRequest byteZ", mac)
    assert pad.verify_response_mac(ksn, b"answer", hsm.response_mac(ksn, b"answer"))
    assert not pad.verify_response_mac(ksn, b"answer", mac)  # a request MAC is not a response MAC
    verifier = hsm.payment_verifier(PIN)
    good = enter(pad, PIN)
    assert hsm.verify_pin(ksn=good.ksn, pin_block=good.block, pin_format=good.format, pan=CODE,
                          verifier=verifier, tries_used=0).match
    bad = enter(pad, "000000")
    check = hsm.verify_pin(ksn=bad.ksn, pin_block=bad.block, pin_format=bad.format, pan=CODE,
                           verifier=verifier, tries_used=1)
    assert (check.match, check.locked, check.tries_left) == (False, False, 1)
    check = hsm.verify_pin(ksn=bad.ksn, pin_block=bad.block, pin_format=bad.format, pan=CODE,
                           verifier=verifier, tries_used=2)
    assert check.locked and check.tries_left == 0
    locked = hsm.verify_pin(ksn=good.ksn, pin_block=good.block, pin_format=good.format, pan=CODE,
                            verifier=verifier, tries_used=3)
    assert locked.locked and not locked.match  # the right PIN no longer helps


def test_pin_for_another_code_does_not_match(hsm, tmp_path):
    sm = SecureModule()
    sm.inject_kbpk(hsm.kbpk_for_injection("T2"))
    sm.load_key_block(hsm.initial_key_block("T2").block)
    e = enter(sm, PIN, "289900000000000001")
    assert not hsm.verify_pin(ksn=e.ksn, pin_block=e.block, pin_format=4, pan="289900000000000003",
                              verifier=hsm.payment_verifier(PIN), tries_used=0).match


def test_key_block_checks(hsm, tmp_path):
    sm = SecureModule()
    with pytest.raises(CryptoError, match="never injected"):
        sm.load_key_block(hsm.initial_key_block("T1").block)
    sm.inject_kbpk(hsm.kbpk_for_injection("T1"))
    with pytest.raises(CryptoError, match="authentication"):
        sm.load_key_block(hsm.initial_key_block("T2").block)  # another terminal's block
    kbpk = hsm.kbpk_for_injection("T1")
    pin_key_block = c.tr31_wrap(kbpk, c.TR31Header("D", 0, "P0", "A", "E", "00", "N"), bytes(16))
    with pytest.raises(CryptoError, match="B1"):
        sm.load_key_block(pin_key_block)
    exportable = c.tr31_wrap(kbpk, c.TR31Header("D", 0, "B1", "A", "X", "00", "E", (("IK", "00" * 8),)), bytes(16))
    with pytest.raises(CryptoError, match="non-exportable"):
        sm.load_key_block(exportable)
    wrong_kcv = c.tr31_wrap(kbpk, c.TR31Header("D", 0, "B1", "A", "X", "00", "N",
                                               (("IK", "00" * 8), ("KC", "01ABCDEF0123"))), bytes(16))
    with pytest.raises(CryptoError, match="check value"):
        sm.load_key_block(wrong_kcv)
    assert not sm.status().loaded


def test_state_survives_restart_and_never_reuses_a_ksn(pad, tmp_path):
    first = pad.next_ksn()
    again = SecureModule(tmp_path / "pad")
    assert again.status().loaded and again.next_ksn() != first
    raw = (tmp_path / "pad").read_bytes()
    assert b"\"ik\"" not in raw and b"counter" not in raw  # sealed, not clear JSON


def test_counters_are_reserved_in_blocks_and_never_reused_after_a_crash(pad, tmp_path, monkeypatch):
    from posterm.crypto import sealed
    from posterm.crypto.pinpad import KSN_RESERVE

    writes = []
    real_save = sealed.save
    monkeypatch.setattr(sealed, "save", lambda path, doc: (writes.append(doc["counter"]), real_save(path, doc)))
    used = [pad.next_ksn() for _ in range(3 * KSN_RESERVE)]
    assert len(writes) == 3                           # one sealed write per KSN_RESERVE KSNs, not one per KSN
    again = SecureModule(tmp_path / "pad")            # as if killed right after the last KSN left
    after = [again.next_ksn() for _ in range(KSN_RESERVE + 1)]
    assert not set(after) & set(used)
    assert int.from_bytes(after[0][-4:], "big") > int.from_bytes(used[-1][-4:], "big")


def test_exhaustion_refuses_and_says_so(hsm):
    sm = SecureModule()
    sm.inject_kbpk(hsm.kbpk_for_injection("T9"))
    sm.load_key_block(hsm.initial_key_block("T9").block)
    sm._counter = c.AES_LAST_COUNTER
    with pytest.raises(CryptoError, match="exhausted"):
        sm.next_ksn()
    assert sm.status().counters_left == 0


def test_no_pin_or_key_in_repr_or_errors(pad):
    pad.begin_pin_entry(CODE)
    for d in PIN:
        pad.press(d)
    text = repr(pad) + repr(vars(pad) if hasattr(pad, "__dict__") else "")
    assert PIN not in text
    e = pad.finish()
    assert e.block.hex() not in repr(e) and PIN not in repr(e)
    with pytest.raises(CryptoError) as info:
        pad.press("x")
    assert PIN not in str(info.value)
    with pytest.raises(CryptoError):
        import pickle
        pickle.dumps(pad)


def _held_bytes(obj, depth=0):
    """Every bytes-like value reachable from obj's attributes (keys unwrapped)."""
    if depth > 4:
        return
    if isinstance(obj, (bytes, bytearray)):
        yield bytes(obj)
    elif isinstance(obj, str):
        yield obj.encode()
    elif isinstance(obj, c.Key):
        yield obj._bytes
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _held_bytes(k, depth + 1)
            yield from _held_bytes(v, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _held_bytes(v, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and depth == 0:
        for v in vars(obj).values():
            yield from _held_bytes(v, depth + 1)


def test_terminal_side_never_holds_host_secrets(pad, hsm):
    verifier = hsm.payment_verifier(PIN)
    e = enter(pad, PIN)
    assert hsm.verify_pin(ksn=e.ksn, pin_block=e.block, pin_format=e.format, pan=CODE, verifier=verifier,
                          tries_used=0).match
    held = list(_held_bytes(pad))
    assert any(len(b) in (16, 32) for b in held)  # the walk does see the pad's own keys
    for secret in (hsm._bdk, hsm._tdes_bdk, hsm._kbpk_master, verifier, *hsm._retired.values()):
        for value in held:
            assert secret not in value and secret.hex().encode() not in value.lower()
        assert secret.hex() not in repr(pad)


def test_hsm_keeps_no_clear_pin(hsm, pad):
    e = enter(pad, PIN)
    hsm.verify_pin(ksn=e.ksn, pin_block=e.block, pin_format=e.format, pan=CODE,
                   verifier=hsm.payment_verifier(PIN), tries_used=0)
    assert PIN not in repr(vars(hsm)) and PIN.encode() not in repr(vars(hsm)).encode()
    held = list(_held_bytes(hsm))
    assert held and not any(PIN.encode() in b or bytes.fromhex(PIN) in b for b in held)


def test_operator_password(tmp_path):
    op = OperatorPassword(tmp_path / "op", password="246810")
    assert op.verify("246810")
    for _ in range(5):
        assert not op.verify("000000")
    assert op.locked and not op.verify("246810")  # locked: even the right one fails
    again = OperatorPassword(tmp_path / "op")
    assert again.locked  # the lock survives a restart
    again.reset("135790")
    assert again.verify("135790") and "246810" not in repr(again)
    assert b"246810" not in (tmp_path / "op").read_bytes()



def _loaded(hsm, tid="T7", algorithm="AES"):
    sm = SecureModule()
    sm.inject_kbpk(hsm.kbpk_for_injection(tid))
    issued = hsm.initial_key_block(tid, algorithm)
    st = sm.load_key_block(issued.block)
    return sm, issued, st


def test_status_reports_ksn_and_kcv_never_key(hsm):
    sm, issued, st = _loaded(hsm)
    assert st.loaded and st.kcv == issued.kcv and st.algorithm == "AES" and st.ksn == issued.ksn
    ksn = sm.next_ksn()
    assert sm.status().ksn == ksn and ksn[:8] == issued.ksn[:8] and ksn[8:] == b"\0\0\0\1"
    assert sm.status().counters_left == st.counters_left - 1


def test_tdes_counters_left_counts_every_valid_counter(hsm):
    _, _, st = _loaded(hsm, algorithm="TDES")
    assert st.counters_left == sum(1 for n in range(1, 0x200000) if n.bit_count() <= 10)


@pytest.mark.parametrize("algorithm, start, expect", [("AES", 0x0000FFFF, 0x00010000),
                                                     ("AES", 0x0001FFFE, 0x00020000),
                                                     ("TDES", 0x0003FF, 0x000400),
                                                     ("TDES", 0x0FF7FE, 0x0FF800)])
def test_module_skips_invalid_counters(hsm, algorithm, start, expect):
    sm, _, _ = _loaded(hsm, algorithm=algorithm)
    sm._counter = start
    ksn = sm.next_ksn()
    got = int.from_bytes(ksn[-4:], "big") if algorithm == "AES" else int.from_bytes(ksn[-3:], "big") & 0x1FFFFF
    assert got == expect
    # and the keys of the new KSN still agree with the host
    mac = sm.request_mac(ksn, b"m")
    assert hsm.verify_request_mac(ksn, b"m", mac)


def test_tdes_counter_rules_and_exhaustion(hsm):
    assert c.tdes_dukpt_next_counter(0x0003FE) == 0x0003FF          # 10 one-bits: still valid
    assert c.tdes_dukpt_next_counter(0x0003FF) == 0x000400          # 0x400 skips nothing; 0x3FF+1
    assert c.tdes_dukpt_next_counter(0x0007FE) == 0x000800          # 0x7FF has 11 one-bits: skipped
    with pytest.raises(CryptoError, match="exhausted"):
        c.tdes_dukpt_next_counter(0x1FF800)                        # the last valid counter
    sm, _, _ = _loaded(hsm, algorithm="TDES")
    sm._counter = 0x1FF800
    with pytest.raises(CryptoError, match="exhausted"):
        sm.next_ksn()
    with pytest.raises(CryptoError, match="exhausted"):
        enter(sm, PIN)
    assert sm.status().counters_left == 0


def test_key_block_header_refusals(hsm):
    sm = SecureModule()
    kbpk = hsm.kbpk_for_injection("T3")
    sm.inject_kbpk(kbpk)
    ik = bytes(range(16))
    kc = ("KC", "01" + c.kcv(ik, c.Algorithm.AES, 5).hex().upper())
    ikb = ("IK", "00" * 8)

    def block(version="D", usage="B1", alg="A", mode="X", kv="00", exp="N", opts=(ikb, kc), key=ik):
        return c.tr31_wrap(kbpk, c.TR31Header(version, 0, usage, alg, mode, kv, exp, opts), key)
    with pytest.raises(CryptoError, match="no key check value"):
        sm.load_key_block(block(opts=(ikb,)))
    with pytest.raises(CryptoError, match="derivation mode"):
        sm.load_key_block(block(mode="E"))
    with pytest.raises(CryptoError, match="component"):
        sm.load_key_block(block(kv="c1"))
    with pytest.raises(CryptoError, match="holds a 64-bit key"):
        sm.load_key_block(block(key=bytes(8)))
    with pytest.raises(CryptoError, match="version D"):
        sm.load_key_block("B" + block()[1:])
    assert sm.load_key_block(block(kv="05")).loaded
    with pytest.raises(CryptoError, match="rollback"):
        sm.load_key_block(block(kv="04"))
    assert sm.load_key_block(block(kv="06")).loaded
    for exc_text in (repr(sm),):
        assert ik.hex() not in exc_text.lower()


def test_errors_never_carry_key_bytes(hsm):
    sm, _, _ = _loaded(hsm, "T8")
    kbpk = hsm.kbpk_for_injection("T8")
    bad = c.tr31_wrap(kbpk, c.TR31Header("D", 0, "P0", "A", "E", "00", "N"), bytes(range(16)))
    with pytest.raises(CryptoError) as info:
        sm.load_key_block(bad)
    text = str(info.value).upper()
    assert bytes(range(16)).hex().upper() not in text and kbpk.hex().upper() not in text


def test_hsm_keystore_is_sealed_and_survives_reopen(tmp_path):
    hsm = Hsm.open(tmp_path / "hsm")
    sm = SecureModule(tmp_path / "pad" / "module.sealed")
    sm.inject_kbpk(hsm.kbpk_for_injection("T0000001"))
    issued = hsm.initial_key_block("T0000001")
    sm.load_key_block(issued.block)
    again = Hsm.open(tmp_path / "hsm")  # a restarted host keeps its BDK: the pad still verifies
    ksn = sm.next_ksn()
    assert again.verify_request_mac(ksn, b"x", sm.request_mac(ksn, b"x"))
    assert again.initial_key_block("T0000001").kcv == issued.kcv
    store = tmp_path / "hsm" / "hsm.keys"
    assert (store.with_name("hsm.keys.devkey").stat().st_mode & 0o777) == 0o600
    assert (store.stat().st_mode & 0o777) == 0o600
    store.write_bytes(store.read_bytes()[:-1] + bytes([store.read_bytes()[-1] ^ 1]))
    with pytest.raises(CryptoError, match="authentication"):
        Hsm.open(tmp_path / "hsm")


def test_no_secret_at_rest_or_in_reprs(tmp_path):
    """Scan every file the pad, the operator password and the HSM write for the test secrets."""
    hsm = Hsm.open(tmp_path / "hsm")
    sm = SecureModule(tmp_path / "pad" / "module.sealed")
    kbpk = hsm.kbpk_for_injection("T0000002")
    sm.inject_kbpk(kbpk)
    sm.load_key_block(hsm.initial_key_block("T0000002").block)
    op = OperatorPassword(tmp_path / "pad" / "operator.sealed", password="246810")
    op.verify("246810")
    verifier = hsm.payment_verifier(PIN)
    e = enter(sm, PIN)
    check = hsm.verify_pin(ksn=e.ksn, pin_block=e.block, pin_format=e.format, pan=CODE, verifier=verifier,
                           tries_used=0)
    assert check.match
    secrets = [hsm._bdk, hsm._tdes_bdk, hsm._kbpk_master, kbpk, sm._ik.material(c.Usage.DUKPT_IK)]
    needles = [s for k in secrets for s in (k, k.hex().encode(), k.hex().upper().encode())]
    needles += [PIN.encode(), b"246810"]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".devkey")]
    assert len(files) >= 3
    for p in files:
        blob = p.read_bytes()
        for n in needles:
            assert n not in blob, p.name
    for obj in (sm, hsm, op, e, check, sm.status(), hsm.initial_key_block("T0000002")):
        text = repr(obj).encode()
        for n in needles:
            assert n not in text and n.upper() not in text.upper(), type(obj).__name__


def test_verify_pin_refuses_mismatched_format_and_bad_blocks(hsm, pad):
    verifier = hsm.payment_verifier(PIN)
    e = enter(pad, PIN)
    wrong_fmt = 0 if e.format == 4 else 4
    assert not hsm.verify_pin(ksn=e.ksn, pin_block=e.block, pin_format=wrong_fmt, pan=CODE, verifier=verifier,
                              tries_used=0).match
    assert not hsm.verify_pin(ksn=e.ksn, pin_block=bytes(len(e.block)), pin_format=e.format, pan=CODE,
                              verifier=verifier, tries_used=0).match
    assert verifier.hex().find(PIN.encode().hex()) == -1 and hsm.payment_verifier(PIN) != verifier  # salted


def test_bdk_rotation_keeps_old_terminals_working(tmp_path):
    hsm = Hsm.open(tmp_path / "hsm")
    old_pad, _, _ = _loaded(hsm, "T0000010")
    old_id = hsm.bdk_id
    new_id = hsm.rotate_bdk()
    assert new_id != old_id and hsm.bdk_id == new_id
    new_pad, issued, _ = _loaded(hsm, "T0000011")
    assert issued.ksn[:4] == new_id
    reopened = Hsm.open(tmp_path / "hsm")  # the rotation and the retired BDK are persisted
    for pad_ in (old_pad, new_pad):
        ksn = pad_.next_ksn()
        assert reopened.verify_request_mac(ksn, b"m", pad_.request_mac(ksn, b"m"))
        e = enter(pad_, PIN)
        assert reopened.verify_pin(ksn=e.ksn, pin_block=e.block, pin_format=e.format, pan=CODE,
                                   verifier=reopened.payment_verifier(PIN), tries_used=0).match
    unknown = b"\xEE" * 4 + old_pad.next_ksn()[4:]
    assert not reopened.verify_request_mac(unknown, b"m", b"\0" * 8)


def test_key_modes_are_enforced():
    gen = c.Key(bytes(16), c.Usage.MAC, c.Algorithm.AES, c.Mode.GENERATE)
    ver = c.Key(bytes(16), c.Usage.MAC, c.Algorithm.AES, c.Mode.VERIFY)
    both = c.Key(bytes(16), c.Usage.MAC, c.Algorithm.AES, c.Mode.CALCULATE)
    mac = c.cmac_for(gen, b"data")
    assert c.cmac_verify(ver, b"data", mac) and not c.cmac_verify(ver, b"dat4", mac)
    assert c.cmac_verify(both, b"data", c.cmac_for(both, b"data"))
    with pytest.raises(CryptoError, match="VERIFY cannot generate"):
        c.cmac_for(ver, b"data")
    with pytest.raises(CryptoError, match="GENERATE cannot verify"):
        c.cmac_verify(gen, b"data", mac)
    enc_dec = c.Key(bytes(16), c.Usage.PIN, c.Algorithm.AES, c.Mode.BOTH)
    block = c.encrypt_pin_block_4(enc_dec, "1234", "4111111111111111")
    assert c.decrypt_pin_block_4(enc_dec, block, "4111111111111111") == "1234"
    with pytest.raises(CryptoError, match="cannot be used as a MAC key"):
        c.cmac_for(enc_dec, b"data")
    ik = c.Key(bytes(16), c.Usage.DUKPT_IK, c.Algorithm.AES, c.Mode.DERIVE)
    with pytest.raises(CryptoError, match="cannot be used as a PIN key"):
        c.encrypt_pin_block_4(ik, "1234", "4111111111111111")
    with pytest.raises(CryptoError, match="AES key is 16/24/32 bytes"):
        c.Key(bytes(15), c.Usage.PIN, c.Algorithm.AES)


def test_mac_sizes_and_stale_ksn_are_refused(pad, hsm):
    ksn = pad.next_ksn()
    mac = pad.request_mac(ksn, b"x")
    assert not hsm.verify_request_mac(ksn, b"x", mac[:4]) and not hsm.verify_request_mac(ksn, b"x", mac + b"\0")
    resp = hsm.response_mac(ksn, b"r")
    assert not pad.verify_response_mac(ksn, b"r", resp[:7])
    pad.next_ksn()  # the pad moved on: the old KSN's keys are gone from it
    with pytest.raises(CryptoError, match="current"):
        pad.request_mac(ksn, b"x")
    assert not pad.verify_response_mac(ksn, b"r", resp)
    with pytest.raises(CryptoError):
        hsm.response_mac(b"\0" * 11, b"r")


def test_sealed_store_concurrent_first_use(tmp_path):
    """Many threads opening the same fresh store agree on one device key and one document."""
    import threading

    from posterm.crypto import sealed

    path = tmp_path / "s" / "state.sealed"
    errors = []

    keys = []
    barrier = threading.Barrier(8, timeout=10)

    def worker(i):
        try:
            barrier.wait()
            keys.append(sealed._device_key(path))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in path.parent.iterdir()] == ["state.sealed.devkey"]  # no temp files left
    sealed.save(path, {"ok": 1})
    assert sealed.load(path) == {"ok": 1}


def test_verifiers_and_operator_password_change(tmp_path):
    from posterm.crypto.verifier import check_verifier, make_verifier

    v = make_verifier("246810")
    assert check_verifier("246810", v) and not check_verifier("246811", v)
    assert make_verifier("246810") != v and b"246810" not in v  # salted, no clear text
    with pytest.raises(CryptoError, match="damaged"):
        check_verifier("246810", v[:-1])
    with pytest.raises(CryptoError, match="6 to 12 digits"):
        Hsm.payment_verifier("12ab56")
    with pytest.raises(CryptoError, match="no operator password"):
        OperatorPassword(tmp_path / "none")
    op = OperatorPassword(tmp_path / "op", password="246810")
    with pytest.raises(CryptoError, match="old password is wrong") as info:
        op.change("000000", "135790")
    assert "246810" not in str(info.value) and "135790" not in str(info.value)
    op.change("246810", "135790")
    assert OperatorPassword(tmp_path / "op").verify("135790")  # persisted
    assert not op.verify("246810")


def test_pin_entry_rules(hsm):
    sm, _, _ = _loaded(hsm, "T0000020")
    before = sm.status().counters_left
    sm.begin_pin_entry(CODE)
    for d in "123":
        sm.press(d)
    with pytest.raises(CryptoError, match="4 to 12 digits"):
        sm.finish()
    assert sm.status().counters_left == before  # no KSN spent on a refused entry
    with pytest.raises(CryptoError, match="no PIN entry in progress"):
        sm.finish()  # the entry ended and the digits are gone
    sm.begin_pin_entry(CODE)
    for d in "1" * 12:
        sm.press(d)
    with pytest.raises(CryptoError, match="at most 12"):
        sm.press("1")
    sm.cancel_pin_entry()
    with pytest.raises(CryptoError, match="no PIN entry in progress"):
        sm.press("1")
    with pytest.raises(CryptoError, match="numeric"):
        sm.begin_pin_entry("28990000000000000X")
    e = enter(sm, PIN)
    assert e.format == 4 and len(e.block) == 16 and sm.status().counters_left == before - 1
    assert sm._digits == bytearray()  # wiped after finish


def test_tdes_terminals_get_distinct_persistent_ksns(tmp_path):
    hsm = Hsm.open(tmp_path / "hsm")
    tids = [f"T{n:07d}" for n in range(1, 65)]
    issued = {t: hsm.initial_key_block(t, "TDES") for t in tids}
    assert len({i.ksn for i in issued.values()}) == 64 and len({i.kcv for i in issued.values()}) == 64
    assert all(int.from_bytes(i.ksn, "big") & 0x1FFFFF == 0 and i.ksn[:2] == b"\xFF\xFF" for i in issued.values())
    again = Hsm.open(tmp_path / "hsm")
    got = again.initial_key_block("T0000007", "TDES")
    assert (got.ksn, got.kcv) == (issued["T0000007"].ksn, issued["T0000007"].kcv)
    aes = {hsm.initial_key_block(t).ksn[:8] for t in tids}
    assert len(aes) == 64


def test_transaction_key_cache_is_bounded_and_correct(monkeypatch, hsm):
    import posterm.crypto.hsm as host_mod

    monkeypatch.setattr(host_mod, "TK_CACHE_SIZE", 3)
    fresh = Hsm.ephemeral()
    sm = SecureModule()
    sm.inject_kbpk(fresh.kbpk_for_injection("T0000030"))
    sm.load_key_block(fresh.initial_key_block("T0000030").block)
    ksns = []
    for i in range(8):
        ksn = sm.next_ksn()
        ksns.append(ksn)
        data = b"msg%d" % i
        assert fresh.verify_request_mac(ksn, data, sm.request_mac(ksn, data))
        assert sm.verify_response_mac(ksn, data, fresh.response_mac(ksn, data))
        assert len(fresh._tk_cache) <= 3
    assert list(fresh._tk_cache) == ksns[-3:]
    # a cached key never answers for another KSN
    assert not fresh.verify_request_mac(ksns[-2], b"msg7", sm.request_mac(ksns[-1], b"msg7"))


def test_sealed_stores_live_in_private_directories(tmp_path):
    import os
    import stat

    from posterm.crypto import sealed

    old = os.umask(0)
    try:
        sealed.save(tmp_path / "hsm" / "keys.sealed", {"k": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "hsm").stat().st_mode) == 0o700
    for f in (tmp_path / "hsm").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert sealed.load(tmp_path / "hsm" / "keys.sealed") == {"k": 1}
