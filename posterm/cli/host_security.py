"""`posterm host phone|operator|webhook|security` and `host account reset-password`: the
account security centre (posterm.host.phone, .alerts, .security), and the verification
options the key operations of `posterm host account ...` and `close-case` take
(:func:`proof_options`, :func:`read_proof`)."""

from __future__ import annotations

import re
import sys
from typing import Any, Callable

import click

from posterm.cli.common import ID32, IntType, TextType, emit_json
from posterm.cli.host_common import _iso_text, _table, db_option, host_errors, json_option, open_host

MAX_SECRET = 128


class VerificationCodeType(click.ParamType):
    """A verification code from the phone: 6 digits."""

    name = "code"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not (len(text) == 6 and text.isascii() and text.isdigit()):
            self.fail("a verification code is 6 digits", param, ctx)
        return text


class WebhookUrlType(click.ParamType):
    """An http:// URL on a loopback address (127.0.0.0/8, [::1], localhost)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from posterm.host.alerts import MAX_URL, loopback_http

        text = str(value)
        if len(text) > MAX_URL or not loopback_http(text):
            self.fail(f"{text[:40]!r}: a webhook is an http:// URL on a loopback address "
                      "(127.0.0.1, [::1], localhost)", param, ctx)
        return text


CODE6 = VerificationCodeType()
ID_NUMBER = TextType(64)


def read_stdin_secret(what: str, hint: str) -> str:
    """One line from stdin (a hidden prompt on a terminal), without its newline. Never echoed."""
    if sys.stdin.isatty():
        value = click.prompt(what, hide_input=True)
    else:
        value = sys.stdin.readline(MAX_SECRET + 2).rstrip("\r\n")
    if not value:
        raise click.BadParameter(f"no {what} on stdin", param_hint=hint)
    if len(value) > MAX_SECRET or any(ord(c) < 32 for c in value):
        raise click.BadParameter(f"the {what} on stdin is not one line of at most {MAX_SECRET} characters "
                                 "(not shown)", param_hint=hint)
    return value


def payment_password(value: str, hint: str) -> str:
    if not (value.isascii() and value.isdigit() and 6 <= len(value) <= 12):
        raise click.BadParameter("a payment password is 6 to 12 digits (not shown)", param_hint=hint)
    return value


def proof_options(fn: Callable) -> Callable:
    """--code, --operator, --password-stdin: the verification a key operation needs."""
    fn = click.option("--password-stdin", is_flag=True,
                      help="Read the payment password (with --code) or the operator's password (with --operator) "
                           "from stdin.")(fn)
    fn = click.option("--operator", type=ID32, default=None,
                      help="Support staff: verify with your own operator credentials (password on stdin).")(fn)
    fn = click.option("--code", type=CODE6, default=None,
                      help="The verification code sent to the phone (`posterm host phone send-code`).")(fn)
    return fn


def read_proof(code: str | None, operator: str | None, password_stdin: bool):
    """The Proof the options give (None: none given). Raises click.BadParameter/UsageError."""
    from posterm.host.security import CustomerProof, OperatorProof

    if code is not None and operator is not None:
        raise click.UsageError("give --code (the customer) or --operator (support staff), not both")
    if (code is not None or operator is not None) and not password_stdin:
        raise click.BadParameter("needed with --code or --operator: the password is read from stdin",
                                 param_hint="--password-stdin")
    if password_stdin and code is None and operator is None:
        raise click.BadParameter("give --code (payment password) or --operator (operator password) with it",
                                 param_hint="--password-stdin")
    if not password_stdin:
        return None
    if operator is not None:
        return OperatorProof(operator, read_stdin_secret("operator password", "--password-stdin"))
    return CustomerProof(payment_password(read_stdin_secret("payment password", "--password-stdin"),
                                          "--password-stdin"), code)


# ---------------------------------------------------------------------- posterm host phone

class _PhoneGroup(click.Group):
    """`posterm host phone ACCOUNT` shows the inbox; `posterm host phone send-code ...` etc."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_PhoneGroup)
def phone() -> None:
    """The account holder's emulated phone: `posterm host phone ACCOUNT [--json]` shows its
    inbox (alerts, verification codes, approval requests; newest first, 200 kept).

    Verification codes are 6 digits, valid 5 minutes, single use, dead after 5 wrong tries;
    the host keeps only a keyed HMAC of each, and the inbox's texts sealed: this is the one
    place a code is shown.
    """


@phone.command("show", hidden=True)
@click.argument("account_id", type=ID32)
@click.option("--limit", type=IntType(1, 200), default=20, show_default=True, help="Entries shown.")
@json_option
@db_option
@host_errors
def phone_show(account_id, limit, as_json, db_path):
    """The phone's inbox (same as `posterm host phone ACCOUNT`)."""
    from posterm.host import phone as ph

    h = open_host(db_path)
    try:
        rows = ph.inbox(h.ctx, account_id, limit)
    finally:
        h.close()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("inbox empty")
    for r in rows:
        click.echo(f"{r['created_at_iso']}  #{r['id']} [{r['kind']}] {r['text']}")


