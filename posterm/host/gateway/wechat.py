"""WeChat Pay v2 merchant API (付款码支付 and its companions) on the gateway.

Wire, as WeChat Pay v2 publishes it:

- ``POST`` to ``/pay/micropay``, ``/pay/orderquery``, ``/secapi/pay/reverse``,
  ``/secapi/pay/refund``, ``/pay/refundquery``, ``/pay/closeorder``; the body is UTF-8 XML,
  one flat element ``<xml>`` whose children are the parameters
  (``<name><![CDATA[value]]></name>`` or plain text). Bodies above :data:`MAX_BODY` bytes,
  more than :data:`MAX_FIELDS` parameters, a nested element, a repeated name or any DTD
  (so no entity can be declared: nothing expands, nothing external is fetched) are refused
  before anything else is read. Parsing is the standard library's expat, with the DTD
  handlers refusing.
- Signature: the parameters with a non-empty value other than ``sign``, sorted by name,
  as ``k1=v1&k2=v2...&key=<API key>``; MD5 of it, or HMAC-SHA256 keyed with the API key
  when ``sign_type`` is ``HMAC-SHA256``; upper-case hex. Checked on every request, set on
  every answer we can sign (with the request's sign type).
- Answers are always HTTP 200 with ``<xml>``: ``return_code``/``return_msg`` say whether the
  request got through (FAIL: not UTF-8, bad XML, no or unknown appid/mch_id, not POST;
  unsigned, as we cannot know whose key to sign with), ``result_code``/``err_code``/
  ``err_code_des`` what happened to it (signed). A signature that does not match is the
  business answer ``err_code SIGNERROR``, signed with the registered key.

Mapping to the host (:class:`~posterm.host.gateway.core.Gateway`): ``total_fee`` is integer
fen (CNY only); ``auth_code`` must be a WeChat payment code (18 digits, prefix 10-15) or
the answer is ``AUTH_CODE_INVALID``; ``out_trade_no`` is the gateway's order id; the host's
decline reasons map to the published codes (:data:`_PAY_DECLINES`); limits, a frozen
account, real-name and risk control map to ``TRADE_ERROR`` ("业务错误导致交易失败、用户账号异常、风控、规则限制等",
the nearest published code); the host unavailable is ``SYSTEMERROR`` (outcome unknown:
query). A payment the buyer must confirm is ``USERPAYING``; ``orderquery`` then shows
``USERPAYING`` until the buyer confirms in the wallet (``posterm host wallet confirm``),
``SUCCESS`` after. ``reverse`` (撤销) closes an unpaid order and pays back a paid one.

The ``/secapi/`` endpoints need the merchant's client certificate (mutual TLS) at WeChat.
This gateway serves plain HTTP on loopback and accepts them without one: the request
signature is still checked.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import xml.parsers.expat
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Mapping
from zoneinfo import ZoneInfo

from firmware_protocol.native.messages import MAX_AMOUNT_MINOR, Reason

from posterm.host.gateway.core import (
    CLOSED,
    SUCCESS,
    WAIT_BUYER_PAY,
    App,
    GatewayUnavailable,
    InvalidRequest,
    Trade,
    UnknownApp,
    refund_id_for,
)
from posterm.host.gateway.http import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from posterm.host.gateway.core import Gateway

log = logging.getLogger("posterm.host.gateway.wechat")

MAX_BODY = 32 * 1024        # WeChat's largest parameter (detail) is 6000 characters
MAX_FIELDS = 64
SIGN_TYPES = ("MD5", "HMAC-SHA256")
CURRENCY = "CNY"            # total_fee is fen: mainland WeChat Pay v2 takes CNY only
BEIJING = ZoneInfo("Asia/Shanghai")

# A WeChat payment code: 18 digits, prefix 10 to 15.
WECHAT_CODE = re.compile(r"1[0-5][0-9]{16}")
# WeChat's order and refund numbers: digits, letters and _-|*@ (32 and 64 at most).
_OUT_NO = re.compile(r"[0-9A-Za-z_\-|*@]+")
_NONCE_MAX = 32
_FEN = re.compile(r"[1-9][0-9]{0,15}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Answer fields WeChat sends as plain numbers; every other value goes in CDATA.
_NUMERIC = frozenset({"total_fee", "cash_fee", "refund_fee", "cash_refund_fee", "coupon_refund_fee",
                      "coupon_refund_count", "settlement_total_fee", "settlement_refund_fee", "refund_count"})


class XmlRefused(ValueError):
    """A request body that is not the flat, UTF-8, DTD-free ``<xml>`` WeChat Pay sends.
    ``msg`` is the published ``return_msg`` for it."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class _Fail(Exception):
    """A business answer ``result_code FAIL``: the published ``err_code`` and its description,
    and any fields the answer carries beside them."""

    def __init__(self, code: str, des: str, **extra: str) -> None:
        super().__init__(code)
        self.code, self.des, self.extra = code, des, extra


