"""WeChat Pay v2 on the gateway, driven by the real wechatpy 1.8.18 from PyPI (unmodified but
for its address, ``API_BASE_URL``) over HTTP on loopback: micropay, the USERPAYING loop,
reverse, refund and refund query, closeorder, every error, signatures both ways, and the
exactly-once ledger shared with the terminals."""

from __future__ import annotations

import hashlib
import hmac
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import xmltodict
from wechatpy.exceptions import WeChatPayException
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac, dict_to_xml

from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Reason
from posterm.host import Host
from posterm.host.gateway import Gateway, apps
from posterm.host.gateway import wechat as wx
from posterm.host.gateway.http import GatewayServer
from tests.host.conftest import Clock, terminal

MERCHANT = "M100000001"
APPID = "wx8888888888888888"
MCH_ID = "1900000109"
KEY = "0123456789abcdefghijklmnopqrstuv"      # a WeChat Pay v2 API key: 32 characters
WX = {n: f"13990000000000000{n}" for n in range(1, 9)}
IP = "127.0.0.1"


# One host, gateway and server for the module: seeding a host's demo data is most of a
# test's time (scrypt for eight accounts). Each test has its own out_trade_nos and compares
# balances before and after, so the tests do not see each other; the books are checked at the end.

@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def host(tmp_path_factory, clock):
    h = Host.open(tmp_path_factory.mktemp("wxhost") / "host.db", clock=clock, outage_seconds=30.0, phone_delay=2.0)
    yield h
    assert h.check_books() == []
    h.close()


@pytest.fixture(scope="module")
def gateway(host, gateway_keys):
    return Gateway(host, keys=gateway_keys)


@pytest.fixture(scope="module")
def wechat_app(gateway):
    return apps.add(gateway.ctx, gateway.keys, APPID, MERCHANT, wechat_mch_id=MCH_ID, wechat_key=KEY)


@pytest.fixture(scope="module")
def base_url(gateway, wechat_app):
    """The gateway's own server (uvicorn on a loopback port, every protocol's routes)."""
    with GatewayServer(gateway) as server:
        yield server.address + "/"


def client(base_url: str, key: str = KEY) -> WeChatPay:
    c = WeChatPay(appid=APPID, api_key=key, mch_id=MCH_ID, timeout=10)
    c.API_BASE_URL = base_url   # the one change a merchant makes
    return c


@pytest.fixture
def pay(base_url):
    return client(base_url)


def micropay(c: WeChatPay, code: str, fee: int, out_trade_no: str, **kw) -> dict:
    return c.micropay.create(body="posterm test", total_fee=fee, auth_code=code, client_ip=IP,
                             out_trade_no=out_trade_no, **kw)


def err(call) -> WeChatPayException:
    with pytest.raises(WeChatPayException) as info:
        call()
    return info.value


def independent_md5(fields: dict, key: str) -> str:
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "sign" and fields[k])
    return hashlib.md5(f"{text}&key={key}".encode()).hexdigest().upper()


def assert_signed(data: dict, key: str = KEY) -> None:
    """Our answer's signature, checked twice: an independent computation and wechatpy's own helper."""
    unsigned = {k: v for k, v in data.items() if k != "sign"}
    assert data["sign"] == independent_md5(unsigned, key)
    assert data["sign"] == calculate_signature(unsigned, key)


def raw_answer(exc: WeChatPayException) -> dict:
    return xmltodict.parse(exc.response.content)["xml"]


def balance(host, account="demo-001") -> int:
    return host.account(account)["balance_minor"]


# ---------------------------------------------------------------------- micropay

def test_micropay_success_signed_and_on_the_host(host, pay):
    before = balance(host)
    r = micropay(pay, WX[1], 1234, "wx-ok-1", attach="table 7")
    assert (r["return_code"], r["result_code"]) == ("SUCCESS", "SUCCESS")
    assert r["total_fee"] == "1234" and r["cash_fee"] == "1234" and r["fee_type"] == "CNY"
    assert r["trade_type"] == "MICROPAY" and r["out_trade_no"] == "wx-ok-1" and r["attach"] == "table 7"
    assert len(r["time_end"]) == 14 and r["openid"].startswith("o")
    assert_signed(r)
    assert balance(host) == before - 1234
    assert host.order_status("wx-ok-1") == "APPROVED"
    assert any(t.trade_no == r["transaction_id"] and t.terminal_id == "GW-" + APPID for t in host.trades())


