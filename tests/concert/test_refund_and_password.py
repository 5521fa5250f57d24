"""Concert refunds are idempotent per refund id, and refunds / cancels of paid orders need the
operator password typed on the terminal (a wrong one refused and counted toward the lock)."""

from __future__ import annotations

import logging

import pytest

from firmware_protocol.native.messages import Outcome
from posterm.families.concert.ecr import ConcertTerminal
from posterm.errors import LocalProtocolError


@pytest.fixture
def term(emu, tmp_path):
    with ConcertTerminal.open(emu.port, journal=str(tmp_path / "j.db")) as t:
        yield t


def test_same_refund_id_twice_refunds_once(emu, term):
    paid = term.pay(1000, "CNY")
    first = term.refund(paid.order_id, 300, "SAME-1")
    again = term.refund(paid.order_id, 300, "SAME-1")
    assert first.approved and again.outcome is first.outcome and again.amount_minor == 300
    assert "not sent again" in again.reason_text
    assert emu.journal.get(paid.order_id).refunded_minor == 300          # the terminal refunded once
    with pytest.raises(LocalProtocolError, match="already used"):
        term.refund(paid.order_id, 500, "SAME-1")                         # other amount, same id
    kept = term.journal.get(paid.order_id, "refund", "SAME-1")
    assert kept.outcome == "approved" and kept.amount_minor == 300       # the first record survives
    assert emu.journal.get(paid.order_id).refunded_minor == 300


def test_wrong_operator_password_is_refused_and_counts_toward_the_lock(emu, term, caplog):
    paid = term.pay(1000, "CNY")
    caplog.set_level(logging.INFO, "posterm.emulator.concert")
    emu._link.operator_types("000000")           # the operator mistypes on the terminal's keypad
    r = term.refund(paid.order_id, 100, "WRONG-1")
    assert r.outcome is Outcome.DECLINED and emu.journal.get(paid.order_id).refunded_minor == 0
    assert "operator_password_wrong" in caplog.text and "000000" not in caplog.text
    emu._link.operator_types("000000")
    c = term.cancel(paid.order_id)
    assert c.outcome is Outcome.DECLINED and emu.host.order_status(paid.order_id) == "APPROVED"
    for n in range(3):
        emu._link.operator_types("000000")
        assert term.refund(paid.order_id, 100, f"WRONG-{n + 2}").outcome is Outcome.DECLINED
    # five wrong tries: locked, the right password is refused too
    assert term.refund(paid.order_id, 100, "RIGHT-1").outcome is Outcome.DECLINED
    assert "operator_locked" in caplog.text
    assert emu.journal.get(paid.order_id).refunded_minor == 0 and emu.host.order_status(paid.order_id) == "APPROVED"
