"""The account holder's emulated phone: an inbox, verification codes, biometric approvals.

**Inbox.** Everything the host tells the customer lands here (alerts, codes, approval
requests): at most :data:`INBOX_CAP` entries per account, the oldest dropped. Each text is
sealed in the database (:meth:`~posterm.host.security_keys.SecurityKeys.seal`), so neither
the database nor a backup holds a code in clear; the phone (``posterm host phone ACCOUNT``,
:func:`inbox`) is the one place that shows it.

**Verification codes.** Six digits from :mod:`secrets`, for one purpose (:data:`PURPOSES`)
and, for a payment, one trade; valid :data:`CODE_TTL_S` (5 minutes, host clock), single use,
dead after :data:`CODE_TRIES` wrong tries; a new code for the same purpose supersedes the
pending one. The host keeps only its keyed HMAC (:meth:`SecurityKeys.code_mac`).

**Biometric approval.** An account whose preference (``confirm_pref``) is ``biometric``
confirms a payment waiting on its phone by approving the request there
(``posterm host phone approve|refuse ACCOUNT [REQUEST_ID]``, :func:`answer`) instead of
typing a code; the request expires like a code.

**Payments confirmed on the phone** (:func:`ask_payment`): a two-factor account's, and a
wallet scan's that needs an extra confirmation (over a limit with ``over_limit`` confirm, or
risk control's "confirm"), the scan itself counting as none.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from firmware_protocol.native.messages import Reason

from posterm.errors import CryptoError
from posterm.host import ledger
from posterm.host.context import HostContext, HostRefused, iso_time, require_account
from posterm.host.store import Tx
from posterm.host.store.queries import Row

INBOX_CAP = 200
CODE_TTL_S = 300.0
CODE_TRIES = 5
CODE_DIGITS = 6
PREFERENCES = ("code", "biometric")
# purpose -> what the code is for, as the inbox says it
PURPOSES = {
    "payment": "confirm a payment",
    "set-limits": "raise a limit",
    "two-factor-off": "turn two-factor off",
    "confirm-pref": "change how you confirm payments",
    "over-limit": "let payments over a limit through with a confirmation",
    "unfreeze": "unfreeze the account",
    "reset-password": "reset the payment password",
}
# what `posterm host phone send-code --purpose` may ask for (a payment's code comes with the payment)
SEND_PURPOSES = tuple(p for p in PURPOSES if p != "payment")


@dataclass(frozen=True, slots=True)
class CodeCheck:
    """The outcome of one code tried: ``ok``; else ``why`` (none, expired, wrong, dead) and tries left."""

    ok: bool
    why: str
    tries_left: int
    request_id: int | None

    def message(self) -> str:
        return {"ok": "verified",
                "none": "no verification code is pending: send one first (posterm host phone send-code)",
                "expired": "the verification code expired (valid 5 minutes): send a new one",
                "wrong": f"wrong verification code ({self.tries_left} tries left)",
                "dead": f"wrong verification code: tried {CODE_TRIES} times, it is no longer valid"}[self.why]


def preference(acct: Row) -> str:
    """How the account confirms a payment waiting on its phone: ``code`` or ``biometric``."""
    return acct["confirm_pref"] or "code"


# ---------------------------------------------------------------------- the inbox

def notify(ctx: HostContext, tx: Tx, account_id: str, kind: str, text: str, ref: str | None = None) -> int:
    """Put ``text`` in the account's inbox (sealed), in ``tx``. Returns the entry's id."""
    sealed = ctx.keys.seal("inbox", account_id, text.encode())
    return tx.add_inbox(account_id, kind, ref, sealed, ctx.clock(), INBOX_CAP)


def inbox(ctx: HostContext, account_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The account's inbox, newest first, as the phone shows it (codes included), then the
    host's security notices in force."""
    view = ctx.store.view()
    require_account(view, account_id)
    out = []
    for r in view.inbox(account_id, limit):
        try:
            text = ctx.keys.unseal("inbox", account_id, r["sealed"]).decode()
        except CryptoError:
            text = "(unreadable: sealed under other keys)"
        out.append({"id": r["id"], "kind": r["kind"], "ref": r["ref"], "text": text, "created_at": r["created_at"],
                    "created_at_iso": iso_time(r["created_at"])})
    # The host's security notices in force (posterm host notice add), after the messages: the
    # wallet shows them to every customer (security education).
    from posterm.host import notices

    out += [{"id": None, "kind": n["kind"], "ref": str(n["notice_id"]), "text": n["text"],
             "created_at": n["created_at"], "created_at_iso": n["created_at_iso"]}
            for n in notices.inbox_entries(view, ctx.clock())]
    return out