def test_repeat_of_a_paid_order_is_orderpaid_and_charges_nothing(host, pay):
    micropay(pay, WX[1], 500, "wx-rep")
    before = balance(host)
    e = err(lambda: micropay(pay, WX[1], 500, "wx-rep"))
    assert (e.return_code, e.result_code, e.errcode) == ("SUCCESS", "FAIL", "ORDERPAID")
    assert_signed(raw_answer(e))
    e = err(lambda: micropay(pay, WX[1], 501, "wx-rep"))
    assert e.errcode == "OUT_TRADE_NO_USED"
    assert balance(host) == before


def test_userpaying_then_the_buyer_enters_the_password_in_the_wallet(host, pay):
    e = err(lambda: micropay(pay, WX[3], 800, "wx-pin"))
    assert e.errcode == "USERPAYING"
    q = pay.micropay.query(out_trade_no="wx-pin")
    assert q["trade_state"] == "USERPAYING"
    assert_signed(q)
    host.wallet_confirm("wx-pin", MERCHANT)
    q = pay.micropay.query(out_trade_no="wx-pin")
    assert q["trade_state"] == "SUCCESS" and q["total_fee"] == "800"
    assert pay.order.query(transaction_id=q["transaction_id"])["out_trade_no"] == "wx-pin"


def test_userpaying_then_the_phone_confirms_by_itself(host, clock, pay):
    assert err(lambda: micropay(pay, WX[4], 900, "wx-phone")).errcode == "USERPAYING"
    assert pay.micropay.query(out_trade_no="wx-phone")["trade_state"] == "USERPAYING"
    clock.advance(host.phone_delay)
    assert pay.micropay.query(out_trade_no="wx-phone")["trade_state"] == "SUCCESS"


def test_buyer_never_confirms_reverse_closes_and_charges_nothing(host, pay):
    before = balance(host, "demo-005")
    assert err(lambda: micropay(pay, WX[5], 700, "wx-never")).errcode == "USERPAYING"
    r = pay.order.reverse(out_trade_no="wx-never")
    assert r["result_code"] == "SUCCESS" and r["recall"] == "N"
    assert_signed(r)
    assert pay.micropay.query(out_trade_no="wx-never")["trade_state"] == "REVOKED"
    host.wallet_confirm("wx-never", MERCHANT)   # too late: the order is closed
    assert pay.micropay.query(out_trade_no="wx-never")["trade_state"] == "REVOKED"
    assert err(lambda: micropay(pay, WX[5], 700, "wx-never")).errcode == "ORDERREVERSED"
    assert balance(host, "demo-005") == before


def test_reverse_of_a_paid_order_pays_it_back(host, pay):
    before = balance(host)
    r = micropay(pay, WX[1], 4321, "wx-rev-paid")
    assert pay.order.reverse(transaction_id=r["transaction_id"])["recall"] == "N"
    assert pay.micropay.query(out_trade_no="wx-rev-paid")["trade_state"] == "REVOKED"
    assert balance(host) == before


def test_reverse_of_an_order_never_received_refuses_the_late_micropay(host, pay):
    assert pay.order.reverse(out_trade_no="wx-lost")["result_code"] == "SUCCESS"
    assert err(lambda: micropay(pay, WX[1], 100, "wx-lost")).errcode == "ORDERREVERSED"


def test_host_unavailable_is_systemerror_then_query_finds_it_paid(host, clock, pay):
    before = balance(host, "demo-006")
    e = err(lambda: micropay(pay, WX[6], 600, "wx-outage"))
    assert (e.result_code, e.errcode) == ("FAIL", "SYSTEMERROR")
    assert_signed(raw_answer(e))
    assert err(lambda: pay.micropay.query(out_trade_no="wx-outage")).errcode == "SYSTEMERROR"
    e = err(lambda: pay.order.reverse(out_trade_no="wx-outage"))
    assert e.errcode == "SYSTEMERROR" and raw_answer(e)["recall"] == "Y"
    clock.advance(host.outage_seconds + 1)
    assert pay.micropay.query(out_trade_no="wx-outage")["trade_state"] == "SUCCESS"
    assert balance(host, "demo-006") == before - 600
    assert pay.order.reverse(out_trade_no="wx-outage")["recall"] == "N"
    assert balance(host, "demo-006") == before


