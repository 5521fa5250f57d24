"""`posterm host`: run and administer the emulated payment host."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from posterm.cli.common import (
    CURRENCY,
    DATE,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    ID32,
    MONTH,
    NOTE,
    ORDER_ID,
    TZ,
    Directory,
    InputFile,
    IdType,
    IntType,
    ListenType,
    SecondsType,
    TextType,
    emit_json,
    fail,
)

from posterm.cli.host_security import CODE6, proof_options, read_proof  # verification (the security centre)
from posterm.errors import PosError
from posterm.cli.host_common import (  # noqa: F401 - shared with the host command modules
    ID_NUMBER,
    MONEY,
    _iso_text,
    _table,
    db_option,
    host_errors,
    json_option,
    money,
    open_host,
)


@click.group()
def host() -> None:
    """The emulated payment host: serve it, manage accounts, read trades, bills and cases.

    Every command takes --db (default $POSTERM_HOME/host.db). `serve` (unless --no-demo),
    like `posterm emulate` and `posterm demo`, loads the demo data into a database with
    no merchant yet (merchant M100000001, terminals T0000001..T0004096, and the test
    payment codes 289900000000000001..008; see docs/host.md). The other commands never
    load it.
    """


@host.command()
@click.option("--listen", type=ListenType(url=False), default="127.0.0.1:0", show_default=True, help="HOST:PORT (loopback by default).")
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback listen address.")
@click.option("--no-demo", is_flag=True, help="Do not load the demo data into a database with no merchant.")
@click.option("--risk-rules", type=InputFile(text=True), help="Risk rules TOML.")
@click.option("--outage-seconds", type=SecondsType(0, 3600), default=30.0, show_default=True,
              help="How long test code ...006 keeps the host silent.")
@click.option("--backup-every", default=None, help="Take an encrypted backup this often (e.g. 1h, 15m).")
@click.option("--backup-to", multiple=True, type=Directory(), help="Backup directory (repeatable).")
@click.option("--keep", type=click.IntRange(1, 10000), default=24, show_default=True, help="Backups kept per directory.")
@click.option("--backup-key-file", type=InputFile(max_bytes=4096), help="Backup key file.")
@click.option("--max-connections", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Connections held at once.")
@click.option("--max-pending", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Of which not logged on yet (the oldest is closed to admit a new one).")
@click.option("--logon-deadline", type=SecondsType(0.1, 600), default=10.0, show_default=True,
              help="Seconds a new connection has to log on.")
@click.option("--idle-timeout", type=SecondsType(1, 86400), default=300.0, show_default=True,
              help="Seconds a logged-on connection may stay silent.")
@click.option("--gateway", "gateway_listen", type=ListenType(url=False), default=None,
              help="Also serve the merchant gateway (Alipay /gateway.do, WeChat Pay v2) on HOST:PORT (loopback only).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Host processes sharing the database and the listening socket (a supervisor restarts a dead one).")
@click.option("--max-restarts", type=click.IntRange(0, 100000), default=5, show_default=True,
              help="With --workers: worker restarts allowed within 60 s before serve gives up (exit 3).")
@click.option("--no-group-commit", is_flag=True, help="One durable commit per request (SQLite: group commit is on by default).")
@db_option
@host_errors
def serve(listen, allow_remote, no_demo, risk_rules, outage_seconds, backup_every, backup_to, keep,
          backup_key_file, max_connections, max_pending, logon_deadline, idle_timeout, gateway_listen, workers,
          max_restarts, no_group_commit, db_path):
    """Serve the host to terminals over TCP until Ctrl-C or SIGTERM.

    Prints the address (tcp://127.0.0.1:PORT) as the first line of stdout; with
    --gateway, the gateway's (http://127.0.0.1:PORT) as the second.

    With --workers N, N worker processes accept on one socket and share the database; the
    supervisor restarts a worker that dies, and exits 3 after --max-restarts (5) restarts within 60 s.
    Backups and the gateway run once, in the supervisor. See docs/host.md, "Scaling".
    """
    from posterm.host.server import ServerLimits
    from posterm.host.server import serve as start

    if max_pending > max_connections:
        raise click.BadParameter("must not exceed --max-connections", param_hint="--max-pending")
    if gateway_listen is not None:
        from posterm.errors import ConfigError
        from posterm.host.gateway.http import parse_listen

        try:
            parse_listen(gateway_listen)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--gateway") from None
    limits = ServerLimits(max_connections, max_pending, logon_deadline, idle_timeout)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before the address is announced: no race
    h = open_host(db_path, demo=not no_demo, risk_config=risk_rules, outage_seconds=outage_seconds,
                  group_commit=not no_group_commit and workers == 1)
    scheduler = None
    if backup_every is not None or backup_to or backup_key_file:
        if not (backup_every and backup_to and backup_key_file):
            raise click.UsageError("scheduled backups need --backup-every, --backup-to and --backup-key-file")
        try:
            from posterm.host.backup import BackupScheduler, parse_interval
        except ImportError:
            raise click.UsageError("backups are not available in this build") from None
        # the same backup as `posterm host backup`: a file, or a PostgreSQL database's logical copy
        source = h.store.path if h.store.dialect == "sqlite" else h.store.url
        scheduler = BackupScheduler(source, list(backup_to), backup_key_file, parse_interval(backup_every), keep)
    if workers == 1:
        server = start(h, listen, allow_remote=allow_remote, limits=limits)
    else:
        server = _start_workers(h, db_path, workers, listen, allow_remote, limits, not no_group_commit, risk_rules,
                                outage_seconds, max_restarts)
    gateway_server = None
    if gateway_listen is not None:
        try:
            gateway_server = _start_gateway(h, gateway_listen)
        except BaseException:
            server.close()
            h.close()
            raise
    from posterm.host.alerts import Deliverer

    deliverer = Deliverer(h.ctx)     # the alerts' webhooks, in the background
    deliverer.start()
    click.echo(server.address, nl=True)
    if gateway_server is not None:
        click.echo(gateway_server.address, nl=True)
    sys.stdout.flush()
    if scheduler:
        scheduler.start()
    try:
        while not stop.wait(0.5):
            getattr(server, "check", lambda: None)()   # workers: restart the dead (TooManyRestarts: exit 3)
    except KeyboardInterrupt:
        pass
    except PosError as exc:
        if type(exc).__name__ != "TooManyRestarts":
            raise
        fail(str(exc), EXIT_UNKNOWN)
    finally:
        if scheduler:
            scheduler.stop()
        deliverer.stop()
        if gateway_server is not None:
            gateway_server.close()
        server.close()
        h.close()


def _start_workers(h, db_path, workers, listen, allow_remote, limits, group_commit, risk_rules, outage_seconds,
                   max_restarts=5):
    """The supervisor of ``workers`` host processes on ``h``'s database (posterm.host.workers)."""
    from dataclasses import asdict

    from posterm.host.workers import Supervisor, WorkerConfig

    config = WorkerConfig(db=db_path, group_commit=group_commit, risk_rules=risk_rules, outage_seconds=outage_seconds,
                          allow_remote=allow_remote, limits=asdict(limits))
    try:
        return Supervisor(config, workers, listen, max_restarts=max_restarts).start()
    except BaseException:
        h.close()
        raise


def _start_gateway(h, listen: str):
    """The merchant gateway over ``h`` on ``listen``, with its notification worker."""
    from posterm.host.gateway import Gateway
    from posterm.host.gateway.http import GatewayServer
    from posterm.host.gateway.notify import Notifier

    gw = Gateway(h)
    return GatewayServer(gw, listen, notifier=Notifier(gw))


@host.group()
def terminal() -> None:
    """Terminals registered at the host: their keys."""


@terminal.command("key")
@click.argument("terminal_id", type=ID32)
@click.option("--algorithm", type=click.Choice(["AES", "TDES"]), default="AES", show_default=True,
              help="AES DUKPT (X9.24-3) or TDES DUKPT (X9.24-1, legacy PIN pads).")
@json_option
@db_option
@host_errors
def terminal_key(terminal_id, algorithm, as_json, db_path):
    """Issue a new initial DUKPT key for TERMINAL_ID, as a TR-31 key block (version D, usage B1)
    under the terminal's key-block protection key.

    Prints the block alone on stdout (for `posterm keys load --block-file`), what it is on
    stderr. Every issue is a new key with a new key id and the next key version, so its
    KSNs were never seen by the host, and the PIN pad refuses an older block afterwards.
    The block is encrypted, but it is a key: do not leave it lying around. Exit 1: the host
    does not know the terminal.
    """
    h = open_host(db_path)
    try:
        issued = h.issue_terminal_key(terminal_id, algorithm)
    finally:
        h.close()
    if as_json:
        emit_json({"terminal_id": terminal_id, "algorithm": algorithm, "key_block": issued.block,
                   "initial_ksn": issued.ksn.hex().upper(), "kcv": issued.kcv.hex().upper(),
                   "key_version": issued.key_version})
        return
    click.echo(issued.block)
    click.echo(f"new {algorithm} initial key for {terminal_id}: initial KSN {issued.ksn.hex().upper()}, "
               f"KCV {issued.kcv.hex().upper()}, key version {issued.key_version}; load it with "
               f"`posterm keys load --port PORT --block-file FILE`", err=True)


@host.group()
def account() -> None:
    """Customer accounts."""


@account.command("add")
@click.argument("account_id", type=ID32)
@click.option("--name", type=NOTE, required=True)
@click.option("--currency", type=CURRENCY, default="CNY", show_default=True)
@click.option("--balance", type=MONEY, default="0", help="Opening balance, decimal.")
@click.option("--per-tx-limit", type=MONEY, default="5000.00", show_default=True)
@click.option("--daily-limit", type=MONEY, default="20000.00", show_default=True)
@click.option("--password-free", type=MONEY, default="1000.00", show_default=True, help="No confirmation up to this amount.")
@click.option("--confirm", type=click.Choice(["pin", "phone"]), default="pin", show_default=True)
@click.option("--home-region", type=ID32, default="CN-SH", show_default=True)
@click.option("--tz", type=TZ, default="Asia/Shanghai", show_default=True)
@click.option("--real-name", is_flag=True, help="Real-name verified: needs --id-number and --real-name-of.")
@click.option("--id-number", type=ID_NUMBER, default=None,
              help="The holder's mainland resident ID number (18 characters, checked; kept only as a keyed hash "
                   "and its last 4).")
@click.option("--real-name-of", "real_name_of", type=TextType(64), default=None, help="The name on that ID.")
@click.option("--not-verified", is_flag=True, help="Not real-name verified (the default without --real-name).")
@click.option("--set-password", is_flag=True, help="Prompt for a payment password (hidden).")
@db_option
@host_errors
def account_add(account_id, name, currency, balance, per_tx_limit, daily_limit, password_free, confirm, home_region,
                tz, real_name, id_number, real_name_of, not_verified, set_password, db_path):
    """Open an account. Without --real-name (an ID number and the name on it) it is not
    real-name verified: it pays at most 200 (major units) per payment. Payment-password
    rules: 6 to 12 digits, not one digit repeated, not a run (123456, 654321), not the birth
    date in the ID (MMDD or DDMM in it)."""
    if real_name and not_verified:
        raise click.UsageError("--real-name and --not-verified contradict each other")
    if (real_name or id_number or real_name_of) and not (id_number and real_name_of):
        raise click.UsageError("--real-name needs both --id-number and --real-name-of")
    from posterm.host.identity import PasswordRuleBroken

    password = click.prompt("Payment password", hide_input=True, confirmation_prompt=True) if set_password else None
    h = open_host(db_path)
    try:
        h.add_account(account_id, name, currency=currency, balance_minor=money(balance, currency, "--balance"),
                      per_tx_limit=money(per_tx_limit, currency, "--per-tx-limit"),
                      daily_limit=money(daily_limit, currency, "--daily-limit"),
                      password_free=money(password_free, currency, "--password-free"), confirm=confirm, home_region=home_region,
                      tz=tz, real_name=False, password=password, id_number=id_number, id_name=real_name_of)
    except PasswordRuleBroken as exc:
        raise click.BadParameter(str(exc), param_hint="payment password") from None
    finally:
        h.close()
    click.echo(f"account {account_id} opened" + (", real-name verified" if id_number else ""))


@account.command("show")
@click.argument("account_id", type=ID32)
@json_option
@db_option
@host_errors
def account_show(account_id, as_json, db_path):
    """Show an account (never its password)."""
    h = open_host(db_path)
    try:
        a = h.account(account_id)
    finally:
        h.close()
    if as_json:
        emit_json(a)
    else:
        for k, v in _iso_text(a).items():
            click.echo(f"{k:<16} {v}")


@account.command("set-limits")
@click.argument("account_id", type=ID32)
@click.option("--per-tx-limit", type=MONEY, default=None)
@click.option("--daily-limit", type=MONEY, default=None)
@click.option("--password-free", type=MONEY, default=None)
@proof_options
@db_option
@host_errors
def account_limits(account_id, per_tx_limit, daily_limit, password_free, code, operator, password_stdin, db_path):
    """Change an account's limits (decimal amounts in its currency). Lowering is free;
    raising one needs --code (from `host phone send-code ACCOUNT --purpose set-limits`) with
    the payment password on stdin, or --operator with the operator's password on stdin."""
    proof = read_proof(code, operator, password_stdin)
    if per_tx_limit is None and daily_limit is None and password_free is None:
        raise click.UsageError("give at least one of --per-tx-limit, --daily-limit, --password-free")
    h = open_host(db_path)
    try:
        cur = h.account(account_id)["currency"]
        limits = {k: money(v, cur, "--" + k.replace("_", "-")) for k, v in (("per_tx_limit", per_tx_limit), ("daily_limit", daily_limit),
                                                ("password_free", password_free)) if v is not None}
        h.set_limits(account_id, proof, **limits)
    finally:
        h.close()
    click.echo("limits updated")


@account.command("set-security")
@click.argument("account_id", type=ID32)
@click.option("--two-factor/--no-two-factor", default=None,
              help="Two-factor: a confirmed payment needs the payment password and then the phone.")
@click.option("--real-name/--no-real-name", default=None, help="Real-name verification status.")
@click.option("--confirm", type=click.Choice(["pin", "phone"]), default=None,
              help="How the customer confirms a payment above the password-free threshold.")
@click.option("--prefer", type=click.Choice(["code", "biometric"]), default=None,
              help="Two-factor payments: confirmed with a code from the phone or a biometric approval on it.")
@click.option("--large-payment", type=MONEY, default=None,
              help="Alert the customer of every payment of at least this amount (0: never).")
@click.option("--over-limit", type=click.Choice(["reject", "confirm"]), default=None,
              help="Over a limit: reject the payment, or ask for the extra confirmation (password / phone).")
@click.option("--remind-at", type=IntType(0, 100), default=None,
              help="Remind the customer once a day when payments reach this % of the daily limit (0: never; "
                   "default 80).")
@proof_options
@db_option
@host_errors
def account_security(account_id, two_factor, real_name, confirm, prefer, large_payment, over_limit, remind_at, code,
                     operator, password_stdin, db_path):
    """Change an account's security settings (shown by `posterm host security`).

    Turning two-factor off (code purpose two-factor-off), changing --confirm or --prefer
    (purpose confirm-pref) and --over-limit confirm (purpose over-limit) need --code with the
    payment password on stdin, or --operator with the operator's password on stdin; the rest
    is free. --real-name needs the account
    verified with an ID number (`posterm host account verify`)."""
    proof = read_proof(code, operator, password_stdin)
    if (two_factor is None and real_name is None and confirm is None and prefer is None and large_payment is None
            and over_limit is None and remind_at is None):
        raise click.UsageError("give at least one of --two-factor/--no-two-factor, --real-name/--no-real-name, "
                               "--confirm, --prefer, --large-payment, --over-limit, --remind-at")
    h = open_host(db_path)
    try:
        large = None if large_payment is None else money(large_payment, h.account(account_id)["currency"],
                                                         "--large-payment")
        h.set_flags(account_id, two_factor=two_factor, real_name=real_name, confirm=confirm, confirm_pref=prefer,
                    large_payment=large, over_limit=over_limit, remind_at=remind_at, proof=proof)
    finally:
        h.close()
    click.echo("security settings updated")


@account.command("set-password")
@click.argument("account_id", type=ID32)
@db_option
@host_errors
def account_password(account_id, db_path):
    """Set the payment password (changing it asks for the old one). Prompts, hidden. The
    rules of `account add` apply (exit 2 naming the one broken)."""
    from posterm.host.identity import PasswordRuleBroken

    h = open_host(db_path)
    try:
        old = click.prompt("Old payment password", hide_input=True) if h.account(account_id)["password_set"] else None
        new = click.prompt("New payment password", hide_input=True, confirmation_prompt=True)
        try:
            h.set_password(account_id, new, old)
        except PasswordRuleBroken as exc:
            raise click.BadParameter(str(exc), param_hint="payment password") from None
    finally:
        h.close()
    click.echo("payment password set")


@account.command("freeze")
@click.argument("account_id", type=ID32)
@click.option("--why", type=NOTE, default="")
@db_option
@host_errors
def account_freeze(account_id, why, db_path):
    """Freeze an account."""
    h = open_host(db_path)
    try:
        h.freeze(account_id, True, why)
    finally:
        h.close()
    click.echo(f"{account_id} frozen")


@account.command("unfreeze")
@click.argument("account_id", type=ID32)
@proof_options
@db_option
@host_errors
def account_unfreeze(account_id, code, operator, password_stdin, db_path):
    """Unfreeze an account: needs --code (purpose unfreeze) with the payment password on
    stdin, or --operator with the operator's password on stdin."""
    proof = read_proof(code, operator, password_stdin)
    h = open_host(db_path)
    try:
        h.freeze(account_id, False, proof=proof)
    finally:
        h.close()
    click.echo(f"{account_id} unfrozen")


@host.group()
def app() -> None:
    """Merchant apps of the gateway (`serve --gateway`): Alipay apps and WeChat Pay merchants.

    Each app pays through its own virtual terminal GW-<APP_ID> of its merchant (see
    `posterm host trades --terminal GW-<APP_ID>`); `settle` closes its batch of that
    terminal with the host's totals.
    """


@app.command("add")
@click.argument("app_id", type=IdType(29))
@click.option("--merchant", type=ID32, required=True, help="The merchant the app belongs to (e.g. M100000001).")
@click.option("--public-key", "public_key", type=InputFile(max_bytes=16 * 1024),
              help="Alipay: the app's RSA public key (PEM, or the base64 Alipay's console shows).")
@click.option("--wechat-mch-id", type=IdType(32), help="WeChat Pay: the merchant id (mch_id).")
@click.option("--wechat-key-file", type=InputFile(max_bytes=4096), help="WeChat Pay: a file holding the API key.")
@click.option("--region", default="CN-SH", show_default=True, type=ID32, help="Location of the app's virtual terminal.")
@json_option
@db_option
@host_errors
def app_add(app_id, merchant, public_key, wechat_mch_id, wechat_key_file, region, as_json, db_path):
    """Register APP_ID for a merchant: an Alipay app (--public-key) or a WeChat Pay one
    (--wechat-mch-id and --wechat-key-file). Again: its key is replaced."""
    from posterm.host.gateway import apps
    from posterm.host.gateway.core import APP_ID

    if not APP_ID.fullmatch(app_id):
        raise click.BadParameter("1..29 characters of A-Z a-z 0-9 _ - .", param_hint="APP_ID")
    if (public_key is None) == (wechat_mch_id is None and wechat_key_file is None):
        raise click.UsageError("give --public-key (Alipay) or --wechat-mch-id with --wechat-key-file (WeChat Pay)")
    if public_key is None and (wechat_mch_id is None or wechat_key_file is None):
        raise click.UsageError("a WeChat Pay app needs both --wechat-mch-id and --wechat-key-file")
    pem = wechat_key = None
    if public_key is not None:
        pem = _read_file(public_key, 16 * 1024)
    else:
        try:
            wechat_key = _read_file(wechat_key_file, 4096).decode("ascii").strip()
        except UnicodeDecodeError:
            raise click.BadParameter("not an ASCII key", param_hint="--wechat-key-file") from None
    h, gw = _open_gateway(db_path)
    try:
        found = apps.add(gw.ctx, gw.keys, app_id, merchant, public_key_pem=pem, wechat_mch_id=wechat_mch_id,
                         wechat_key=wechat_key, location=region)
    finally:
        h.close()
    if as_json:
        emit_json(apps.describe(found))
    else:
        click.echo(f"{found.kind} app {found.app_id} of {found.merchant_id}: terminal {found.terminal_id}")


@app.command("show")
@click.argument("app_id", type=IdType(29))
@json_option
@db_option
@host_errors
def app_show(app_id, as_json, db_path):
    """An app, with the gateway's public key (PEM) that it verifies the gateway's answers with."""
    from posterm.host.gateway import UnknownApp, apps

    h, gw = _open_gateway(db_path)
    try:
        try:
            found = gw.app(app_id)
        except UnknownApp:
            fail(f"no app {app_id}", 1, as_json)
        out = {**apps.describe(found), "gateway_public_key": gw.keys.public_pem()}
    finally:
        h.close()
    if as_json:
        emit_json(out)
    else:
        for k, v in out.items():
            if k != "gateway_public_key":
                click.echo(f"{k}: {v}")
        click.echo(out["gateway_public_key"], nl=False)


@app.command("list")
@json_option
@db_option
@host_errors
def app_list(as_json, db_path):
    """Every registered app."""
    from posterm.host.gateway import apps

    h, gw = _open_gateway(db_path)
    try:
        rows = [apps.describe(a) for a in apps.all_apps(gw.ctx, gw.keys)]
    finally:
        h.close()
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            click.echo(f"{r['app_id']}  {r['kind']:6}  {r['merchant_id']}  {r['terminal_id']}")


@app.command("settle")
@click.argument("app_id", type=IdType(29))
@click.option("--batch", "batch_no", type=IntType(1, 2**32 - 1), default=None,
              help="Batch number (default: the next one). A settled batch's number again prints its record.")
@json_option
@db_option
@host_errors
def app_settle(app_id, batch_no, as_json, db_path):
    """Close APP_ID's open batch, as a terminal's end of day closes its own: its approved,
    refunded and cancelled trades not settled yet, under the next batch number of its virtual
    terminal GW-<APP_ID>, with the host's totals (an app keeps none of its own, so they agree
    by construction). Prints per currency the counts and sums; amounts in JSON are integer
    minor units. Run again, it closes a new batch (empty if nothing happened since): nothing
    is counted twice. Exit 2: no such app, or --batch below the last settled batch."""
    from posterm.host.gateway import InvalidRequest, UnknownApp

    h, gw = _open_gateway(db_path)
    try:
        try:
            found = gw.app(app_id)
        except UnknownApp:
            fail(f"no app {app_id}", EXIT_USAGE, as_json)
        try:
            batch = gw.settle(found, batch_no)
        except InvalidRequest as exc:
            fail(str(exc).replace("batch_no", "--batch", 1), EXIT_USAGE, as_json)
    finally:
        h.close()
    if as_json:
        emit_json(_settlement_json(batch))
        return
    _settlement_text(batch)


def _settlement_json(batch) -> dict[str, Any]:
    from posterm.host.admin import iso_time
    from posterm.host.settlement import totals_json

    return {"app_id": batch.app_id, "terminal_id": batch.terminal_id, "batch_no": batch.batch_no,
            "agrees": batch.agrees, "repeated": batch.repeated, "settled_at": iso_time(batch.settled_at),
            "totals": [totals_json(t) | {"net_minor": t.approved_minor - t.refunded_minor} for t in batch.totals]}


def _settlement_text(batch) -> None:
    from posterm.host.admin import iso_time
    from posterm.host.gateway import format_amount

    again = " (settled before)" if batch.repeated else ""
    click.echo(f"batch {batch.batch_no} of app {batch.app_id} (terminal {batch.terminal_id}) settled "
               f"{iso_time(batch.settled_at)}{again}: host totals, {'agree' if batch.agrees else 'DISAGREE'}")
    if not batch.totals:
        click.echo("nothing to settle")
    for t in batch.totals:
        c = t.currency
        click.echo(f"{c}  approved {t.approved_count} {format_amount(t.approved_minor, c)}  "
                   f"refunded {t.refunded_count} {format_amount(t.refunded_minor, c)}  "
                   f"cancelled {t.cancelled_count}  net {format_amount(t.approved_minor - t.refunded_minor, c)}")


def _open_gateway(db_path):
    from posterm.host.gateway import Gateway

    h = open_host(db_path)
    try:
        return h, Gateway(h)
    except BaseException:
        h.close()
        raise


def _read_file(path: str, cap: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(cap)


@host.group()
def wallet() -> None:
    """The customer's wallet app: payment codes and scanning a merchant's QR."""


@wallet.command("code")
@click.argument("account_id", type=ID32)
@db_option
@host_errors
def wallet_code(account_id, db_path):
    """Issue a one-time payment code (18 digits, valid 60 s, single use)."""
    h = open_host(db_path)
    try:
        click.echo(h.issue_code(account_id))
    finally:
        h.close()


@wallet.command("scan")
@click.argument("qr_data", type=TextType(1024))
@click.option("--account", "account_id", type=ID32, required=True)
@db_option
@host_errors
def wallet_scan(qr_data, account_id, db_path):
    """Pay a merchant-presented dynamic QR from ACCOUNT. A two-factor account's payment, and
    one over a limit with `--over-limit confirm` (or that risk control asks to confirm), then
    waits (wait_buyer) for the code sent to the phone (`host wallet confirm ORDER --code`)
    or, when the account prefers it, the approval on the phone (`host phone approve`)."""
    h = open_host(db_path)
    try:
        status = h.wallet_scan(qr_data, account_id)
        click.echo(status.lower())
        if status == "WAIT_BUYER":
            t = h.store.view().trade_by_qr(qr_data)
            sec = h.security(account_id)
            if sec["confirm_pref"] == "biometric":
                how = f"approve it on the phone: posterm host phone approve {account_id}"
            else:
                how = (f"confirm with the code sent to the phone (posterm host phone {account_id}): "
                       f"posterm host wallet confirm {t['order_id']} --merchant {t['merchant_id']} --code CODE")
            why = "two-factor" if sec["two_factor"] else "extra confirmation asked (over a limit or risk control)"
            click.echo(f"{why}: {how}", err=True)
    finally:
        h.close()


@wallet.command("confirm")
@click.argument("order_id", type=ORDER_ID)
@click.option("--merchant", type=ID32, default="M100000001", show_default=True)
@click.option("--code", type=CODE6, default=None,
              help="The verification code the phone received for this payment (two-factor, or a "
                   "scan asked for an extra confirmation).")
@db_option
@host_errors
def wallet_confirm(order_id, merchant, code, db_path):
    """Confirm a payment waiting for the customer's phone. A two-factor account's payment, and
    a scan's asked for an extra confirmation, needs --code (see `posterm host phone ACCOUNT`):
    a wrong one counts, the fifth kills it and declines the payment; an account preferring
    biometric approval uses `host phone approve` instead."""
    h = open_host(db_path)
    try:
        click.echo(h.wallet_confirm(order_id, merchant, code).lower())
    finally:
        h.close()


@host.command()
@click.option("--terminal", type=ID32, default=None)
@click.option("--date", type=DATE, default=None, help="YYYY-MM-DD (Asia/Shanghai).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV export.")
@json_option
@db_option
@host_errors
def trades(terminal, date, as_csv, as_json, db_path):
    """List trades (order_id, status, amount_minor, currency, account, ...)."""
    h = open_host(db_path)
    try:
        rows = [t.to_json() for t in h.trades(terminal=terminal, date=date)]
    finally:
        h.close()
    _table(rows, as_json, as_csv)


@host.command()
@click.argument("account_id", type=ID32)
@click.option("--month", type=MONTH, required=True, help="YYYY-MM, in the bill's time zone.")
@click.option("--tz", type=TZ, default=None, help="Time zone of the month and the times (default: the account's).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV export.")
@json_option
@db_option
@host_errors
def bill(account_id, month, tz, as_csv, as_json, db_path):
    """An account's bill: every payment, refund and cancel in a month, each with the
    balance after it (balance_minor). The text table's first line names the time zone."""
    h = open_host(db_path)
    try:
        zone = tz or h.account(account_id)["tz"]
        rows = h.bill(account_id, month, tz=zone)
    finally:
        h.close()
    if not (as_json or as_csv):
        click.echo(f"bill of {account_id} for {month}, times in {zone}" + ("" if tz else " (the account's time zone)"))
    _table(rows, as_json, as_csv)


@host.command()
@click.argument("trade", type=ORDER_ID)
@click.option("--reason", type=NOTE, required=True)
@db_option
@host_errors
def report(trade, reason, db_path):
    """Report a trade (by trade number or order id): opens a case and freezes the account."""
    h = open_host(db_path)
    try:
        case = h.report(trade, reason)
    finally:
        h.close()
    click.echo(f"case {case} opened; the account is frozen pending review")


@host.command("close-case")
@click.argument("case_id", type=IntType(1, 2**63 - 1))
@click.option("--resolution", type=NOTE, required=True, help="What the review found (kept with the case).")
@click.option("--unfreeze", is_flag=True, help="Also lift the account's freeze (refused while another case is open).")
@proof_options
@db_option
@host_errors
def close_case(case_id, resolution, unfreeze, code, operator, password_stdin, db_path):
    """Close case CASE_ID after review (see `posterm host cases`). With --unfreeze, the
    account's verification is needed: --code (purpose unfreeze) with the payment password on
    stdin, or --operator with the operator's password on stdin."""
    proof = read_proof(code, operator, password_stdin)
    h = open_host(db_path)
    try:
        h.close_case(case_id, resolution, unfreeze=unfreeze, proof=proof)
    finally:
        h.close()
    click.echo(f"case {case_id} closed" + ("; the account is unfrozen" if unfreeze else ""))


@host.command()
@json_option
@db_option
@host_errors
def cases(as_json, db_path):
    """Open and closed cases (with their resolution once closed)."""
    h = open_host(db_path)
    try:
        rows = h.cases()
    finally:
        h.close()
    _table(rows if as_json else [_iso_text(r) for r in rows], as_json, False)


try:  # encrypted backups (posterm.cli.backup_cmd), when present
    from posterm.cli.backup_cmd import backup, restore

    host.add_command(backup)
    host.add_command(restore)
except ImportError:
    pass

from posterm.cli.bdk_cmd import bdk as _bdk_group  # noqa: E402 - the HSM's BDK (crypto, issue 18)

host.add_command(_bdk_group)

# `posterm host` command groups kept in modules of their own. Each imports
# posterm.cli.host_common (never this module) and offers ``register(host)``; a module not
# present is skipped, so one piece cannot take the others down.
HOST_COMMAND_MODULES = (
    "posterm.cli.host_security",     # phone, verification, operators, webhooks, security view
    "posterm.cli.host_backoffice",   # merchants, terminals, decisions, settlements, audit
    "posterm.cli.host_notices",      # security notices
    "posterm.cli.host_scale",        # database / workers helpers
)


def _register_modules() -> None:
    import importlib
    import importlib.util

    for name in HOST_COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(host)


_register_modules()
