"""`posterm emulate`: emulated terminals on pseudo-terminals or TCP, until Ctrl-C / SIGTERM."""

from __future__ import annotations

import json
import signal
import sys
import threading

import click

from posterm.cli.common import (
    EXIT_USAGE,
    FAMILY,
    ID32,
    Directory,
    FaultsType,
    HostUrlType,
    InputFile,
    PASSWORD,
    LazyHelpOption,
    ListenType,
    OutputFile,
    SecondsType,
    baud_help,
    fail,
    protocol_help,
)
from posterm.cli.panel_cmd import PanelAddress
from posterm.families import DEFAULT as DEFAULT_FAMILY

LINE_FORMATS = ["8N1", "8N2", "7E1", "7O1", "7E2", "7O2"]


def line_format_help() -> str:
    """``--line-format``'s help: the default of each family the registry knows."""
    from posterm.families import known

    def fmt(f) -> str:
        d = f.serial_defaults
        return f"{d.get('bytesize', 8)}{d.get('parity', 'N')}{d.get('stopbits', 1):g}"
    return ("Character format on the pty: 8N1, 8N2, or seven bits and parity (7E1, 7O1, 7E2, 7O2, as some"
            " native RS-232 terminal ports use) [default: the protocol family's: "
            + ", ".join(f"{f.name} {fmt(f)}" for f in known()) + "].")


@click.command()
@click.option("--pty", "use_pty", is_flag=True, default=True, help="On a new pseudo-terminal (the default).")
@click.option("--listen", type=ListenType(), default=None, metavar="tcp://127.0.0.1:PORT",
              help="Listen on TCP instead of a pty (PORT 0: a free one; with --count, PORT, PORT+1, ...).")
@click.option("--count", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="A fleet: one port per terminal (ptys, or TCP ports with --listen), T0000001 upwards;"
                   " every port printed.")
# -- fleets over several processes (posterm.emulator.fleet; docs/emulator.md "Fleets")
@click.option("--processes", type=click.IntRange(1, 64), default=None,
              help="Run the fleet in this many child processes, each a share of the terminals (the parent"
                   " serves the embedded host to them and supervises) [default: 1 up to 250 terminals,"
                   " then one per 250].")
@click.option("--host-connections", type=click.IntRange(1, 1024), default=None,
              help="Host connections the fleet's terminals share (split over the processes): host requests"
                   " run on that many workers, an idle terminal holds none [default: 16 per process, at most"
                   " --count].")
@click.option("--first-terminal", type=click.IntRange(1, 4096), default=1, hidden=True)
@click.option("--fleet-parent", type=click.IntRange(1, 1 << 22), default=None, hidden=True)
@click.option("--port-file", type=OutputFile(), default=None,
              help="Also write the port path(s) here once the terminal is ready.")
@click.option("--link", type=OutputFile(), default=None, help="Also make a stable symlink to the pty (one terminal only).")
@click.option("--scenario", type=InputFile(text=True), default=None, help="Scenario TOML.")
@click.option("--host", "host_url", type=HostUrlType(), default="embedded", show_default=True, help="'embedded' or tcp://HOST:PORT.")
@click.option("--home", type=Directory(), default=None, help="State directory (default $POSTERM_HOME).")
@click.option("--terminal-id", type=ID32, default="T0000001", show_default=True)
@click.option("--pace", is_flag=True, help="Pace the line to the baud rate.")
@click.option("--baud", type=click.IntRange(50, 4_000_000), default=None, cls=LazyHelpOption,
              help_text=lambda: baud_help() + " The pty's termios say it; --pace keeps to it.")
@click.option("--faults", type=FaultsType(), default=None, help="Line faults, e.g. drop=0.01,corrupt=0.01,dup=0.005,delay=20ms,unplug_after=30s,seed=1")
@click.option("--record", type=Directory(), default=None, help="Record each session into this directory.")
@click.option("--protocol", type=FAMILY, default=DEFAULT_FAMILY, show_default=True, cls=LazyHelpOption,
              help_text=protocol_help)
@click.option("--line-format", type=click.Choice(LINE_FORMATS, case_sensitive=False), default=None,
              cls=LazyHelpOption, help_text=lambda: line_format_help())
