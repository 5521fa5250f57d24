"""Verification before key operations, support operators, the security audit, the
payment-password reset, and the one view of every protection (``posterm host security``).

**Key operations** (:data:`ACTIONS`: raising a limit, turning two-factor off, changing the
preferred confirmation, letting payments over a limit through with a confirmation
(``--over-limit confirm``), unfreezing, closing a case with ``--unfreeze``) run through
:func:`guarded`: they need a :class:`CustomerProof` (the payment password and a
verification code sent to the phone for that purpose, :func:`posterm.host.phone.send`) or
an :class:`OperatorProof` (a support operator's own name and password, ``posterm host
operator add``). Every attempt is one ``security_audit`` row (who, what, outcome, when; never
a secret); a failed verification is also an alert to the customer
(``verification_failed``). A wrong payment password counts as a wrong PIN (3 lock it, as at
the terminal); a wrong code counts against the code (5 kill it); an operator's 5 wrong
passwords lock the operator. A refusal for another reason (another case still open) leaves
the code unused.

**Password reset** (:func:`reset_password`): the ID number the account was verified with
(:func:`posterm.host.identity.matches`) and a ``reset-password`` code, never the old
password; the new one passes the password rules (:func:`posterm.host.identity.check_password`);
the wrong-PIN count starts again, so a PIN-locked account is unlocked.

**The view** (:func:`view`): :data:`SECTIONS`, a list of ``(title, rows)`` where ``rows(ctx,
view, acct)`` returns that section's ``{key: value}``; another protection adds its section
with one line (:func:`add_section`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from posterm.crypto.hsm import PIN_MAX_TRIES
from posterm.crypto.verifier import check_verifier, make_verifier
from posterm.errors import CryptoError
from posterm.host import identity, phone
from posterm.host.context import HostContext, HostRefused, iso_time, require_account
from posterm.host.store import Tx
from posterm.host.store.queries import Row

T = TypeVar("T")

# action -> the code purpose that verifies it (posterm.host.phone.PURPOSES)
ACTIONS = {
    "raise-limits": "set-limits",
    "two-factor-off": "two-factor-off",
    "confirm-pref": "confirm-pref",
    "over-limit-confirm": "over-limit",
    "unfreeze": "unfreeze",
    "close-case-unfreeze": "unfreeze",
    "reset-password": "reset-password",
}
OPERATOR_TRIES = 5
AUDIT_SHOWN = 10


class VerificationFailed(HostRefused):
    """The proof given for a key operation was wrong (what was wrong is the message)."""


@dataclass(frozen=True, slots=True)
class CustomerProof:
    """The customer's payment password and the verification code its phone received."""

    password: str
    code: str

    def __repr__(self) -> str:
        return "CustomerProof(<password>, <code>)"


@dataclass(frozen=True, slots=True)
class OperatorProof:
    """A support operator's own name and password."""

    name: str
    password: str

    def __repr__(self) -> str:
        return f"OperatorProof({self.name!r}, <password>)"


Proof = CustomerProof | OperatorProof


def actor_of(proof: Proof | None) -> str:
    if isinstance(proof, OperatorProof):
        return f"operator:{proof.name}"
    return "customer"


# ---------------------------------------------------------------------- verification

def _check(ctx: HostContext, tx: Tx, acct: Row, action: str, proof: Proof | None) -> tuple[str | None, int | None]:
    """(None, the code's request id) when ``proof`` verifies ``action`` on ``acct``; else
    (what was wrong, None), tries counted in ``tx``."""
    if proof is None:
        return (("this needs verification: the payment password (--password-stdin) and a code sent to the "
                f"phone (posterm host phone send-code {acct['id']} --purpose {ACTIONS[action]}), "
                "or support staff's --operator credentials"), None)
    if isinstance(proof, OperatorProof):
        return check_operator(ctx, tx, proof), None
    if acct["verifier"] is None:
        return "no payment password is set on this account", None
    if acct["pin_tries"] >= PIN_MAX_TRIES:
        return "the payment password is locked: reset it (posterm host account reset-password)", None
    try:
        good = check_verifier(proof.password, acct["verifier"])
    except CryptoError:
        good = False
    if not good:
        tx.count_wrong_pin(acct["id"], ctx.clock())
        if tx.pin_tries(acct["id"]) >= PIN_MAX_TRIES:
            ctx.alert(tx, acct["id"], "pin_locked", f"payment password locked after {PIN_MAX_TRIES} wrong tries")
        return "wrong payment password", None
    check = phone.check_code(ctx, tx, acct["id"], ACTIONS[action], proof.code)
    return (None, check.request_id) if check.ok else (check.message(), None)


