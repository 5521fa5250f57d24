"""The merchant gateway's core: wallet merchant APIs as calls on the host's own service.

The protocol layers (:mod:`.alipay`, :mod:`.wechat`) parse and sign; this module is what
they call, in their words: :class:`Gateway` ``pay`` / ``query`` / ``cancel`` / ``close`` /
``refund`` / ``refund_query`` / ``precreate``, answered as :class:`Trade`,
:class:`CancelResult` and :class:`RefundResult`.

It does not authorise anything itself. Each registered :class:`App` is a virtual terminal
of its merchant (a terminal row ``GW-<app_id>``, :mod:`.apps`), and every call is the same
service call a terminal's request becomes (:func:`posterm.host.authorise.authorise`,
:func:`~posterm.host.authorise.query`, :func:`posterm.host.after_sales.cancel`,
:func:`~posterm.host.after_sales.refund`) inside one store transaction with the gateway's
own bookkeeping. So one payment code is consumed once whichever way it arrives, the same
limits, risk rules, frozen and real-name checks and balance apply, the trade is in
``posterm host trades`` and the customer's bill, and nothing is charged twice:

- ``out_trade_no`` is the order id, unique per merchant as Alipay and WeChat have it; the
  same request again gets the stored trade (``repeated``), other parameters a conflict,
  and an order id a terminal or another app owns is refused, never answered as ours.
- A payment the buyer must confirm (payment password or phone) waits for the phone
  (``WAIT_BUYER_PAY``): a scanned payment code has no PIN pad, so the password is entered
  in the wallet (``posterm host wallet confirm``, :meth:`Host.wallet_confirm`); an account
  that confirms by itself does so ``phone_delay`` after it was asked, seen by the next query.
- A cancel of an ``out_trade_no`` the host never received is recorded, and a pay arriving
  late for it is refused (``CLOSED``): the lost-request race cannot charge a cancelled order.
- :meth:`Gateway.settle` closes an app's batch as a terminal's end of day does (the
  same settlements table, one batch number after another per virtual terminal), with the
  host's own totals: an app keeps no totals of its own to compare, so ``agrees`` is True
  by construction. Settling is one transaction, so a batch is counted once however often
  it is asked for.
- The host silent (an outage behaviour, or the database unavailable) raises
  :class:`GatewayUnavailable`: the outcome is unknown and the caller queries later.

Money is integer minor units; :func:`parse_amount` reads the wallets' decimal strings.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Iterator

from firmware_protocol.currency import CURRENCIES
from firmware_protocol.errors import FieldError
from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import MAX_AMOUNT_MINOR, Reason, Totals

from posterm import loopback
from posterm.errors import PosError
from posterm.host import after_sales, authorise, settlement
from posterm.host.after_sales import WAITING
from posterm.host.store import Tx, is_store_error
from posterm.host.store.queries import Row

if TYPE_CHECKING:  # pragma: no cover
    from posterm.host.gateway.keys import GatewayKeys
    from posterm.host.service import Host

log = logging.getLogger("posterm.host.gateway")

TERMINAL_PREFIX = "GW-"
APP_ID = re.compile(r"[A-Za-z0-9_\-.]{1,29}")
OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_\-.:]{1,64}")
AUTH_CODE = re.compile(r"[0-9]{10,32}")
KINDS = ("alipay", "wechat")
SUBJECT_MAX = 128
BATCH_NO_MAX = 2**32 - 1   # the host protocol's batch number (U32)

# The gateway's trade states (Alipay's words; WeChat's layer maps them to its own).
WAIT_BUYER_PAY, SUCCESS, CLOSED, FAILED = "WAIT_BUYER_PAY", "SUCCESS", "CLOSED", "FAILED"


class GatewayError(PosError):
    """A gateway request that cannot be served as asked."""


class InvalidRequest(GatewayError, ValueError):
    """A parameter is malformed (``field`` names it): the caller's fault, nothing changed."""

    def __init__(self, field_name: str, text: str) -> None:
        super().__init__(f"{field_name}: {text}")
        self.field = field_name


class UnknownApp(GatewayError):
    """No app of that id is registered (or not of the kind asked)."""


class GatewayUnavailable(GatewayError):
    """The host did not answer (outage, database unavailable): the outcome is unknown."""


