"""Balance monitoring, the whole-ledger audit, the limit reminder.

**As it happens.** Every ledger entry adds its delta to its ledger account's running total
(``ledger_totals``, kept by the store with the entry, in the same transaction). A customer's
balance column must equal that total: :func:`balance_ok` compares the two (one lookup, not a
re-add) before a payment is approved, and :func:`check_posted` after every balance change
(:func:`posterm.host.ledger.move`). A balance the ledger does not explain (the column changed
behind the ledger's back) freezes the account and raises a ``balance_mismatch`` alert; the
payment is declined (ACCOUNT_FROZEN, "balance not explained by the ledger"), nothing moves.

**Unusual outflow.** The risk rule ``[outflow]`` (:mod:`posterm.host.risk`) compares what
the account paid in the rolling window (24 h by default; this payment included, refunds
deducted: :func:`outflow`) with its usual daily spending (the median of its last
``history_days`` days with spending, before today: :func:`usual_daily`); above ``factor``
times that, its action (``alert`` by default: the customer is told, the payment goes on).

**The audit.** :func:`audit` re-adds the whole ledger per customer and reports every account
whose balance (or running total) differs; each audit is recorded (``host security`` shows
the last one).

**The limit reminder.** When a payment takes the day's total to the account's ``remind_at``
percent of its daily limit or past it (80 by default; 0: never), the customer gets a
``limit_reminder`` alert, once per local day (:func:`limit_reminder`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from posterm.host.context import HostContext
from posterm.host.risk import DEFAULT_RULES
from posterm.host.store import Tx, local_day
from posterm.host.store.queries import Row

MISMATCH_TEXT = "balance not explained by the ledger"
DAY_S = 86400


# ---------------------------------------------------------------------- as it happens

def _freeze_for_mismatch(ctx: HostContext, tx: Tx, account_id: str, balance: int, total: int) -> None:
    tx.set_account(account_id, "frozen", True)
    ctx.alert(tx, account_id, "balance_mismatch",
              f"balance {balance} differs from the ledger's {total} (minor units): account frozen for review")


def balance_ok(ctx: HostContext, tx: Tx, account_id: str) -> bool:
    """Whether the account's balance equals its ledger running total; when it does not, the
    account is frozen and alerted (in ``tx``) and False returned: refuse what was asked."""
    row = tx.balance_and_total(account_id)
    if row is None or row["balance_minor"] == row["total_minor"]:
        return True
    _freeze_for_mismatch(ctx, tx, account_id, row["balance_minor"], row["total_minor"])
    return False


def check_posted(ctx: HostContext, tx: Tx, account_id: str) -> None:
    """After a balance change posted with its ledger entries: the two still agree, or the
    account is frozen and alerted (the posting itself stands: it was the ledger's)."""
    row = tx.balance_and_total(account_id)
    if row is not None and row["balance_minor"] != row["total_minor"]:
        _freeze_for_mismatch(ctx, tx, account_id, row["balance_minor"], row["total_minor"])


# ---------------------------------------------------------------------- unusual outflow

def outflow(tx: Tx, account_id: str, now: float, window_s: float) -> int:
    """What the account paid within ``window_s`` before ``now``, refunds deducted."""
    return tx.outflow_since(account_id, now - window_s)


def usual_daily(tx: Tx, acct: Row, now: float, days: int) -> tuple[int, ...]:
    """The account's daily totals of its last ``days`` days with spending, before today."""
    return tx.daily_totals_before(acct["id"], local_day(now, acct["tz"]), days)


# ---------------------------------------------------------------------- the limit reminder

OVER_LIMIT = ("reject", "confirm")     # set with posterm.host.admin.set_flags (confirm: verified)


def limit_reminder(ctx: HostContext, tx: Tx, acct: Row, before: int, after: int, now: float) -> bool:
    """Remind the customer when today's total went from ``before`` to ``after`` and reached
    its ``remind_at`` share of the daily limit, once per local day. Returns whether it did."""
    share = acct["remind_at"]
    limit = acct["daily_limit"]
    if not share or limit <= 0 or after * 100 < share * limit:
        return False
    day = local_day(now, acct["tz"])
    if acct["reminded_day"] == day:
        return False
    tx.set_account(acct["id"], "reminded_day", day)
    ctx.alert(tx, acct["id"], "limit_reminder",
              f"today's payments ({after} {acct['currency']} minor units) reached {after * 100 // limit}% of the "
              f"daily limit {limit} (reminder at {share}%)")
    return True


# ---------------------------------------------------------------------- the audit

@dataclass(frozen=True, slots=True)
class AuditResult:
    accounts: int
    mismatched: tuple[dict[str, Any], ...]     # account, currency, balance, ledger, running total
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"accounts": self.accounts, "mismatched": list(self.mismatched), "ok": not self.mismatched,
                "audited_at": datetime.fromtimestamp(self.at, timezone.utc).isoformat(timespec="seconds")}


