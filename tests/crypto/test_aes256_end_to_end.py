"""An AES-256 initial key, issued by the host's HSM under an AES-256 BDK, wrapped in TR-31 D
under the terminal's AES-256 KBPK, loaded into an emulated terminal with `posterm keys load`
(the KeyLoad operator message), then a payment whose PIN travels as an ISO 9564 format 4
block under the AES-256 DUKPT PIN key and is verified by the host's HSM.

Also the pad and the HSM alone for every BDK type, and the same PIN block checked by psec
(an implementation nobody here wrote) under the key the published-vector-tested library derives.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from posterm.cli import main
from posterm.crypto import common as c
from posterm.crypto.hsm import Hsm
from posterm.crypto.pinpad import SecureModule
from posterm.errors import CryptoError

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # inside psec
CODE = "289900000000000001"     # demo account 1: PIN 147258 typed by the emulated customer over 1000.00


@pytest.mark.parametrize("bdk_type, bits", [("aes128", 128), ("aes192", 192), ("aes256", 256)])
def test_pad_and_hsm_with_every_bdk_type(bdk_type, bits):
    hsm = Hsm.ephemeral(bdk_type)
    sm = SecureModule()
    sm.inject_kbpk(hsm.kbpk_for_injection("T1"))
    issued = hsm.initial_key_block("T1")
    header, _ = c.parse_tr31_header(issued.block)
    assert (header.version, header.usage, header.algorithm, header.mode, header.exportability) == \
        ("D", "B1", "A", "X", "N")
    st = sm.load_key_block(issued.block)
    assert st.key_bits == bits and st.algorithm == "AES" and st.kcv == issued.kcv
    verifier = hsm.payment_verifier("147258")
    for _ in range(3):
        sm.begin_pin_entry(CODE)
        for d in "147258":
            sm.press(d)
        e = sm.finish()
        assert e.format == 4 and len(e.block) == 16
        check = hsm.verify_pin(ksn=e.ksn, pin_block=e.block, pin_format=4, pan=CODE, verifier=verifier, tries_used=0)
        assert check.match
        ksn = sm.next_ksn()
        mac = sm.request_mac(ksn, b"request")
        assert hsm.verify_request_mac(ksn, b"request", mac)
        assert sm.verify_response_mac(ksn, b"response", hsm.response_mac(ksn, b"response"))
        assert not hsm.verify_request_mac(ksn, b"requesT", mac)


def test_the_pads_pin_block_is_format_4_under_the_aes256_working_key_psec_agrees():
    psec_pin = pytest.importorskip("psec.pinblock")
    bdk = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1" * 2)      # the X9.24-3 AES-256 test BDK
    hsm = Hsm.ephemeral()
    hsm.import_bdk(bdk, bytes.fromhex("12345678"))
    sm = SecureModule()
    sm.inject_kbpk(hsm.kbpk_for_injection("T1"))
    sm.load_key_block(hsm.initial_key_block("T1").block)
    sm.begin_pin_entry(CODE)
    for d in "147258":
        sm.press(d)
    e = sm.finish()
    assert e.ksn[:4] == bytes.fromhex("12345678")
    tk = c.aes_dukpt_transaction_key(c.aes_dukpt_initial_key(bdk, e.ksn[:8]), e.ksn)
    pin_key = c.aes_dukpt_working_key(tk, e.ksn, "pin")
    assert len(pin_key) == 32
    assert psec_pin.decipher_pinblock_iso_4(pin_key, e.block, CODE) == "147258"
    wrong = c.aes_dukpt_working_key(tk, e.ksn, "pin", "aes128")      # same KSN, an AES-128 PIN key
    with pytest.raises(ValueError):                                   # psec: the block does not decode
        psec_pin.decipher_pinblock_iso_4(wrong, e.block, CODE)


def test_import_bdk_refuses_bad_input_without_the_key():
    hsm = Hsm.ephemeral()
    with pytest.raises(CryptoError, match="not 20"):
        hsm.import_bdk(bytes(20), b"\x01\x02\x03\x04")
    with pytest.raises(CryptoError, match="4 bytes"):
        hsm.import_bdk(bytes(32), b"\x01")
    with pytest.raises(CryptoError, match="taken"):
        hsm.import_bdk(bytes(32), hsm.bdk_id)
    with pytest.raises(CryptoError, match="aes512"):
        hsm.rotate_bdk("aes512")
    hsm.import_bdk(bytes(range(32)), b"\x01\x02\x03\x04")
    assert hsm.bdk_type == "aes256" and bytes(range(32)).hex() not in repr(hsm) + json.dumps(hsm.bdk_info())


def test_a_rotation_by_another_process_is_taken_in_and_never_undone(tmp_path):
    serving = Hsm.open(tmp_path / "hsm")           # `host serve`
    old_id = serving.bdk_id
    sm_old = SecureModule()
    sm_old.inject_kbpk(serving.kbpk_for_injection("T1"))
    sm_old.load_key_block(serving.initial_key_block("T1").block)
    admin = Hsm.open(tmp_path / "hsm")             # `posterm host bdk rotate --type aes256` beside it
    new_id = admin.rotate_bdk("aes256")
    issued = admin.issue_initial_key("T2")         # `posterm host terminal key T2`
    sm = SecureModule()
    sm.inject_kbpk(admin.kbpk_for_injection("T2"))
    assert sm.load_key_block(issued.block).key_bits == 256
    ksn = sm.next_ksn()
    assert ksn[:4] == new_id
    assert serving.verify_request_mac(ksn, b"m", sm.request_mac(ksn, b"m"))    # the serving HSM took it in
    serving.issue_initial_key("T3")               # a save by the serving process ...
    again = Hsm.open(tmp_path / "hsm")
    assert again.bdk_id == new_id and again.bdk_type == "aes256"            # ... did not undo the rotation
    ksn_old = sm_old.next_ksn()
    assert again.verify_request_mac(ksn_old, b"m", sm_old.request_mac(ksn_old, b"m"))   # the old BDK is retired
    assert ksn_old[:4] == old_id


def test_host_bdk_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(main, ["host", "bdk", "rotate", "--type", "aes256", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["type"] == "aes256" and info["retired"] == 1
    r = CliRunner().invoke(main, ["host", "bdk", "status"])
    assert r.exit_code == 0 and f"BDK {info['bdk_id']}: aes256, KCV {info['kcv']}" in r.output
    r = CliRunner().invoke(main, ["host", "bdk", "rotate", "--type", "aes512"])
    assert r.exit_code == 2 and r.output.startswith("posterm: error: ") and len(r.output.splitlines()) == 1


def test_aes256_key_loaded_by_tr31_into_an_emulated_terminal_then_a_pin_payment(tmp_path, monkeypatch):
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal
    from posterm.families.native.ecr import Terminal
    from posterm.safefs import private_dir

    home = private_dir(tmp_path / "posterm", own=True)
    monkeypatch.setenv("POSTERM_HOME", str(home))
    # The host's key ceremony: an AES-256 BDK before the terminal exists.
    r = CliRunner().invoke(main, ["host", "bdk", "rotate", "--type", "aes256", "--json"])
    assert r.exit_code == 0, r.output
    bdk_id = json.loads(r.output)["bdk_id"]
    term = EmulatedTerminal.start(home=home, config=FirmwareConfig(poll_interval=0.2, poll_attempts=10))
    try:
        # A new initial key from the host, as an engineer gets it ...
        r = CliRunner().invoke(main, ["host", "terminal", "key", "T0000001", "--json"])
        assert r.exit_code == 0, r.output
        issued = json.loads(r.output)
        block = issued["key_block"]
        header, _ = c.parse_tr31_header(block)
        assert (header.version, header.usage, header.algorithm, header.mode, header.exportability) == \
            ("D", "B1", "A", "X", "N")
        opts = dict(header.optional_blocks)
        assert opts["IK"][:8] == bdk_id and opts["IK"] == issued["initial_ksn"][:16]
        (tmp_path / "key.tr31").write_text(block + "\n")
        # ... loaded over the wire with `posterm keys load` (the KeyLoad operator message)
        r = CliRunner().invoke(main, ["keys", "load", "--port", term.port, "--block-file", str(tmp_path / "key.tr31"),
                                      "--json"], env={"POSTERM_OPERATOR_PASSWORD": "246810"})
        assert r.exit_code == 0, r.output
        loaded = json.loads(r.output)
        assert loaded["loaded"] and loaded["kcv"] == issued["kcv"] and loaded["ksn"] == issued["initial_ksn"]
        with Terminal.open(term.port, journal=str(tmp_path / "drv.db")) as t:
            stages = []
            res = t.pay(100_001, "CNY", payment_code=CODE, timeout=30, on_progress=lambda p: stages.append(p.stage))
            assert res.approved, (res.outcome, res.reason)
            assert "WAITING_FOR_PIN" in {getattr(s, "name", str(s)) for s in stages}   # the PIN was typed
            key = t.key_status()
            ksn = key.ksn.upper()
            assert ksn[:16] == issued["initial_ksn"][:16] and ksn != issued["initial_ksn"]   # used under the new key
        assert term.host.order_status(res.order_id) == "APPROVED"
        assert term.host.check_books() == []
    finally:
        term.close()
    assert term.error is None
    # The pad's sealed state says what it holds: an AES-256 initial key (bits, never bytes).
    st = SecureModule(home / "terminals" / "T0000001" / "pinpad.sealed").status()
    assert st.key_bits == 256 and st.kcv.hex().upper() == issued["kcv"]


def test_the_pad_refuses_an_aes256_key_under_a_weaker_kbpk():
    ik = bytes(range(32))
    kcv = c.kcv(ik, c.Algorithm.AES, 5).hex().upper()
    header = c.TR31Header("D", 0, "B1", "A", "X", "01", "N", (("IK", "1234567890123456"), ("KC", "01" + kcv)))
    sm = SecureModule()
    sm.inject_kbpk(bytes(16))
    with pytest.raises(CryptoError, match="weaker") as exc:
        sm.load_key_block(c.tr31_wrap(bytes(16), header, ik))
    assert ik.hex() not in str(exc.value).lower() and not sm.status().loaded
    sm.inject_kbpk(bytes(32))
    assert sm.load_key_block(c.tr31_wrap(bytes(32), header, ik)).key_bits == 256
