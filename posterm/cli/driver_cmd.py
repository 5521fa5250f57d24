"""ECR-side commands: ports, doctor, status, pay, query, cancel, refund, settle, recover."""

from __future__ import annotations

import contextlib
import grp
import os
import signal
import stat
import sys
import threading
from typing import Any, Iterator

import click

from firmware_protocol.currency import CURRENCIES, format_minor

from posterm.cli.common import (
    AMOUNT,
    AMOUNT_MINOR,
    CURRENCY,
    DESCRIPTION,
    ORDER_ID,
    PASSWORD,
    PAYMENT_CODE,
    EXIT_CODES_HELP,
    SecondsType,
    check_password,
    minor_units,
    EXIT_DECLINED,
    EXIT_OK,
    EXIT_TRANSPORT,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    driver_settings,
    emit_json,
    fail,
    handle_errors,
    port_options,
    serial_settings,
    setup_trace,
)
from posterm.ecr.results import Outcome, OutcomeMismatch
from posterm.errors import LocalProtocolError, PortBusy, PortNotFound, PortPermission, PosError, TransportError


def _open(kw: dict[str, Any], as_json: bool = False):
    """Open the terminal. A port that cannot be opened means nothing was sent: one line,
    exit 4, and (with --json) ``"result": "not_sent"``, never ``unknown``."""
    try:
        return _open_port(kw)
    except (PortBusy, PortNotFound, PortPermission) as exc:
        fail(f"{type(exc).__name__}: {exc}; nothing was sent", EXIT_TRANSPORT, as_json, result="not_sent")


def _mismatch_exit(exc: PosError, as_json: bool) -> None:
    fail(f"{exc}", EXIT_UNKNOWN, as_json, result="unknown")


def _open_port(kw: dict[str, Any]):
    """The --protocol family's driver (posterm.families registry) on --port."""
    from posterm.ecr.session import open_terminal

    port = kw.pop("port")
    if not port:
        raise click.UsageError("no port: give --port or set POSTERM_PORT")
    setup_trace(kw.pop("trace"))
    settings = serial_settings(kw)
    journal = kw.pop("journal_path")
    # --reconnect goes only to a driver asked for it: it is not every family's option
    reconnect = {"reconnect": True} if kw.pop("reconnect") else {}
    driver = driver_settings(kw, kw.get("protocol"))
    return open_terminal(port, kw.pop("protocol", None), journal=journal, record=kw.pop("record", None),
                         **reconnect, **driver, **settings)


