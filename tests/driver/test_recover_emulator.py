"""recover() against the real emulated terminal and host: the driver is killed between
sending a request and reading its answer, then a new driver process recovers."""

from __future__ import annotations

import pytest

from firmware_protocol.native import messages as m
from posterm.families.native.ecr import Terminal
from posterm.ecr.journal import Journal

CODE = "289900000000000001"
PW = "246810"


def _killed_after_sending(port, journal_path, kind, order_id, request, amount, currency, ref_id=""):
    """What a driver killed right after writing its request leaves: a journal row 'sent',
    the request on the wire, nobody reading the answer."""
    t = Terminal.open(port, journal=journal_path)
    t.hello()
    t._journal_sent(order_id, kind, amount, currency, ref_id=ref_id)
    t._write(t._link.send(request, t._clock()))
    t.close()  # killed: the answer is never read


@pytest.fixture
def paid(posterm_terminal, tmp_path):
    path = str(tmp_path / "drv.db")
    with Terminal.open(posterm_terminal.port, journal=path) as t:
        r = t.pay(5000, "CNY", payment_code=CODE, timeout=30)
    assert r.approved
    return posterm_terminal, path, r.order_id


def test_killed_refund_is_recovered_once(paid):
    emu, path, order_id = paid
    _killed_after_sending(emu.port, path, "refund", order_id,
                          m.Refund(order_id=order_id, amount_minor=1200, currency="CNY", refund_id="RF-K",
                                   operator_password=PW), 1200, "CNY", ref_id="RF-K")
    with Terminal.open(emu.port, journal=path) as t:
        assert [e.kind for e in t.journal.unfinished()] == ["refund"]
        results = t.recover(timeout=30, operator_password=PW)
        assert [(r.refund_id, r.result, r.refunded_total_minor) for r in results] == [("RF-K", "approved", 1200)]
        assert t.journal.unfinished() == []
    [trade] = [tr for tr in emu.host.trades() if tr.order_id == order_id]
    assert trade.refunded_minor == 1200  # refunded once, not twice
    assert emu.host.check_books() == []


def test_killed_cancel_is_recovered_by_query(paid):
    emu, path, order_id = paid
    _killed_after_sending(emu.port, path, "cancel", order_id, m.Cancel(order_id=order_id, operator_password=PW),
                          5000, "CNY")
    with Terminal.open(emu.port, journal=path) as t:
        results = t.recover(timeout=30)
        assert [r.result for r in results] == ["cancelled"]
        assert t.journal.unfinished() == []
        assert t.journal.get(order_id, "cancel").outcome == "cancelled"
        assert t.journal.get(order_id).outcome == "approved"  # what the sale was; the cancel reversed it
    assert emu.host.order_status(order_id) in ("CANCELLED", "REFUNDED")


def test_order_conflict_end_to_end_keeps_the_trade(paid):
    emu, path, order_id = paid
    with Terminal.open(emu.port, journal=path) as t:
        again = t.pay(6000, "CNY", order_id=order_id, payment_code=CODE, timeout=30)
        assert again.result == "declined"
        e = t.journal.get(order_id)
        assert e.outcome == "approved" and e.result["trade_no"] and e.amount_minor == 5000
        assert t.recover() == []
    with Journal(path) as j:
        assert "rejected" in [a.what for a in j.attempts(order_id)]
