"""The administrator's side: merchants, terminals and their keys, accounts and their
security, payment codes, cases, and the reports (trades, bills, the books).

Each function takes the :class:`~posterm.host.context.HostContext` first and raises
:class:`~posterm.host.context.HostRefused` for anything it cannot do, naming why.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from firmware_protocol.native.messages import MAX_AMOUNT_MINOR, Reason

from posterm.host import ledger, monitor, phone
from posterm.host import security as sec
from posterm.host.context import HostContext, HostRefused, iso_time, require_account
from posterm.host.security import view as security_view
from posterm.host.store import check_ledger

CODE_TTL_S = 60.0
# The local day a trade report's --date / --month names.
REPORT_TZ = "Asia/Shanghai"


@dataclass(frozen=True, slots=True)
class TradeView:
    trade_no: str
    order_id: str
    merchant_id: str
    terminal_id: str
    account_id: str | None
    amount_minor: int
    currency: str
    status: str
    reason: int
    refunded_minor: int
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"trade_no": self.trade_no, "order_id": self.order_id, "merchant_id": self.merchant_id,
                "terminal_id": self.terminal_id, "account": self.account_id, "amount_minor": self.amount_minor,
                "currency": self.currency, "status": self.status.lower(),
                "reason": Reason(self.reason).name.lower() if self.reason in Reason._value2member_map_ else self.reason,
                "refunded_minor": self.refunded_minor,
                "created_at": iso_time(self.created_at)}


def _minor_units(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_AMOUNT_MINOR


# ---------------------------------------------------------------------- merchants and terminals

def add_merchant(ctx: HostContext, merchant_id: str, name: str) -> None:
    with ctx.store.transaction() as tx:
        tx.add_merchant(merchant_id, name)


def register_terminal(ctx: HostContext, terminal_id: str, merchant_id: str, location: str) -> None:
    with ctx.store.transaction() as tx:
        if not tx.merchant_exists(merchant_id):
            raise HostRefused(f"unknown merchant {merchant_id}")
        tx.put_terminal(terminal_id, merchant_id, location, ctx.clock())


def issue_terminal_key(ctx: HostContext, terminal_id: str, algorithm: str = "AES"):
    """A new initial DUKPT key for a registered terminal, as a TR-31 block under its KBPK
    (:meth:`posterm.crypto.hsm.Hsm.issue_initial_key`: a new key id, so no KSN the host
    has seen). Returns the IssuedKey (block, initial KSN, KCV). Raises HostRefused for a
    terminal the host does not know, CryptoError from the HSM."""
    if ctx.store.view().terminal(terminal_id) is None:
        raise HostRefused(f"unknown terminal {terminal_id}: register it first")
    return ctx.hsm.issue_initial_key(terminal_id, algorithm)


# ---------------------------------------------------------------------- accounts

def add_account(ctx: HostContext, account_id: str, name: str, *, currency: str = "CNY", balance_minor: int = 0,
                real_name: bool = True, password: str | None = None, per_tx_limit: int = 500000,
                daily_limit: int = 2000000, password_free: int = 100000, confirm: str = "pin",
                home_region: str = "CN-SH", two_factor: bool = False, tz: str = "Asia/Shanghai",
                behaviour: str = "normal", id_number: str | None = None, id_name: str | None = None) -> None:
    """Open an account, funding it with ``balance_minor`` issued into the ledger.

    ``id_number`` and ``id_name`` (both or neither): the resident ID number and the name on
    it, checked and kept as :func:`posterm.host.identity.verify` does; the account is then
    real-name verified whatever ``real_name`` says. ``password`` must pass the rules of
    :func:`posterm.host.identity.password_problem` (the ID's birth date included)."""
    from posterm.host import identity

    if (id_number is None) != (id_name is None):
        raise HostRefused("real-name verification needs both the ID number and the name on it")
    birth = identity.parse_id(id_number).birth if id_number is not None else None
    for v in (balance_minor, per_tx_limit, daily_limit, password_free):
        if not _minor_units(v):
            raise HostRefused(f"amounts and limits are whole minor units, 0 to {MAX_AMOUNT_MINOR}")
    if confirm not in ("pin", "phone"):
        raise HostRefused("confirmation is 'pin' or 'phone'")
    try:
        ZoneInfo(tz)
    except Exception:
        raise HostRefused(f"unknown time zone {tz!r}") from None
    if password:
        why = identity.password_problem(password, birth=birth)
        if why:
            raise identity.PasswordRuleBroken(why)
    verifier = ctx.hsm.payment_verifier(password) if password else None
    now = ctx.clock()
    with ctx.store.transaction() as tx:
        if tx.account(account_id) is not None:
            raise HostRefused(f"account {account_id} exists")
        tx.insert_account(account_id, name, real_name=real_name, verifier=verifier, currency=currency,
                          per_tx_limit=per_tx_limit, daily_limit=daily_limit, password_free=password_free,
                          confirm=confirm, home_region=home_region, two_factor=two_factor, tz=tz,
                          behaviour=behaviour, now=now)
        if balance_minor:
            ledger.move(ctx, tx, f"I:{account_id}:{now}", "issuance", f"customer:{account_id}", balance_minor,
                        currency, "issue")
        if id_number is not None:
            identity.verify(ctx, tx, account_id, id_number, id_name)


def account(ctx: HostContext, account_id: str) -> dict[str, Any]:
    """The account's columns but its verifier; ``password_set`` and ``created_at_iso`` besides."""
    row = ctx.store.view().account(account_id)
    if row is None:
        raise HostRefused(f"no account {account_id}")
    out = {k: row[k] for k in row.keys() if k != "verifier"}
    out["password_set"] = row["verifier"] is not None
    out["created_at_iso"] = iso_time(row["created_at"])
    return out


def set_limits(ctx: HostContext, account_id: str, proof: sec.Proof | None = None, **limits: int) -> None:
    """Change the account's limits. Raising any (the password-free threshold too) is a key
    operation: it needs ``proof`` (:func:`posterm.host.security.guarded`); lowering is free."""
    allowed = {"per_tx_limit", "daily_limit", "password_free"}
    if not limits or set(limits) - allowed:
        raise HostRefused(f"limits are {sorted(allowed)}")
    for k, v in limits.items():
        if not _minor_units(v):
            raise HostRefused(f"{k} must be a whole number of minor units, 0 to {MAX_AMOUNT_MINOR}")

    def change(tx, acct) -> None:
        for k, v in limits.items():
            tx.set_account(account_id, k, v)

    sec.guarded(ctx, account_id, "raise-limits", proof, change,
                     needed=lambda acct: any(v > acct[k] for k, v in limits.items()))


def set_password(ctx: HostContext, account_id: str, new: str, old: str | None = None) -> None:
    """Set the payment password; changing it needs the old one."""
    with ctx.store.transaction() as tx:
        row = require_account(tx, account_id)
        if row["verifier"] is not None:
            from posterm.crypto.verifier import check_verifier

            if not old or not check_verifier(old, row["verifier"]):
                raise HostRefused("the old payment password is wrong")
        from posterm.host import identity

        identity.check_password(ctx, tx, account_id, new)
        tx.set_verifier(account_id, ctx.hsm.payment_verifier(new))
        ctx.alert(tx, account_id, "password_changed", "payment password changed")


def freeze(ctx: HostContext, account_id: str, frozen: bool = True, why: str = "",
           proof: sec.Proof | None = None) -> None:
    """Freeze (free) or unfreeze the account; unfreezing a frozen account needs ``proof``."""
    def change(tx, acct) -> None:
        tx.set_account(account_id, "frozen", frozen)
        ctx.alert(tx, account_id, "frozen" if frozen else "unfrozen",
                  why or ("account frozen" if frozen else "account unfrozen"))

    sec.guarded(ctx, account_id, "freeze" if frozen else "unfreeze", proof, change,
                     needed=lambda acct: not frozen and bool(acct["frozen"]))


def set_flags(ctx: HostContext, account_id: str, *, real_name: bool | None = None, two_factor: bool | None = None,
              confirm: str | None = None, confirm_pref: str | None = None, large_payment: int | None = None,
              over_limit: str | None = None, remind_at: int | None = None,
              proof: sec.Proof | None = None) -> None:
    """Change security settings. What lowers protection needs ``proof``: turning two-factor
    off (verified for ``two-factor-off``), changing how payments are confirmed (``confirm``
    pin|phone, ``confirm_pref`` code|biometric: ``confirm-pref``), and letting payments over a
    limit through with a confirmation (``over_limit`` ``confirm``: ``over-limit``); the code
    verifies the first of these among the changes. Free: turning two-factor on, ``over_limit``
    ``reject``, the large-payment alert threshold (``large_payment`` minor units, 0: off) and
    the limit reminder (``remind_at``, percent of the daily limit, 0: off)."""
    if confirm is not None and confirm not in ("pin", "phone"):
        raise HostRefused("confirmation is 'pin' or 'phone'")
    if confirm_pref is not None and confirm_pref not in phone.PREFERENCES:
        raise HostRefused("the preferred confirmation is 'code' or 'biometric'")
    if large_payment is not None and not _minor_units(large_payment):
        raise HostRefused(f"the large-payment threshold is whole minor units, 0 to {MAX_AMOUNT_MINOR}")
    if over_limit is not None and over_limit not in monitor.OVER_LIMIT:
        raise HostRefused(f"over a limit: one of {', '.join(monitor.OVER_LIMIT)}")
    if remind_at is not None and (isinstance(remind_at, bool) or not isinstance(remind_at, int)
                                  or not 0 <= remind_at <= 100):
        raise HostRefused("the limit reminder is a percentage of the daily limit, 0 (off) to 100")

    def change(tx, acct) -> None:
        if real_name is not None:
            if real_name and tx.identity(account_id) is None:
                raise HostRefused("real-name verification needs a resident ID number and the name on it: "
                                  "posterm host account verify")
            tx.set_account(account_id, "real_name", bool(real_name))
        if two_factor is not None:
            tx.set_account(account_id, "two_factor", bool(two_factor))
        if confirm is not None:
            tx.set_account(account_id, "confirm", confirm)
        if confirm_pref is not None:
            tx.set_account(account_id, "confirm_pref", confirm_pref)
        if large_payment is not None:
            tx.set_account(account_id, "large_payment", large_payment or None)
        if over_limit is not None:
            tx.set_account(account_id, "over_limit", over_limit)
        if remind_at is not None:
            tx.set_account(account_id, "remind_at", remind_at)
            tx.set_account(account_id, "reminded_day", None)   # a new share may remind again today

    def off(acct) -> bool:
        return two_factor is False and bool(acct["two_factor"])

    def repref(acct) -> bool:
        return ((confirm is not None and confirm != acct["confirm"])
                or (confirm_pref is not None and confirm_pref != phone.preference(acct)))

    def relaxes(acct) -> bool:
        return over_limit == "confirm" and acct["over_limit"] != "confirm"

    acct = ctx.store.view().account(account_id)
    action = "set-security"
    if acct is not None:
        action = next((a for a, lowers in (("two-factor-off", off), ("confirm-pref", repref),
                                           ("over-limit-confirm", relaxes)) if lowers(acct)), action)
    sec.guarded(ctx, account_id, action, proof, change,
                needed=lambda acct: off(acct) or repref(acct) or relaxes(acct))


def security(ctx: HostContext, account_id: str) -> dict[str, Any]:
    """The account security centre: :func:`posterm.host.security.view`."""
    try:
        return security_view(ctx, account_id)
    except HostRefused:
        raise HostRefused(f"no account {account_id}") from None


def issue_code(ctx: HostContext, account_id: str) -> str:
    """A one-time payment code: 18 digits, prefix 25-30, valid 60 s, single use; never one
    in a reserved range (the demo's test codes)."""
    now = ctx.clock()
    with ctx.store.transaction() as tx:
        acct = require_account(tx, account_id)
        if acct["frozen"]:
            raise HostRefused("account is frozen: no payment codes")
        while True:
            code = f"{secrets.choice(range(25, 31))}{secrets.randbelow(10 ** 16):016d}"
            if not code.startswith(ctx.reserved_code_prefixes):
                break
        tx.add_code(code, account_id, now, now + CODE_TTL_S)
    return code


# ---------------------------------------------------------------------- cases

def report(ctx: HostContext, trade_no: str, reason: str) -> int:
    """Open a case on a trade and freeze its account pending review. Returns the case id."""
    with ctx.store.transaction() as tx:
        t = tx.trade_by_no_or_order(trade_no)
        if t is None:
            raise HostRefused(f"no trade {trade_no}")
        case_id = tx.open_case(t["trade_no"], t["account_id"], reason, ctx.clock())
        if t["account_id"]:
            tx.set_account(t["account_id"], "frozen", True)
            ctx.alert(tx, t["account_id"], "report", f"case {case_id} opened on {t['trade_no']}: "
                      f"{reason}; account frozen pending review")
        return case_id


def close_case(ctx: HostContext, case_id: int, resolution: str, *, unfreeze: bool = False,
               proof: sec.Proof | None = None) -> None:
    """Close an open case with its resolution; ``unfreeze``: also lift the account's freeze
    (only when no other case on that account is still open), a key operation that needs
    ``proof`` when the account is frozen. Raises HostRefused."""
    resolution = resolution.strip()
    if not resolution:
        raise HostRefused("a case is closed with a resolution")

    def change(tx, acct_row) -> None:
        c = tx.case(case_id)
        if c is None:
            raise HostRefused(f"no case {case_id}")
        if c["status"] != "open":
            raise HostRefused(f"case {case_id} is already {c['status']}")
        tx.close_case(case_id, resolution[:200], ctx.clock())
        acct = c["account_id"]
        if not acct:
            return
        ctx.alert(tx, acct, "case_closed", f"case {case_id} closed: {resolution}")
        if unfreeze:
            still_open = tx.open_case_count(acct)
            if still_open:
                raise HostRefused(f"account {acct} has {still_open} other open case(s): it stays frozen")
            tx.set_account(acct, "frozen", False)
            ctx.alert(tx, acct, "unfrozen", f"case {case_id} closed: {resolution}")

    c = ctx.store.view().case(case_id)
    if c is None or not c["account_id"] or not unfreeze:
        with ctx.store.transaction() as tx:
            change(tx, None)
        return
    sec.guarded(ctx, c["account_id"], "close-case-unfreeze", proof, change,
                     needed=lambda acct: bool(acct["frozen"]))


def cases(ctx: HostContext) -> list[dict[str, Any]]:
    """Every case, oldest first: the table's columns (times in epoch seconds) and
    ``created_at_iso`` / ``closed_at_iso`` (ISO 8601 with the machine's offset)."""
    return [dict(r) | {"created_at_iso": iso_time(r["created_at"]),
                       "closed_at_iso": iso_time(r["closed_at"]) if r["closed_at"] is not None else None}
            for r in ctx.store.view().cases()]


# ---------------------------------------------------------------------- reports

def trades(ctx: HostContext, *, terminal: str | None = None, date: str | None = None, account: str | None = None,
           month: str | None = None) -> list[TradeView]:
    """Trades, oldest first, of a terminal and/or account, on a day (YYYY-MM-DD) or in a
    month (YYYY-MM) of :data:`REPORT_TZ`."""
    out = []
    for r in ctx.store.view().trades(terminal=terminal, account=account):
        local = datetime.fromtimestamp(r["created_at"], ZoneInfo(REPORT_TZ))
        if date and local.strftime("%Y-%m-%d") != date:
            continue
        if month and local.strftime("%Y-%m") != month:
            continue
        out.append(TradeView(r["trade_no"], r["order_id"], r["merchant_id"], r["terminal_id"], r["account_id"],
                             r["amount_minor"], r["currency"], r["status"], r["reason"], r["refunded_minor"],
                             r["created_at"]))
    return out


def bill(ctx: HostContext, account_id: str, month: str, tz: str | None = None) -> list[dict[str, Any]]:
    """Every payment, refund and cancel of an account in a month (YYYY-MM in ``tz``, default
    the account's time zone), each with ``balance_minor``: the balance after it (the running
    sum of every entry of the account up to it, months before included)."""
    acct = account(ctx, account_id)
    try:
        zone = ZoneInfo(tz or acct["tz"])
    except Exception:
        raise HostRefused(f"unknown time zone {tz!r}") from None
    try:
        datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise HostRefused("--month is YYYY-MM") from None
    out = []
    balance = 0
    for r in ctx.store.view().customer_ledger(account_id):
        balance += r["delta"]
        when = datetime.fromtimestamp(r["created_at"], zone)
        if when.strftime("%Y-%m") == month:
            out.append({"time": when.isoformat(timespec="seconds"), "kind": r["kind"], "amount_minor": r["delta"],
                        "balance_minor": balance, "currency": r["currency"], "order_id": r["order_id"],
                        "merchant": r["merchant_id"], "reference": r["txn"]})
    return out


def check_books(ctx: HostContext) -> list[str]:
    """Problems with the books (empty when they balance): :func:`~posterm.host.store.check_ledger`."""
    return check_ledger(ctx.store.read())


def order_status(ctx: HostContext, order_id: str, merchant_id: str) -> str | None:
    """The status of the merchant's order (APPROVED, ...), None when there is no such order."""
    row = ctx.store.view().trade_by_order(merchant_id, order_id)
    return row["status"] if row else None
