"""python-alipay-sdk 3.4.0 (from PyPI, unmodified but for its gateway address) drives the
gateway over HTTP: the merchant's whole bar-code flow, precreate and its notification,
every error, signatures both ways, exactly-once under concurrent duplicates."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
import urllib.request

import pytest
from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError

from tests.host.gateway.conftest import ALIPAY_APP_ID, CODE
from tests.host.conftest import support


def balance(host, account="demo-001"):
    return host.account(account)["balance_minor"]


def pay(sdk, out_trade_no, code, amount="12.34", subject="coffee"):
    return sdk.api_alipay_trade_pay(out_trade_no=out_trade_no, scene="bar_code", auth_code=code, subject=subject,
                                    total_amount=amount)


def test_pay_approved_verified_by_the_sdk(host, sdk):
    before = balance(host)
    r = pay(sdk, "A-1", CODE[1])
    assert r["code"] == "10000" and r["msg"] == "Success"
    assert r["total_amount"] == "12.34" and r["buyer_pay_amount"] == "12.34" and r["trade_no"]
    assert r["buyer_logon_id"] == "dem***01" and r["buyer_user_id"].startswith("2088") and len(r["buyer_user_id"]) == 16
    assert r["fund_bill_list"] == [{"fund_channel": "ALIPAYACCOUNT", "amount": "12.34"}]
    assert balance(host) == before - 1234
    q = sdk.api_alipay_trade_query(out_trade_no="A-1")
    assert q["trade_status"] == "TRADE_SUCCESS" and q["trade_no"] == r["trade_no"]
    assert sdk.api_alipay_trade_query(trade_no=r["trade_no"])["out_trade_no"] == "A-1"
    (row,) = host.trades(terminal="GW-" + ALIPAY_APP_ID)
    assert row.status == "APPROVED" and row.amount_minor == 1234


def test_repeat_is_trade_has_success_and_nothing_twice(host, sdk):
    before = balance(host)
    first = pay(sdk, "A-2", CODE[1])
    again = pay(sdk, "A-2", CODE[1])
    assert again["code"] == "40004" and again["sub_code"] == "ACQ.TRADE_HAS_SUCCESS"
    assert again["trade_no"] == first["trade_no"]
    other = pay(sdk, "A-2", CODE[1], amount="12.35")
    assert other["code"] == "40004" and other["sub_code"] == "ACQ.CONTEXT_INCONSISTENT"
    assert balance(host) == before - 1234


def test_unknown_outcome_loop_pay_wait_query_success(host, clock, sdk):
    """The merchant's loop: 10003, query until the buyer confirms on the phone."""
    r = pay(sdk, "A-3", CODE[4], amount="2000.00")
    assert r["code"] == "10003" and r["msg"] == "order success pay inprocess"
    assert sdk.api_alipay_trade_query(out_trade_no="A-3")["trade_status"] == "WAIT_BUYER_PAY"
    clock.advance(2.0)
    q = sdk.api_alipay_trade_query(out_trade_no="A-3")
    assert q["trade_status"] == "TRADE_SUCCESS" and q["send_pay_date"]


def test_buyer_enters_the_password_in_the_wallet(host, sdk):
    assert pay(sdk, "A-4", CODE[3])["code"] == "10003"
    assert host.wallet_confirm("A-4") == "APPROVED"
    assert sdk.api_alipay_trade_query(out_trade_no="A-4")["trade_status"] == "TRADE_SUCCESS"


def test_unknown_outcome_loop_pay_wait_cancel(host, sdk):
    before = balance(host, "demo-005")
    assert pay(sdk, "A-5", CODE[5])["code"] == "10003"
    assert sdk.api_alipay_trade_query(out_trade_no="A-5")["trade_status"] == "WAIT_BUYER_PAY"
    c = sdk.api_alipay_trade_cancel(out_trade_no="A-5")
    assert c["code"] == "10000" and c["action"] == "close" and c["retry_flag"] == "N"
    assert sdk.api_alipay_trade_query(out_trade_no="A-5")["trade_status"] == "TRADE_CLOSED"
    assert host.wallet_confirm("A-5") == "CANCELLED"
    assert balance(host, "demo-005") == before
    assert pay(sdk, "A-5", CODE[5])["sub_code"] == "ACQ.TRADE_HAS_CLOSE"


def test_cancel_of_a_paid_trade_refunds(host, sdk):
    before = balance(host)
    r = pay(sdk, "A-6", CODE[1])
    c = sdk.api_alipay_trade_cancel(trade_no=r["trade_no"])
    assert c["code"] == "10000" and c["action"] == "refund" and c["out_trade_no"] == "A-6"
    assert balance(host) == before
    assert sdk.api_alipay_trade_query(out_trade_no="A-6")["trade_status"] == "TRADE_CLOSED"