@contextlib.contextmanager
def _abort_on_interrupt(term: Any) -> Iterator[None]:
    """Ctrl-C while a payment runs asks the driver to abort it on the terminal (the payment
    then ends as the terminal answers, normally cancelled, within the driver's bounded wait);
    a second Ctrl-C, or a driver that cannot abort, stops waiting (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked: list[bool] = []

    def on_interrupt(signum: int, frame: Any) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(True)
        click.echo("posterm: interrupted: aborting the payment on the terminal (Ctrl-C again to stop waiting)",
                   err=True)
        try:
            term.abort()
        except PosError:
            raise KeyboardInterrupt from None

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress_printer(as_json: bool):
    def show(progress) -> None:
        stage = progress.stage.name.lower() if hasattr(progress.stage, "name") else str(progress.stage)
        line = f"[{stage}] {progress.text}".rstrip()
        click.echo(line, err=True)
        if progress.qr_data:
            _print_qr(progress.qr_data)
    return show


def _print_qr(data: str) -> None:
    try:
        import segno
    except ImportError:  # pragma: no cover - segno is a declared dependency
        click.echo(f"QR: {data}", err=True)
        return
    qr = segno.make(data, error="m")
    qr.terminal(out=sys.stderr, compact=True)
    click.echo(f"QR data: {data}", err=True)


def _amount(amount, amount_minor: int | None, currency: str) -> int:
    if (amount is None) == (amount_minor is None):
        raise click.UsageError("give exactly one of --amount (decimal) and --amount-minor (integer)")
    if amount_minor is not None:
        return amount_minor  # AMOUNT_MINOR checked 1..MAX_AMOUNT_MINOR
    return minor_units(amount, currency, "--amount")


def _currency(ctx: click.Context, param: click.Parameter, value: str) -> str:
    value = value.upper()
    if value not in CURRENCIES:
        raise click.BadParameter(f"unknown ISO 4217 currency {value!r}")
    return value


def _reason_suffix(result) -> str:
    """`` (reason: text)`` for a result with a reason, else empty."""
    data = result.to_json()
    parts = [p for p in (data.get("reason"), data.get("reason_text")) if p]
    return f" ({': '.join(parts)})" if parts else ""


def _finish_payment(result, as_json: bool, done: Outcome = Outcome.APPROVED) -> None:
    if getattr(result, "gave_up_after", None) is not None:
        click.echo(f"posterm: gave up after {result.gave_up_after:g} s and aborted the payment on the terminal;"
                   f" its outcome: {result.result}", err=True)
    if as_json:
        emit_json(result.to_json())
    elif getattr(result, "not_found", False):
        click.echo(f"no such order: {result.order_id} (neither the terminal nor its host knows it;"
                   " nothing was charged)")
    else:
        click.echo(f"{result.result}{_reason_suffix(result)}: order {result.order_id}, "
                   f"{format_minor(result.amount_minor, result.currency)}")
        for line in result.receipt:
            click.echo(f"  | {line}")
    if result.outcome is done:
        sys.exit(EXIT_OK)
    if result.outcome in (Outcome.DECLINED, Outcome.CANCELLED, Outcome.APPROVED):
        sys.exit(EXIT_DECLINED)
    sys.exit(EXIT_UNKNOWN)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
timeout_option = click.option("--timeout", type=SecondsType(0.1, 3600), default=None,
                              help="Seconds to wait for the answer.")


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON array on stdout.")
@click.option("--all", "show_all", is_flag=True, help="Also ports without a USB/hardware id.")
def ports(as_json: bool, show_all: bool) -> None:
    """List serial ports: device, by-id name, VID:PID, description.

    Pseudo-terminals (/dev/pts/*) are never listed: pyserial cannot see them.
    """
    from posterm.transport import list_ports

    found = [p for p in list_ports() if show_all or getattr(p, "vid", None) is not None or getattr(p, "by_id", None)]
    rows = [p.to_json() if hasattr(p, "to_json") else dict(vars(p)) for p in found]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no serial ports found" + ("" if show_all else " (try --all)"))
        return
    for r in rows:
        vidpid = f"{r['vid']:04X}:{r['pid']:04X}" if r.get("vid") is not None else "-"
        click.echo(f"{r['device']:<20} {vidpid:<10} {r.get('description') or ''}")
        if r.get("by_id"):
            click.echo(f"{'':<20} by-id: {r['by_id']}")


@click.command(epilog=EXIT_CODES_HELP)
@port_options
@json_option
@timeout_option
@handle_errors
def status(as_json: bool, timeout: float | None, **kw: Any) -> None:
    """Say Hello and show the terminal's identity and state."""
    with _open(kw, as_json) as term:
        info = term.hello(timeout=timeout or 3.0)
        st = term.status(timeout=timeout or 3.0)
    out = {**info.to_json(), "state": st.state.name.lower(), "order_id": st.order_id,
           "host_online": st.host_online, "paper_ok": st.paper_ok, "key_loaded": st.key_loaded,
           "unfinished": st.unfinished}
    if as_json:
        emit_json(out)
    else:
        for k, v in out.items():
            click.echo(f"{k:>17}: {v}")


@click.command(epilog=EXIT_CODES_HELP)
@port_options
@click.option("--amount", type=AMOUNT, help="Decimal amount in the currency's unit, e.g. 12.34 (never a float).")
@click.option("--amount-minor", type=AMOUNT_MINOR, help="Amount in minor units, e.g. 1234.")
@click.option("--currency", type=CURRENCY, default="CNY", show_default=True, help="ISO 4217 code.")
@click.option("--payment-code", type=PAYMENT_CODE, help="The customer's payment code, if the ECR scanned it.")
@click.option("--order-id", type=ORDER_ID, help="Merchant order id (generated when not given).")
@click.option("--description", type=DESCRIPTION, help="Shown to the customer and on the receipt.")
@click.option("--qr", "dynamic_qr", is_flag=True, help="Merchant-presented dynamic QR for the customer to scan.")
@json_option
@timeout_option
@handle_errors
def pay(amount, amount_minor, currency, payment_code, order_id, description, dynamic_qr, as_json, timeout, **kw):
    """Take a payment and print its outcome.

    Progress lines go to stderr as the terminal reports them. With --json, one
    object goes to stdout with result (approved, declined, cancelled, unknown),
    order_id, amount_minor, currency and reason.

    When --timeout passes without an outcome, pay aborts the payment on the
    terminal (it does not run on unattended), says so on stderr and prints what
    the terminal answered (normally cancelled); with no answer at all it exits 3.
    Re-using an order id with another amount is declined (order_conflict) and
    changes nothing in the journal about the first payment.

    \b
    Example:
      posterm pay --port /dev/ttyUSB0 --amount 12.34 --currency CNY \\
                  --payment-code 289900000000000001 --json
    """
    value = _amount(amount, amount_minor, currency)
    if dynamic_qr and payment_code:
        raise click.UsageError("--qr and --payment-code exclude each other")
    with _open(kw, as_json) as term:
        try:
            term.hello()
        except LocalProtocolError:
            raise  # our mistake (ZVT: no terminal password given), not the terminal's
        except PosError:
            pass  # some terminals answer Hello only once per power-up; pay still works
        try:
            with _abort_on_interrupt(term):
                result = term.pay(value, currency, order_id=order_id, payment_code=payment_code,
                                  on_progress=_progress_printer(as_json), timeout=timeout or 120.0,
                                  description=description, dynamic_qr=dynamic_qr)
        except OutcomeMismatch as exc:
            _mismatch_exit(exc, as_json)
        except KeyboardInterrupt:
            fail("interrupted before the terminal answered: the payment may be unfinished; run `posterm recover`",
                 EXIT_UNKNOWN, as_json, result="unknown")
    _finish_payment(result, as_json)


@click.command(epilog=EXIT_CODES_HELP)
@port_options
@click.argument("order_id", type=ORDER_ID)
@json_option
@timeout_option
@handle_errors
def query(order_id, as_json, timeout, **kw):
    """Ask the terminal what became of ORDER_ID.

    Exits 0 approved, 1 declined/cancelled or no such order, 3 pending/unknown.
    """
    with _open(kw, as_json) as term:
        result = term.query(order_id, timeout=timeout or 10.0)
    _finish_payment(result, as_json)


def _password(value: str | None, stdin: bool, kw: dict[str, Any] | None = None) -> str | None:
    """The operator password: given, from stdin, or prompted. With a terminal password given
    (``kw``: --terminal-password, its stdin flag or env) and none of these, None: the driver
    uses the terminal's (ZVT has one password)."""
    if value and stdin:
        raise click.UsageError("give --operator-password or --password-stdin, not both")
    if stdin:
        return check_password(sys.stdin.readline().strip(), "--password-stdin")
    if value:
        return value  # PASSWORD checked its form
    if kw is not None and (kw.get("terminal_password") or kw.get("terminal_password_stdin")):
        return None
    return check_password(click.prompt("Operator password", hide_input=True, err=True))


password_options = [
    click.option("--operator-password", envvar="POSTERM_OPERATOR_PASSWORD", type=PASSWORD,
                 help="Operator transaction password (prompted when absent). [env POSTERM_OPERATOR_PASSWORD]"),
    click.option("--password-stdin", is_flag=True, help="Read the operator password from stdin."),
]


def with_password(fn):
    for option in reversed(password_options):
        fn = option(fn)
    return fn


@click.command(epilog=EXIT_CODES_HELP)
@port_options
@click.argument("order_id", type=ORDER_ID)
@with_password
@json_option
@timeout_option
@handle_errors
def cancel(order_id, operator_password, password_stdin, as_json, timeout, **kw):
    """Cancel ORDER_ID: closes an unpaid order, refunds a paid one.

    Cancelling a paid order refunds it and needs the operator password (--operator-password
    or --password-stdin); without one only an unpaid order is cancelled.

    Exits 0 when the order ends cancelled, 1 when the cancel is refused (e.g. past the 24 h window).
    """
    pw = _password(operator_password, password_stdin) if (operator_password or password_stdin) else None
    with _open(kw, as_json) as term:
        result = term.cancel(order_id, operator_password=pw, timeout=timeout or 60.0,
                             on_progress=_progress_printer(as_json))
    _finish_payment(result, as_json, done=Outcome.CANCELLED)


@click.command(epilog=EXIT_CODES_HELP)
@port_options
@click.argument("order_id", type=ORDER_ID)
@click.option("--amount", type=AMOUNT, help="Decimal amount to refund.")
@click.option("--amount-minor", type=AMOUNT_MINOR, help="Amount to refund in minor units.")
@click.option("--currency", type=CURRENCY, default="CNY", show_default=True)
@click.option("--refund-id", type=ORDER_ID, required=True, help="Your refund id: the same id never refunds twice.")
@with_password
@json_option
@timeout_option
@handle_errors
def refund(order_id, amount, amount_minor, currency, refund_id, operator_password, password_stdin, as_json,
           timeout, **kw):
    """Refund part or all of a paid ORDER_ID."""
    value = _amount(amount, amount_minor, currency)
    pw = _password(operator_password, password_stdin, kw)
    with _open(kw, as_json) as term:
        try:
            out = term.refund(order_id, value, refund_id, pw, currency=currency, timeout=timeout or 60.0,
                              on_progress=_progress_printer(as_json))
        except OutcomeMismatch as exc:
            _mismatch_exit(exc, as_json)
    if as_json:
        emit_json(out.to_json())
    else:
        click.echo(f"refund {out.result}{_reason_suffix(out)}: {refund_id} of order {order_id},"
                   f" {format_minor(out.amount_minor, out.currency)}"
                   f" (refunded in total {format_minor(out.refunded_total_minor, out.currency)})")
    sys.exit(EXIT_OK if out.approved else (EXIT_UNKNOWN if out.outcome is Outcome.UNKNOWN else EXIT_DECLINED))


@click.command(epilog=EXIT_CODES_HELP)
@port_options
@with_password
@json_option
@timeout_option
@handle_errors
def settle(operator_password, password_stdin, as_json, timeout, **kw):
    """Close the batch and print the end-of-day totals."""
    pw = _password(operator_password, password_stdin, kw)
    with _open(kw, as_json) as term:
        report = term.settle(pw, timeout=timeout or 60.0, on_progress=_progress_printer(as_json))
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(f"batch {report.batch_no}: {report.outcome.name.lower()}, host agrees: {report.host_agrees}")
        for t in report.totals:
            click.echo(f"  {t.currency}: {t.approved_count} approved {format_minor(t.approved_minor, t.currency)}, "
                       f"{t.refunded_count} refunded {format_minor(t.refunded_minor, t.currency)}, "
                       f"{t.cancelled_count} cancelled, net {format_minor(t.net_minor, t.currency)}")
    sys.exit(EXIT_OK if report.outcome is Outcome.APPROVED else EXIT_DECLINED)


@click.command(epilog=EXIT_CODES_HELP)
@port_options
@click.option("--operator-password", envvar="POSTERM_OPERATOR_PASSWORD", type=PASSWORD,
              help="Operator password, to re-send unfinished refunds (never prompted). [env POSTERM_OPERATOR_PASSWORD]")
@click.option("--password-stdin", is_flag=True, help="Read the operator password from stdin.")
@json_option
@timeout_option
@handle_errors
def recover(operator_password, password_stdin, as_json, timeout, **kw):
    """Resolve every unfinished payment, refund and cancel in the journal.

    Run it after a crash, a killed process, a timeout or a cut cable. Payments
    and cancels are resolved by querying the order; refunds are re-sent with
    their refund id (never refunded twice), which needs the operator password.
    Exit 0 when everything is now final, 3 when some are still unknown or pending.
    """
    pw = _password(operator_password, password_stdin) if (operator_password or password_stdin) else None
    with _open(kw, as_json) as term:
        # (only posterm's driver re-sends refunds; other families' recover takes no password)
        results = term.recover(timeout=timeout or 10.0, **({"operator_password": pw} if pw else {}))
    if as_json:
        emit_json([r.to_json() for r in results])
    else:
        if not results:
            click.echo("nothing to recover: every journaled operation is final")
        for r in results:
            what = f"refund {r.refund_id}" if hasattr(r, "refund_id") else "order"
            click.echo(f"{r.order_id}: {what} {r.result}{_reason_suffix(r)} {format_minor(r.amount_minor, r.currency)}")
    sys.exit(EXIT_OK if all(r.final for r in results) else EXIT_UNKNOWN)


COMMON_SETTINGS = [
    (115200, 8, "N", 1), (9600, 8, "N", 1), (115200, 7, "E", 1), (9600, 7, "E", 1),
    (115200, 8, "N", 2), (9600, 8, "N", 2), (57600, 8, "N", 1), (19200, 8, "N", 1),
]


@click.command(epilog=EXIT_CODES_HELP)
@port_options
@json_option
@click.option("--quick", is_flag=True, help="Only try the configured settings.")
def doctor(as_json, quick, **kw):
    """Diagnose a port: does it exist, may you open it, who holds it, what answers.

    Tries the configured settings, then common ones (115200 and 9600; 8N1,
    7E1, 8N2), and reports which answered a Hello.
    """
    from posterm.transport import open_transport

    port = kw.pop("port")
    if not port:
        raise click.UsageError("no port: give --port or set POSTERM_PORT")
    kw.pop("trace"), kw.pop("journal_path"), kw.pop("reconnect"), kw.pop("record", None)
    from posterm.families import family

    driver = driver_settings(kw, kw.get("protocol"))
    fam = family(kw.pop("protocol", None))
    settings = {**fam.serial_defaults, **serial_settings(kw)}
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})
        if not as_json:
            click.echo(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")

    is_device = "://" not in port
    if is_device:
        exists = os.path.exists(port)
        check("exists", exists, port if exists else f"{port} does not exist (is the device plugged in? see `posterm ports`)")
        if exists:
            real = os.path.realpath(port)
            st = os.stat(real)
            group = grp.getgrgid(st.st_gid).gr_name if st.st_gid is not None else "?"
            readable = os.access(real, os.R_OK | os.W_OK)
            in_group = st.st_gid in os.getgroups() or os.geteuid() == 0
            detail = f"{real} mode {stat.filemode(st.st_mode)} group {group}"
            if not readable:
                detail += f": add yourself to group '{group}' (sudo usermod -aG {group} $USER) and log in again"
            check("permissions", readable, detail + ("" if in_group or readable else ""))
    else:
        check("url", True, f"{port} (pyserial URL; existence is checked by opening it)")

    tried = [(settings["baudrate"], settings["bytesize"], settings["parity"], settings["stopbits"])]
    if not quick:
        tried += [s for s in COMMON_SETTINGS if s not in tried]
    answered = misuse = None
    for baud, bytesize, parity, stopbits in tried:
        label = f"{baud} {bytesize}{parity}{stopbits}"
        try:
            transport = open_transport(port, **{**settings, "baudrate": baud, "bytesize": bytesize,
                                                "parity": parity, "stopbits": stopbits})
        except TransportError as exc:
            check(f"open {label}", False, f"{type(exc).__name__}: {exc}")
            if checks and not checks[-1]["ok"] and "Busy" in type(exc).__name__:
                break
            continue
        term = fam.driver_class()(transport, port_name=port, journal=None, **driver)
        try:
            info = term.hello(timeout=1.5)
        except LocalProtocolError as exc:
            check(f"hello {label}", False, str(exc))   # ours to fix (a missing password), not the line's
            misuse = str(exc)
            break
        except PosError as exc:
            check(f"hello {label}", False, f"no answer ({type(exc).__name__})")
        else:
            # A family whose probe carries no identity leaves terminal_id empty; its driver may
            # say what answered (``probe``).
            check(f"hello {label}", True, f"{info.terminal_id} / {info.merchant_id}, firmware {info.firmware_version}"
                  if info.terminal_id else f"{fam.name}: {getattr(term, 'probe', 'answered the probe')}")
            answered = label
        finally:
            term.close()
        if answered:
            break
    if as_json:
        emit_json({"port": port, "answered_with": answered, "checks": checks})
    if misuse and not answered:
        fail(misuse, EXIT_USAGE)
    if as_json:
        pass
    elif not answered:
        click.echo(f"posterm: error: no terminal answered a Hello on {port} with any tried setting", err=True)
    sys.exit(EXIT_OK if answered else 4)