@phone.command("send-code")
@click.argument("account_id", type=ID32)
@click.option("--purpose", type=click.Choice(["set-limits", "two-factor-off", "confirm-pref", "over-limit",
                                              "unfreeze", "reset-password"]), required=True,
              help="The key operation the code verifies (a payment's code comes with the payment).")
@json_option
@db_option
@host_errors
def phone_send_code(account_id, purpose, as_json, db_path):
    """Send a verification code to ACCOUNT's phone (read it with `posterm host phone ACCOUNT`)."""
    from posterm.host import phone as ph

    h = open_host(db_path)
    try:
        rid = ph.send(h.ctx, account_id, purpose)
    finally:
        h.close()
    if as_json:
        emit_json({"account": account_id, "purpose": purpose, "request": rid, "valid_s": int(ph.CODE_TTL_S)})
    else:
        click.echo(f"code sent to {account_id}'s phone (request {rid}, valid 5 minutes): posterm host phone {account_id}")


def _answer(account_id, request_id, approve, as_json, db_path):
    from posterm.host import phone as ph

    h = open_host(db_path)
    try:
        out = ph.answer(h.ctx, account_id, request_id, approve=approve)
    finally:
        h.close()
    if as_json:
        emit_json(out)
    else:
        extra = f"; payment {out['trade_status'].lower()}" if out["trade_status"] else ""
        click.echo(f"request {out['request']} ({out['purpose']}) {out['state']}{extra}")


@phone.command("approve")
@click.argument("account_id", type=ID32)
@click.argument("request_id", type=IntType(1, 2 ** 63 - 1), required=False)
@json_option
@db_option
@host_errors
def phone_approve(account_id, request_id, as_json, db_path):
    """Approve (device biometric) ACCOUNT's waiting request, the latest by default: a
    two-factor payment of an account that prefers biometric approval is paid. Exit 1: none
    waiting, or expired."""
    _answer(account_id, request_id, True, as_json, db_path)


@phone.command("refuse")
@click.argument("account_id", type=ID32)
@click.argument("request_id", type=IntType(1, 2 ** 63 - 1), required=False)
@json_option
@db_option
@host_errors
def phone_refuse(account_id, request_id, as_json, db_path):
    """Refuse ACCOUNT's waiting request: its payment is declined (customer cancelled)."""
    _answer(account_id, request_id, False, as_json, db_path)


# ---------------------------------------------------------------------- posterm host operator

@click.group()
def operator() -> None:
    """Support operators: staff who verify key operations with their own credentials
    (`--operator NAME --password-stdin`), each use logged in the security audit."""


@operator.command("add")
@click.argument("name", type=ID32)
@db_option
@host_errors
def operator_add(name, db_path):
    """Add operator NAME; the password (at least 8 characters) is read from stdin."""
    from posterm.host import security

    password = read_stdin_secret("operator password", "stdin")
    if len(password) < 8:
        raise click.BadParameter("an operator password has at least 8 characters (not shown)", param_hint="stdin")
    h = open_host(db_path)
    try:
        security.add_operator(h.ctx, name, password)
    finally:
        h.close()
    click.echo(f"operator {name} added")


@operator.command("list")
@json_option
@db_option
@host_errors
def operator_list(as_json, db_path):
    """Every operator: locked after 5 wrong passwords?"""
    from posterm.host import security

    h = open_host(db_path)
    try:
        rows = security.operators(h.ctx)
    finally:
        h.close()
    _table(rows if as_json else [_iso_text(r) for r in rows], as_json, False)


@operator.command("log")
@click.option("--account", "account_id", type=ID32, default=None, help="Only this account's entries.")
@click.option("--operator", "operator_name", type=ID32, default=None, help="Only this operator's entries.")
@click.option("--limit", type=IntType(1, 10000), default=100, show_default=True)
@json_option
@db_option
@host_errors
def operator_log(account_id, operator_name, limit, as_json, db_path):
    """The security audit, newest first: every verified (or refused) key operation, who
    (customer or operator:NAME), what, the outcome, when. Never a secret."""
    from posterm.host import security

    h = open_host(db_path)
    try:
        rows = security.audit_log(h.ctx, account_id=account_id, operator=operator_name, limit=limit)
    finally:
        h.close()
    _table(rows if as_json else [_iso_text(r) for r in rows], as_json, False)


# ---------------------------------------------------------------------- posterm host webhook