# ---------------------------------------------------------------------- codes and approvals

def send_code(ctx: HostContext, tx: Tx, account_id: str, purpose: str, ref: str | None = None,
              what: str | None = None) -> int:
    """A new verification code for ``purpose`` (and trade ``ref``) to the account's phone, in
    ``tx``. Returns the request id; the code itself is only in the (sealed) inbox."""
    if purpose not in PURPOSES:
        raise HostRefused(f"a code's purpose is one of {', '.join(PURPOSES)}")
    code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
    salt = secrets.token_hex(16)
    now = ctx.clock()
    rid = tx.add_verification(account_id, purpose, ref, "code", salt, ctx.keys.code_mac(salt, account_id, purpose, code),
                              now, now + CODE_TTL_S)
    notify(ctx, tx, account_id, "code", f"verification code {code} to {what or PURPOSES[purpose]} (request {rid}), "
           "valid 5 minutes. Never tell anyone this code: staff never ask for it.", ref=str(rid))
    return rid


def send(ctx: HostContext, account_id: str, purpose: str) -> int:
    """``posterm host phone send-code``: a code for one of :data:`SEND_PURPOSES`. Returns the request id."""
    if purpose not in SEND_PURPOSES:
        raise HostRefused(f"--purpose is one of {', '.join(SEND_PURPOSES)}")
    with ctx.store.transaction() as tx:
        require_account(tx, account_id)
        return send_code(ctx, tx, account_id, purpose)


def ask_biometric(ctx: HostContext, tx: Tx, account_id: str, purpose: str, ref: str | None, what: str) -> int:
    """A biometric approval request to the phone, in ``tx``. Returns its id."""
    now = ctx.clock()
    rid = tx.add_verification(account_id, purpose, ref, "biometric", None, None, now, now + CODE_TTL_S)
    notify(ctx, tx, account_id, "approve", f"approve on this phone to {what} (request {rid}; "
           f"`posterm host phone approve {account_id} {rid}`, or refuse), valid 5 minutes", ref=str(rid))
    return rid


def check_code(ctx: HostContext, tx: Tx, account_id: str, purpose: str, code: str, ref: str | None = None) -> CodeCheck:
    """Try ``code`` against the account's pending code for ``purpose`` (and ``ref``), in ``tx``:
    used up when right, a try counted when wrong (dead at the 5th), ended when expired. The
    caller commits ``tx`` whatever the outcome (a wrong try must stay counted)."""
    now = ctx.clock()
    row = tx.pending_verification(account_id, purpose, ref, method="code")
    if row is None:
        return CodeCheck(False, "none", 0, None)
    rid = row["id"]
    if now > row["expires_at"]:
        tx.end_verification(rid, "expired", now)
        return CodeCheck(False, "expired", 0, rid)
    given = code if len(code) == CODE_DIGITS and code.isdigit() else "-"
    if hmac.compare_digest(ctx.keys.code_mac(row["salt"], account_id, purpose, given), row["code_mac"]):
        tx.end_verification(rid, "used", now)
        return CodeCheck(True, "ok", CODE_TRIES - row["tries"], rid)
    tries = tx.count_verification_try(rid)
    if tries >= CODE_TRIES:
        tx.end_verification(rid, "dead", now)
        return CodeCheck(False, "dead", 0, rid)
    return CodeCheck(False, "wrong", CODE_TRIES - tries, rid)


# ---------------------------------------------------------------------- payments confirmed on the phone

def ask_payment(ctx: HostContext, tx: Tx, acct: Row, t: Row) -> int:
    """Payment ``t`` (WAIT_BUYER) now waits on the phone: a code or an approval request,
    per the account's preference. Returns the request id."""
    what = f"pay {ledger.display(t['amount_minor'], t['currency'])} to merchant {t['merchant_id']} (order {t['order_id']})"
    if preference(acct) == "biometric":
        return ask_biometric(ctx, tx, acct["id"], "payment", t["trade_no"], what)
    return send_code(ctx, tx, acct["id"], "payment", t["trade_no"], what)