@pytest.mark.parametrize("n, fee, code", [
    (2, 600, "NOTENOUGH"),          # balance 5.00
    (7, 100, "TRADE_ERROR"),        # risk control rejects
    (8, 100, "TRADE_ERROR"),        # account frozen
    (1, 600_000, "TRADE_ERROR"),    # over the per-transaction limit (5000.00)
])
def test_declines(host, pay, n, fee, code):
    e = err(lambda: micropay(pay, WX[n], fee, f"wx-decl-{n}-{fee}"))
    assert (e.return_code, e.result_code, e.errcode) == ("SUCCESS", "FAIL", code)
    assert e.errmsg
    assert_signed(raw_answer(e))
    assert pay.micropay.query(out_trade_no=f"wx-decl-{n}-{fee}")["trade_state"] == "PAYERROR"


BAD_CODES = [
    "289900000000000001",   # an Alipay code: not WeChat's
    "130000000000000000",   # WeChat's shape, but no such code
    "13990000000000001",    # 17 digits
    "169900000000000001",   # prefix 16
]


def test_auth_code_invalid(pay):
    # One host for the lot (a host's demo seeding is the slow part of a test).
    for n, code in enumerate(BAD_CODES):
        assert err(lambda: micropay(pay, code, 100, f"wx-badcode-{n}")).errcode == "AUTH_CODE_INVALID", code


def one_time_code(host, code: str, account: str = "demo-001", ttl: float = 60.0) -> str:
    with host.store.transaction() as tx:
        tx.add_code(code, account, host.clock(), host.clock() + ttl)
    return code


def test_authcodeexpire(host, clock, pay):
    code = one_time_code(host, "134567890123456789")
    clock.advance(61)
    assert err(lambda: micropay(pay, code, 100, "wx-expired")).errcode == "AUTHCODEEXPIRE"


def test_a_code_paid_through_wechat_cannot_be_paid_again_by_a_terminal(host, pay):
    code = one_time_code(host, "134567890123456780")
    assert micropay(pay, code, 250, "wx-once")["result_code"] == "SUCCESS"
    before = balance(host)
    link = terminal(host)
    reply = link.request(h.AuthRequest(terminal_id="T0000001", order_id="term-once", amount_minor=250,
                                       currency="CNY", payment_code=code), 5)
    assert reply.status == h.HostStatus.DECLINED and reply.reason == Reason.CODE_USED
    assert err(lambda: micropay(pay, code, 250, "wx-once-2")).errcode == "AUTH_CODE_INVALID"
    assert balance(host) == before


def test_a_wechat_test_code_pays_at_a_terminal_too(host):
    link = terminal(host)
    reply = link.request(h.AuthRequest(terminal_id="T0000001", order_id="term-wx", amount_minor=250,
                                       currency="CNY", payment_code=WX[1]), 5)
    assert reply.status == h.HostStatus.APPROVED


def test_concurrent_duplicate_micropay_charges_once(host, base_url):
    before = balance(host)

    def one(_):
        try:
            return micropay(client(base_url), WX[1], 999, "wx-race")["result_code"]
        except WeChatPayException as exc:
            return exc.errcode

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    assert answers.count("SUCCESS") == 1 and set(answers) == {"SUCCESS", "ORDERPAID"}
    assert balance(host) == before - 999
    assert len([t for t in host.trades() if t.order_id == "wx-race"]) == 1


# ---------------------------------------------------------------------- signatures

def test_a_request_signed_with_another_key_is_signerror(base_url):
    e = err(lambda: micropay(client(base_url, key="X" * 32), WX[1], 100, "wx-badkey"))
    assert (e.return_code, e.result_code, e.errcode) == ("SUCCESS", "FAIL", "SIGNERROR")
    assert_signed(raw_answer(e))     # answered under the registered key


