"""Authorisation: a payment request, its PIN, its confirmation, and the checks it passes.

An AuthRequest is stored once per (merchant, order id); the same request again gets the
stored answer, the same order id with other parameters a conflict. A payment code resolves
to an account (a one-time code is used up); the account's security (frozen, real name),
limits, risk rules and balance decide: approve, ask the customer (PIN on the PIN pad, or
the phone), or decline. Money moves only in :mod:`.ledger`.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime
from zoneinfo import ZoneInfo

from firmware_protocol.currency import CURRENCIES
from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostErrorCode, pin_pan
from firmware_protocol.native.messages import Reason

from posterm.host import ledger, monitor, phone, risk
from posterm.host.context import HostContext, require_account
from posterm.host.orders import answer, foreign, not_found, trade_for
from posterm.host.signing import ksn_fresh, ksn_parts
from posterm.host.store import Tx, code_hash
from posterm.host.store.queries import Row

log = logging.getLogger("posterm.host")

_CODE_PREFIXES = frozenset(range(10, 16)) | frozenset(range(25, 31))   # WeChat Pay 10-15, Alipay 25-30
REAL_NAME_FREE_MAJOR = 200        # above 200 (in major units of the currency) a payer must be real-name verified


def params_hash(msg: h.AuthRequest) -> str:
    """What makes a repeated AuthRequest the same request: amount, currency and payer."""
    who = code_hash(msg.payment_code) if msg.payment_code else ("qr" if msg.dynamic_qr else "-")
    return hashlib.sha256(f"{msg.amount_minor}|{msg.currency}|{who}".encode()).hexdigest()


def authorise(ctx: HostContext, msg: h.AuthRequest, protocol_version: int) -> h.HostMessage | None:
    """Answer an AuthRequest from a terminal speaking host ``protocol_version``; None when the
    answer is lost (an outage behaviour: the request was processed all the same)."""
    now = ctx.clock()
    with ctx.store.transaction() as tx:
        term = tx.terminal(msg.terminal_id)
        if term is None:
            return h.AuthResponse(order_id=msg.order_id, status=h.HostStatus.DECLINED,
                                  reason=Reason.TERMINAL_UNKNOWN)
        phash = params_hash(msg)
        existing = tx.trade_by_order(term["merchant_id"], msg.order_id)
        if existing is not None:
            owner = existing["terminal_id"]
            if existing["params_hash"] != phash:
                return h.AuthResponse(order_id=msg.order_id, status=h.HostStatus.DECLINED,
                                      reason=Reason.ORDER_CONFLICT,
                                      reason_text="order id reused with other parameters",
                                      owner_terminal_id=owner)
            if owner != msg.terminal_id and protocol_version < 2:
                # A terminal before host protocol 2 cannot read owner_terminal_id and would
                # count the owner's stored answer as its own sale: it gets a decline instead.
                return h.AuthResponse(order_id=msg.order_id, status=h.HostStatus.DECLINED,
                                      reason=Reason.ORDER_CONFLICT,
                                      reason_text="order taken on another terminal", owner_terminal_id=owner)
            return answer(tx, existing["trade_no"])
        trade_no = f"{datetime.fromtimestamp(now):%Y%m%d}{secrets.randbelow(10 ** 12):012d}"
        acct = code_reason = None
        if msg.payment_code and not msg.dynamic_qr:
            acct, code_reason = resolve_code(tx, msg.payment_code, now)
        # The trade is stored once with what is known so far; only its outcome is updated below.
        tx.insert_trade(trade_no=trade_no, merchant_id=term["merchant_id"], order_id=msg.order_id,
                        terminal_id=msg.terminal_id, account_id=acct["id"] if acct else None,
                        amount_minor=msg.amount_minor, currency=msg.currency,
                        status="SHOW_QR" if msg.dynamic_qr else "PROCESSING", params_hash=phash,
                        code_last4=msg.payment_code[-4:] if msg.payment_code and not msg.dynamic_qr else None,
                        created_at=now, asked_at=now if msg.dynamic_qr else None,
                        qr_data=f"https://qr.posterm.test/p/{trade_no}" if msg.dynamic_qr else None,
                        description=msg.description)
        if msg.dynamic_qr:
            return answer(tx, trade_no)
        if not msg.payment_code:
            ledger.decline(tx, trade_no, Reason.CODE_INVALID, "no payment code")
            return answer(tx, trade_no)
        if acct is None:
            ledger.decline(tx, trade_no, code_reason, code_reason.name.lower())
            return answer(tx, trade_no)
        behaviour = ctx.behaviour(acct)
        if behaviour.outage:
            ctx.outage_until[msg.terminal_id] = now + ctx.outage_seconds
        spent = ledger.spent_today(ctx, tx, acct)
        refusal = checks(ctx, tx, acct, msg.amount_minor, msg.currency, term, trade_no, spent)
        if refusal is not None and refusal[0] == "decline":
            ledger.decline(tx, trade_no, refusal[1], refusal[2])
        elif refusal is not None or msg.amount_minor > acct["password_free"] or behaviour.always_ask:
            # Two-factor accounts give the password first, then confirm on the phone (pin).
            status = "WAIT_BUYER" if acct["confirm"] == "phone" and not acct["two_factor"] else "NEED_PIN"
            tx.ask_customer(trade_no, status, now)
        else:
            # Nothing in this transaction has changed the account or today's spending since
            # checks read them: capture with those values instead of reading them again.
            ledger.capture_trade(ctx, tx, trade_no, term["merchant_id"], msg.amount_minor, msg.currency, acct, spent)
        reply = answer(tx, trade_no)
    if behaviour.outage:
        return None  # processed, but the answer is lost in the outage
    return reply


def resolve_code(tx: Tx, code: str, now: float) -> tuple[Row | None, Reason]:
    """(the account, Reason.NONE) for a valid payment code, using up a one-time one;
    (None, why) otherwise. A test code is reusable and never expires. A code is 18 digits with
    an Alipay (25-30) or a WeChat Pay (10-15) prefix: one account's wallet shows either."""
    row = tx.code(code)
    if row is None or not (len(code) == 18 and code.isdigit() and int(code[:2]) in _CODE_PREFIXES):
        return None, Reason.CODE_INVALID
    if not row["test"]:
        if row["used_at"] is not None:
            return None, Reason.CODE_USED
        if row["expires_at"] is not None and now > row["expires_at"]:
            return None, Reason.CODE_EXPIRED
        tx.use_code(row["code_hash"], now)
    return require_account(tx, row["account_id"]), Reason.NONE


