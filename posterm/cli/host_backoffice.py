"""`posterm host` back office: merchants, terminals, risk decisions, settlements, the
ledger audit, and real-name verification of an existing account.

Registered into the `host` group by :func:`register` (posterm.cli.host_cmd's
HOST_COMMAND_MODULES). Every command that prints times prints them in one time zone, named
in its first line (text) or in a ``tz`` field (JSON): ``--tz``, else the account's when the
command is about one account, else UTC.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import click

from posterm.cli.common import DATE, ID32, TZ, IntType, TextType, emit_json
from posterm.cli.host_common import ID_NUMBER, _table, db_option, host_errors, json_option, open_host


def _zone(h, tz: str | None, account_id: str | None = None) -> tuple[str, str]:
    """(zone name, how it was chosen) for a command's times."""
    if tz:
        return tz, "--tz"
    if account_id:
        return h.account(account_id)["tz"], f"the time zone of account {account_id}"
    return "UTC", "the default"


def _when(ts: float | None, zone: str) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, ZoneInfo(zone)).isoformat(timespec="seconds")


def _header(what: str, zone: str, how: str) -> None:
    click.echo(f"{what}; times in {zone} ({how})")


# ---------------------------------------------------------------------- the audit

@click.command()
@json_option
@db_option
@host_errors
def audit(as_json, db_path):
    """Re-add the whole ledger and report every account whose balance differs from it (or
    from its running total, which every payment is checked against). Exit 1 when any
    differs, 0 when none. Recorded: `posterm host security` shows the last audit."""
    from posterm.host import monitor

    h = open_host(db_path)
    try:
        result = monitor.audit(h.ctx)
    finally:
        h.close()
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"audit {result.to_json()['audited_at']} (UTC): {result.accounts} accounts, "
                   f"{len(result.mismatched)} differ from the ledger")
        for m in result.mismatched:
            click.echo(f"  {m['account']}: balance {m['balance_minor']}, ledger {m['ledger_minor']}, running total "
                       f"{m['running_total_minor']} ({m['currency']} minor units; difference {m['difference_minor']})")
    if result.mismatched:
        raise SystemExit(1)


# ---------------------------------------------------------------------- merchants

@click.group()
def merchant() -> None:
    """Merchants (each has terminals and gateway apps)."""


@merchant.command("add")
@click.argument("merchant_id", type=ID32)
@click.option("--name", type=TextType(128), required=True, help="The merchant's name.")
@db_option
@host_errors
def merchant_add(merchant_id, name, db_path):
    """Add a merchant. Exit 1: it exists."""
    from posterm.host import HostRefused

    h = open_host(db_path)
    try:
        if h.store.view().merchant_exists(merchant_id):
            raise HostRefused(f"merchant {merchant_id} exists")
        h.add_merchant(merchant_id, name)
    finally:
        h.close()
    click.echo(f"merchant {merchant_id} added")


@merchant.command("list")
@json_option
@db_option
@host_errors
def merchant_list(as_json, db_path):
    """Every merchant, with its number of terminals."""
    h = open_host(db_path)
    try:
        rows = [{"merchant_id": r["id"], "name": r["name"], "terminals": r["terminals"]}
                for r in h.store.view().merchants()]
    finally:
        h.close()
    _table(rows, as_json, False)


# ---------------------------------------------------------------------- terminals

@click.command("add")
@click.argument("terminal_id", type=ID32)
@click.option("--merchant", type=ID32, required=True, help="The merchant it belongs to.")
@click.option("--location", type=ID32, default="CN-SH", show_default=True,
              help="Region (risk control compares it with the payer's home region).")
@db_option
@host_errors
def terminal_add(terminal_id, merchant, location, db_path):
    """Register a terminal of a merchant (then `posterm host terminal key` for its key).
    Exit 1: it exists, or no such merchant."""
    from posterm.host import HostRefused

    h = open_host(db_path)
    try:
        if h.store.view().terminal(terminal_id) is not None:
            raise HostRefused(f"terminal {terminal_id} exists")
        h.register_terminal(terminal_id, merchant, location)
    finally:
        h.close()
    click.echo(f"terminal {terminal_id} of {merchant} registered")


@click.command("list")
@click.option("--merchant", type=ID32, default=None, help="Only this merchant's.")
@click.option("--tz", type=TZ, default=None, help="Time zone of the times (default UTC).")
@json_option
@db_option
@host_errors
def terminal_list(merchant, tz, as_json, db_path):
    """Registered terminals: merchant, location, when registered."""
    h = open_host(db_path)
    try:
        zone, how = _zone(h, tz)
        rows = [{"terminal_id": r["id"], "merchant_id": r["merchant_id"], "location": r["location"],
                 "registered_at": _when(r["registered_at"], zone)} for r in h.store.view().terminals(merchant)]
    finally:
        h.close()
    if as_json:
        emit_json({"tz": zone, "terminals": rows})
        return
    _header(f"{len(rows)} terminals", zone, how)
    _table(rows, False, False)