def test_a_tampered_request_is_signerror_and_charges_nothing(host, base_url):
    before = balance(host)
    data = {"appid": APPID, "mch_id": MCH_ID, "nonce_str": "n0nce", "body": "x", "out_trade_no": "wx-tamper",
            "total_fee": 1, "spbill_create_ip": IP, "auth_code": WX[1]}
    body = dict_to_xml(data, calculate_signature(data, KEY)).replace("<total_fee>1</total_fee>",
                                                                     "<total_fee>100000</total_fee>")
    a = xmltodict.parse(requests.post(base_url + "pay/micropay", data=body.encode(), timeout=10).content)["xml"]
    assert (a["result_code"], a["err_code"]) == ("FAIL", "SIGNERROR")
    assert balance(host) == before and host.order_status("wx-tamper") is None


def test_hmac_sha256_both_ways(host, pay):
    data = {"appid": APPID, "body": "hmac", "out_trade_no": "wx-hmac", "total_fee": 321,
            "spbill_create_ip": IP, "auth_code": WX[1], "sign_type": "HMAC-SHA256"}
    r = pay.post("pay/micropay", data=data)
    assert r["result_code"] == "SUCCESS"
    unsigned = {k: v for k, v in r.items() if k != "sign"}
    assert r["sign"] == calculate_signature_hmac(unsigned, KEY)
    text = "&".join(f"{k}={unsigned[k]}" for k in sorted(unsigned) if unsigned[k])
    assert r["sign"] == hmac.new(KEY.encode(), f"{text}&key={KEY}".encode(), hashlib.sha256).hexdigest().upper()


def test_unknown_sign_type_is_signerror(pay):
    e = err(lambda: pay.post("pay/orderquery", data={"appid": APPID, "out_trade_no": "x", "sign_type": "SHA1"}))
    assert e.errcode == "SIGNERROR"


def test_unknown_app_or_merchant_is_a_communication_failure(base_url):
    other = WeChatPay(appid="wx0000000000000000", api_key=KEY, mch_id=MCH_ID)
    other.API_BASE_URL = base_url
    e = err(lambda: micropay(other, WX[1], 100, "wx-noapp"))
    assert (e.return_code, e.errcode) == ("FAIL", None)
    wrong_mch = WeChatPay(appid=APPID, api_key=KEY, mch_id="1900000110")
    wrong_mch.API_BASE_URL = base_url
    assert err(lambda: micropay(wrong_mch, WX[1], 100, "wx-noapp")).return_code == "FAIL"


# ---------------------------------------------------------------------- parameters

PARAM_CASES = [
    ({"total_fee": "12.5"}, "PARAM_ERROR"),
    ({"total_fee": "0"}, "PARAM_ERROR"),
    ({"total_fee": "-1"}, "PARAM_ERROR"),
    ({"fee_type": "USD"}, "PARAM_ERROR"),
    ({"spbill_create_ip": "not-an-ip"}, "PARAM_ERROR"),
    ({"out_trade_no": "x" * 33}, "PARAM_ERROR"),
    ({"out_trade_no": "a b"}, "PARAM_ERROR"),
    ({"body": None}, "LACK_PARAMS"),
    ({"auth_code": None}, "LACK_PARAMS"),
]


def test_param_errors(host, pay):
    for change, code in PARAM_CASES:
        data = {"appid": APPID, "body": "p", "out_trade_no": "wx-param", "total_fee": "100",
                "spbill_create_ip": IP, "auth_code": WX[1], **change}
        e = err(lambda: pay.post("pay/micropay", data=data))
        assert e.errcode == code, change
        assert_signed(raw_answer(e))
        assert host.order_status("wx-param") is None


# ---------------------------------------------------------------------- refunds and close