@click.option("--operator-password", type=PASSWORD, default=None,
              help="The terminal's operator password (refund, cancel, settle, key load), and ZVT's password"
                   " (registration 06 00, reversal, refund, end of day: 6 digits there). Kept in the terminal's"
                   " state from its first start; later starts must give the same one or none. [default: 246810]")
@click.option("--supervisor-password-stdin", is_flag=True,
              help="Read the terminal's supervisor password (it resets a locked or forgotten operator password:"
                   " `posterm terminal reset-password`) from the first line of stdin. Kept in the terminal's state"
                   " from its first start, like --operator-password. [default: 975310]")
@click.option("--show-display", is_flag=True,
              help="Show each terminal's screen on stderr as it changes; a dynamic QR as a text QR code.")
@click.option("--poll-interval", type=SecondsType(0.05, 60), default=5.0, show_default=True,
              help="Phone/QR confirmation: query the host this often ...")
@click.option("--poll-attempts", type=click.IntRange(1, 100), default=5, show_default=True, help="... this many times, then cancel.")
# -- the control panel (posterm.panel; docs/panel.md)
@click.option("--panel", type=PanelAddress(), default=None, metavar="127.0.0.1:PORT",
              help="Also serve the control panel (a web page and the JSON API /api/v1) for every terminal, on"
                   " loopback only (PORT 0: a free one); its URL goes to stderr.")
@click.option("--panel-file", type=OutputFile(), default=None, help="Also write the panel's URL here (for `posterm panel --fleet`).")
@click.option("--customer", type=click.Choice(["manual", "automatic"]), default=None,
              help="With --panel: the customer does only what the panel says (manual), or follows the test codes"
                   " (automatic) [default: manual for one terminal without --scenario, else automatic].")
