"""The gateway's core over a real host: the same ledger, codes, rules and exactly-once."""

from __future__ import annotations

import threading

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Reason
from posterm.host.gateway import GatewayUnavailable, InvalidRequest, format_amount, parse_amount
from posterm.host.gateway.core import CLOSED, FAILED, SUCCESS, WAIT_BUYER_PAY, loopback_url, mask_buyer

from tests.host.conftest import terminal
from tests.host.gateway.conftest import CODE


def term_pay(term, order, amount, code):
    return term.request(h.AuthRequest(terminal_id=term.terminal_id, order_id=order, amount_minor=amount,
                                      currency="CNY", payment_code=code), 5)


def balance(host, account="demo-001"):
    return host.account(account)["balance_minor"]


def test_pay_approved_is_on_the_host_ledger(host, gateway, alipay_app):
    before = balance(host)
    t = gateway.pay(alipay_app, "o-1", CODE[1], 1234, "CNY", "coffee")
    assert t.status == SUCCESS and t.amount_minor == 1234 and t.trade_no and not t.repeated
    assert t.buyer_id == "dem***01" and t.paid_at is not None and t.subject == "coffee"
    assert balance(host) == before - 1234
    (row,) = [r for r in host.trades(terminal=alipay_app.terminal_id)]
    assert row.status == "APPROVED" and row.order_id == "o-1"


def test_repeat_is_answered_from_the_store_and_never_charged_twice(host, gateway, alipay_app):
    before = balance(host)
    first = gateway.pay(alipay_app, "o-2", CODE[1], 500, "CNY")
    again = gateway.pay(alipay_app, "o-2", CODE[1], 500, "CNY")
    assert again.repeated and again.status == SUCCESS and again.trade_no == first.trade_no
    assert balance(host) == before - 500
    other = gateway.pay(alipay_app, "o-2", CODE[1], 501, "CNY")
    assert other.status == FAILED and other.reason == Reason.ORDER_CONFLICT
    assert balance(host) == before - 500
    assert gateway.query(alipay_app, "o-2").status == SUCCESS


@pytest.mark.parametrize("n, reason", [(2, Reason.INSUFFICIENT_BALANCE), (7, Reason.RISK_REJECTED),
                                       (8, Reason.ACCOUNT_FROZEN)])
def test_declines_carry_the_host_reason(gateway, alipay_app, n, reason):
    t = gateway.pay(alipay_app, f"d-{n}", CODE[n], 1000, "CNY")
    assert t.status == FAILED and t.reason == reason


def test_invalid_code_and_limits(host, gateway, alipay_app):
    assert gateway.pay(alipay_app, "x-1", "281234567890123456", 100, "CNY").reason == Reason.CODE_INVALID
    assert gateway.pay(alipay_app, "x-2", "not-a-code", 100, "CNY").reason == Reason.CODE_INVALID
    assert gateway.pay(alipay_app, "x-3", CODE[1], 500_001, "CNY").reason == Reason.OVER_TRANSACTION_LIMIT
    host.set_limits("demo-001", daily_limit=1000)
    assert gateway.pay(alipay_app, "x-4", CODE[1], 1001, "CNY").reason == Reason.OVER_DAILY_LIMIT


def test_real_name_needed_above_200(host, gateway, alipay_app):
    host.set_flags("demo-001", real_name=False)
    assert gateway.pay(alipay_app, "rn-1", CODE[1], 20_001, "CNY").reason == Reason.NOT_REAL_NAME_VERIFIED


def test_one_time_code_is_used_once_whichever_way_it_arrives(host, gateway, alipay_app):
    code = host.issue_code("demo-001")
    assert gateway.pay(alipay_app, "c-1", code, 100, "CNY").status == SUCCESS
    assert gateway.pay(alipay_app, "c-2", code, 100, "CNY").reason == Reason.CODE_USED
    code2 = host.issue_code("demo-001")
    term = terminal(host)
    assert term_pay(term, "t-1", 100, code2).status.name == "APPROVED"
    assert gateway.pay(alipay_app, "c-3", code2, 100, "CNY").reason == Reason.CODE_USED


def test_wait_for_the_buyer_then_phone_confirms(host, clock, gateway, alipay_app):
    t = gateway.pay(alipay_app, "w-1", CODE[4], 200_000, "CNY")
    assert t.status == WAIT_BUYER_PAY
    assert gateway.query(alipay_app, "w-1").status == WAIT_BUYER_PAY
    clock.advance(2.0)
    q = gateway.query(alipay_app, "w-1")
    assert q.status == SUCCESS and q.paid_at is not None