@dataclass(frozen=True, slots=True)
class App:
    """A merchant's app registered with the gateway (:mod:`.apps`).

    ``kind`` "alipay" (``public_key_pem``: the app's RSA key that its requests are signed
    with) or "wechat" (``api_key``: the merchant's API key, never in the repr;
    ``wechat_mch_id``). ``terminal_id``: its virtual terminal at the host.
    """

    app_id: str
    merchant_id: str
    kind: str
    terminal_id: str
    public_key_pem: str | None = None
    wechat_mch_id: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"App.kind must be one of {KINDS}")
        if not APP_ID.fullmatch(self.app_id):
            raise ValueError("App.app_id must be 1-29 of A-Z a-z 0-9 _ - .")


@dataclass(frozen=True, slots=True)
class Trade:
    """A gateway trade as the merchant sees it.

    ``status``: WAIT_BUYER_PAY (the buyer has not paid yet: confirming, or a precreated
    QR not scanned), SUCCESS (paid; partly refunded is still SUCCESS), CLOSED (closed or
    cancelled unpaid, cancelled after payment, or refunded in full), FAILED (declined).
    ``reason``: the host's :class:`Reason` when declined or refused (the protocol layers
    map it to their error codes), NONE otherwise. ``repeated``: this pay or precreate found
    the trade already there (nothing was done again). ``host_status``: the host's own
    status (APPROVED, CANCELLED, REFUNDED, ...); ``closed_by``: "close" or "cancel" when the
    gateway closed it. ``buyer_id``: the paying account, masked; ``buyer_ref``: a stable
    pseudonym of it (16 hex digits) for the protocols' buyer ids. Times are epoch seconds.
    """

    trade_no: str
    out_trade_no: str
    status: str
    amount_minor: int
    currency: str
    reason: Reason = Reason.NONE
    refunded_minor: int = 0
    buyer_id: str | None = None
    buyer_ref: str | None = None
    paid_at: float | None = None
    created_at: float | None = None
    qr_code: str | None = None
    subject: str | None = None
    host_status: str = ""
    closed_by: str | None = None
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel did. ``action``: "close" (it was not paid: closed, nothing charged),
    "refund" (it was paid: paid back in full), "" (nothing: ``reason`` says why, e.g.
    CANCEL_WINDOW_EXPIRED). ``trade`` None: the host never had the order; it is recorded
    as cancelled so a late pay of it is refused."""

    out_trade_no: str
    action: str
    trade: Trade | None
    reason: Reason = Reason.NONE


@dataclass(frozen=True, slots=True)
class Settlement:
    """An app's settled batch. ``totals``: per currency (sorted), the host's counts and
    minor-unit sums of the approved payments, refunds and cancelled trades the batch closed
    (:class:`Totals`: a cancelled trade has a count only, it moved no money in the end);
    empty when there was nothing to settle. ``agrees`` is always True: the batch is closed
    with the host's own totals. ``repeated``: the batch was settled before (``batch_no``
    asked again) and this is its stored record. ``settled_at``: epoch seconds."""

    app_id: str
    terminal_id: str
    batch_no: int
    totals: tuple[Totals, ...]
    settled_at: float
    agrees: bool = True
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class RefundResult:
    """A refund request's outcome. ``status`` "SUCCESS" or "FAILED" (``reason``: the host's,
    e.g. REFUND_EXCEEDS_PAID, NOT_PAID, ORDER_NOT_FOUND, ORDER_CONFLICT when the same
    out_request_no came with another amount). ``repeated``: made by an earlier request."""

    out_trade_no: str
    out_request_no: str
    status: str
    refund_minor: int
    refunded_total_minor: int
    currency: str | None
    trade_no: str | None = None
    reason: Reason = Reason.NONE
    repeated: bool = False
    refunded_at: float | None = None
    trade: Trade | None = None


# ---------------------------------------------------------------------- money and addresses

_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,14})(\.[0-9]{1,3})?")


def parse_amount(text: str, currency: str = "CNY", *, field_name: str = "total_amount") -> int:
    """A decimal amount string in major units ("12.34") as minor units of ``currency``.

    Plain digits with at most the currency's decimals: no sign, exponent, spaces, leading
    zeros, "inf" or "nan"; positive; within the wire's cap. Raises :class:`InvalidRequest`.
    """
    exp = CURRENCIES.get(currency, (0, 2))[1]
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise InvalidRequest(field_name, "not a decimal amount")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only valid decimals
        raise InvalidRequest(field_name, "not a decimal amount") from exc
    if "." in text and len(text.split(".", 1)[1]) > exp:
        raise InvalidRequest(field_name, f"more than {exp} decimals for {currency}")
    minor = int(value.scaleb(exp))
    if minor <= 0 or minor > MAX_AMOUNT_MINOR:
        raise InvalidRequest(field_name, "out of range")
    return minor


def format_amount(minor: int, currency: str = "CNY") -> str:
    """Minor units as the wallets' decimal string ("12.34")."""
    exp = CURRENCIES.get(currency, (0, 2))[1]
    return f"{Decimal(minor).scaleb(-exp):.{exp}f}"