def test_cancel_before_the_pay_arrives_refuses_the_late_pay(host, sdk):
    before = balance(host)
    c = sdk.api_alipay_trade_cancel(out_trade_no="A-7")
    assert c["code"] == "10000" and c["action"] == "close"
    assert pay(sdk, "A-7", CODE[1])["sub_code"] == "ACQ.TRADE_HAS_CLOSE"
    assert balance(host) == before


def test_close(sdk):
    assert pay(sdk, "A-8", CODE[5])["code"] == "10003"
    c = sdk.api_alipay_trade_close(out_trade_no="A-8")
    assert c["code"] == "10000" and c["out_trade_no"] == "A-8"
    assert sdk.api_alipay_trade_query(out_trade_no="A-8")["trade_status"] == "TRADE_CLOSED"
    pay(sdk, "A-9", CODE[1])
    assert sdk.api_alipay_trade_close(out_trade_no="A-9")["sub_code"] == "ACQ.TRADE_STATUS_ERROR"
    assert sdk.api_alipay_trade_close(out_trade_no="none")["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_refunds_and_refund_query(host, sdk):
    before = balance(host)
    pay(sdk, "A-10", CODE[1], amount="10.00")
    r = sdk.api_alipay_trade_refund(refund_amount="3.00", out_trade_no="A-10", out_request_no="R1")
    assert r["code"] == "10000" and r["fund_change"] == "Y" and r["refund_fee"] == "3.00"
    again = sdk.api_alipay_trade_refund(refund_amount="3.00", out_trade_no="A-10", out_request_no="R1")
    assert again["code"] == "10000" and again["fund_change"] == "N" and again["refund_fee"] == "3.00"
    other = sdk.api_alipay_trade_refund(refund_amount="3.01", out_trade_no="A-10", out_request_no="R1")
    assert other["sub_code"] == "ACQ.DISCORDANT_REPEAT_REQUEST"
    over = sdk.api_alipay_trade_refund(refund_amount="7.01", out_trade_no="A-10", out_request_no="R2")
    assert over["code"] == "40004" and over["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    rest = sdk.api_alipay_trade_refund(refund_amount="7.00", out_trade_no="A-10", out_request_no="R3")
    assert rest["refund_fee"] == "10.00"
    assert balance(host) == before
    q = sdk.api_alipay_trade_fastpay_refund_query(out_request_no="R1", out_trade_no="A-10")
    assert q["code"] == "10000" and q["refund_amount"] == "3.00" and q["refund_status"] == "REFUND_SUCCESS"
    none = sdk.api_alipay_trade_fastpay_refund_query(out_request_no="R9", out_trade_no="A-10")
    assert none["code"] == "10000" and "refund_amount" not in none
    assert sdk.api_alipay_trade_query(out_trade_no="A-10")["trade_status"] == "TRADE_CLOSED"
    bad = sdk.api_alipay_trade_refund(refund_amount="1e3", out_trade_no="A-10", out_request_no="R4")
    assert bad["sub_code"] == "ACQ.REASON_TRADE_REFUND_FEE_ERR"
    assert sdk.api_alipay_trade_refund(refund_amount="1.00", out_trade_no="nope")["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_refund_of_an_unpaid_trade(sdk):
    pay(sdk, "A-11", CODE[5])
    r = sdk.api_alipay_trade_refund(refund_amount="1.00", out_trade_no="A-11")
    assert r["sub_code"] == "ACQ.TRADE_STATUS_ERROR"


@pytest.mark.parametrize("n, amount, sub_code", [
    (2, "12.34", "ACQ.BUYER_BALANCE_NOT_ENOUGH"),
    (7, "12.34", "ACQ.PAYMENT_REQUEST_HAS_RISK"),
    (8, "12.34", "ACQ.BUYER_ENABLE_STATUS_FORBID"),
    (1, "5000.01", "ACQ.TOTAL_FEE_EXCEED"),
])
def test_business_failures(sdk, n, amount, sub_code):
    r = pay(sdk, f"F-{n}", CODE[n], amount=amount)
    assert r["code"] == "40004" and r["msg"] == "Business Failed" and r["sub_code"] == sub_code and r["sub_msg"]


def test_invalid_code_daily_limit_real_name(host, sdk):
    assert pay(sdk, "F-10", "281234567890123456")["sub_code"] == "ACQ.PAYMENT_AUTH_CODE_INVALID"
    code = host.issue_code("demo-001")
    assert pay(sdk, "F-11", code)["code"] == "10000"
    assert pay(sdk, "F-12", code)["sub_code"] == "ACQ.PAYMENT_AUTH_CODE_INVALID"    # used once only
    host.set_limits("demo-001", daily_limit=2000)
    assert pay(sdk, "F-13", CODE[1], amount="20.01")["sub_code"] == "ACQ.BUYER_PAYMENT_AMOUNT_DAY_LIMIT_ERROR"
    host.set_limits("demo-001", support(host), daily_limit=2_000_000)   # raising it again: verified
    host.set_flags("demo-001", real_name=False)
    assert pay(sdk, "F-14", CODE[1], amount="200.01")["sub_code"] == "ACQ.ERROR_BUYER_CERTIFY_LEVEL_LIMIT"


def test_host_unavailable_is_20000_then_query(host, clock, sdk):
    r = pay(sdk, "U-1", CODE[6])
    assert r["code"] == "20000" and r["sub_code"] == "isp.unknow-error"
    assert sdk.api_alipay_trade_query(out_trade_no="U-1")["code"] == "20000"
    clock.advance(31)
    assert sdk.api_alipay_trade_query(out_trade_no="U-1")["trade_status"] == "TRADE_SUCCESS"


def test_bad_amounts_and_missing_parameters(sdk):
    for amount in ("1e3", "-1.00", "1.234", "0.00", "abc"):
        r = pay(sdk, "P-1", CODE[1], amount=amount)
        assert r["code"] == "40004" and r["sub_code"] == "ACQ.INVALID_PARAMETER", amount
    r = sdk.server_api("alipay.trade.pay", {"out_trade_no": "P-2", "scene": "bar_code", "auth_code": CODE[1],
                                            "subject": "x"})
    assert r["sub_code"] == "ACQ.INVALID_PARAMETER" and "total_amount" in r["sub_msg"]
    assert pay(sdk, "P-3", CODE[1], amount=12)["code"] == "10000"           # a JSON number, read as its digits
    assert sdk.api_alipay_trade_query(out_trade_no="nope")["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_unknown_app_is_40002(sdk):
    sdk._appid = "2021999999999999"
    with pytest.raises(AliPayException) as e:
        pay(sdk, "E-1", CODE[1])
    assert "code:40002" in str(e.value) and "isv.invalid-app-id" in str(e.value)


def test_request_signed_by_another_key_is_refused(host, sdk, app_private_pem):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode()
    forged = AliPay(appid=ALIPAY_APP_ID, app_private_key_string=other,
                    alipay_public_key_string=sdk._alipay_public_key_string, sign_type="RSA2")
    forged._gateway = sdk._gateway
    before = balance(host)
    with pytest.raises(AliPayException) as e:
        pay(forged, "E-2", CODE[1])
    assert "code:40002" in str(e.value) and "isv.invalid-signature" in str(e.value)
    assert balance(host) == before


def test_tampered_request_is_refused(host, sdk):
    """Signed for 0.01, sent for 999.00: the gateway refuses it and charges nothing."""
    before = balance(host)
    data = sdk.build_body("alipay.trade.pay", {"out_trade_no": "E-3", "scene": "bar_code", "auth_code": CODE[1],
                                               "subject": "x", "total_amount": "0.01"})
    query = sdk.sign_data(data).replace("0.01", "999.00")
    raw = urllib.request.urlopen(sdk._gateway + "?" + query, timeout=10).read().decode()
    with pytest.raises(AliPayException) as e:
        sdk._verify_and_return_sync_response(raw, "alipay_trade_pay_response")
    assert "code:40002" in str(e.value) and "isv.invalid-signature" in raw
    assert balance(host) == before and host.trades(terminal="GW-" + ALIPAY_APP_ID) == []


def test_the_sdk_refuses_a_response_signed_by_another_key(sdk, app_public_pem):
    """Signatures are checked both ways: an SDK holding the wrong gateway key refuses ours."""
    sdk._alipay_public_key_string = app_public_pem
    sdk._load_key()
    with pytest.raises(AliPayValidationError):
        pay(sdk, "E-4", CODE[1])


def test_missing_common_parameters(sdk):
    data = sdk.build_body("alipay.trade.query", {"out_trade_no": "x"})
    for name, sub in (("timestamp", "isv.missing-timestamp"), ("app_id", "isv.missing-app-id"),
                      ("method", "isv.missing-method"), ("sign_type", "isv.missing-signature-type")):
        d = dict(data)
        d.pop(name)
        raw = urllib.request.urlopen(sdk._gateway + "?" + sdk.sign_data(d), timeout=10).read().decode()
        assert '"code":"40001"' in raw and sub in raw, name
    raw = urllib.request.urlopen(sdk._gateway + "?" + urllib.parse.urlencode(data), timeout=10).read().decode()
    assert '"code":"40001"' in raw and "isv.missing-signature" in raw


def test_post_form_is_served_too(sdk):
    data = sdk.build_body("alipay.trade.pay", {"out_trade_no": "POST-1", "scene": "bar_code", "auth_code": CODE[1],
                                               "subject": "x", "total_amount": "1.00"})
    req = urllib.request.Request(sdk._gateway, data=sdk.sign_data(data).encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"})
    raw = urllib.request.urlopen(req, timeout=10).read().decode()
    assert sdk._verify_and_return_sync_response(raw, "alipay_trade_pay_response")["code"] == "10000"


def test_concurrent_duplicates_charge_once(host, sdk):
    before = balance(host)
    barrier = threading.Barrier(8)
    answers, errors = [], []

    def one():
        barrier.wait()
        try:
            answers.append(pay(sdk, "DUP-1", CODE[1], amount="9.99"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(answers) == 8
    assert sorted(a["code"] for a in answers) == ["10000"] + ["40004"] * 7
    assert {a.get("sub_code") for a in answers if a["code"] == "40004"} == {"ACQ.TRADE_HAS_SUCCESS"}
    assert len({a["trade_no"] for a in answers}) == 1
    assert balance(host) == before - 999
    assert host.check_books() == []
    assert len(host.trades(terminal="GW-" + ALIPAY_APP_ID)) == 1


class _Receiver(http.server.BaseHTTPRequestHandler):
    answer = b"success"

    def do_POST(self):  # noqa: N802 - the http.server API
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(min(length, 65536))
        self.server.received.append(dict(urllib.parse.parse_qsl(body.decode())))
        self.send_response(200)
        self.send_header("content-length", str(len(self.server.answer)))
        self.end_headers()
        self.wfile.write(self.server.answer)
        self.server.got.set()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    srv.received, srv.got, srv.answer = [], threading.Event(), b"success"
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    th.join(5)


def test_precreate_scan_and_signed_notification(host, sdk, notifier, receiver):
    url = f"http://127.0.0.1:{receiver.server_address[1]}/notify"
    r = sdk.api_alipay_trade_precreate(subject="QR order", out_trade_no="Q-1", total_amount="8.88", notify_url=url)
    assert r["code"] == "10000" and r["qr_code"].startswith("https://qr.posterm.test/p/")
    assert sdk.api_alipay_trade_query(out_trade_no="Q-1")["trade_status"] == "WAIT_BUYER_PAY"
    assert host.wallet_scan(r["qr_code"], "demo-001") == "APPROVED"
    notifier.wake()
    assert receiver.got.wait(10)
    (note,) = receiver.received
    sign = note.pop("sign")
    assert sdk.verify(dict(note), sign)                 # the SDK's own notification check
    assert note["trade_status"] == "TRADE_SUCCESS" and note["out_trade_no"] == "Q-1" and note["total_amount"] == "8.88"
    assert note["app_id"] == ALIPAY_APP_ID and note["notify_type"] == "trade_status_sync"
    note["total_amount"] = "0.01"
    assert not sdk.verify(dict(note), sign)
    assert sdk.api_alipay_trade_query(out_trade_no="Q-1")["trade_status"] == "TRADE_SUCCESS"
    assert sdk.api_alipay_trade_precreate(subject="QR order", out_trade_no="Q-1",
                                          total_amount="8.88")["sub_code"] == "ACQ.TRADE_HAS_SUCCESS"


def test_notification_retried_with_backoff_until_success(host, clock, gateway, sdk, notifier, receiver):
    from posterm.host.gateway.notify import Notifier

    notifier.stop()     # the server's worker: this test drives one by hand

    receiver.answer = b"fail"
    url = f"http://127.0.0.1:{receiver.server_address[1]}/n"
    r = sdk.api_alipay_trade_precreate(subject="x", out_trade_no="Q-2", total_amount="1.00", notify_url=url)
    host.wallet_scan(r["qr_code"], "demo-001")
    worker = Notifier(gateway, backoff_s=5.0, max_attempts=3)     # driven by hand: run_once
    assert worker.run_once() == 0 and len(receiver.received) == 1
    assert worker.run_once() == 0 and len(receiver.received) == 1   # not due yet: 5 s back-off
    clock.advance(5)
    receiver.answer = b"success"
    assert worker.run_once() == 1 and len(receiver.received) == 2
    clock.advance(3600)
    assert worker.run_once() == 0 and len(receiver.received) == 2   # delivered: never again


def test_notification_given_up_after_max_attempts(host, clock, gateway, sdk, notifier, receiver):
    from posterm.host.gateway.notify import Notifier

    notifier.stop()

    receiver.answer = b"no"
    url = f"http://127.0.0.1:{receiver.server_address[1]}/n"
    r = sdk.api_alipay_trade_precreate(subject="x", out_trade_no="Q-3", total_amount="1.00", notify_url=url)
    host.wallet_scan(r["qr_code"], "demo-001")
    worker = Notifier(gateway, backoff_s=1.0, max_attempts=3)
    for _ in range(5):
        worker.run_once()
        clock.advance(100)
    assert len(receiver.received) == 3