def checks(ctx: HostContext, tx: Tx, acct: Row, amount: int, currency: str, term: Row, trade_no: str,
           spent: int | None = None):
    """None to approve, ('confirm', ...) to ask the customer, ('decline', reason, text) to refuse.

    ``spent``: the account's spending today, when the caller already has it."""
    if acct["frozen"]:
        return "decline", Reason.ACCOUNT_FROZEN, "account frozen"
    if not monitor.balance_ok(ctx, tx, acct["id"]):   # frozen now, and alerted
        return "decline", Reason.ACCOUNT_FROZEN, monitor.MISMATCH_TEXT
    if currency != acct["currency"]:
        return "decline", Reason.CURRENCY_MISMATCH, f"account is in {acct['currency']}"
    if not acct["real_name"] and amount > REAL_NAME_FREE_MAJOR * 10 ** CURRENCIES.get(acct["currency"], (0, 2))[1]:
        return "decline", Reason.NOT_REAL_NAME_VERIFIED, "real-name verification needed"
    # Over a limit: rejected, or (the account's choice, over_limit = confirm) the customer's
    # extra confirmation (payment password or phone) is asked for, as for risk's "confirm".
    over = []
    if amount > acct["per_tx_limit"]:
        over.append((Reason.OVER_TRANSACTION_LIMIT, "over the per-transaction limit"))
    if (ledger.spent_today(ctx, tx, acct) if spent is None else spent) + amount > acct["daily_limit"]:
        over.append((Reason.OVER_DAILY_LIMIT, "over the daily limit"))
    if over and acct["over_limit"] != "confirm":
        return "decline", *over[0]
    decision = assess_risk(ctx, tx, acct, amount, term, trade_no)
    if decision.action == "reject":
        return "decline", Reason.RISK_REJECTED, "rejected by risk control"
    if amount > acct["balance_minor"]:
        return "decline", Reason.INSUFFICIENT_BALANCE, "insufficient balance"
    if decision.action == "confirm" or over:
        return "confirm", Reason.NONE, "; ".join([text for _, text in over] + list(decision.reasons))
    return None


def assess_risk(ctx: HostContext, tx: Tx, acct: Row, amount: int, term: Row, trade_no: str) -> risk.Decision:
    """The risk rules' decision on this payment (or the account's scripted one), recorded
    with its reasons; the account holder is alerted when it is not a plain allow."""
    now = ctx.clock()
    decision = ctx.behaviour(acct).risk
    if decision is None:
        decision = risk.evaluate(ctx.rules, risk.RiskInput(
            amount_minor=amount, local_time=datetime.fromtimestamp(now, ZoneInfo(acct["tz"])),
            terminal_region=term["location"], home_region=acct["home_region"],
            recent_amounts=tx.recent_approved_amounts(acct["id"], 20),
            payments_in_window=tx.payments_since(acct["id"], now - ctx.rules["velocity"]["window_s"], trade_no),
            new_terminal=not tx.paid_at_terminal_before(acct["id"], term["id"], trade_no),
            wrong_pins_in_window=tx.wrong_pins_since(acct["id"], now - ctx.rules["wrong_pins"]["window_s"]),
            outflow_in_window=monitor.outflow(tx, acct["id"], now, ctx.rules["outflow"]["window_s"]) + amount,
            usual_daily=monitor.usual_daily(tx, acct, now, ctx.rules["outflow"]["history_days"])))
    tx.record_risk_decision(trade_no, acct["id"], decision.action, decision.reasons, now)
    if decision.action != "allow" and decision.reasons:
        ctx.alert(tx, acct["id"], f"risk:{decision.action}", f"{trade_no}: " + "; ".join(decision.reasons))
    return decision