# ---------------------------------------------------------------------- XML

def parse_xml(body: bytes) -> dict[str, str]:
    """The parameters of a request body. Raises :class:`XmlRefused` (see the module docstring)."""
    if len(body) > MAX_BODY:
        raise XmlRefused("XML格式错误: 请求过大")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise XmlRefused("编码格式错误") from None
    fields: dict[str, str] = {}
    state = {"depth": 0, "name": None, "text": []}

    def refuse_dtd(*_args) -> None:
        raise XmlRefused("XML格式错误: DTD not accepted")

    def start(name: str, _attrs) -> None:
        state["depth"] += 1
        if state["depth"] == 1:
            if name != "xml":
                raise XmlRefused("XML格式错误: root must be <xml>")
        elif state["depth"] == 2:
            if not _NAME.fullmatch(name) or name in fields:
                raise XmlRefused(f"XML格式错误: bad or repeated parameter {name[:64]!r}")
            if len(fields) >= MAX_FIELDS:
                raise XmlRefused("XML格式错误: too many parameters")
            state["name"], state["text"] = name, []
        else:
            raise XmlRefused("XML格式错误: nested element")

    def end(_name: str) -> None:
        if state["depth"] == 2:
            fields[state["name"]] = "".join(state["text"])
            state["name"] = None
        state["depth"] -= 1

    def chars(data: str) -> None:
        if state["depth"] == 2:
            state["text"].append(data)
        elif data.strip():
            raise XmlRefused("XML格式错误: text outside a parameter")

    parser = xml.parsers.expat.ParserCreate("UTF-8")
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.UnparsedEntityDeclHandler = refuse_dtd
    parser.ExternalEntityRefHandler = refuse_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(text, True)
    except xml.parsers.expat.ExpatError:
        raise XmlRefused("XML格式错误") from None
    return fields


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside one CDATA section: end it there and open another.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def to_xml(fields: Mapping[str, str | int]) -> bytes:
    """An answer as WeChat Pay writes it: ``<xml>``, numbers plain, text in CDATA."""
    parts = ["<xml>"]
    for name, value in fields.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad parameter name {name!r}")
        text = str(value)
        numeric = name in _NUMERIC or name.rsplit("_", 1)[0] in _NUMERIC   # refund_fee_0, ...
        parts.append(f"<{name}>{text if numeric and text.isdigit() else _cdata(text)}</{name}>")
    parts.append("</xml>")
    return "".join(parts).encode("utf-8")


# ---------------------------------------------------------------------- signatures

def sign(fields: Mapping[str, str | int], key: str, sign_type: str = "MD5") -> str:
    """The v2 signature of ``fields`` (``sign`` and empty values left out) under API key ``key``."""
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "sign" and str(fields[k]) != "")
    data = f"{text}&key={key}".encode("utf-8")
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode("utf-8"), data, hashlib.sha256).hexdigest().upper()
    if sign_type == "MD5":
        return hashlib.md5(data).hexdigest().upper()
    raise ValueError(f"sign_type must be one of {SIGN_TYPES}")


def signature_ok(fields: Mapping[str, str], key: str, sign_type: str = "MD5") -> bool:
    """Whether ``fields['sign']`` is their signature under ``key`` (case-insensitive hex)."""
    given = fields.get("sign", "")
    return bool(given) and hmac.compare_digest(given.upper().encode(), sign(fields, key, sign_type).encode())


# ---------------------------------------------------------------------- the answers