def test_refund_partial_idempotent_capped_and_queried(host, pay):
    paid = micropay(pay, WX[1], 10_000, "wx-refund")
    before = balance(host)
    r = pay.refund.apply(total_fee=10_000, refund_fee=3_000, out_refund_no="r1", out_trade_no="wx-refund")
    assert r["result_code"] == "SUCCESS" and r["refund_fee"] == "3000" and r["refund_id"]
    assert_signed(r)
    again = pay.refund.apply(total_fee=10_000, refund_fee=3_000, out_refund_no="r1", out_trade_no="wx-refund")
    assert again["refund_id"] == r["refund_id"]
    assert balance(host) == before + 3_000
    assert err(lambda: pay.refund.apply(total_fee=10_000, refund_fee=4_000, out_refund_no="r1",
                                        out_trade_no="wx-refund")).errcode == "REFUND_FEE_MISMATCH"
    assert err(lambda: pay.refund.apply(total_fee=9_999, refund_fee=1, out_refund_no="r9",
                                        out_trade_no="wx-refund")).errcode == "REFUND_FEE_MISMATCH"
    assert err(lambda: pay.refund.apply(total_fee=10_000, refund_fee=8_000, out_refund_no="r2",
                                        out_trade_no="wx-refund")).errcode == "INVALID_REQUEST"
    assert err(lambda: pay.refund.apply(total_fee=10_000, refund_fee=10_001, out_refund_no="r2",
                                        out_trade_no="wx-refund")).errcode == "INVALID_REQUEST"
    assert pay.micropay.query(out_trade_no="wx-refund")["trade_state"] == "REFUND"
    pay.refund.apply(total_fee=10_000, refund_fee=7_000, out_refund_no="r2", transaction_id=paid["transaction_id"])
    assert balance(host) == before + 10_000
    assert err(lambda: pay.refund.apply(total_fee=10_000, refund_fee=1, out_refund_no="r3",
                                        out_trade_no="wx-refund")).errcode == "ERROR"
    q = pay.refund.query(out_refund_no="r1", out_trade_no="wx-refund")
    assert q["refund_count"] == "1" and q["refund_fee_0"] == "3000" and q["refund_status_0"] == "SUCCESS"
    assert q["refund_id_0"] == r["refund_id"] and q["out_refund_no_0"] == "r1"
    assert_signed(q)
    assert err(lambda: pay.refund.query(out_refund_no="nope", out_trade_no="wx-refund")).errcode == "REFUNDNOTEXIST"
    assert err(lambda: pay.refund.query(out_refund_no="r1")).errcode == "PARAM_ERROR"


def test_refund_of_unpaid_or_unknown(pay):
    assert err(lambda: micropay(pay, WX[5], 100, "wx-unpaid")).errcode == "USERPAYING"
    assert err(lambda: pay.refund.apply(total_fee=100, refund_fee=100, out_refund_no="r1",
                                        out_trade_no="wx-unpaid")).errcode == "ERROR"
    assert err(lambda: pay.refund.apply(total_fee=100, refund_fee=100, out_refund_no="r1",
                                        out_trade_no="wx-none")).errcode == "ORDERNOTEXIST"


def test_closeorder(host, pay):
    assert err(lambda: micropay(pay, WX[5], 100, "wx-close")).errcode == "USERPAYING"
    c = pay.order.close("wx-close")
    assert c["result_code"] == "SUCCESS"
    assert_signed(c)
    assert pay.order.query(out_trade_no="wx-close")["trade_state"] == "CLOSED"
    assert err(lambda: pay.order.close("wx-close")).errcode == "ORDERCLOSED"
    assert err(lambda: micropay(pay, WX[5], 100, "wx-close")).errcode == "ORDERCLOSED"
    micropay(pay, WX[1], 100, "wx-close-paid")
    assert err(lambda: pay.order.close("wx-close-paid")).errcode == "ORDERPAID"
    assert err(lambda: pay.order.close("wx-close-none")).errcode == "ORDERNOTEXIST"


def test_orderquery_unknown(pay):
    assert err(lambda: pay.order.query(out_trade_no="wx-none")).errcode == "ORDERNOTEXIST"
    assert err(lambda: pay.order.query()).errcode == "LACK_PARAMS"


# ---------------------------------------------------------------------- the wire itself