# ---------------------------------------------------------------------- risk decisions

@click.command()
@click.option("--account", type=ID32, default=None, help="Only this account's.")
@click.option("--action", type=click.Choice(["allow", "alert", "confirm", "reject"]), default=None,
              help="Only decisions with this action.")
@click.option("--since", type=DATE, default=None, help="From this day on (YYYY-MM-DD, in the command's time zone).")
@click.option("--tz", type=TZ, default=None, help="Time zone of --since and the times (default: the account's "
                                                  "with --account, else UTC).")
@click.option("--limit", type=IntType(1, 100000), default=1000, show_default=True, help="At most this many.")
@json_option
@db_option
@host_errors
def decisions(account, action, since, tz, limit, as_json, db_path):
    """Risk control's decisions, oldest first, with their reasons and the payment they were
    about."""
    h = open_host(db_path)
    try:
        zone, how = _zone(h, tz, account)
        start = None
        if since:
            start = datetime.fromisoformat(since).replace(tzinfo=ZoneInfo(zone)).timestamp()
        rows = [{"time": _when(r["created_at"], zone), "account": r["account_id"], "action": r["decision"],
                 "reasons": "; ".join(json.loads(r["reasons"])) or "-", "order_id": r["order_id"],
                 "amount_minor": r["amount_minor"], "currency": r["currency"], "terminal": r["terminal_id"],
                 "trade_no": r["trade_no"]}
                for r in h.store.view().risk_decisions(account=account, action=action, since=start, limit=limit)]
    finally:
        h.close()
    if as_json:
        emit_json({"tz": zone, "decisions": rows})
        return
    _header(f"{len(rows)} risk decisions", zone, how)
    _table(rows, False, False)


# ---------------------------------------------------------------------- settlements

@click.command()
@click.option("--terminal", type=ID32, default=None, help="Only this terminal's batches.")
@click.option("--tz", type=TZ, default=None, help="Time zone of the times (default UTC).")
@json_option
@db_option
@host_errors
def settlements(terminal, tz, as_json, db_path):
    """Settled batches, oldest first: terminal, batch, whether the terminal's totals agreed
    with the host's, and the host's totals per currency (integer minor units)."""
    h = open_host(db_path)
    try:
        zone, how = _zone(h, tz)
        rows: list[dict[str, Any]] = []
        for r in h.store.view().settlements(terminal):
            totals = json.loads(r["totals"])
            rows.append({"time": _when(r["created_at"], zone), "terminal": r["terminal_id"], "batch": r["batch_no"],
                         "agrees": bool(r["agrees"]), "totals": totals})
    finally:
        h.close()
    if as_json:
        emit_json({"tz": zone, "settlements": rows})
        return
    _header(f"{len(rows)} settled batches", zone, how)
    flat = [{**{k: v for k, v in r.items() if k != "totals"},
             "totals": " | ".join(f"{t['currency']} approved {t['approved_count']}/{t['approved_minor']} refunded "
                                  f"{t['refunded_count']}/{t['refunded_minor']} cancelled {t['cancelled_count']}"
                                  for t in r["totals"]) or "-"} for r in rows]
    _table(flat, False, False)


# ---------------------------------------------------------------------- real-name verification

@click.command("verify")
@click.argument("account_id", type=ID32)
@click.option("--id-number", type=ID_NUMBER, required=True,
              help="The holder's mainland resident ID number (18 characters, GB 11643 check digit).")
@click.option("--real-name-of", "real_name_of", type=TextType(64), required=True, help="The name on that ID.")
@db_option
@host_errors
def account_verify(account_id, id_number, real_name_of, db_path):
    """Real-name verify an account with a resident ID number and the name on it. The host
    keeps keyed hashes (the HSM's identity key) and the number's last 4 characters only."""
    from posterm.host import identity

    h = open_host(db_path)
    try:
        last4 = identity.verify_account(h.ctx, account_id, id_number, real_name_of)
    finally:
        h.close()
    click.echo(f"{account_id} real-name verified (ID ****{last4})")


def register(host: click.Group) -> None:
    """Add the back-office commands to the `posterm host` group."""
    host.add_command(audit)
    host.add_command(merchant)
    host.add_command(decisions)
    host.add_command(settlements)
    group = host.commands["terminal"]
    assert isinstance(group, click.Group)
    group.add_command(terminal_add)
    group.add_command(terminal_list)
    group.help = "Terminals registered at the host: add, list, and their keys."
    accounts = host.commands["account"]
    assert isinstance(accounts, click.Group)
    accounts.add_command(account_verify)