def answer(gateway: "Gateway", path: str, body: bytes, method: str = "POST") -> bytes:
    """The XML answer to one request for ``path`` (e.g. "/pay/micropay"). Never raises for
    anything the caller sent; the host unavailable is answered ``SYSTEMERROR``."""
    handler = _ENDPOINTS.get(path.strip("/"))
    if handler is None:
        return _comm_fail("无效请求: 未知接口")
    if method.upper() != "POST":
        return _comm_fail("请使用post方法")
    if not body:
        return _comm_fail("post数据为空")
    try:
        p = parse_xml(body)
    except XmlRefused as exc:
        return _comm_fail(exc.msg)
    appid, mch_id = p.get("appid", ""), p.get("mch_id", "")
    if not appid or not mch_id:
        return _comm_fail("缺少参数: appid, mch_id")
    app = _app(gateway, appid, mch_id)
    if app is None or not app.api_key:
        return _comm_fail("appid和mch_id不匹配")
    sign_type = p.get("sign_type") or "MD5"
    out: dict[str, str] = {"return_code": "SUCCESS", "return_msg": "OK", "appid": appid, "mch_id": mch_id}
    if p.get("device_info"):
        out["device_info"] = p["device_info"]
    out["nonce_str"] = secrets.token_hex(16)
    try:
        if sign_type not in SIGN_TYPES:
            raise _Fail("SIGNERROR", "签名类型错误: sign_type 只支持 MD5 和 HMAC-SHA256")
        if not signature_ok(p, app.api_key, sign_type):
            log.warning("wechat %s from app %s: signature does not match", path, app.app_id)
            raise _Fail("SIGNERROR", "签名错误")
        nonce = p.get("nonce_str", "")
        if not nonce:
            raise _Fail("LACK_PARAMS", "缺少参数: nonce_str")
        if len(nonce) > _NONCE_MAX:
            raise _Fail("PARAM_ERROR", "nonce_str 不长于32位")
        if p.get("sub_mch_id") or p.get("sub_appid"):
            raise _Fail("PARAM_ERROR", "服务商模式 (sub_mch_id, sub_appid) 未实现")
        result = {"result_code": "SUCCESS", **handler(gateway, app, p)}
    except _Fail as f:
        result = {"result_code": "FAIL", "err_code": f.code, "err_code_des": f.des, **f.extra}
    except InvalidRequest as exc:
        result = {"result_code": "FAIL", "err_code": "PARAM_ERROR", "err_code_des": f"参数错误: {exc.field}"}
    except GatewayUnavailable:
        result = {"result_code": "FAIL", "err_code": "SYSTEMERROR", "err_code_des": "系统超时，结果未知，请查询订单",
                  **_UNKNOWN_EXTRA.get(path.strip("/"), {})}
    out.update(result)
    out["sign"] = sign(out, app.api_key, sign_type if sign_type in SIGN_TYPES else "MD5")
    return to_xml(out)


def _comm_fail(msg: str) -> bytes:
    return to_xml({"return_code": "FAIL", "return_msg": msg})


def _app(gateway: "Gateway", appid: str, mch_id: str) -> App | None:
    try:
        app = gateway.app(appid, "wechat")
    except UnknownApp:
        return None
    return app if app.wechat_mch_id == mch_id else None


# ---------------------------------------------------------------------- parameters

def _need(p: Mapping[str, str], *names: str) -> None:
    missing = [n for n in names if not p.get(n)]
    if missing:
        raise _Fail("LACK_PARAMS", "缺少参数: " + ", ".join(missing))


def _fen(p: Mapping[str, str], name: str) -> int:
    text = p.get(name, "")
    if not _FEN.fullmatch(text) or int(text) > MAX_AMOUNT_MINOR:
        raise _Fail("PARAM_ERROR", f"{name} 必须为正整数，单位为分")
    return int(text)


def _currency(p: Mapping[str, str], name: str) -> str:
    value = p.get(name) or CURRENCY
    if value != CURRENCY:
        raise _Fail("PARAM_ERROR", f"{name} 只支持 CNY")
    return value


def _out_no(p: Mapping[str, str], name: str, longest: int) -> str:
    value = p.get(name, "")
    if not _OUT_NO.fullmatch(value) or len(value) > longest:
        raise _Fail("PARAM_ERROR", f"{name} 要求{longest}个字符内，只能是数字、大小写字母_-|*@")
    return value


def _ip(p: Mapping[str, str]) -> None:
    try:
        ipaddress.ip_address(p.get("spbill_create_ip", ""))
    except ValueError:
        raise _Fail("PARAM_ERROR", "spbill_create_ip 不是有效的IP地址") from None


def _time_end(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch or 0, BEIJING).strftime("%Y%m%d%H%M%S")


def _openid(app: App, trade: Trade) -> str:
    """The buyer's openid under this appid, as WeChat gives one per app: stable, not the account id."""
    digest = hashlib.sha256(f"posterm-openid:{app.app_id}:{trade.buyer_ref or ''}".encode()).hexdigest()
    return "o" + digest[:27]


