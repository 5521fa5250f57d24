"""`posterm demo`: a short trading day against an emulated terminal, over a real pty."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from firmware_protocol.currency import format_minor

from posterm.cli.common import Directory

DAY = [
    # (what, payment code, amount minor, expected result)
    ("approved, password-free", "289900000000000001", 2_500, "approved"),
    ("confirmed by PIN on the terminal", "289900000000000001", 120_000, "approved"),
    ("confirmed on the customer's phone", "289900000000000004", 8_800, "approved"),
    ("declined: over the per-transaction limit", "289900000000000001", 600_000, "declined"),
    ("cancelled: no confirmation on the phone", "289900000000000005", 3_000, "cancelled"),
    ("paid by scanning the terminal's QR", None, 4_200, "approved"),
]


@click.command()
@click.option("--home", type=Directory(), default=None,
              help="Keep state here (default: a fresh temporary directory, removed afterwards).")
@click.option("--trace", is_flag=True, help="Log every frame (masked) to stderr.")
def demo(home: str | None, trace: bool) -> None:
    """Run a short trading day: an embedded host with demo data, one emulated terminal
    on a pseudo-terminal, and the driver paying, refunding and settling through it.

    Exits 0 when every step ends as expected.
    """
    from posterm.cli.common import setup_trace
    from posterm import Terminal
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal

    setup_trace(trace)
    tmp = None if home else tempfile.mkdtemp(prefix="posterm-demo-")
    base = Path(home or tmp)
    os.environ["POSTERM_HOME"] = str(base)  # nothing of the demo lands in the user's real state
    rows: list[tuple[str, str, str, str, bool]] = []
    started = time.monotonic()
    try:
        # The Alipay defaults poll every 5 s up to 5 times; the demo polls faster.
        config = FirmwareConfig(poll_interval=0.5, poll_attempts=6)
        with EmulatedTerminal.start(home=base, config=config) as emu:
            click.echo(f"emulated terminal {emu.terminal_id} on {emu.port} (state in {base})")
            with Terminal.open(emu.port, journal=str(base / "driver-journal.db")) as term:
                info = term.hello()
                click.echo(f"connected: {info.terminal_id} / {info.merchant_id}, firmware {info.firmware_version}\n")
                first = None
                for what, code, amount, expected in DAY:
                    how = f"code ...{code[-4:]}" if code else "dynamic QR"
                    click.echo(f"-- {what}: {format_minor(amount, 'CNY')}, {how}")
                    r = term.pay(amount, "CNY", payment_code=code, dynamic_qr=code is None, timeout=60,
                                 on_progress=_show_progress)
                    reason = "" if r.approved else getattr(r.reason, "name", str(r.reason)).lower()
                    click.echo(f"   => {r.result} {reason}".rstrip())
                    rows.append((what, r.order_id, format_minor(amount, "CNY"), f"{r.result} {reason}".strip(),
                                 r.result == expected))
                    first = first or r
                click.echo("-- refund 10.00 of the first payment")
                rf = term.refund(first.order_id, 1_000, f"RF-{first.order_id}", "246810", timeout=30)
                click.echo(f"   => {rf.outcome.name.lower()}, refunded {format_minor(rf.refunded_total_minor, 'CNY')}")
                rows.append(("refund of the first payment", first.order_id, format_minor(1_000, "CNY"), rf.outcome.name.lower(),
                             rf.outcome.name == "APPROVED"))
                click.echo("-- settle the day")
                st = term.settle("246810", timeout=30)
                for t in st.totals:
                    click.echo(f"   {t.currency}: {t.approved_count} approved {format_minor(t.approved_minor, t.currency)}"
                               f", {t.refunded_count} refunded {format_minor(t.refunded_minor, t.currency)}"
                               f", {t.cancelled_count} cancelled")
                click.echo(f"   host agrees: {st.host_agrees}")
                rows.append(("settlement", f"batch {st.batch_no}", "", "agrees" if st.host_agrees else "DISAGREES",
                             st.host_agrees))
            problems = emu.host.check_books()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    click.echo("\nSummary")
    w = max(len(r[0]) for r in rows)
    click.echo(f"{'step':<{w}}  {'order':<24}  {'amount':>10}  result")
    for what, order, amount, result, ok in rows:
        click.echo(f"{what:<{w}}  {order:<24}  {amount:>10}  {result}{'' if ok else '  <-- UNEXPECTED'}")
    all_ok = all(r[4] for r in rows) and not problems
    click.echo(f"\nbooks balanced: {not problems}; {time.monotonic() - started:.1f} s; "
               f"{'all as expected' if all_ok else 'SOMETHING WENT WRONG'}")
    sys.exit(0 if all_ok else 1)


_last: dict[str, object] = {}


def _show_progress(p) -> None:
    # The terminal repeats its Progress while the customer dawdles: show each change once.
    key = (p.order_id, p.stage, p.text)
    if _last.get("progress") == key:
        return
    _last["progress"] = key
    click.echo(f"   [{p.stage.name.lower()}] {p.text}")
    if p.qr_data and _last.get("qr") != p.qr_data:  # the terminal's screen: scannable with a phone
        import segno

        _last["qr"] = p.qr_data
        segno.make(p.qr_data, error="m").terminal(out=sys.stdout, compact=True)
