"""Alipay's open API (``/gateway.do``), as the published API and python-alipay-sdk behave.

Request: GET query or POST form (``application/x-www-form-urlencoded``; both may be used
at once, as Alipay's Java SDK does), UTF-8. Common parameters ``app_id``, ``method``,
``charset``, ``sign_type`` (RSA2 only), ``sign``, ``timestamp`` ("yyyy-MM-dd HH:mm:ss"),
``version`` (1.0), optional ``format`` (JSON), ``notify_url``; the business parameters
are the JSON object ``biz_content``. The signature is SHA256withRSA, base64, over the
parameters but ``sign`` with a value, sorted by name, as ``k=v`` joined by ``&`` (values
as sent, not URL-encoded), checked with the app's public key.

Response: ``{"<method with _>_response":{...},"sign":"..."}``, the signature over exactly
the bytes of the ``{...}`` value, by the gateway's key (``posterm host app show``).
Braces inside string values are written ``\\u007b``/``\\u007d``: SDKs cut the value out
by counting braces, as python-alipay-sdk does. Errors of the common parameters (40001
missing, 40002 invalid: the request is not the app's) are answered unsigned, as Alipay's
own examples show them; everything else (10000, 10003, 40004, 20000) is signed.

Codes: 10000 Success; 10003 the buyer is paying (pay in process); 20000 the service is
unavailable (isp.unknow-error: the outcome is unknown, query); 40001 isv.missing-*;
40002 isv.invalid-*; 40004 Business Failed with an ``ACQ.*`` sub-code (:data:`PAY_FAILURES`).
Amounts are decimal strings in yuan (a JSON number is read from its digits, never as a
float); they are parsed with :func:`~posterm.host.gateway.core.parse_amount`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import urllib.parse
from datetime import datetime
from zoneinfo import ZoneInfo

from firmware_protocol.native.messages import Reason

from posterm.host.gateway import notify as _notify
from posterm.host.gateway.core import (
    CLOSED,
    FAILED,
    SUCCESS,
    WAIT_BUYER_PAY,
    App,
    Gateway,
    GatewayUnavailable,
    InvalidRequest,
    Trade,
    UnknownApp,
    format_amount,
    parse_amount,
)
from posterm.host.gateway.http import Request, Response
from posterm.host.gateway.keys import verify_rsa2

log = logging.getLogger("posterm.host.gateway")

PATH = "/gateway.do"
TZ = ZoneInfo("Asia/Shanghai")
CURRENCY = "CNY"
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
JSON = "application/json; charset=utf-8"

PAY_FAILURES: dict[int, tuple[str, str]] = {
    Reason.CODE_INVALID: ("ACQ.PAYMENT_AUTH_CODE_INVALID", "支付授权码无效"),
    Reason.CODE_EXPIRED: ("ACQ.PAYMENT_AUTH_CODE_INVALID", "支付授权码无效"),
    Reason.CODE_USED: ("ACQ.PAYMENT_AUTH_CODE_INVALID", "支付授权码无效"),
    Reason.INSUFFICIENT_BALANCE: ("ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"),
    Reason.OVER_TRANSACTION_LIMIT: ("ACQ.TOTAL_FEE_EXCEED", "订单金额超过限额"),
    Reason.OVER_DAILY_LIMIT: ("ACQ.BUYER_PAYMENT_AMOUNT_DAY_LIMIT_ERROR", "买家付款日限额超限"),
    Reason.ACCOUNT_FROZEN: ("ACQ.BUYER_ENABLE_STATUS_FORBID", "买家状态非法"),
    Reason.NOT_REAL_NAME_VERIFIED: ("ACQ.ERROR_BUYER_CERTIFY_LEVEL_LIMIT", "买家未通过人行认证"),
    Reason.RISK_REJECTED: ("ACQ.PAYMENT_REQUEST_HAS_RISK", "支付有风险"),
    Reason.ORDER_CONFLICT: ("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"),
}
PAYMENT_FAIL = ("ACQ.PAYMENT_FAIL", "支付失败")
TRADE_NOT_EXIST = ("ACQ.TRADE_NOT_EXIST", "交易不存在")
TRADE_STATUS_ERROR = ("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
REFUND_FAILURES: dict[int, tuple[str, str]] = {
    Reason.ORDER_NOT_FOUND: TRADE_NOT_EXIST,
    Reason.NOT_PAID: TRADE_STATUS_ERROR,
    Reason.REFUND_EXCEEDS_PAID: ("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"),
    Reason.ORDER_CONFLICT: ("ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求"),
    Reason.CURRENCY_MISMATCH: ("ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额无效"),
}

REQUIRED = (("app_id", "isv.missing-app-id", "缺少AppID参数"), ("sign", "isv.missing-signature", "缺少签名参数"),
            ("sign_type", "isv.missing-signature-type", "缺少签名类型参数"),
            ("timestamp", "isv.missing-timestamp", "缺少时间戳参数"), ("version", "isv.missing-version", "缺少版本参数"))


class _Answer(Exception):
    """An answer decided early: ``code`` with a sub-code; ``signed`` False for the public
    errors that are not the app's."""

    def __init__(self, code: str, sub_code: str = "", sub_msg: str = "", *, signed: bool = True, **extra) -> None:
        super().__init__(sub_code or code)
        self.code, self.sub_code, self.sub_msg, self.signed, self.extra = code, sub_code, sub_msg, signed, extra