def _paid_fields(app: App, t: Trade) -> dict[str, str]:
    return {"openid": _openid(app, t), "is_subscribe": "N", "trade_type": "MICROPAY", "bank_type": "OTHERS",
            "fee_type": t.currency, "total_fee": str(t.amount_minor), "cash_fee_type": t.currency,
            "cash_fee": str(t.amount_minor), "transaction_id": t.trade_no, "out_trade_no": t.out_trade_no,
            "time_end": _time_end(t.paid_at)}


# The host's declines of a payment, as micropay's published error codes.
_PAY_DECLINES: dict[Reason, tuple[str, str]] = {
    Reason.CODE_INVALID: ("AUTH_CODE_INVALID", "付款码无效，请扫描微信支付付款码(以10/11/12/13/14/15为前缀的18位数字)"),
    Reason.CODE_USED: ("AUTH_CODE_INVALID", "每个付款码仅限使用一次，请刷新再试"),
    Reason.CODE_EXPIRED: ("AUTHCODEEXPIRE", "二维码已过期，请用户在微信上刷新后再试"),
    Reason.INSUFFICIENT_BALANCE: ("NOTENOUGH", "用户余额不足"),
    Reason.OVER_TRANSACTION_LIMIT: ("TRADE_ERROR", "交易错误: 超过单笔支付限额"),
    Reason.OVER_DAILY_LIMIT: ("TRADE_ERROR", "交易错误: 超过当日支付限额"),
    Reason.ACCOUNT_FROZEN: ("TRADE_ERROR", "交易错误: 用户账号异常(已冻结)"),
    Reason.NOT_REAL_NAME_VERIFIED: ("TRADE_ERROR", "交易错误: 用户未实名认证"),
    Reason.RISK_REJECTED: ("TRADE_ERROR", "交易错误: 风控拒绝"),
    Reason.CURRENCY_MISMATCH: ("TRADE_ERROR", "交易错误: 用户账户币种不支持"),
    Reason.ORDER_CONFLICT: ("OUT_TRADE_NO_USED", "商户订单号重复，同一笔交易不能多次提交"),
}
# What an answer of unknown outcome carries beside SYSTEMERROR.
_UNKNOWN_EXTRA = {"secapi/pay/reverse": {"recall": "Y"}}


def _pay_answer(app: App, t: Trade, p: Mapping[str, str]) -> dict[str, str]:
    if t.status == SUCCESS and not t.repeated:
        fields = _paid_fields(app, t)
        if p.get("attach"):
            fields["attach"] = p["attach"]
        return fields
    if t.status == SUCCESS:
        raise _Fail("ORDERPAID", "订单已支付")
    if t.status == WAIT_BUYER_PAY:
        raise _Fail("USERPAYING", "需要用户输入支付密码")
    if t.status == CLOSED:
        if t.closed_by == "cancel":
            raise _Fail("ORDERREVERSED", "当前订单已经被撤销")
        if t.paid_at:
            raise _Fail("ORDERPAID", "订单已支付")
        raise _Fail("ORDERCLOSED", "当前订单已关闭，无法支付")
    code, des = _PAY_DECLINES.get(t.reason, ("TRADE_ERROR", f"交易错误: {t.reason.name.lower()}"))
    raise _Fail(code, des)


def _micropay(gw: "Gateway", app: App, p: Mapping[str, str]) -> dict[str, str]:
    _need(p, "body", "out_trade_no", "total_fee", "spbill_create_ip", "auth_code")
    out_trade_no = _out_no(p, "out_trade_no", 32)
    total = _fen(p, "total_fee")
    currency = _currency(p, "fee_type")
    _ip(p)
    if not WECHAT_CODE.fullmatch(p["auth_code"]):
        raise _Fail(*_PAY_DECLINES[Reason.CODE_INVALID])
    return _pay_answer(app, gw.pay(app, out_trade_no, p["auth_code"], total, currency, p["body"]), p)


# orderquery's trade_state and its description.
_STATES = {"SUCCESS": "支付成功", "REFUND": "转入退款", "NOTPAY": "未支付", "CLOSED": "已关闭",
           "REVOKED": "已撤销(付款码支付)", "USERPAYING": "用户支付中(需要输入密码)", "PAYERROR": "支付失败"}