@click.group()
def webhook() -> None:
    """Alerts to the account's own loopback HTTP endpoint, signed (HMAC-SHA256), retried.

    Each alert is POSTed as JSON with X-Posterm-Event (its id, the same on every retry) and
    X-Posterm-Signature: sha256=HEX (HMAC-SHA256 of the body under the account's secret);
    retried 1 s * 2^n apart (at most 300 s), 8 tries in all. `host serve` delivers in the
    background; `deliver` drains once.
    """


@webhook.command("set")
@click.argument("account_id", type=ID32)
@click.argument("url", type=WebhookUrlType())
@json_option
@db_option
@host_errors
def webhook_set(account_id, url, as_json, db_path):
    """Send ACCOUNT's alerts to URL (http:// on loopback). Prints the signing secret once:
    keep it, the host shows it never again (set again for a new one)."""
    from posterm.host import alerts

    h = open_host(db_path)
    try:
        secret = alerts.set_webhook(h.ctx, account_id, url)
    finally:
        h.close()
    if as_json:
        emit_json({"account": account_id, "url": url, "secret": secret})
    else:
        click.echo(secret)
        click.echo(f"webhook of {account_id}: {url}; the secret above is shown once", err=True)


@webhook.command("remove")
@click.argument("account_id", type=ID32)
@db_option
@host_errors
def webhook_remove(account_id, db_path):
    """Stop ACCOUNT's webhook (its undelivered events are dropped)."""
    from posterm.host import alerts

    h = open_host(db_path)
    try:
        had = alerts.remove_webhook(h.ctx, account_id)
    finally:
        h.close()
    click.echo(f"webhook of {account_id} removed" if had else f"{account_id} had no webhook")


@webhook.command("deliver")
@json_option
@db_option
@host_errors
def webhook_deliver(as_json, db_path):
    """Deliver the due events once (what `host serve` does in the background)."""
    from posterm.host import alerts

    h = open_host(db_path)
    try:
        counts = alerts.deliver(h.ctx)
    finally:
        h.close()
    if as_json:
        emit_json(counts)
    else:
        click.echo(f"delivered {counts['delivered']}, to retry {counts['retry']}, given up {counts['failed']}")


# ---------------------------------------------------------------------- posterm host security

@click.command("security")
@click.argument("account_id", type=ID32)
@json_option
@db_option
@host_errors
def security_cmd(account_id, as_json, db_path):
    """The account security centre: every protection's state, section by section (account,
    payment password, second factor, limits, alerts and webhook, security audit)."""
    h = open_host(db_path)
    try:
        s = h.security(account_id)
    finally:
        h.close()
    if as_json:
        emit_json(s)
        return
    click.echo(f"security centre of {account_id}")
    for title, keys in s["sections"]:
        click.echo(f"{title}:")
        for k in keys:
            v = s[k]
            if isinstance(v, list):
                click.echo(f"  {k}: {'none' if not v else ''}")
                for item in v:
                    click.echo("    " + _line(item))
            else:
                click.echo(f"  {k:<22} {v}")


def _line(item: Any) -> str:
    if isinstance(item, dict):
        if "kind" in item and "text" in item:
            return f"[{item['kind']}] {item['text']}"
        if "action" in item:
            return f"{item['created_at_iso']}  {item['actor']}  {item['action']}  {item['outcome']}"
        return "  ".join(f"{k}={v}" for k, v in item.items())
    return str(item)


# ---------------------------------------------------------------------- host account reset-password

@click.command("reset-password")
@click.argument("account_id", type=ID32)
@click.option("--id-number", type=ID_NUMBER, required=True, help="The ID number of the account's real-name record.")
@click.option("--code", type=CODE6, required=True, help="A code sent with `host phone send-code --purpose reset-password`.")
@db_option
@host_errors
def reset_password(account_id, id_number, code, db_path):
    """Reset a forgotten payment password with the ID number the account was verified with
    and a verification code (not the old password); the new one is read from stdin and must
    pass the password rules (not one digit repeated, not a run, not the ID's birth date). A
    PIN-locked account is unlocked. Exit 1: the ID number or code is wrong, or the new
    password breaks a rule (named; the code stays usable)."""
    from posterm.host import security

    if not re.fullmatch(r"[0-9]{17}[0-9Xx]", id_number):
        raise click.BadParameter("an ID number is 18 characters (17 digits and a digit or X)", param_hint="--id-number")
    new = payment_password(read_stdin_secret("new payment password", "stdin"), "stdin")
    h = open_host(db_path)
    try:
        security.reset_password(h.ctx, account_id, id_number, code, new)
    finally:
        h.close()
    click.echo("payment password reset; the payment password works again")


def register(host: click.Group) -> None:
    host.add_command(phone)
    host.add_command(operator)
    host.add_command(webhook)
    host.add_command(security_cmd)
    host.commands["account"].add_command(reset_password)