def loopback_url(url: str | None) -> bool:
    """Whether ``url`` is an http(s) URL on a loopback address (the only place this
    emulator ever sends a notification)."""
    return loopback.loopback_url(url, ("http", "https"))


def mask_buyer(account_id: str | None) -> str | None:
    """An account id as a receipt may show it: its first 3 and last 2 characters."""
    if not account_id:
        return None
    if len(account_id) <= 6:
        return account_id[:1] + "***"
    return f"{account_id[:3]}***{account_id[-2:]}"


def buyer_ref(account_id: str | None) -> str | None:
    """A stable pseudonym of an account (16 hex digits): the same buyer, not its id."""
    if not account_id:
        return None
    return hashlib.sha256(b"posterm-buyer:" + account_id.encode()).hexdigest()[:16]


def refund_id_for(app: App, out_trade_no: str, out_request_no: str) -> str:
    """The host refund id of an app's (out_trade_no, out_request_no): fits the host's id
    field whatever their lengths, and no two apps' requests share one."""
    digest = hashlib.sha256(f"{app.app_id}\0{out_trade_no}\0{out_request_no}".encode()).hexdigest()
    return "GWR" + digest[:40]


# ---------------------------------------------------------------------- the gateway

def _status(row: Row) -> str:
    s = row["status"]
    if s in WAITING:
        return WAIT_BUYER_PAY
    if s == "APPROVED":
        return CLOSED if row["refunded_minor"] >= row["amount_minor"] else SUCCESS
    if s in ("CANCELLED", "REFUNDED"):
        return CLOSED
    return FAILED