def test_password_is_entered_in_the_wallet(host, gateway, alipay_app):
    before = balance(host, "demo-003")
    assert gateway.pay(alipay_app, "p-1", CODE[3], 100, "CNY").status == WAIT_BUYER_PAY
    assert host.wallet_confirm("p-1") == "APPROVED"
    assert gateway.query(alipay_app, "p-1").status == SUCCESS
    assert balance(host, "demo-003") == before - 100


def test_cancel_before_confirmation_closes_and_charges_nothing(host, gateway, alipay_app):
    before = balance(host, "demo-005")
    assert gateway.pay(alipay_app, "k-1", CODE[5], 100, "CNY").status == WAIT_BUYER_PAY
    r = gateway.cancel(alipay_app, "k-1")
    assert r.action == "close" and r.trade.status == CLOSED and r.trade.closed_by == "cancel"
    assert host.wallet_confirm("k-1") == "CANCELLED"
    assert balance(host, "demo-005") == before
    assert gateway.cancel(alipay_app, "k-1").action == "close"


def test_cancel_of_a_paid_trade_refunds_it(host, gateway, alipay_app):
    before = balance(host)
    gateway.pay(alipay_app, "k-2", CODE[1], 700, "CNY")
    r = gateway.cancel(alipay_app, "k-2")
    assert r.action == "refund" and r.trade.status == CLOSED and r.trade.refunded_minor == 700
    assert balance(host) == before
    again = gateway.cancel(alipay_app, "k-2")
    assert again.action == "refund" and balance(host) == before


def test_cancel_of_an_order_never_received_refuses_the_late_pay(host, gateway, alipay_app):
    before = balance(host)
    r = gateway.cancel(alipay_app, "late-1")
    assert r.trade is None and r.action == "close"
    late = gateway.pay(alipay_app, "late-1", CODE[1], 100, "CNY")
    assert late.status == CLOSED and late.trade_no == ""
    assert balance(host) == before and gateway.query(alipay_app, "late-1") is None


def test_close(gateway, alipay_app):
    assert gateway.close(alipay_app, "none") is None
    gateway.pay(alipay_app, "cl-1", CODE[5], 100, "CNY")
    t = gateway.close(alipay_app, "cl-1")
    assert t.status == CLOSED and t.closed_by == "close"
    gateway.pay(alipay_app, "cl-2", CODE[1], 100, "CNY")
    assert gateway.close(alipay_app, "cl-2").status == SUCCESS  # paid: unchanged


def test_refunds_partial_idempotent_and_capped(host, gateway, alipay_app):
    before = balance(host)
    gateway.pay(alipay_app, "r-1", CODE[1], 1000, "CNY")
    a = gateway.refund(alipay_app, "r-1", "rq-1", 300)
    assert a.status == SUCCESS and a.refund_minor == 300 and a.refunded_total_minor == 300 and not a.repeated
    again = gateway.refund(alipay_app, "r-1", "rq-1", 300)
    assert again.status == SUCCESS and again.repeated and again.refunded_total_minor == 300
    assert gateway.refund(alipay_app, "r-1", "rq-1", 301).reason == Reason.ORDER_CONFLICT
    over = gateway.refund(alipay_app, "r-1", "rq-2", 701)
    assert over.status == FAILED and over.reason == Reason.REFUND_EXCEEDS_PAID
    rest = gateway.refund(alipay_app, "r-1", "rq-3", 700)
    assert rest.status == SUCCESS and rest.refunded_total_minor == 1000
    assert rest.trade.status == CLOSED
    assert balance(host) == before
    q = gateway.refund_query(alipay_app, "r-1", "rq-1")
    assert q.refund_minor == 300 and q.status == SUCCESS
    assert gateway.refund_query(alipay_app, "r-1", "rq-9") is None
    assert gateway.refund(alipay_app, "nope", "rq-1", 1).reason == Reason.ORDER_NOT_FOUND


def test_refund_of_unpaid_is_refused(gateway, alipay_app):
    gateway.pay(alipay_app, "r-2", CODE[5], 100, "CNY")
    assert gateway.refund(alipay_app, "r-2", "x", 100).reason == Reason.NOT_PAID


def test_an_order_a_terminal_owns_is_not_ours(host, gateway, alipay_app):
    term = terminal(host)
    assert term_pay(term, "shared-1", 100, CODE[1]).status.name == "APPROVED"
    t = gateway.pay(alipay_app, "shared-1", CODE[1], 100, "CNY")
    assert t.status == FAILED and t.reason == Reason.ORDER_CONFLICT and t.trade_no == ""
    assert gateway.query(alipay_app, "shared-1") is None
    assert gateway.refund(alipay_app, "shared-1", "x", 100).reason == Reason.ORDER_NOT_FOUND
    assert gateway.cancel(alipay_app, "shared-1").reason == Reason.ORDER_CONFLICT
    assert gateway.close(alipay_app, "shared-1") is None