def check_operator(ctx: HostContext, tx: Tx, proof: OperatorProof) -> str | None:
    """None when the operator's password is right (its wrong count starts again); else why not."""
    op = tx.operator(proof.name)
    if op is None:
        return f"no operator {proof.name}"
    if op["tries"] >= OPERATOR_TRIES:
        return f"operator {proof.name} is locked after {OPERATOR_TRIES} wrong passwords"
    try:
        good = check_verifier(proof.password, op["verifier"])
    except CryptoError:
        good = False
    tx.set_operator_tries(proof.name, 0 if good else op["tries"] + 1)
    return None if good else "wrong operator password"


def guarded(ctx: HostContext, account_id: str, action: str, proof: Proof | None,
            change: Callable[[Tx, Row], T], needed: Callable[[Row], bool] = lambda acct: True) -> T:
    """Run ``change(tx, acct)`` for key operation ``action`` on the account, verified by
    ``proof`` when ``needed(acct)`` (what lowers protection; the rest runs free), in one
    transaction, with its ``security_audit`` row. A failed verification is committed (its
    tries, the audit row, the ``verification_failed`` alert) and raised as
    VerificationFailed; a HostRefused from ``change`` leaves nothing changed but the audit
    row (the code stays unused) and is raised again."""
    now = ctx.clock()
    actor = actor_of(proof)
    failed: str | None = None
    refused: HostRefused | None = None
    result: Any = None
    with ctx.store.transaction() as tx:
        acct = require_account(tx, account_id)
        if not needed(acct):
            result = change(tx, acct)
            tx.audit(account_id, actor, action, "ok (no verification needed)", now)
            return result
        failed, code_request = _check(ctx, tx, acct, action, proof)
        if failed is not None:
            tx.audit(account_id, actor, action, f"failed: {failed}", now)
            if proof is not None:
                ctx.alert(tx, account_id, "verification_failed", f"{action} refused: {failed}")
        else:
            try:
                with ctx.store.transaction() as inner:     # a savepoint: a refusal undoes the change
                    result = change(inner, acct)
            except HostRefused as exc:
                refused = exc
                if code_request is not None:        # refused for another reason: the code stays usable
                    tx.reopen_verification(code_request)
                tx.audit(account_id, actor, action, f"refused: {exc}", now)
            else:
                tx.audit(account_id, actor, action, "ok", now)
    if failed is not None:
        raise VerificationFailed(failed)
    if refused is not None:
        raise refused
    return result


# ---------------------------------------------------------------------- operators and the audit

def add_operator(ctx: HostContext, name: str, password: str) -> None:
    """A support operator with its own password (kept as a salted scrypt). Raises HostRefused."""
    if len(password) < 8:
        raise HostRefused("an operator password has at least 8 characters")
    verifier = make_verifier(password)
    with ctx.store.transaction() as tx:
        if not tx.add_operator(name, verifier, ctx.clock()):
            raise HostRefused(f"operator {name} exists")
        tx.audit(None, "admin", f"operator-add {name}", "ok", ctx.clock())


def operators(ctx: HostContext) -> list[dict[str, Any]]:
    return [{"name": r["name"], "locked": r["tries"] >= OPERATOR_TRIES, "wrong_tries": r["tries"],
             "created_at_iso": iso_time(r["created_at"])} for r in ctx.store.view().operators()]