def trade_state(t: Trade) -> str:
    """The ``trade_state`` orderquery gives for a gateway trade."""
    if t.status == WAIT_BUYER_PAY:
        return "USERPAYING"
    if t.status == SUCCESS:
        return "REFUND" if t.refunded_minor else "SUCCESS"
    if t.status == CLOSED:
        if t.closed_by == "cancel":
            return "REVOKED"
        if t.closed_by != "close" and t.paid_at and t.refunded_minor:
            return "REFUND"
        return "CLOSED"
    return "PAYERROR"


def _find(gw: "Gateway", app: App, p: Mapping[str, str]) -> Trade | None:
    tid, otn = p.get("transaction_id") or None, p.get("out_trade_no") or None
    if not tid and not otn:
        raise _Fail("LACK_PARAMS", "缺少参数: transaction_id 或 out_trade_no")
    return gw.query(app, out_trade_no=otn, trade_no=tid)


def _orderquery(gw: "Gateway", app: App, p: Mapping[str, str]) -> dict[str, str]:
    t = _find(gw, app, p)
    if t is None:
        raise _Fail("ORDERNOTEXIST", "此交易订单号不存在")
    state = trade_state(t)
    if state in ("SUCCESS", "REFUND"):
        fields = _paid_fields(app, t)
    else:
        fields = {"out_trade_no": t.out_trade_no, "fee_type": t.currency, "total_fee": str(t.amount_minor)}
        if t.trade_no:
            fields["transaction_id"] = t.trade_no
    fields.update(trade_state=state, trade_state_desc=_STATES[state])
    return fields


def _reverse(gw: "Gateway", app: App, p: Mapping[str, str]) -> dict[str, str]:
    otn = p.get("out_trade_no", "")
    if not otn and p.get("transaction_id"):
        t = gw.query(app, trade_no=p["transaction_id"])
        if t is None:
            raise _Fail("INVALID_TRANSACTIONID", "无效transaction_id", recall="N")
        otn = t.out_trade_no
    if not otn:
        raise _Fail("LACK_PARAMS", "缺少参数: out_trade_no", recall="N")
    result = gw.cancel(app, _out_no({"out_trade_no": otn}, "out_trade_no", 64))
    if result.reason == Reason.CANCEL_WINDOW_EXPIRED:
        raise _Fail("REVERSE_EXPIRE", "订单已过期，不能撤销", recall="N")
    if result.reason == Reason.ORDER_CONFLICT:
        raise _Fail("INVALID_REQUEST", "该订单号已被其他终端使用", recall="N")
    if not result.action:
        raise _Fail("TRADE_ERROR", f"交易错误: {result.reason.name.lower()}", recall="N")
    return {"recall": "N"}


def _closeorder(gw: "Gateway", app: App, p: Mapping[str, str]) -> dict[str, str]:
    _need(p, "out_trade_no")
    otn = _out_no(p, "out_trade_no", 32)
    before = gw.query(app, out_trade_no=otn)
    if before is None:
        raise _Fail("ORDERNOTEXIST", "订单不存在")
    if before.status == SUCCESS or (before.status == CLOSED and before.paid_at):
        raise _Fail("ORDERPAID", "订单已支付，不能发起关单")
    if before.status == CLOSED:
        raise _Fail("ORDERCLOSED", "订单已关闭，无法重复关闭")
    after = gw.close(app, out_trade_no=otn)
    if after is None:
        raise _Fail("ORDERNOTEXIST", "订单不存在")
    if after.status == SUCCESS:
        raise _Fail("ORDERPAID", "订单已支付，不能发起关单")
    return {"result_msg": "OK"}


