"""Key loading keeps DUKPT counters moving forward (issue: loading the host's block reset the
KSN counter to 0, and every payment was refused replay_detected until it climbed back)."""

from __future__ import annotations

import pytest

from firmware_protocol.native.messages import Outcome, Reason
from posterm.crypto.hsm import Hsm
from posterm.crypto.pinpad import SecureModule
from posterm.families.native.ecr import Terminal
from posterm.errors import CryptoError

OPERATOR = "246810"
PIN_AMOUNT = 100_001          # above test code ...001's password-free limit: the customer types the PIN
CODE_1 = "289900000000000001"


@pytest.fixture
def term(posterm_terminal, tmp_path):
    with Terminal.open(posterm_terminal.port, journal=str(tmp_path / "drv.db")) as t:
        t.emu = posterm_terminal
        yield t
    assert posterm_terminal.error is None


def _counter(ksn_hex: str) -> tuple[str, int]:
    ksn = bytes.fromhex(ksn_hex)
    return ksn[:8].hex(), int.from_bytes(ksn[8:], "big")


def test_loading_the_same_block_again_does_not_rewind_the_counter(term):
    block = term.emu.host.hsm.initial_key_block("T0000001").block   # what the pad holds already
    assert term.pay(PIN_AMOUNT, "CNY", payment_code=CODE_1, timeout=30).approved
    before = _counter(term.key_status().ksn)
    for _ in range(2):
        info = term.load_key(block, OPERATOR)
        assert info.loaded and not info.reason
        ikid, counter = _counter(info.ksn)
        assert ikid == before[0] and counter >= before[1]           # never back to 0
        r = term.pay(PIN_AMOUNT, "CNY", payment_code=CODE_1, timeout=30)
        assert (r.outcome, r.reason) == (Outcome.APPROVED, Reason.NONE)


def test_a_newly_issued_key_has_a_new_key_id_and_pays_with_pin_at_once(term):
    old = _counter(term.key_status().ksn)
    issued = term.emu.host.issue_terminal_key("T0000001")
    info = term.load_key(issued.block, OPERATOR)
    assert info.loaded and not info.reason
    new = _counter(info.ksn)
    assert new[0] != old[0] and new[0] == issued.ksn[:8].hex()
    r = term.pay(PIN_AMOUNT, "CNY", payment_code=CODE_1, timeout=30)
    assert (r.outcome, r.reason) == (Outcome.APPROVED, Reason.NONE)
    again = term.load_key(issued.block, OPERATOR)                   # loaded twice: no KSN reuse
    assert _counter(again.ksn)[0] == new[0] and _counter(again.ksn)[1] > 0
    assert term.pay(PIN_AMOUNT, "CNY", payment_code=CODE_1, timeout=30).approved


def test_the_pad_remembers_counters_of_keys_it_held_before():
    hsm = Hsm.ephemeral()
    sm = SecureModule()
    sm.inject_kbpk(hsm.kbpk_for_injection("T1"))
    first = hsm.initial_key_block("T1").block
    sm.load_key_block(first)
    used = {sm.next_ksn() for _ in range(3)}
    hsm.rotate_bdk()                                                # same key version, another key id
    sm.load_key_block(hsm.initial_key_block("T1").block)
    sm.next_ksn()
    sm.load_key_block(first)                                        # the first key again: not from 0
    assert not used & {sm.next_ksn() for _ in range(3)}
    sm.load_key_block(hsm.issue_initial_key("T1").block)            # an issued key has a newer version
    with pytest.raises(CryptoError, match="older"):
        sm.load_key_block(first)                                    # 00 after 01: rollback refused


def test_the_pad_keeps_its_counter_across_a_restart_and_a_reload(tmp_path):
    hsm = Hsm.ephemeral()
    sm = SecureModule(tmp_path / "pad.sealed")
    sm.inject_kbpk(hsm.kbpk_for_injection("T1"))
    block = hsm.initial_key_block("T1").block
    sm.load_key_block(block)
    seen = {sm.next_ksn() for _ in range(20)}
    again = SecureModule(tmp_path / "pad.sealed")
    again.load_key_block(block)
    more = {again.next_ksn() for _ in range(20)}
    assert not seen & more


def test_issued_keys_get_new_ids_and_versions_and_survive_a_reopen(tmp_path):
    hsm = Hsm.open(tmp_path)
    first = hsm.initial_key_block("T1")
    second = hsm.issue_initial_key("T1")
    assert second.ksn[:8] != first.ksn[:8]
    assert hsm.initial_key_block("T1").ksn == second.ksn          # the current key, until the next issue
    again = Hsm.open(tmp_path)
    assert again.initial_key_block("T1").ksn == second.ksn
    third = again.issue_initial_key("T1", "TDES")
    assert len(third.ksn) == 10
