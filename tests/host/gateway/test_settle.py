"""Settling a gateway app's batch: the host's own totals, once per batch, in the settlements
table beside the terminals' batches."""

from __future__ import annotations

import threading

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Totals
from posterm.host import settlement
from posterm.host.gateway import InvalidRequest, Settlement
from posterm.host.gateway.core import SUCCESS, WAIT_BUYER_PAY

from tests.host.conftest import terminal
from tests.host.gateway.conftest import CODE


def day_of_trading(gateway, app):
    """Two payments, a partial refund, a payment cancelled (paid back), an unpaid order
    closed by cancel, a decline, and one waiting for the buyer's phone."""
    assert gateway.pay(app, "s-1", CODE[1], 1234, "CNY").status == SUCCESS
    assert gateway.pay(app, "s-2", CODE[1], 2000, "CNY").status == SUCCESS
    assert gateway.refund(app, "s-2", "r-1", 500).status == SUCCESS
    assert gateway.pay(app, "s-3", CODE[1], 300, "CNY").status == SUCCESS
    assert gateway.cancel(app, "s-3").action == "refund"
    assert gateway.pay(app, "s-4", CODE[5], 100, "CNY").status == WAIT_BUYER_PAY
    assert gateway.cancel(app, "s-4").action == "close"
    assert gateway.pay(app, "s-5", CODE[2], 100_000, "CNY").status == "FAILED"
    assert gateway.pay(app, "s-6", CODE[3], 700, "CNY").status == WAIT_BUYER_PAY


DAY = (Totals("CNY", approved_count=2, approved_minor=3234, refunded_count=1, refunded_minor=500,
              cancelled_count=2),)


def test_settle_closes_the_batch_with_the_host_totals(host, gateway, alipay_app):
    day_of_trading(gateway, alipay_app)
    s = gateway.settle(alipay_app)
    assert isinstance(s, Settlement)
    assert (s.batch_no, s.totals, s.agrees, s.repeated) == (1, DAY, True, False)
    assert s.terminal_id == "GW-" + alipay_app.app_id and s.settled_at == host.clock()
    # Where a terminal's batch is: the settlements table, under the virtual terminal.
    row = host.store.view().settlement(alipay_app.terminal_id, 1)
    assert settlement.stored_totals(row) == DAY and row["agrees"] == 1


def test_next_settle_is_a_new_batch_and_counts_nothing_twice(host, gateway, alipay_app):
    day_of_trading(gateway, alipay_app)
    gateway.settle(alipay_app)
    again = gateway.settle(alipay_app)
    assert (again.batch_no, again.totals, again.agrees, again.repeated) == (2, (), True, False)
    # The waiting trade confirmed and a refund of an already settled payment: the next batch.
    assert host.wallet_confirm("s-6") == "APPROVED"
    assert gateway.refund(alipay_app, "s-1", "r-2", 234).status == SUCCESS
    third = gateway.settle(alipay_app)
    assert third.batch_no == 3
    assert third.totals == (Totals("CNY", 1, 700, 1, 234, 0),)


def test_a_batch_number_asked_again_returns_its_record(host, gateway, alipay_app):
    day_of_trading(gateway, alipay_app)
    first = gateway.settle(alipay_app, batch_no=7)
    assert first.batch_no == 7 and first.totals == DAY
    gateway.pay(alipay_app, "s-9", CODE[1], 100, "CNY")
    again = gateway.settle(alipay_app, batch_no=7)
    assert again.repeated and again.totals == DAY and again.settled_at == first.settled_at
    assert gateway.settle(alipay_app).batch_no == 8           # the next after the last
    with pytest.raises(InvalidRequest):
        gateway.settle(alipay_app, batch_no=5)                # below the last, never settled
    for bad in (0, -1, 2**32, True):
        with pytest.raises(InvalidRequest):
            gateway.settle(alipay_app, batch_no=bad)


def test_a_crash_inside_settle_settles_nothing(host, gateway, alipay_app, monkeypatch):
    day_of_trading(gateway, alipay_app)
    real = settlement.settle

    def crash(ctx, msg):
        real(ctx, msg)                 # the batch is written (inside the transaction) ...
        raise RuntimeError("killed")   # ... and the process dies before the commit

    monkeypatch.setattr(settlement, "settle", crash)
    with pytest.raises(RuntimeError):
        gateway.settle(alipay_app)
    monkeypatch.setattr(settlement, "settle", real)
    assert host.store.view().last_batch_no(alipay_app.terminal_id) == 0
    s = gateway.settle(alipay_app)
    assert (s.batch_no, s.totals) == (1, DAY)
    assert gateway.settle(alipay_app).totals == ()


def test_concurrent_settles_count_each_trade_once(host, gateway, alipay_app):
    day_of_trading(gateway, alipay_app)
    results: list[Settlement] = []
    start = threading.Barrier(4)

    def run():
        start.wait(timeout=10)
        results.append(gateway.settle(alipay_app))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(r.batch_no for r in results) == [1, 2, 3, 4]
    assert [r.totals for r in results if r.totals] == [DAY]


def test_an_app_and_a_terminal_settle_apart(host, gateway, alipay_app):
    day_of_trading(gateway, alipay_app)
    term = terminal(host)
    term.request(h.AuthRequest(terminal_id=term.terminal_id, order_id="t-1", amount_minor=900, currency="CNY",
                               payment_code=CODE[1]), 5)
    mine = (Totals("CNY", 1, 900, 0, 0, 0),)
    r = term.request(h.SettleRequest(terminal_id=term.terminal_id, batch_no=1, totals=mine), 5)
    assert r.agrees and r.totals == mine
    assert gateway.settle(alipay_app).totals == DAY          # its own batch 1, the terminal's trade not in it