def audit(ctx: HostContext) -> AuditResult:
    """Re-add the whole ledger for every customer account; every account whose balance
    column or running total differs from it. Recorded (its time and what it found)."""
    now = ctx.clock()
    with ctx.store.transaction() as tx:
        rows = tx.ledger_sums_vs_balances()
        bad = tuple({"account": r["id"], "currency": r["currency"], "balance_minor": r["balance_minor"],
                     "ledger_minor": r["ledger_minor"], "running_total_minor": r["total_minor"],
                     "difference_minor": r["balance_minor"] - r["ledger_minor"]}
                    for r in rows if not r["balance_minor"] == r["ledger_minor"] == r["total_minor"])
        tx.record_audit(now, len(rows), [b["account"] for b in bad])
    return AuditResult(len(rows), bad, now)


# ---------------------------------------------------------------------- the security centre

def outflow_rule_text(rules: dict | None = None) -> str:
    r = (rules or DEFAULT_RULES)["outflow"]
    if not r.get("enabled", True):
        return "off"
    return (f"{r['action']} when over {r['factor']}x the usual daily spending within {r['window_s']} s "
            f"(usual: the median of its last {r['history_days']} days with spending, once it has {r['min_history']})")


def security_state(view: Tx, account_id: str, rules: dict | None = None) -> dict[str, Any]:
    """The guard's state as fields (``host security --json``): identity, balance and
    running total, the last audit, the outflow rule, over-limit handling, the reminder."""
    from posterm.host import identity

    acct = view.account(account_id)
    if acct is None:
        return {}
    ident = identity.state(view, account_id)
    bt = view.balance_and_total(account_id)
    last = view.last_audit()
    return {"identity_verified": ident["identity_verified"], "id_last4": ident["id_last4"],
            "balance_minor": bt["balance_minor"], "ledger_running_total_minor": bt["total_minor"],
            "balance_agrees": bt["balance_minor"] == bt["total_minor"],
            "last_audit": None if last is None else {
                "at": datetime.fromtimestamp(last["created_at"], timezone.utc).isoformat(timespec="seconds"),
                "accounts": last["accounts"], "this_account_differed": account_id in json.loads(last["mismatched"])},
            "outflow_rule": outflow_rule_text(rules), "over_limit": acct["over_limit"],
            "remind_at_percent": acct["remind_at"]}


def security_rows(view: Tx, account_id: str, rules: dict | None = None) -> list[tuple[str, str]]:
    """The guard's lines in ``host security``: identity, balance vs running total, the last
    audit, the outflow rule, over-limit handling and the reminder."""
    from posterm.host import identity

    acct = view.account(account_id)
    if acct is None:
        return []
    ident = identity.state(view, account_id)
    bt = view.balance_and_total(account_id)
    last = view.last_audit()
    if last is None:
        audited = "never"
    else:
        found = json.loads(last["mismatched"])
        when = datetime.fromtimestamp(last["created_at"], timezone.utc).isoformat(timespec="seconds")
        audited = f"{when}: " + ("this account differed" if account_id in found else
                                 f"agreed ({len(found)} of {last['accounts']} accounts differed)")
    agree = "agree" if bt["balance_minor"] == bt["total_minor"] else "DIFFER"
    return [
        ("identity", f"verified, ID ****{ident['id_last4']}" if ident["identity_verified"] else "not verified"),
        ("balance vs ledger", f"{bt['balance_minor']} vs running total {bt['total_minor']}: {agree}"),
        ("last audit", audited),
        ("outflow rule", outflow_rule_text(rules)),
        ("over a limit", "ask for confirmation" if acct["over_limit"] == "confirm" else "reject"),
        ("limit reminder", f"at {acct['remind_at']}% of the daily limit" if acct["remind_at"] else "off"),
    ]