def emulate(use_pty, listen, count, port_file, link, scenario, host_url, home, terminal_id, pace, baud, faults, record,
            protocol, line_format, operator_password, supervisor_password_stdin, show_display, poll_interval,
            poll_attempts, panel=None, panel_file=None, customer=None, processes=None, host_connections=None,
            first_terminal=1, fleet_parent=None):
    """Start emulated payment terminals and serve them until Ctrl-C or SIGTERM.

    The first line(s) of stdout are the ports to give the ECR (one per terminal).
    With no scenario, the host's test payment codes pick the outcome: a payment
    the ECR sends without a code gets the approving test code of its currency
    (289900000000000001 CNY, 289900000000978001 EUR) and the PIN pad types the
    demo PIN (147258) once when asked.

    The line is the protocol family's (--protocol zvt: a pty at 9600 8N2, or bare
    APDUs over TCP with --listen); --baud and --line-format override it.

    With --scenario, each `expect` is checked as its payment ends and printed at exit
    on stderr, one line each ("scenario: pass ..." / "scenario: FAIL ...").

    \b
    Exit codes:
      0  stopped by Ctrl-C / SIGTERM, every scenario expectation met
      1  a terminal stopped with an error (its line or host thread died)
      2  bad options or files (one line on stderr)
      5  a scenario expectation failed

    \b
    Examples:
      posterm emulate --port-file /tmp/port &
      posterm pay --port $(cat /tmp/port) --amount 12.34 --payment-code 289900000000000001
      posterm emulate --protocol zvt --listen tcp://127.0.0.1:20007 &
      posterm pay --protocol zvt --port tcp://127.0.0.1:20007 --amount 12.34 --currency EUR
      posterm emulate --count 1000 --listen tcp://127.0.0.1:21000 --port-file /tmp/ports &
      posterm emulate --panel 127.0.0.1:8400      # then open http://127.0.0.1:8400 (docs/panel.md)
    """
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal, Fleet
    from posterm.errors import PosError

    if link and count > 1:
        raise click.UsageError("--link names one pty; it cannot be used with --count")
    from posterm.emulator import fleet as fleets

    if first_terminal + count - 1 > 4096:
        raise click.UsageError("--count: the demo terminals end at T0004096")
    supervisor_password = None
    if fleet_parent is not None:   # a child of a fleet over several processes
        if not fleets.die_with_parent(fleet_parent):
            raise click.BadParameter("not this process's parent (it is for a fleet's own children)",
                                     param_hint="'--fleet-parent'")
        secrets_line = json.loads(sys.stdin.readline() or "{}")
        operator_password = secrets_line.get("operator_password") or operator_password
        supervisor_password = secrets_line.get("supervisor_password")
    elif supervisor_password_stdin:
        from posterm.cli.common import check_password

        supervisor_password = check_password(sys.stdin.readline().strip(), "--supervisor-password-stdin")
    if panel and processes and processes > 1:
        raise click.UsageError("--panel serves the terminals of one process: use --processes 1, or give each "
                               "process's panel to `posterm panel --fleet`")
    processes = processes or (1 if panel else fleets.default_processes(count) if fleet_parent is None else 1)
    if processes > count:
        raise click.BadParameter(f"{processes} processes for {count} terminals", param_hint="'--processes'")
    if (panel_file or customer) and not panel:
        raise click.UsageError("--panel-file and --customer need --panel")
    stop = threading.Event()
    # Both before the port is announced (no race), and SIGINT too: a KeyboardInterrupt could land
    # inside close(); the flag is checked in one place. Also overrides an inherited "ignore
    # SIGINT" (a background job of a script), so Ctrl-C / kill -INT always stops it cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if fleet_parent is not None:
        fleets.watch_stdin(stop)          # the parent gone: stdin's EOF
    if processes > 1:
        _process_fleet(stop, count, processes, listen, port_file, host_url, home, host_connections,
                       (operator_password, supervisor_password),
                       _child_args(scenario, faults, pace, baud, record, protocol, line_format, show_display,
                                   poll_interval, poll_attempts))
        return
    kw = dict(host=host_url, home=home, scenario=scenario, faults=faults, pace=pace, baudrate=baud, record=record,
              protocol=protocol, line_format=line_format.upper() if line_format else None,
              operator_password=operator_password, supervisor_password=supervisor_password,
              config=FirmwareConfig(poll_interval=poll_interval, poll_attempts=poll_attempts))
    try:
        if count > 1:
            fleets.ensure_fd_limit(count)
            fleet = Fleet.start(count, listen=listen, first=first_terminal,
                                host_connections=host_connections or min(count, 16), **kw)
            terminals = fleet.terminals
        else:
            term = EmulatedTerminal.start(listen=listen, terminal_id=terminal_id, link=link, **kw)
            fleet, terminals = None, [term]
    except PosError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_USAGE)
        return
    if show_display:
        for t in terminals:
            t.firmware.display.on_change = _screen_printer(t.terminal_id)
    panel_server = _start_panel(panel, panel_file, customer, terminals, scenario, fleet) if panel else None
    if port_file:  # before stdout: a reader of the first stdout line can rely on the file too
        from posterm.safefs import replace_private

        try:  # 0600, appears whole, only once the terminals are ready; a symlink there is refused
            replace_private(port_file, "".join(f"{t.port}\n" for t in terminals).encode(), parent=False)
        except (PosError, OSError) as exc:
            (fleet or terminals[0]).close()
            fail(f"{type(exc).__name__}: {exc}" if isinstance(exc, PosError)
                 else f"cannot write {port_file}: {exc.strerror or exc}",
                 EXIT_USAGE)
            return
    for t in terminals:
        click.echo(t.port)
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            dead = [t for t in terminals if t.error is not None]
            if dead:
                click.echo(f"posterm: error: terminal {dead[0].terminal_id} stopped: {dead[0].error}", err=True)
                break
    except KeyboardInterrupt:
        pass
    finally:
        if panel_server is not None:
            panel_server.close()
        if fleet is not None:
            fleet.close()
        else:
            terminals[0].close()
    failed = _report_scenarios(terminals)
    if any(t.error for t in terminals):
        sys.exit(1)
    sys.exit(EXIT_SCENARIO_FAILED if failed else 0)


EXIT_SCENARIO_FAILED = 5


def _child_args(scenario, faults, pace, baud, record, protocol, line_format, show_display, poll_interval,
                poll_attempts) -> list[str]:
    """The options every child of a fleet over several processes gets from its parent's."""
    out = ["--protocol", protocol, "--poll-interval", repr(poll_interval), "--poll-attempts", str(poll_attempts)]
    for flag, value in (("--scenario", scenario), ("--faults", faults), ("--baud", baud), ("--record", record),
                        ("--line-format", line_format)):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--pace"] if pace else []) + (["--show-display"] if show_display else [])