def post(base_url: str, path: str, body: bytes, method: str = "POST") -> dict:
    r = requests.request(method, base_url + path, data=body, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
    return xmltodict.parse(r.content)["xml"]


HOSTILE = [
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
    b"<xml><appid>&lol2;</appid></xml>",
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><appid>&e;</appid></xml>',
    b"<xml><appid>a</appid>",
    b"<xml><appid><x>a</x></appid></xml>",
    b"<xml><appid>a</appid><appid>b</appid></xml>",
    b"<other><appid>a</appid></other>",
    b"not xml at all",
    b"<xml><appid>\xff\xfe</appid></xml>",
    b"<xml>" + b"<a>1</a>" * (wx.MAX_BODY // 8) + b"</xml>",
    b"<xml>" + b"".join(b"<a%d>1</a%d>" % (i, i) for i in range(wx.MAX_FIELDS + 1)) + b"</xml>",
]


def test_hostile_bodies_are_refused_without_a_sign(base_url):
    for body in HOSTILE:
        a = post(base_url, "pay/micropay", body)
        assert a["return_code"] == "FAIL" and a["return_msg"] and "sign" not in a, body[:60]


def test_get_and_empty_post(base_url):
    assert post(base_url, "pay/orderquery", b"", "GET")["return_msg"] == "请使用post方法"
    assert post(base_url, "pay/orderquery", b"")["return_msg"] == "post数据为空"


def test_xml_round_trip_with_cdata_breakers():
    fields = {"return_code": "SUCCESS", "attach": "a]]>b<c>&d", "total_fee": "12", "refund_fee_0": "3"}
    out = wx.to_xml(fields)
    assert b"<total_fee>12</total_fee>" in out and b"<refund_fee_0>3</refund_fee_0>" in out
    assert wx.parse_xml(out) == fields
    assert xmltodict.parse(out)["xml"] == fields


def test_sign_matches_wechatpy():
    fields = {"appid": APPID, "mch_id": MCH_ID, "nonce_str": "abc", "body": "中文", "total_fee": "1", "empty": ""}
    assert wx.sign(fields, KEY) == calculate_signature(fields, KEY)
    assert wx.sign(fields, KEY, "HMAC-SHA256") == calculate_signature_hmac(fields, KEY)
    signed = {**fields, "sign": wx.sign(fields, KEY).lower()}
    assert wx.signature_ok(signed, KEY) and not wx.signature_ok({**signed, "body": "x"}, KEY)
    assert not wx.signature_ok(fields, KEY)


def test_trade_states_map():
    from posterm.host.gateway.core import Trade
    t = Trade(trade_no="1", out_trade_no="o", status="CLOSED", amount_minor=1, currency="CNY", paid_at=1.0,
              refunded_minor=1)
    assert wx.trade_state(t) == "REFUND"


# ---------------------------------------------------------------------- fuzz: only our refusals, never anything else

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1024) | st.builds(lambda a, b: b"<xml>" + a + b"</xml>" + b, st.binary(max_size=200),
                                            st.binary(max_size=8)))
def test_parse_xml_refuses_only_with_its_own_error(data):
    try:
        out = wx.parse_xml(data)
    except wx.XmlRefused as exc:
        assert exc.msg
    else:
        assert isinstance(out, dict) and all(isinstance(v, str) for v in out.values())


_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff") | st.sampled_from("\n\t"),
                max_size=40)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), _TEXT, max_size=10))
def test_xml_build_parse_round_trip(fields):
    assert wx.parse_xml(wx.to_xml(fields)) == fields


def _signed_request(out_trade_no: str) -> bytes:
    data = {"appid": APPID, "mch_id": MCH_ID, "nonce_str": "fuzz", "body": "fuzz", "out_trade_no": out_trade_no,
            "total_fee": 1, "spbill_create_ip": IP, "auth_code": WX[1]}
    return dict_to_xml(data, calculate_signature(data, KEY)).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_answer_to_mangled_requests_is_always_xml(gateway, wechat_app, data):
    raw = bytearray(_signed_request("wx-fuzz"))
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "insert", "cut"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if how == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif how == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[pos:]
            if not raw:
                break
    path = data.draw(st.sampled_from(wx.PATHS))
    out = wx.parse_xml(wx.answer(gateway, path, bytes(raw)))
    assert out["return_code"] in ("SUCCESS", "FAIL")
    if out["return_code"] == "SUCCESS":
        assert out["sign"] == wx.sign(out, KEY)


def test_unknown_path_and_oversized_body_over_http(base_url):
    assert wx.parse_xml(wx.answer(None, "/pay/unifiedorder", b"<xml/>"))["return_code"] == "FAIL"
    big = b"<xml><body>" + b"x" * wx.MAX_BODY + b"</body></xml>"
    assert post(base_url, "pay/micropay", big)["return_msg"].startswith("XML")

    def chunks():   # no Content-Length: the cap holds on the stream too
        for _ in range(wx.MAX_BODY // 1024 + 2):
            yield b"<a>" + b"x" * 1017 + b"</a>"
    r = requests.post(base_url + "pay/micropay", data=chunks(), timeout=10)
    assert xmltodict.parse(r.content)["xml"]["return_code"] == "FAIL"