MSG = {"10000": "Success", "10003": "order success pay inprocess", "20000": "Service Currently Unavailable",
       "40001": "Missing Required Arguments", "40002": "Invalid Arguments", "40004": "Business Failed"}


def _business(sub: tuple[str, str], **extra) -> _Answer:
    return _Answer("40004", sub[0], sub[1], **extra)


def _invalid(field: str) -> _Answer:
    return _Answer("40004", "ACQ.INVALID_PARAMETER", f"参数无效: {field}")


# ---------------------------------------------------------------------- wire helpers

def signing_string(params: dict[str, str], *, exclude: tuple[str, ...] = ("sign",)) -> str:
    """What is signed: the parameters but ``exclude`` with a non-empty value, sorted by name,
    as ``k=v`` joined by ``&``."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in exclude and v != "")


def response_text(method: str, body: dict, sign: str | None) -> str:
    """The response document; ``sign`` covers exactly the ``<method>_response`` value's text
    (:func:`response_value`)."""
    key = method.replace(".", "_") + "_response" if method else "error_response"
    value = response_value(body)
    out = "{" + json.dumps(key) + ":" + value
    if sign is not None:
        out += ',"sign":' + json.dumps(sign)
    return out + "}"


def response_value(body: dict) -> str:
    """Compact JSON of ``body`` (UTF-8 as is), braces inside strings escaped (see the module docstring)."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    out, in_str, esc = [], False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            elif ch in "{}":
                out.append("\\u007b" if ch == "{" else "\\u007d")
                continue
        elif ch == '"':
            in_str = True
        out.append(ch)
    return "".join(out)


def parse_params(req: Request) -> dict[str, str]:
    """The request's parameters (query and form). Raises _Answer for a malformed request."""
    pairs: list[tuple[str, str]] = []
    try:
        pairs += urllib.parse.parse_qsl(req.query.decode("ascii"), keep_blank_values=True, encoding="utf-8",
                                        errors="strict", max_num_fields=req.limits.max_params)
        if req.method == "POST" and req.body:
            ctype = req.content_type.split(";", 1)[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                raise _Answer("40002", "isv.invalid-parameter", "仅支持 application/x-www-form-urlencoded", signed=False)
            pairs += urllib.parse.parse_qsl(req.body.decode("ascii"), keep_blank_values=True, encoding="utf-8",
                                            errors="strict", max_num_fields=req.limits.max_params)
    except (UnicodeDecodeError, ValueError):
        raise _Answer("40002", "isv.invalid-parameter", "参数格式错误 (UTF-8, 参数个数)", signed=False) from None
    if len(pairs) > req.limits.max_params:
        raise _Answer("40002", "isv.invalid-parameter", "参数过多", signed=False)
    params: dict[str, str] = {}
    for k, v in pairs:
        if k in params:
            raise _Answer("40002", "isv.invalid-parameter", f"重复的参数 {k}"[:64], signed=False)
        params[k] = v
    return params


def _text(value) -> str | None:
    """A biz_content value as text (a JSON number as its digits; None for absent or null)."""
    if value is None:
        return None
    if isinstance(value, (dict, list, bool)):
        raise ValueError("not a scalar")
    return str(value)


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, TZ).strftime("%Y-%m-%d %H:%M:%S") if ts else None