class Gateway:
    """The merchant gateway over ``host`` (see the module docstring). Thread-safe as the
    host is (a store connection per thread).

    ``keys``: the gateway's keys (default: opened beside the host's database).
    """

    def __init__(self, host: "Host", keys: "GatewayKeys | None" = None) -> None:
        from posterm.host.gateway.keys import GatewayKeys

        self.host = host
        self.ctx = host.ctx
        self.keys = keys if keys is not None else GatewayKeys.open(host.store.home / "hsm")  # beside the HSM

    # ------------------------------------------------------------------ apps

    def app(self, app_id: str, kind: str | None = None) -> App:
        """The registered app ``app_id`` (of ``kind`` when given). Raises UnknownApp."""
        with self._guard():
            row = self.ctx.store.view().gateway_app(app_id)
        found = None if row is None else app_from_row(row, self.keys)
        if found is None or (kind is not None and found.kind != kind):
            raise UnknownApp(f"no {kind or ''} app {app_id}".replace("  ", " "))
        return found

    # ------------------------------------------------------------------ payments

    def pay(self, app: App, out_trade_no: str, auth_code: str, amount_minor: int, currency: str,
            subject: str | None = None) -> Trade:
        """Pay ``amount_minor`` with the buyer's payment code (bar-code scene).

        Returns the trade: SUCCESS, WAIT_BUYER_PAY (the buyer confirms on the phone), FAILED
        with the host's reason (CODE_INVALID, CODE_USED, CODE_EXPIRED, INSUFFICIENT_BALANCE,
        OVER_TRANSACTION_LIMIT, OVER_DAILY_LIMIT, ACCOUNT_FROZEN, NOT_REAL_NAME_VERIFIED,
        RISK_REJECTED, CURRENCY_MISMATCH, ORDER_CONFLICT for an out_trade_no taken with other
        parameters or by someone else), or CLOSED for an order cancelled before it arrived.
        Raises InvalidRequest, GatewayUnavailable (the outcome is unknown: query).
        """
        _check_order(out_trade_no)
        if not isinstance(auth_code, str) or not AUTH_CODE.fullmatch(auth_code):
            # Not a payment code at all: declined as an invalid code, and nothing stored
            # (the host's trade needs a code it can hash and keep the last digits of).
            return Trade(trade_no="", out_trade_no=out_trade_no, status=FAILED, amount_minor=amount_minor,
                         currency=currency, reason=Reason.CODE_INVALID)
        msg = self._auth_request(app, out_trade_no, amount_minor, currency, subject, payment_code=auth_code)
        return self._authorise(app, msg, notify_url=None)

    def precreate(self, app: App, out_trade_no: str, amount_minor: int, currency: str, subject: str | None = None,
                  notify_url: str | None = None) -> Trade:
        """A trade for the buyer to scan: WAIT_BUYER_PAY with ``qr_code``, which
        ``posterm host wallet scan QR --account A`` pays. When paid, a notification goes to
        ``notify_url`` if it is on loopback (:class:`~posterm.host.gateway.notify.Notifier`).
        Raises InvalidRequest, GatewayUnavailable."""
        _check_order(out_trade_no)
        msg = self._auth_request(app, out_trade_no, amount_minor, currency, subject, dynamic_qr=True)
        return self._authorise(app, msg, notify_url=notify_url if loopback_url(notify_url) else None)

    def query(self, app: App, out_trade_no: str | None = None, trade_no: str | None = None) -> Trade | None:
        """The trade now (by out_trade_no, trade_no, or both: they must agree); None when
        the app has no such trade. A buyer who confirms by itself is seen confirmed here.
        Raises GatewayUnavailable."""
        self._check_up(app)
        with self._guard(), self.ctx.store.transaction() as tx:
            row = self._own(tx, app, out_trade_no, trade_no)
            if row is None:
                return None
            authorise.query(self.ctx, app.terminal_id, row["order_id"])
            return self._trade(tx, tx.trade(row["trade_no"]))

    def cancel(self, app: App, out_trade_no: str) -> CancelResult:
        """Cancel: a trade not paid yet is closed (nothing is charged, a later confirmation
        finds it closed); a paid one is paid back in full (within the host's cancel window);
        one already closed or failed is left as it is. An out_trade_no the host never got is
        recorded as cancelled. Repeating a cancel answers the same. Raises GatewayUnavailable."""
        _check_order(out_trade_no)
        self._check_up(app)
        with self._guard(), self.ctx.store.transaction() as tx:
            row = self._own(tx, app, out_trade_no, None)
            if row is None:
                if tx.trade_by_order(app.merchant_id, out_trade_no) is not None:
                    return CancelResult(out_trade_no, "", None, Reason.ORDER_CONFLICT)  # someone else's order
                tx.add_gateway_void(app.terminal_id, out_trade_no, self.ctx.clock())
                return CancelResult(out_trade_no, "close", None)
            before = row["status"]
            reply = after_sales.cancel(self.ctx, app.terminal_id, row["order_id"], False, int(Reason.ABORTED_BY_ECR))
            after = tx.trade(row["trade_no"])
            if reply.reason == Reason.CANCEL_WINDOW_EXPIRED and after["status"] == before:
                return CancelResult(out_trade_no, "", self._trade(tx, after), Reason.CANCEL_WINDOW_EXPIRED)
            if after["status"] != before:
                tx.set_gateway_closed_by(row["trade_no"], "cancel")
            if after["status"] in ("CANCELLED", "DECLINED"):
                action = "close"
            else:
                action = "refund"   # it had been paid: what was not refunded yet went back
            return CancelResult(out_trade_no, action, self._trade(tx, tx.trade(row["trade_no"])))

    def close(self, app: App, out_trade_no: str | None = None, trade_no: str | None = None) -> Trade | None:
        """Close a trade not paid yet (nothing is charged). A paid, closed or failed one is
        returned unchanged (the protocol says it cannot be closed); None: no such trade.
        Raises GatewayUnavailable."""
        self._check_up(app)
        with self._guard(), self.ctx.store.transaction() as tx:
            row = self._own(tx, app, out_trade_no, trade_no)
            if row is None:
                return None
            if row["status"] in WAITING:
                after_sales.cancel(self.ctx, app.terminal_id, row["order_id"], False, int(Reason.ABORTED_BY_ECR))
                if tx.trade_status(row["trade_no"]) == "CANCELLED":
                    tx.set_gateway_closed_by(row["trade_no"], "close")
            return self._trade(tx, tx.trade(row["trade_no"]))

    def refund(self, app: App, out_trade_no: str, out_request_no: str, amount_minor: int,
               reason: str = "") -> RefundResult:
        """Refund ``amount_minor`` of a paid trade, once per ``out_request_no`` (the same
        request again answers the same; with another amount, FAILED ORDER_CONFLICT). Partial
        refunds add up to at most what was paid (beyond: FAILED REFUND_EXCEEDS_PAID).
        ``reason`` is the merchant's note (not kept). Raises InvalidRequest, GatewayUnavailable."""
        _check_order(out_trade_no)
        _check_order(out_request_no, "out_request_no")
        if not isinstance(amount_minor, int) or amount_minor <= 0 or amount_minor > MAX_AMOUNT_MINOR:
            raise InvalidRequest("refund_amount", "must be positive")
        self._check_up(app)
        refund_id = refund_id_for(app, out_trade_no, out_request_no)
        with self._guard(), self.ctx.store.transaction() as tx:
            row = self._own(tx, app, out_trade_no, None)
            if row is None:
                return RefundResult(out_trade_no, out_request_no, FAILED, amount_minor, 0, None,
                                    reason=Reason.ORDER_NOT_FOUND)
            repeated = tx.refund(refund_id) is not None
            reply = after_sales.refund(self.ctx, h.HostRefund(
                terminal_id=app.terminal_id, order_id=row["order_id"], refund_id=refund_id,
                amount_minor=amount_minor, currency=row["currency"]))
            done = tx.refund(refund_id)
            trade = self._trade(tx, tx.trade(row["trade_no"]))
            if reply.reason != Reason.NONE or done is None:
                return RefundResult(out_trade_no, out_request_no, FAILED, amount_minor, trade.refunded_minor,
                                    row["currency"], trade_no=row["trade_no"], reason=Reason(reply.reason),
                                    repeated=repeated, trade=trade)
            return RefundResult(out_trade_no, out_request_no, SUCCESS, done["amount_minor"], trade.refunded_minor,
                                done["currency"], trade_no=row["trade_no"], repeated=repeated,
                                refunded_at=done["created_at"], trade=trade)

    def refund_query(self, app: App, out_trade_no: str, out_request_no: str) -> RefundResult | None:
        """The refund made for (out_trade_no, out_request_no), or None when there is none."""
        self._check_up(app)
        refund_id = refund_id_for(app, out_trade_no, out_request_no)
        with self._guard():
            tx = self.ctx.store.view()
            done = tx.refund(refund_id)
            if done is None:
                return None
            t = tx.trade(done["trade_no"])
            if t is None or t["terminal_id"] != app.terminal_id:
                return None
            trade = self._trade(tx, t)
            return RefundResult(out_trade_no, out_request_no, SUCCESS, done["amount_minor"], t["refunded_minor"],
                                done["currency"], trade_no=t["trade_no"], repeated=True,
                                refunded_at=done["created_at"], trade=trade)

    # ------------------------------------------------------------------ settlement

    def settle(self, app: App, batch_no: int | None = None) -> Settlement:
        """Close the app's open batch: its final trades (approved, cancelled, refunded in
        full, declined) and its refunds not in a batch yet, under ``batch_no`` (default: the
        next number of its virtual terminal, 1 for the first), through the same settlement
        a terminal's SettleRequest goes through, with the host's own totals (so it agrees).

        Exactly once: it is one transaction (a crash before the commit settles nothing, after
        it everything), a trade or refund is in one batch only, and ``batch_no`` asked again
        returns that batch's stored record (``repeated``) without counting anything. Trades
        still waiting for the buyer stay open for a later batch. Raises InvalidRequest (a
        ``batch_no`` below or equal to a settled one that is not that one, or out of range),
        GatewayUnavailable."""
        if batch_no is not None and (not isinstance(batch_no, int) or isinstance(batch_no, bool)
                                     or not 1 <= batch_no <= BATCH_NO_MAX):
            raise InvalidRequest("batch_no", f"1..{BATCH_NO_MAX}")
        with self._guard(), self.ctx.store.transaction() as tx:
            if batch_no is not None:
                done = tx.settlement(app.terminal_id, batch_no)
                if done is not None:
                    return Settlement(app.app_id, app.terminal_id, batch_no, settlement.stored_totals(done),
                                      done["created_at"], bool(done["agrees"]), repeated=True)
            last = tx.last_batch_no(app.terminal_id)
            if batch_no is None:
                batch_no = last + 1
                if batch_no > BATCH_NO_MAX:
                    raise InvalidRequest("batch_no", f"batch {last} was the last one ({BATCH_NO_MAX})")
            elif batch_no <= last:
                raise InvalidRequest("batch_no", f"must follow the last settled batch, {last}")
            mine = settlement.host_totals(tx, app.terminal_id)
            # The terminal's own path (a savepoint inside this transaction): the same rows
            # marked, the same record written; with the host's totals it agrees by construction.
            reply = settlement.settle(self.ctx, h.SettleRequest(terminal_id=app.terminal_id, batch_no=batch_no,
                                                                totals=mine))
            done = tx.settlement(app.terminal_id, batch_no)
        return Settlement(app.app_id, app.terminal_id, batch_no, reply.totals, done["created_at"], reply.agrees)

    # ------------------------------------------------------------------ notifications (see .notify)

    def notifications_due(self, limit: int = 16, lease_s: float = 30.0) -> list[tuple[App, Trade, str, int]]:
        """Claim the paid trades whose notification is due: (app, trade, notify_url, attempts
        so far). Each is leased for ``lease_s`` (another worker, in this process or another,
        does not take it meanwhile); :meth:`notification_done` records the outcome."""
        with self._guard(), self.ctx.store.transaction() as tx:
            now = self.ctx.clock()
            out = []
            for r in tx.gateway_notifications_due(now, limit):
                tx.set_gateway_notify(r["trade_no"], "pending", r["notify_attempts"], now + lease_s)
                row = tx.gateway_app(r["app_id"])
                if row is not None:
                    app = app_from_row(row, self.keys)
                    out.append((app, self._trade(tx, tx.trade(r["trade_no"])), r["notify_url"], r["notify_attempts"]))
            return out

    def notification_done(self, trade_no: str, delivered: bool, attempts: int, next_at: float | None) -> None:
        """Record a notification attempt: delivered, retry at ``next_at``, or given up (None)."""
        state = "done" if delivered else ("pending" if next_at is not None else "failed")
        with self._guard(), self.ctx.store.transaction() as tx:
            tx.set_gateway_notify(trade_no, state, attempts, next_at)

    # ------------------------------------------------------------------ inside

    def _auth_request(self, app: App, out_trade_no: str, amount_minor: int, currency: str, subject: str | None,
                      **payer) -> h.AuthRequest:
        if not isinstance(amount_minor, int) or amount_minor <= 0 or amount_minor > MAX_AMOUNT_MINOR:
            raise InvalidRequest("total_amount", "must be positive")
        if subject is not None:
            subject = subject[:SUBJECT_MAX]
        try:
            return h.AuthRequest(terminal_id=app.terminal_id, order_id=out_trade_no, amount_minor=amount_minor,
                                 currency=currency, description=subject or None, **payer)
        except FieldError as exc:
            name = str(exc).split(" ", 1)[0].rsplit(".", 1)[-1]
            raise InvalidRequest({"order_id": "out_trade_no", "description": "subject"}.get(name, name),
                                 str(exc)) from exc

    def _authorise(self, app: App, msg: h.AuthRequest, notify_url: str | None) -> Trade:
        self._check_up(app)
        with self._guard():
            with self.ctx.store.transaction() as tx:
                if tx.gateway_void(app.terminal_id, msg.order_id):
                    return Trade(trade_no="", out_trade_no=msg.order_id, status=CLOSED, amount_minor=msg.amount_minor,
                                 currency=msg.currency, reason=Reason.ABORTED_BY_ECR, host_status="CANCELLED",
                                 closed_by="cancel", repeated=True)
                existing = tx.trade_by_order(app.merchant_id, msg.order_id)
                # Host protocol 1: an order id another terminal (or app) owns is a conflict,
                # never its owner's stored answer.
                reply = authorise.authorise(self.ctx, msg, 1)
                row = tx.trade_by_order(app.merchant_id, msg.order_id)
                if row is None or row["terminal_id"] != app.terminal_id:
                    return Trade(trade_no="", out_trade_no=msg.order_id, status=FAILED, amount_minor=msg.amount_minor,
                                 currency=msg.currency, reason=Reason.ORDER_CONFLICT, repeated=True)
                if reply is not None and reply.reason == Reason.ORDER_CONFLICT and existing is not None:
                    trade = self._trade(tx, row, repeated=True)
                    return _replace(trade, status=FAILED, reason=Reason.ORDER_CONFLICT)
                if row["status"] == "NEED_PIN":
                    # No PIN pad on this channel: the buyer enters the password in the wallet.
                    tx.ask_customer(row["trade_no"], "WAIT_BUYER", row["asked_at"] or self.ctx.clock())
                    row = tx.trade(row["trade_no"])
                if existing is None:
                    tx.add_gateway_trade(row["trade_no"], app.app_id, notify_url)
                trade = self._trade(tx, row, repeated=existing is not None)
            # the transaction is committed here: the trade stands whether the answer is lost or not
        if reply is None:
            raise GatewayUnavailable("the host did not answer (outage): query the trade later")
        return trade

    def _check_up(self, app: App) -> None:
        if self.ctx.outage_until.get(app.terminal_id, 0.0) > self.ctx.clock():
            raise GatewayUnavailable("the host is not answering (outage)")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if not is_store_error(exc):
                raise
            log.warning("gateway: store unavailable: %s", type(exc).__name__)
            raise GatewayUnavailable("the host's store is unavailable") from exc

    def _own(self, tx: Tx, app: App, out_trade_no: str | None, trade_no: str | None) -> Row | None:
        if trade_no:
            row = tx.trade(trade_no)
            if row is not None and out_trade_no and row["order_id"] != out_trade_no:
                return None
        elif out_trade_no:
            row = tx.trade_by_order(app.merchant_id, out_trade_no)
        else:
            return None
        if row is None or row["terminal_id"] != app.terminal_id:
            return None
        return row

    def _trade(self, tx: Tx, row: Row, repeated: bool = False) -> Trade:
        g = tx.gateway_trade(row["trade_no"])
        return Trade(trade_no=row["trade_no"], out_trade_no=row["order_id"], status=_status(row),
                     amount_minor=row["amount_minor"], currency=row["currency"],
                     reason=_reason(row["reason"]) if row["status"] in ("DECLINED", "CANCELLED") else Reason.NONE,
                     refunded_minor=row["refunded_minor"], buyer_id=mask_buyer(row["account_id"]),
                     buyer_ref=buyer_ref(row["account_id"]), paid_at=row["paid_at"], created_at=row["created_at"],
                     qr_code=row["qr_data"], subject=row["description"], host_status=row["status"],
                     closed_by=g["closed_by"] if g is not None else None, repeated=repeated)


def app_from_row(row: Row, keys: "GatewayKeys") -> App:
    """An :class:`App` from its ``gateway_apps`` row, with its WeChat API key from ``keys``."""
    api_key = keys.wechat_key(row["app_id"]) if row["kind"] == "wechat" else None
    return App(row["app_id"], row["merchant_id"], row["kind"], row["terminal_id"], row["public_key_pem"],
               row["wechat_mch_id"], api_key)


def _reason(value: int) -> Reason:
    try:
        return Reason(value)
    except ValueError:
        return Reason.OTHER


def _replace(trade: Trade, **kw) -> Trade:
    import dataclasses
    return dataclasses.replace(trade, **kw)


def _check_order(value: str, name: str = "out_trade_no") -> None:
    if not isinstance(value, str) or not OUT_TRADE_NO.fullmatch(value):
        raise InvalidRequest(name, "1-64 of A-Z a-z 0-9 _ - . :")