def _refund(gw: "Gateway", app: App, p: Mapping[str, str]) -> dict[str, str]:
    _need(p, "out_refund_no", "total_fee", "refund_fee")
    t = _find(gw, app, p)
    if t is None:
        raise _Fail("INVALID_TRANSACTIONID" if p.get("transaction_id") else "ORDERNOTEXIST", "订单不存在")
    out_refund_no = _out_no(p, "out_refund_no", 64)
    total, amount = _fen(p, "total_fee"), _fen(p, "refund_fee")
    _currency(p, "refund_fee_type")
    if total != t.amount_minor:
        raise _Fail("REFUND_FEE_MISMATCH", "订单金额与支付金额不一致，请核实后再试")
    if amount > total:
        raise _Fail("INVALID_REQUEST", "refund_fee大于total_fee")
    r = gw.refund(app, t.out_trade_no, out_refund_no, amount, p.get("refund_desc", ""))
    if r.status == SUCCESS:
        return {"transaction_id": t.trade_no, "out_trade_no": t.out_trade_no, "out_refund_no": out_refund_no,
                "refund_id": refund_id_for(app, t.out_trade_no, out_refund_no), "refund_channel": "ORIGINAL",
                "refund_fee": str(r.refund_minor), "total_fee": str(t.amount_minor), "fee_type": t.currency,
                "cash_fee": str(t.amount_minor), "cash_refund_fee": str(r.refund_minor),
                "coupon_refund_fee": "0", "coupon_refund_count": "0"}
    after = r.trade or t
    if r.reason == Reason.ORDER_CONFLICT:
        raise _Fail("REFUND_FEE_MISMATCH", "同一个out_refund_no的退款金额与之前请求不一致，请核实后再试")
    if r.reason == Reason.REFUND_EXCEEDS_PAID:
        if after.refunded_minor >= after.amount_minor:
            raise _Fail("ERROR", "订单已全额退款")
        raise _Fail("INVALID_REQUEST", "refund_fee大于可退金额")
    if r.reason == Reason.NOT_PAID:
        if after.closed_by == "cancel":
            raise _Fail("ERROR", "订单已撤销")
        raise _Fail("ERROR", "订单已全额退款" if after.paid_at else "订单未支付")
    if r.reason == Reason.ORDER_NOT_FOUND:
        raise _Fail("ORDERNOTEXIST", "订单不存在")
    raise _Fail("ERROR", f"退款失败: {r.reason.name.lower()}")


def _refundquery(gw: "Gateway", app: App, p: Mapping[str, str]) -> dict[str, str]:
    if not p.get("out_refund_no") or not (p.get("out_trade_no") or p.get("transaction_id")):
        raise _Fail("PARAM_ERROR", "本网关按 out_refund_no 加 out_trade_no 或 transaction_id 查询退款")
    t = _find(gw, app, p)
    r = gw.refund_query(app, t.out_trade_no, p["out_refund_no"]) if t is not None else None
    if r is None or t is None:
        raise _Fail("REFUNDNOTEXIST", "退款订单查询失败")
    when = datetime.fromtimestamp(r.refunded_at or 0, BEIJING).strftime("%Y-%m-%d %H:%M:%S")
    return {"transaction_id": t.trade_no, "out_trade_no": t.out_trade_no, "total_fee": str(t.amount_minor),
            "fee_type": t.currency, "cash_fee": str(t.amount_minor), "refund_count": "1",
            "out_refund_no_0": r.out_request_no, "refund_id_0": refund_id_for(app, t.out_trade_no, r.out_request_no),
            "refund_channel_0": "ORIGINAL", "refund_fee_0": str(r.refund_minor), "refund_status_0": "SUCCESS",
            "refund_account_0": "REFUND_SOURCE_UNSETTLED_FUNDS", "refund_recv_accout_0": "支付用户的零钱",
            "refund_success_time_0": when}


_ENDPOINTS: dict[str, Callable[["Gateway", App, Mapping[str, str]], dict[str, str]]] = {
    "pay/micropay": _micropay,
    "pay/orderquery": _orderquery,
    "secapi/pay/reverse": _reverse,
    "secapi/pay/refund": _refund,
    "pay/refundquery": _refundquery,
    "pay/closeorder": _closeorder,
}
PATHS = tuple("/" + p for p in _ENDPOINTS)


# ---------------------------------------------------------------------- HTTP (posterm.host.gateway.http)

XML = "text/xml; charset=utf-8"


def handle(gateway: "Gateway", req: Request) -> Response:
    """A WeChat Pay request as :mod:`.http` hands it over: always 200 with XML (see :func:`answer`)."""
    return Response(200, answer(gateway, req.path, req.body, req.method), XML)


_REFUSALS = {"too_large": "XML格式错误: 请求过大", "too_many_params": "XML格式错误: 参数过多",
             "busy": "系统繁忙，请稍后再试", "internal": "系统错误"}


def refuse(req: Request, why: str) -> Response:
    """The HTTP layer's refusals as a communication failure (``return_code FAIL``, unsigned:
    the request was not read). The outcome of a refused request is "nothing happened"
    except for ``internal``, after which the merchant queries, as after any FAIL."""
    return Response(200, _comm_fail(_REFUSALS.get(why, "系统错误")), XML)


# GET is routed too, to be answered as WeChat answers it (REQUIRE_POST_METHOD), not 405.
ROUTES = [(path, ("POST", "GET"), handle) for path in PATHS]