def pin(ctx: HostContext, msg: h.PinVerify) -> h.HostMessage:
    """Answer a PinVerify: the payment password for an order waiting for it."""
    now = ctx.clock()
    with ctx.store.transaction() as tx:
        t = trade_for(tx, msg.terminal_id, msg.order_id)
        if t is None:
            return not_found(msg.order_id)
        if t["status"] != "NEED_PIN" or foreign(t, msg.terminal_id, "PinVerify"):
            return answer(tx, t["trade_no"])
        acct = require_account(tx, t["account_id"])
        if acct["verifier"] is None:
            ledger.decline(tx, t["trade_no"], Reason.WRONG_PIN, "no payment password set")
            return answer(tx, t["trade_no"])
        refused = pin_ksn_refusal(tx, msg)
        if refused is not None:
            return refused
        check = ctx.hsm.verify_pin(ksn=msg.pin_ksn, pin_block=msg.pin_block, pin_format=msg.pin_format,
                                   pan=pan_for(t), verifier=acct["verifier"], tries_used=acct["pin_tries"])
        if check.match:
            tx.reset_pin_tries(acct["id"])
            if acct["two_factor"]:
                # Two-factor: the payment password is one factor, the phone bound to the
                # account the other; the payment waits for the customer's confirmation there.
                tx.ask_customer(t["trade_no"], "WAIT_BUYER", now)
                phone.ask_payment(ctx, tx, acct, t)     # a code or an approval request, per preference
                return answer(tx, t["trade_no"])
            ledger.capture(ctx, tx, t["trade_no"])
            return answer(tx, t["trade_no"])
        tx.count_wrong_pin(acct["id"], now)
        if check.locked:
            ledger.decline(tx, t["trade_no"], Reason.PIN_LOCKED, "payment password locked")
            ctx.alert(tx, acct["id"], "pin_locked", "payment password locked after 3 wrong tries")
            return answer(tx, t["trade_no"])
        return h.AuthResponse(order_id=t["order_id"], status=h.HostStatus.NEED_PIN, reason=Reason.WRONG_PIN,
                              reason_text="wrong payment password", amount_minor=t["amount_minor"],
                              currency=t["currency"], code_last4=t["code_last4"],
                              pin_tries_left=check.tries_left)


def pin_ksn_refusal(tx: Tx, msg: h.PinVerify) -> h.HostError | None:
    """Refuse a PIN block that is not fresh from the requesting terminal's own PIN pad.

    Its KSN must share the request's initial key (same device) and its counter must be
    above the last PIN block accepted from that device, which is then recorded; the
    request KSN guard cannot serve, as a PIN block's counter comes before its request's.
    A refusal uses no PIN try and leaves the trade waiting for a PIN.
    """
    pin_ksn, req_ksn = bytes(msg.pin_ksn), bytes(msg.ksn or b"")
    if len(pin_ksn) != len(req_ksn) or ksn_parts(pin_ksn)[0] != ksn_parts(req_ksn)[0]:
        log.warning("refused PinVerify from %s: PIN block KSN is not this terminal's device", msg.terminal_id)
        return h.HostError(code=HostErrorCode.KEY_ERROR, reason=Reason.KEY_ERROR, text="PIN block from another device")
    if not ksn_fresh(tx, "pin", pin_ksn):
        log.warning("refused PinVerify from %s: PIN block KSN counter did not increase (replay)", msg.terminal_id)
        return h.HostError(code=HostErrorCode.REPLAY_DETECTED, reason=Reason.REPLAY_DETECTED,
                           text="replayed PIN block")
    return None


def pan_for(t: Row) -> str:
    """The PIN block is bound to the payment code; we keep only its hash, so the terminal's
    PIN block binds to the code's last 4 digits padded (see PROTOCOL.md, PIN block PAN)."""
    return pin_pan(t["code_last4"] or "0000")


def query(ctx: HostContext, terminal_id: str, order_id: str) -> h.HostMessage:
    """Answer a HostQuery or ConfirmPoll: the order's answer now. A customer whose behaviour
    confirms on the phone by itself has confirmed once ``phone_delay`` has passed."""
    now = ctx.clock()
    with ctx.store.transaction() as tx:
        t = trade_for(tx, terminal_id, order_id)
        if t is None:
            return not_found(order_id)
        if t["status"] == "WAIT_BUYER" and t["account_id"]:
            acct = require_account(tx, t["account_id"])
            if ctx.behaviour(acct).phone_confirms and now - (t["asked_at"] or now) >= ctx.phone_delay:
                ledger.capture(ctx, tx, t["trade_no"])
            else:
                phone.expire_payment(ctx, tx, t)        # its code or approval request expired: declined
        return answer(tx, t["trade_no"])