def needs_phone(tx: Tx, acct: Row, t: Row) -> bool:
    """Whether waiting payment ``t`` is confirmed with the phone's code or approval
    (:func:`confirm_payment`) rather than by the wallet's confirm alone: a two-factor
    account's, or one :func:`ask_payment` asked for (that stays so whatever became of the
    request, so a superseded or ended one never lets the payment through without it)."""
    return bool(acct["two_factor"]) or tx.asked_verification(acct["id"], "payment", t["trade_no"])


def confirm_payment(ctx: HostContext, tx: Tx, acct: Row, t: Row, code: str | None) -> str | None:
    """The customer confirms payment ``t`` waiting on the phone (WAIT_BUYER) with ``code``, in
    ``tx``: captured when right (None returned); else why not (a wrong code counted, the
    payment declined once the code is dead or expired, an alert raised); commit either way."""
    if preference(acct) == "biometric":
        return f"this account approves payments on the phone: posterm host phone approve {acct['id']}"
    if code is None:
        return "this payment needs the verification code sent to the phone (--code)"
    check = check_code(ctx, tx, acct["id"], "payment", code, t["trade_no"])
    if check.ok:
        ledger.capture(ctx, tx, t["trade_no"])
        return None
    if check.why == "dead":
        ledger.decline(tx, t["trade_no"], Reason.OTHER, f"verification code failed {CODE_TRIES} times")
    elif check.why in ("expired", "none"):
        ledger.decline(tx, t["trade_no"], Reason.CONFIRMATION_TIMEOUT, "verification code expired")
    ctx.alert(tx, acct["id"], "verification_failed", f"payment order {t['order_id']}: {check.message()}")
    return check.message()


def expire_payment(ctx: HostContext, tx: Tx, t: Row) -> None:
    """Decline payment ``t`` waiting on the phone once its code or approval request has expired
    (the terminal's next query sees CONFIRMATION_TIMEOUT)."""
    now = ctx.clock()
    row = tx.pending_verification(t["account_id"], "payment", t["trade_no"])
    if row is not None and now > row["expires_at"]:
        tx.end_verification(row["id"], "expired", now)
        ledger.decline(tx, t["trade_no"], Reason.CONFIRMATION_TIMEOUT, "not confirmed on the phone in time")


def answer(ctx: HostContext, account_id: str, request_id: int | None = None, *, approve: bool) -> dict[str, Any]:
    """``posterm host phone approve|refuse``: answer the account's biometric request
    ``request_id`` (default: its latest pending one). An approved payment is captured, a
    refused one declined (CUSTOMER_CANCELLED). Returns the request's purpose, new state and,
    for a payment, the trade's status. Raises HostRefused (no such pending request, expired)."""
    now = ctx.clock()
    expired = False
    with ctx.store.transaction() as tx:
        require_account(tx, account_id)
        row = (tx.verification(request_id) if request_id is not None
               else tx.pending_verification(account_id, None, method="biometric"))
        if row is None or row["account_id"] != account_id or row["method"] != "biometric":
            raise HostRefused("no such approval request on this phone" if request_id is not None
                              else "no approval request is waiting on this phone")
        if row["state"] != "pending":
            raise HostRefused(f"request {row['id']} is {row['state']}")
        status = None
        if now > row["expires_at"]:
            tx.end_verification(row["id"], "expired", now)
            if row["purpose"] == "payment":
                t = tx.trade(row["ref"])
                if t is not None and t["status"] == "WAIT_BUYER":
                    ledger.decline(tx, t["trade_no"], Reason.CONFIRMATION_TIMEOUT, "not confirmed on the phone in time")
            expired = True
        else:
            tx.end_verification(row["id"], "approved" if approve else "refused", now)
            if row["purpose"] == "payment":
                t = tx.trade(row["ref"])
                if t is not None and t["status"] == "WAIT_BUYER":
                    if approve:
                        ledger.capture(ctx, tx, t["trade_no"])
                    else:
                        ledger.decline(tx, t["trade_no"], Reason.CUSTOMER_CANCELLED, "refused on the phone")
                status = tx.trade_status(t["trade_no"]) if t is not None else None
            if not approve:
                ctx.alert(tx, account_id, "refused_on_phone", f"request {row['id']} ({PURPOSES[row['purpose']]}) "
                          "refused on the phone")
    if expired:
        raise HostRefused(f"request {row['id']} expired (valid 5 minutes)")
    return {"request": row["id"], "purpose": row["purpose"], "state": "approved" if approve else "refused",
            "trade_status": status}