def test_outage_is_unavailable_then_query_finds_the_trade(host, clock, gateway, alipay_app):
    with pytest.raises(GatewayUnavailable):
        gateway.pay(alipay_app, "u-1", CODE[6], 100, "CNY")
    with pytest.raises(GatewayUnavailable):
        gateway.query(alipay_app, "u-1")
    clock.advance(31)
    assert gateway.query(alipay_app, "u-1").status == SUCCESS


def test_precreate_then_wallet_scan(host, gateway, alipay_app):
    t = gateway.precreate(alipay_app, "q-1", 888, "CNY", "scan me", "http://127.0.0.1:9/notify")
    assert t.status == WAIT_BUYER_PAY and t.qr_code.startswith("https://qr.posterm.test/p/")
    assert gateway.precreate(alipay_app, "q-1", 888, "CNY", "scan me").repeated
    assert host.wallet_scan(t.qr_code, "demo-001") == "APPROVED"
    assert gateway.query(alipay_app, "q-1").status == SUCCESS
    ((app, trade, url, attempts),) = gateway.notifications_due()
    assert app.app_id == alipay_app.app_id and trade.status == SUCCESS and url.endswith("/notify") and attempts == 0
    gateway.notification_done(trade.trade_no, True, 1, None)
    assert gateway.notifications_due() == []


def test_precreate_with_a_remote_notify_url_notifies_nobody(host, gateway, alipay_app):
    t = gateway.precreate(alipay_app, "q-2", 100, "CNY", None, "http://example.com/notify")
    host.wallet_scan(t.qr_code, "demo-001")
    assert gateway.notifications_due() == []


def test_concurrent_duplicates_charge_once(host, gateway, alipay_app):
    before = balance(host)
    barrier = threading.Barrier(8)
    results = []

    def pay():
        barrier.wait()
        results.append(gateway.pay(alipay_app, "dup-1", CODE[1], 999, "CNY"))

    threads = [threading.Thread(target=pay) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert len(results) == 8 and {r.status for r in results} == {SUCCESS}
    assert len({r.trade_no for r in results}) == 1 and sum(not r.repeated for r in results) == 1
    assert balance(host) == before - 999
    assert host.check_books() == []


def test_invalid_parameters(gateway, alipay_app):
    with pytest.raises(InvalidRequest) as e:
        gateway.pay(alipay_app, "bad id", CODE[1], 100, "CNY")
    assert e.value.field == "out_trade_no"
    with pytest.raises(InvalidRequest):
        gateway.pay(alipay_app, "ok", CODE[1], 0, "CNY")
    with pytest.raises(InvalidRequest):
        gateway.refund(alipay_app, "ok", "r", -1)


@pytest.mark.parametrize("text, minor", [("12.34", 1234), ("0.01", 1), ("100", 10000), ("1.5", 150)])
def test_parse_amount(text, minor):
    assert parse_amount(text) == minor
    assert parse_amount(format_amount(minor)) == minor


@pytest.mark.parametrize("text", ["1e3", "-1", "0", "0.00", "1.234", "01.00", " 1", "1,00", "nan", "inf", "", ".5",
                                  "1.", "+1", "１"])
def test_parse_amount_refuses(text):
    with pytest.raises(InvalidRequest):
        parse_amount(text)


def test_helpers():
    assert format_amount(5, "JPY") == "5" and format_amount(1234) == "12.34"
    assert loopback_url("http://127.0.0.1:8/x") and loopback_url("http://localhost/x") and loopback_url("http://[::1]:9/")
    assert not loopback_url("http://10.0.0.1/x") and not loopback_url("ftp://127.0.0.1/") and not loopback_url(None)
    assert not loopback_url("http://127.0.0.1:99999/")
    assert mask_buyer("demo-001") == "dem***01" and mask_buyer(None) is None


def test_app_repr_hides_the_key(gateway):
    from posterm.host.gateway import apps
    app = apps.add(gateway.ctx, gateway.keys, "wx0000000000000001", "M100000001", wechat_mch_id="1900000109",
                   wechat_key="k" * 32)
    assert "kkkk" not in repr(app) and app.api_key == "k" * 32
    assert gateway.app("wx0000000000000001").api_key == "k" * 32


def test_gateway_trades_are_in_the_bill(host, clock, gateway, alipay_app):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    t = gateway.pay(alipay_app, "bill-1", CODE[1], 1500, "CNY")
    gateway.refund(alipay_app, "bill-1", "bill-r1", 500)
    month = datetime.fromtimestamp(clock(), ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    rows = [r for r in host.bill("demo-001", month) if r["order_id"] == "bill-1"]
    assert [(r["kind"], r["amount_minor"]) for r in rows] == [("payment", -1500), ("refund", 500)]
    assert rows[0]["reference"] == t.trade_no and rows[0]["merchant"] == "M100000001"
