"""The terminal journal on its own: what a later answer may and may not overwrite."""

from __future__ import annotations

import pytest

from firmware_protocol.native.messages import Outcome, Reason
from posterm.emulator.orders import OrderStore

NOW = "2026-11-22T10:00:00+00:00"


@pytest.fixture
def journal(tmp_path):
    j = OrderStore(tmp_path / "journal.db")
    j.begin_order("P-1", 100_000, "CNY", "0001", False, NOW)
    j.finish_order("P-1", Outcome.APPROVED, Reason.NONE, NOW)
    yield j
    j.close()


def test_an_approved_refund_is_never_overwritten(journal):
    journal.record_refund("RF-1", "P-1", 50_000, "CNY", Outcome.APPROVED, Reason.NONE, 50_000, NOW)
    # The same refund id again with another amount: the host refuses it (order_conflict).
    journal.record_refund("RF-1", "P-1", 30_000, "CNY", Outcome.DECLINED, Reason.ORDER_CONFLICT, 0, NOW)
    rf = journal.refund("RF-1")
    assert (rf["outcome"], rf["amount_minor"], rf["refunded_total"]) == (Outcome.APPROVED, 50_000, 50_000)
    (t,) = journal.totals(journal.batch_no())
    assert (t.refunded_count, t.refunded_minor) == (1, 50_000)
    assert journal.get("P-1").refunded_minor == 50_000


def test_a_declined_refund_may_be_retried_under_its_id(journal):
    journal.record_refund("RF-2", "P-1", 200_000, "CNY", Outcome.DECLINED, Reason.REFUND_EXCEEDS_PAID, 0, NOW)
    journal.record_refund("RF-2", "P-1", 20_000, "CNY", Outcome.APPROVED, Reason.NONE, 20_000, NOW)
    rf = journal.refund("RF-2")
    assert (rf["outcome"], rf["amount_minor"]) == (Outcome.APPROVED, 20_000)