def audit_log(ctx: HostContext, *, account_id: str | None = None, operator: str | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
    """``security_audit`` rows, newest first, of one account and/or operator."""
    actor = f"operator:{operator}" if operator else None
    return [{"id": r["id"], "account": r["account_id"], "actor": r["actor"], "action": r["action"],
             "outcome": r["outcome"], "created_at_iso": iso_time(r["created_at"])}
            for r in ctx.store.view().audit_log(account_id=account_id, actor=actor, limit=limit)]


# ---------------------------------------------------------------------- the payment password

def reset_password(ctx: HostContext, account_id: str, id_number: str, code: str, new: str) -> None:
    """Reset a forgotten payment password with the ID number the account was verified with
    and a ``reset-password`` code (not the old password). The new password must pass the
    rules of every setting (:func:`posterm.host.identity.check_password`: checked once the ID
    number matched, so a stranger learns nothing of the birth date; a refusal leaves the code
    unused). The wrong-PIN count starts again (a PIN-locked account is unlocked); the
    customer is alerted. Raises HostRefused (PasswordRuleBroken naming the rule;
    VerificationFailed for a wrong ID number or code: committed, audited, alerted)."""
    try:
        verifier = ctx.hsm.payment_verifier(new)
    except CryptoError as exc:
        raise HostRefused(str(exc)) from None
    now = ctx.clock()
    failed = None
    broken: HostRefused | None = None
    with ctx.store.transaction() as tx:
        require_account(tx, account_id)
        if not identity.matches(tx, account_id, id_number, ctx.hsm):
            failed = "the ID number does not match the account's identity record"
        else:
            try:
                identity.check_password(ctx, tx, account_id, new)
            except identity.PasswordRuleBroken as exc:
                tx.audit(account_id, "customer", "reset-password", f"refused: {exc}", now)
                broken = exc
            else:
                check = phone.check_code(ctx, tx, account_id, "reset-password", code)
                if not check.ok:
                    failed = check.message()
        if failed is not None:
            tx.audit(account_id, "customer", "reset-password", f"failed: {failed}", now)
            ctx.alert(tx, account_id, "verification_failed", f"reset-password refused: {failed}")
        elif broken is None:
            tx.set_verifier(account_id, verifier)
            tx.audit(account_id, "customer", "reset-password", "ok", now)
            ctx.alert(tx, account_id, "password_changed", "payment password reset with the ID number and a code")
    if failed is not None:
        raise VerificationFailed(failed)
    if broken is not None:
        raise broken


# ---------------------------------------------------------------------- the view

Rows = Callable[[HostContext, Tx, Row], dict[str, Any]]
SECTIONS: list[tuple[str, Rows]] = []


def add_section(title: str, rows: Rows) -> None:
    """Show ``rows(ctx, view, acct)`` (a dict) under ``title`` in ``posterm host security``."""
    SECTIONS.append((title, rows))


def _account_rows(ctx: HostContext, view: Tx, acct: Row) -> dict[str, Any]:
    return {"real_name_verified": bool(acct["real_name"]), "frozen": bool(acct["frozen"]),
            "open_cases": view.open_cases_of(acct["id"])}


def _password_rows(ctx: HostContext, view: Tx, acct: Row) -> dict[str, Any]:
    return {"payment_password_set": acct["verifier"] is not None, "pin_tries_used": acct["pin_tries"],
            "pin_locked": acct["pin_tries"] >= PIN_MAX_TRIES}


def _factor_rows(ctx: HostContext, view: Tx, acct: Row) -> dict[str, Any]:
    return {"two_factor": bool(acct["two_factor"]), "confirm": acct["confirm"],
            "confirm_pref": phone.preference(acct), "pending_verifications": view.pending_verifications(acct["id"]),
            "inbox_entries": view.inbox_count(acct["id"])}


def _limit_rows(ctx: HostContext, view: Tx, acct: Row) -> dict[str, Any]:
    out = {"currency": acct["currency"], "per_tx_limit_minor": acct["per_tx_limit"],
           "daily_limit_minor": acct["daily_limit"], "password_free_minor": acct["password_free"],
           "large_payment_minor": acct["large_payment"]}
    out.update({"over_limit": acct["over_limit"], "remind_at_percent": acct["remind_at"]})
    return out


def _alert_rows(ctx: HostContext, view: Tx, acct: Row) -> dict[str, Any]:
    hook = view.webhook(acct["id"])
    counts = view.outbox_counts(acct["id"])
    return {"webhook": hook["url"] if hook else None, "outbox_pending": counts.get("pending", 0),
            "outbox_failed": counts.get("failed", 0), "recent_alerts": view.recent_alerts(acct["id"], 10)}


def _audit_rows(ctx: HostContext, view: Tx, acct: Row) -> dict[str, Any]:
    return {"recent_audit": audit_log(ctx, account_id=acct["id"], limit=AUDIT_SHOWN)}


add_section("account", _account_rows)
add_section("payment password", _password_rows)
add_section("second factor", _factor_rows)
add_section("limits", _limit_rows)
add_section("alerts", _alert_rows)
add_section("security audit", _audit_rows)


def _guard_rows(ctx: HostContext, view: Tx, acct: Row) -> dict[str, Any]:
    """Identity (real-name ID number), the balance monitor and the last audit, the 24 h
    outflow rule, the limit reminder: posterm.host.monitor."""
    from posterm.host import monitor

    state = monitor.security_state(view, acct["id"], ctx.rules)
    last = state["last_audit"]
    state["last_audit"] = "never" if last is None else (
        f"{last['at']}: " + ("differed" if last["this_account_differed"] else "agreed"))
    state.pop("over_limit", None)          # shown with the limits
    state.pop("remind_at_percent", None)
    return state


add_section("identity and balance monitoring", _guard_rows)


def _notice_rows(ctx: HostContext, view: Tx, acct: Row) -> dict[str, Any]:
    """Security education: the host's notices in force, as this account's wallet inbox lists
    them (terminals show the oldest 5 of them: posterm.host.notices)."""
    from posterm.host import notices

    return {"security_notices": [n["text"] for n in notices.inbox_entries(view, ctx.clock())]}


add_section("security notices", _notice_rows)


def view(ctx: HostContext, account_id: str) -> dict[str, Any]:
    """Every protection's state: ``account``, each section's rows (flat: keys are unique) and
    ``sections``: [[title, [its keys]], ...] (the order ``posterm host security`` prints)."""
    v = ctx.store.view()
    acct = require_account(v, account_id)
    out: dict[str, Any] = {"account": account_id}
    layout = []
    for title, rows in SECTIONS:
        got = rows(ctx, v, acct)
        out.update(got)
        layout.append([title, list(got)])
    out["sections"] = layout
    return out