def buyer_user_id(trade: Trade) -> str | None:
    """Alipay's 16-digit buyer id (2088...) for the trade's buyer: a stable pseudonym."""
    return None if trade.buyer_ref is None else "2088" + f"{int(trade.buyer_ref, 16) % 10 ** 12:012d}"


# ---------------------------------------------------------------------- the endpoint

def handle(gateway: Gateway, req: Request) -> Response:
    """Answer one ``/gateway.do`` request (see the module docstring)."""
    method = ""
    try:
        params = parse_params(req)
        method = params.get("method", "")
        if not method:
            raise _Answer("40001", "isv.missing-method", "缺少方法名参数", signed=False)
        if method not in METHODS:
            method_shown = method if re.fullmatch(r"[a-z.]{1,128}", method) else ""
            method = ""
            raise _Answer("40002", "isv.invalid-method", f"不存在的方法名 {method_shown}".strip(), signed=False)
        for name, sub, text in REQUIRED:
            if not params.get(name):
                raise _Answer("40001", sub, text, signed=False)
        if params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
            raise _Answer("40002", "isv.invalid-charset", "字符集错误", signed=False)
        if params.get("format", "JSON").upper() != "JSON":
            raise _Answer("40002", "isv.invalid-format", "无效的数据格式", signed=False)
        if not TIMESTAMP.fullmatch(params["timestamp"]):
            raise _Answer("40002", "isv.invalid-timestamp", "非法的时间戳参数", signed=False)
        if params["version"] != "1.0":
            raise _Answer("40002", "isv.invalid-parameter", "版本号错误", signed=False)
        try:
            app = gateway.app(params["app_id"], "alipay")
        except UnknownApp:
            raise _Answer("40002", "isv.invalid-app-id", "无效的AppID参数", signed=False) from None
        if params["sign_type"] != "RSA2":
            raise _Answer("40002", "isv.invalid-signature-type", "无效的签名类型", signed=False)
        if not verify_rsa2(app.public_key_pem, signing_string(params).encode("utf-8"), params["sign"]):
            log.warning("alipay %s from app %s: bad signature", method, app.app_id)
            raise _Answer("40002", "isv.invalid-signature", "验签出错", signed=False)
        try:
            biz = json.loads(params.get("biz_content") or "{}", parse_float=str, parse_int=str,
                             parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise _invalid("biz_content") from None
        if not isinstance(biz, dict):
            raise _invalid("biz_content")
        body = METHODS[method](gateway, app, biz, params)
    except _Answer as ans:
        body = {"code": ans.code, "msg": MSG.get(ans.code, ""), **({"sub_code": ans.sub_code, "sub_msg": ans.sub_msg}
                                                                  if ans.sub_code else {}), **ans.extra}
        if not ans.signed:
            return _respond(gateway, method, body, signed=False)
    except GatewayUnavailable:
        body = {"code": "20000", "msg": MSG["20000"], "sub_code": "isp.unknow-error", "sub_msg": "系统繁忙"}
    return _respond(gateway, method, body, signed=True)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _respond(gateway: Gateway, method: str, body: dict, *, signed: bool) -> Response:
    value = response_value(body)
    sign = gateway.keys.sign_rsa2(value.encode("utf-8")) if signed else None
    return Response(200, response_text(method, body, sign).encode("utf-8"), JSON)


def refuse(req: Request, why: str) -> Response:
    """The HTTP layer's refusals in Alipay's words (unsigned: the request was never read)."""
    if why in ("busy", "internal"):
        body = {"code": "20000", "msg": MSG["20000"], "sub_code": "isp.unknow-error", "sub_msg": "系统繁忙"}
    else:
        body = {"code": "40002", "msg": MSG["40002"], "sub_code": "isv.invalid-parameter",
                "sub_msg": "请求过大" if why == "too_large" else "参数过多"}
    return Response(200, response_text("", body, None).encode("utf-8"), JSON)


# ---------------------------------------------------------------------- the methods

def _get(biz: dict, name: str, *, required: bool = True, max_len: int = 256) -> str | None:
    try:
        value = _text(biz.get(name))
    except ValueError:
        raise _invalid(name) from None
    if value is None or value == "":
        if required:
            raise _Answer("40004", "ACQ.INVALID_PARAMETER", f"缺少必选参数 {name}")
        return None
    if len(value) > max_len:
        raise _invalid(name)
    return value


def _amount(biz: dict, name: str, currency: str = CURRENCY) -> int:
    try:
        return parse_amount(_get(biz, name), currency, field_name=name)
    except InvalidRequest:
        raise _invalid(name) from None


def _trade_ref(gateway: Gateway, app: App, biz: dict) -> Trade | None:
    out_trade_no = _get(biz, "out_trade_no", required=False, max_len=64)
    trade_no = _get(biz, "trade_no", required=False, max_len=64)
    if out_trade_no is None and trade_no is None:
        raise _Answer("40004", "ACQ.INVALID_PARAMETER", "out_trade_no 和 trade_no 不能同时为空")
    return gateway.query(app, out_trade_no, trade_no)


def _amounts(t: Trade) -> dict:
    paid = format_amount(t.amount_minor, t.currency) if t.paid_at else "0.00"
    return {"total_amount": format_amount(t.amount_minor, t.currency), "receipt_amount": paid,
            "buyer_pay_amount": paid, "point_amount": "0.00", "invoice_amount": paid}


def _buyer(t: Trade) -> dict:
    if t.buyer_id is None:
        return {}
    return {"buyer_logon_id": t.buyer_id, "buyer_user_id": buyer_user_id(t)}


def _funds(t: Trade) -> dict:
    if not t.paid_at:
        return {}
    return {"fund_bill_list": [{"fund_channel": "ALIPAYACCOUNT", "amount": format_amount(t.amount_minor, t.currency)}]}


def _failure(t: Trade) -> _Answer:
    if t.status == CLOSED and t.repeated:
        return _business(("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"), out_trade_no=t.out_trade_no)
    return _business(PAY_FAILURES.get(t.reason, PAYMENT_FAIL), out_trade_no=t.out_trade_no)


def trade_pay(gateway: Gateway, app: App, biz: dict, params: dict) -> dict:
    out_trade_no = _get(biz, "out_trade_no", max_len=64)
    scene = _get(biz, "scene", max_len=32)
    if scene not in ("bar_code", "wave_code"):
        raise _invalid("scene")
    auth_code = _get(biz, "auth_code", max_len=64)
    subject = _get(biz, "subject", max_len=256)
    currency = _get(biz, "trans_currency", required=False, max_len=3) or CURRENCY
    amount = _amount(biz, "total_amount", currency)
    try:
        t = gateway.pay(app, out_trade_no, auth_code, amount, currency, subject)
    except InvalidRequest as exc:
        raise _invalid(exc.field) from None
    if t.status == SUCCESS:
        if t.repeated:
            raise _business(("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"), trade_no=t.trade_no, out_trade_no=t.out_trade_no)
        return {"code": "10000", "msg": MSG["10000"], "trade_no": t.trade_no, "out_trade_no": t.out_trade_no,
                **_buyer(t), **_amounts(t), "gmt_payment": _when(t.paid_at), **_funds(t)}
    if t.status == WAIT_BUYER_PAY:
        return {"code": "10003", "msg": MSG["10003"], "trade_no": t.trade_no, "out_trade_no": t.out_trade_no,
                **_buyer(t), **_amounts(t)}
    raise _failure(t)


def trade_precreate(gateway: Gateway, app: App, biz: dict, params: dict) -> dict:
    out_trade_no = _get(biz, "out_trade_no", max_len=64)
    subject = _get(biz, "subject", max_len=256)
    currency = _get(biz, "trans_currency", required=False, max_len=3) or CURRENCY
    amount = _amount(biz, "total_amount", currency)
    notify_url = params.get("notify_url") or None
    try:
        t = gateway.precreate(app, out_trade_no, amount, currency, subject, notify_url)
    except InvalidRequest as exc:
        raise _invalid(exc.field) from None
    if t.status == WAIT_BUYER_PAY and t.qr_code:
        return {"code": "10000", "msg": MSG["10000"], "out_trade_no": t.out_trade_no, "qr_code": t.qr_code}
    if t.status == SUCCESS:
        raise _business(("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"), out_trade_no=t.out_trade_no)
    if t.status == CLOSED:
        raise _business(("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"), out_trade_no=t.out_trade_no)
    raise _business(PAY_FAILURES.get(t.reason, PAYMENT_FAIL) if t.reason == Reason.ORDER_CONFLICT else PAYMENT_FAIL,
                    out_trade_no=t.out_trade_no)


TRADE_STATUS = {WAIT_BUYER_PAY: "WAIT_BUYER_PAY", SUCCESS: "TRADE_SUCCESS", CLOSED: "TRADE_CLOSED"}


def trade_query(gateway: Gateway, app: App, biz: dict, params: dict) -> dict:
    t = _trade_ref(gateway, app, biz)
    if t is None or t.status == FAILED:
        raise _business(TRADE_NOT_EXIST, out_trade_no=biz.get("out_trade_no") or "")
    body = {"code": "10000", "msg": MSG["10000"], "trade_no": t.trade_no, "out_trade_no": t.out_trade_no,
            "trade_status": TRADE_STATUS[t.status], **_buyer(t), **_amounts(t)}
    if t.paid_at:
        body["send_pay_date"] = _when(t.paid_at)
        body.update(_funds(t))
    return body


def trade_cancel(gateway: Gateway, app: App, biz: dict, params: dict) -> dict:
    out_trade_no = _get(biz, "out_trade_no", required=False, max_len=64)
    trade_no = _get(biz, "trade_no", required=False, max_len=64)
    if out_trade_no is None:
        if trade_no is None:
            raise _Answer("40004", "ACQ.INVALID_PARAMETER", "out_trade_no 和 trade_no 不能同时为空")
        found = gateway.query(app, trade_no=trade_no)
        if found is None:
            raise _business(TRADE_NOT_EXIST, retry_flag="N")
        out_trade_no = found.out_trade_no
    try:
        r = gateway.cancel(app, out_trade_no)
    except InvalidRequest as exc:
        raise _invalid(exc.field) from None
    if r.reason == Reason.CANCEL_WINDOW_EXPIRED:
        raise _business(("ACQ.TRADE_CANCEL_TIME_OUT", "超过撤销时间范围"), retry_flag="N", out_trade_no=out_trade_no)
    if r.reason == Reason.ORDER_CONFLICT or (trade_no and r.trade is not None and r.trade.trade_no != trade_no):
        raise _business(TRADE_NOT_EXIST, retry_flag="N", out_trade_no=out_trade_no)
    body = {"code": "10000", "msg": MSG["10000"], "out_trade_no": out_trade_no, "retry_flag": "N", "action": r.action}
    if r.trade is not None:
        body["trade_no"] = r.trade.trade_no
    if r.action == "refund" and r.trade is not None:
        body["gmt_refund_pay"] = _when(gateway.ctx.clock())
        body["refund_settlement_id"] = ""
    return body


def trade_close(gateway: Gateway, app: App, biz: dict, params: dict) -> dict:
    out_trade_no = _get(biz, "out_trade_no", required=False, max_len=64)
    trade_no = _get(biz, "trade_no", required=False, max_len=64)
    if out_trade_no is None and trade_no is None:
        raise _Answer("40004", "ACQ.INVALID_PARAMETER", "out_trade_no 和 trade_no 不能同时为空")
    t = gateway.close(app, out_trade_no, trade_no)
    if t is None or t.status == FAILED:
        raise _business(TRADE_NOT_EXIST)
    if t.status != CLOSED or t.paid_at:
        raise _business(TRADE_STATUS_ERROR, trade_no=t.trade_no, out_trade_no=t.out_trade_no)
    return {"code": "10000", "msg": MSG["10000"], "trade_no": t.trade_no, "out_trade_no": t.out_trade_no}


def trade_refund(gateway: Gateway, app: App, biz: dict, params: dict) -> dict:
    t = _trade_ref(gateway, app, biz)
    if t is None or t.trade_no == "":
        raise _business(TRADE_NOT_EXIST)
    try:
        amount = parse_amount(_get(biz, "refund_amount"), t.currency, field_name="refund_amount")
    except InvalidRequest:
        raise _business(("ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额无效")) from None
    # Without out_request_no Alipay takes the trade itself as the request: one refund.
    out_request_no = _get(biz, "out_request_no", required=False, max_len=64) or t.out_trade_no
    reason = _get(biz, "refund_reason", required=False) or ""
    try:
        r = gateway.refund(app, t.out_trade_no, out_request_no, amount, reason)
    except InvalidRequest as exc:
        raise _invalid(exc.field) from None
    if r.status != SUCCESS:
        raise _business(REFUND_FAILURES.get(r.reason, ("ACQ.SYSTEM_ERROR", "系统错误")),
                        trade_no=t.trade_no, out_trade_no=t.out_trade_no)
    return {"code": "10000", "msg": MSG["10000"], "trade_no": t.trade_no, "out_trade_no": t.out_trade_no,
            **_buyer(t), "fund_change": "N" if r.repeated else "Y",
            "refund_fee": format_amount(r.refunded_total_minor, t.currency),
            "send_back_fee": format_amount(r.refund_minor, t.currency), "gmt_refund_pay": _when(r.refunded_at)}


def trade_fastpay_refund_query(gateway: Gateway, app: App, biz: dict, params: dict) -> dict:
    out_request_no = _get(biz, "out_request_no", max_len=64)
    t = _trade_ref(gateway, app, biz)
    if t is None or t.trade_no == "":
        raise _business(TRADE_NOT_EXIST)
    body = {"code": "10000", "msg": MSG["10000"], "trade_no": t.trade_no, "out_trade_no": t.out_trade_no,
            "out_request_no": out_request_no}
    r = gateway.refund_query(app, t.out_trade_no, out_request_no)
    if r is not None:   # none: Alipay answers the trade alone, which says "no such refund"
        body.update({"total_amount": format_amount(t.amount_minor, t.currency),
                     "refund_amount": format_amount(r.refund_minor, t.currency), "refund_status": "REFUND_SUCCESS",
                     "gmt_refund_pay": _when(r.refunded_at)})
    return body


METHODS = {
    "alipay.trade.pay": trade_pay,
    "alipay.trade.precreate": trade_precreate,
    "alipay.trade.query": trade_query,
    "alipay.trade.cancel": trade_cancel,
    "alipay.trade.close": trade_close,
    "alipay.trade.refund": trade_refund,
    "alipay.trade.fastpay.refund.query": trade_fastpay_refund_query,
}

ROUTES = [(PATH, ("GET", "POST"), handle)]


# ---------------------------------------------------------------------- notifications

def notification(gateway: Gateway, app: App, trade: Trade) -> dict[str, str]:
    """The signed asynchronous notification of a paid trade (form parameters). Signed as
    Alipay signs them: over the parameters but ``sign`` and ``sign_type``."""
    params = {
        "notify_time": _when(gateway.ctx.clock()), "notify_type": "trade_status_sync",
        "notify_id": secrets.token_hex(16), "app_id": app.app_id, "auth_app_id": app.app_id, "charset": "utf-8",
        "version": "1.0", "sign_type": "RSA2", "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
        "trade_status": "TRADE_SUCCESS" if trade.paid_at and trade.status == SUCCESS else TRADE_STATUS[trade.status],
        "seller_id": app.merchant_id, "subject": trade.subject or "",
        "gmt_create": _when(trade.created_at), "gmt_payment": _when(trade.paid_at),
        "buyer_id": buyer_user_id(trade) or "", "buyer_logon_id": trade.buyer_id or "",
        "fund_bill_list": json.dumps(_funds(trade).get("fund_bill_list", []), separators=(",", ":")),
        **_amounts(trade),
    }
    params = {k: v for k, v in params.items() if v not in (None, "")}
    params["sign"] = gateway.keys.sign_rsa2(signing_string(params, exclude=("sign", "sign_type")).encode("utf-8"))
    return params


def send_notification(gateway: Gateway, app: App, trade: Trade, url: str) -> bool:
    """POST the notification to ``url``; delivered when the receiver answers "success"."""
    body = urllib.parse.urlencode(notification(gateway, app, trade)).encode("ascii")
    status, answer = _notify.post(url, body, "application/x-www-form-urlencoded; charset=utf-8")
    return status == 200 and answer.strip() == b"success"


NOTIFY = send_notification