def _process_fleet(stop, count, processes, listen, port_file, host_url, home, host_connections, passwords,
                   child_args) -> None:
    """The parent of a fleet over several processes: start, announce the ports, supervise, stop."""
    from posterm.emulator.fleet import ProcessFleet
    from posterm.errors import PosError

    try:
        fleet = ProcessFleet.start(count, processes=processes, host=host_url, home=home, listen=listen,
                                   host_connections=host_connections, operator_password=passwords[0],
                                   supervisor_password=passwords[1], child_args=child_args)
    except PosError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_USAGE)
        return
    dead = None
    try:
        if port_file:
            from posterm.safefs import replace_private

            try:
                replace_private(port_file, "".join(f"{p}\n" for p in fleet.ports).encode(), parent=False)
            except (PosError, OSError) as exc:
                fleet.close()
                fail(f"cannot write {port_file}: {exc}", EXIT_USAGE)
                return
        for p in fleet.ports:
            click.echo(p)
        sys.stdout.flush()
        while not stop.wait(0.5):
            dead = fleet.poll()
            if dead is not None:
                click.echo(f"posterm: error: fleet process {dead[0] + 1} exited with {dead[1]}", err=True)
                break
    finally:
        codes = fleet.close()
    if dead is not None or any(c not in (0, EXIT_SCENARIO_FAILED) for c in codes):
        sys.exit(1)
    sys.exit(EXIT_SCENARIO_FAILED if EXIT_SCENARIO_FAILED in codes else 0)
def _start_panel(address, url_file, customer, terminals, scenario, fleet):
    """The control panel over ``terminals`` (posterm.panel); on failure they are closed and it exits 2."""
    from posterm.emulator.control import TerminalControl
    from posterm.errors import PosError
    from posterm.panel.backend import LocalBackend
    from posterm.panel.server import PanelServer

    manual = customer == "manual" if customer else (len(terminals) == 1 and not scenario)
    try:
        server = PanelServer(LocalBackend([TerminalControl(t, manual=manual) for t in terminals]), address)
        if url_file:
            from posterm.safefs import replace_private

            replace_private(url_file, f"{server.url}\n".encode(), parent=False)
    except (PosError, OSError) as exc:
        (fleet or terminals[0]).close()
        fail(str(exc) if isinstance(exc, PosError) else f"--panel-file {url_file}: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(f"posterm: control panel at {server.url} ({'manual' if manual else 'automatic'} customer)", err=True)
    return server


def _report_scenarios(terminals) -> int:
    """One line per checked scenario payment, on stderr. Returns how many failed."""
    failed = 0
    for t in terminals:
        for n, res in enumerate(t.firmware.scenario_results, 1):
            if res.expected is None and res.expected_reason is None:
                continue
            want = res.expected.name.lower() if res.expected is not None else "any outcome"
            if res.expected_reason is not None:
                want += f"/{res.expected_reason.name.lower()}"
            got = f"{res.outcome.name.lower()}/{_reason(res.reason)}"
            failed += not res.ok
            click.echo(f"scenario: {'pass' if res.ok else 'FAIL'} {t.terminal_id} payment {n} "
                       f"order {res.order_id}: expected {want}, got {got}", err=True)
    return failed


def _reason(code: int) -> str:
    from posterm.ecr.results import Reason

    try:
        return Reason(code).name.lower()
    except ValueError:
        return str(code)


def _screen_printer(terminal_id: str):
    """What the customer sees, on stderr; a dynamic QR as a scannable text QR code (segno)."""
    lock = threading.Lock()  # one screen at a time when a fleet shares stderr

    def show(text: str, qr_data: str | None) -> None:
        with lock:
            click.echo(f"[{terminal_id} screen] {text}", err=True)
            if qr_data:
                import segno

                segno.make(qr_data, error="m").terminal(out=sys.stderr, compact=True)
                click.echo(f"[{terminal_id} screen] QR data: {qr_data}", err=True)
    return show
