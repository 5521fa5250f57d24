"""Recording commands: tap, replay, show, convert (see docs/record.md)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import click

from posterm.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    FAMILY,
    PORT,
    InputFile,
    LazyHelpOption,
    OutputFile,
    SecondsType,
    TextType,
    baud_help,
    fail,
    handle_errors,
    protocol_help,
)
from posterm.families import DEFAULT as DEFAULT_FAMILY

EXIT_DIFF = 1

_FROM = {"ecr": ("ECR ->", "cyan"), "terminal": ("<- TRM", "green")}
_EVENT_COLOUR = {"nak": "red", "bad_frame": "red", "retransmit": "yellow", "garbage": "yellow",
                 "partial": "yellow", "timeout": "red"}


def _default_baud(protocol: str | None) -> int:
    """The line rate of ``protocol`` (a family name; None: the default family), from the registry."""
    from posterm.families import DEFAULT, family

    return family(protocol or DEFAULT).baudrate


def _replay_port_settings(protocol: str, port: str, baud: int | None) -> dict[str, Any]:
    """Serial settings to reach a terminal of ``protocol`` on ``port``, as the family's ECR
    driver opens it: its serial defaults on a serial line (none where bytes move without a
    line: TCP, virtual, pty), ``--baud`` over them."""
    from posterm.families import family

    settings: dict[str, Any] = {}
    if not port.startswith(("tcp://", "virtual://", "pty://")):
        settings = dict(family(protocol).serial_defaults)
    if baud:
        settings["baudrate"] = baud
    return settings


def _write_port_file(port_file: str | None, path: str) -> None:
    if port_file:
        from posterm.safefs import replace_private

        replace_private(port_file, (path + "\n").encode(), parent=False)  # appears whole, once the port is ready


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def _secrets(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in pairs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--secret")
        out[name.strip()] = value
    return out


# ------------------------------------------------------------------ show


def _summary(rec: dict[str, Any], control_frames: frozenset[str]) -> str:
    if rec["type"] == "frame":
        msg = rec.get("msg")
        if rec["kind"] in control_frames:
            return ""
        if msg is None:
            return f"undecodable: {rec.get('error', '?')}"
        body = ", ".join(f"{k}={v}" for k, v in msg.items() if k != "type")
        return f"{msg.get('type', rec['kind'])}({body})" + (" [retransmit]" if rec.get("retransmit") else "")
    if rec["type"] == "event":
        extra = {k: v for k, v in rec.items() if k not in ("type", "t", "wall", "from", "event", "hex")}
        return f"{rec['event']} " + " ".join(f"{k}={v}" for k, v in extra.items())
    if rec["type"] == "chunk":
        return f"{rec['n']} bytes {rec['hex'][:48]}{'...' if len(rec['hex']) > 48 else ''}"
    if rec["type"] == "identity":
        return f"terminal {rec.get('terminal_id')} merchant {rec.get('merchant_id')} fw {rec.get('firmware_version')}"
    return ""


@click.command()
@click.argument("file", type=InputFile(text=True))
@click.option("--chunks", is_flag=True, help="Also list the raw chunks as they crossed the port.")
@click.option("--acks", is_flag=True,
              help="Also list acknowledgements and the line's other control bytes (ACK, ENQ, EOT...); NAKs are always listed.")
@handle_errors
def show(file: str, chunks: bool, acks: bool) -> None:
    """A timeline of a recording: time, direction, frame, decoded message, link events.

    Coloured on a terminal, plain text when piped. Works for a recording of any protocol
    family that can be recorded; what counts as routine control traffic is the family's.
    """
    from posterm.record import load

    rec = load(file)
    h = rec.header
    support = rec.support
    quiet, quiet_frames, hidden_frames = support.quiet_events, support.quiet_frames, support.hidden_frames
    control_frames = quiet_frames | hidden_frames
    click.echo(f"recording {file}: {h.get('tool')}, protocol {support.show_label(h)}, side {h.get('side')},"
               f" started {h.get('started_at')}, port {h.get('port', {}).get('description') or h.get('port', {}).get('url', '?')}")
    rows = sorted(rec.records, key=lambda r: r.get("t", 0.0))  # stable: file order within one instant
    for r in rows:
        kind = r["type"]
        if kind == "chunk" and not chunks:
            continue
        if kind == "event" and r["event"] in quiet and not acks:
            continue
        if kind == "frame" and r["kind"] in quiet_frames and not acks:
            continue
        if kind == "frame" and r["kind"] in hidden_frames:
            continue  # shown as its event
        arrow, colour = _FROM.get(r.get("from", ""), ("  --  ", "white"))
        what = r["kind"] if kind == "frame" else kind
        seq = f"{r['seq']:>3}" if "seq" in r else "   "
        if kind == "event":
            colour = _EVENT_COLOUR.get(r["event"], "white")
        line = f"{r.get('t', 0.0):>10.3f}  {arrow}  {what:<8} {seq}  {_summary(r, control_frames)}"
        click.echo(click.style(line, fg=colour, bold=kind == "identity"))
    frames = rec.frames()
    click.echo(f"{len(frames)} frames, {sum(1 for f in frames if f.get('retransmit'))} retransmitted,"
               f" {sum(1 for r in rec.records if r['type'] == 'event' and r['event'] == 'nak')} NAKs")


# ------------------------------------------------------------------ convert


@click.command()
@click.argument("file", type=InputFile(text=True))
@click.argument("out", type=OutputFile())
@handle_errors
def convert(file: str, out: str) -> None:
    """Convert a recording to pcapng (OUT.pcapng): one packet per frame, the protocol
    family's link type (posterm's own: DLT_USER0, 147), direction in the packet flags;
    tshark and Wireshark open it."""
    from posterm.record import load
    from posterm.record.pcapng import write_pcapng_file

    if not out.endswith(".pcapng"):
        raise click.BadParameter("the output must end in .pcapng", param_hint="OUT")
    rec = load(file)
    n = write_pcapng_file(rec, out)
    click.echo(f"{out}: {n} packets")


# ------------------------------------------------------------------ tap


@click.command()
@click.option("--ecr", "ecr_port", type=PORT, required=True, metavar="PORT",
              help="The cash register's port (or pty:// to make a new pty for it; its path is printed).")
@click.option("--terminal", "terminal_port", type=PORT, required=True, metavar="PORT", help="The terminal's port.")
@click.option("--record", "record_file", required=True, type=OutputFile(), help="Recording file.")
@click.option("--baud", type=click.IntRange(50, 4_000_000), default=None, cls=LazyHelpOption,
              help_text=lambda: baud_help("protocol family's"))
@click.option("--protocol", type=FAMILY, default=DEFAULT_FAMILY, show_default=True, cls=LazyHelpOption,
              help_text=lambda: protocol_help(what="The protocol family on the line, to decode it"))
@click.option("--port-file", type=OutputFile(), default=None, help="With --ecr pty://: write its path here.")
@click.option("--duration", type=SecondsType(0.1, 7 * 86400), default=None,
              help="Stop after this many seconds (default: until Ctrl-C, SIGTERM or a side hangs up).")
@handle_errors
def tap(ecr_port: str, terminal_port: str, record_file: str, baud: int | None, protocol: str, port_file: str | None,
        duration: float | None) -> None:
    """Sit between a cash register and a terminal: forward both ways, record both sides.

    Bytes are forwarded as they arrive (no re-framing); the recording decodes them.
    """
    from posterm.record import Recorder, recording_support
    from posterm.record.tap import Tap
    from posterm.transport import open_transport

    recording_support(protocol)   # a family that cannot be recorded fails before a port is opened
    baud = baud or _default_baud(protocol)
    stop = _stop_on_sigterm()
    term_t = open_transport(terminal_port, baudrate=baud)
    if ecr_port == "pty://":
        from posterm.transport.pty_port import PtyTransport

        ecr_t, path = PtyTransport.create(baudrate=baud)
        click.echo(path)
        sys.stdout.flush()
        _write_port_file(port_file, path)
    else:
        ecr_t = open_transport(ecr_port, baudrate=baud)
    recorder = Recorder(record_file, side="tap", port={"ecr": ecr_port, "terminal": terminal_port, "baudrate": baud},
                        protocol=protocol)
    t = Tap(ecr_t, term_t, recorder).start()
    click.echo(f"tapping {ecr_port} <-> {terminal_port}, recording to {record_file}", err=True)
    end = time.monotonic() + duration if duration else None
    try:
        while not stop.is_set() and not t.wait(0.2):
            if end is not None and time.monotonic() >= end:
                break
    except KeyboardInterrupt:
        pass
    finally:
        t.close()
        ecr_t.close()
        term_t.close()
    click.echo(f"forwarded {t.stats['ecr_bytes']} bytes from the ECR, {t.stats['terminal_bytes']} from the terminal;"
               f" {recorder.frames} frames recorded", err=True)
    if t.error is not None:
        click.echo(f"posterm: tap stopped: {t.error}", err=True)


# ------------------------------------------------------------------ replay


@click.command()
@click.argument("file", type=InputFile(text=True))
@click.option("--as", "role", type=click.Choice(["terminal", "ecr"]), required=True,
              help="terminal: play the terminal on a new pty for the ECR under test. ecr: drive --port.")
@click.option("--port", "-p", type=PORT, default=None, metavar="URL", help="--as ecr: the terminal's port.")
@click.option("--baud", type=click.IntRange(50, 4_000_000), default=None, cls=LazyHelpOption,
              help_text=lambda: baud_help("recording's protocol family's"))
@click.option("--port-file", type=OutputFile(), default=None, help="--as terminal: write the pty path here.")
@click.option("--speed", type=SecondsType(0.01, 1000), default=1.0, show_default=True,
              help="Replay speed: 1 = real time, 10 = ten times faster.")
@click.option("--fast", is_flag=True, help="No pauses at all.")
@click.option("--step", is_flag=True, help="--as ecr: wait for Enter before each message.")
@click.option("--loop", is_flag=True, help="Start again when the recording is done (until Ctrl-C / SIGTERM).")
@click.option("--secret", "secret_pairs", type=TextType(4096), multiple=True, metavar="NAME=VALUE",
              help="Value for a redacted field, e.g. operator_password=... (payment codes: test prefix + last 4).")
@click.option("--mask", "extra_masks", type=TextType(64), multiple=True, metavar="FIELD", help="Another field not to diff.")
@click.option("--same-ids", is_flag=True,
              help="--as ecr: send the recorded order/refund ids, in whatever field the family carries them"
                   " (default: fresh ones, so new payments are made).")
@click.option("--timeout", type=SecondsType(1, 86400), default=600.0, show_default=True,
              help="--as terminal: give up after this many seconds.")
@handle_errors
def replay(file: str, role: str, port: str | None, baud: int | None, port_file: str | None, speed: float, fast: bool,
           step: bool, loop: bool, secret_pairs: tuple[str, ...], extra_masks: tuple[str, ...], same_ids: bool, timeout: float) -> None:
    """Replay a recording against a live ECR (--as terminal) or a live terminal (--as ecr).

    Messages are matched by type and order/refund id (as the recorded protocol family
    matches them), not byte offset; each side runs the family's own link, so sequence
    numbers and acknowledgements suit the live peer. Fields that change every run
    (times, trade numbers, KSNs, session numbers: the family says which) are not diffed.

    \b
    Exit codes:
      0  the live side did what the recording did
      1  it diverged (a readable diff on stdout)
      2  usage error or a corrupt recording (the line is named)
      4  transport or link failure
    """
    from posterm.record import load
    from posterm.record.replay import build_script, replay_terminal, stdin_step

    recording = load(file)
    support = recording.support
    script = build_script(recording, _secrets(secret_pairs))
    if not script:
        fail(f"{file}: no ECR messages to replay", EXIT_USAGE)
    masks = support.default_masks | frozenset(extra_masks)
    stop = _stop_on_sigterm()
    if role == "terminal":
        if port:
            raise click.UsageError("--as terminal makes its own pty; --port is for --as ecr")
        from posterm.transport.pty_port import PtyTransport

        transport, path = PtyTransport.create(baudrate=baud or _default_baud(recording.protocol))
        click.echo(path)
        sys.stdout.flush()
        _write_port_file(port_file, path)
        player = replay_terminal(transport, script, speed=speed, fast=fast, loop=loop, masks=masks,
                                 report=lambda s: click.echo(s, err=True))
        threading.Thread(target=lambda: (stop.wait(), player.stop.set()), daemon=True).start()
        try:
            divergences = player.run(timeout=timeout)
        except KeyboardInterrupt:
            divergences = player.divergences
        finally:
            transport.close()
        if not player.done and not loop and not player.stop.is_set():
            divergences.append(_unfinished(player))
        _report(divergences, f"{player.answered} ECR message(s) answered")
        return
    if not port:
        raise click.UsageError("--as ecr needs --port (the terminal to replay to)")
    from posterm.transport import open_transport

    transport = open_transport(port, **_replay_port_settings(recording.protocol, port, baud))
    try:
        loops = 1
        total = 0
        all_diffs = []
        while True:
            result = support.replay_ecr(transport, script, speed=speed, fast=fast, step=step, masks=masks,
                               wait_for=stdin_step if step else None, fresh_ids=not same_ids)
            total += result.exchanges
            all_diffs.extend(result.diffs)
            if not loop or stop.is_set() or result.diffs:
                break
            loops += 1
    except KeyboardInterrupt:
        pass
    finally:
        transport.close()
    _report(all_diffs, f"{total} ECR message(s) sent")


def _unfinished(player):
    from posterm.record.replay import Divergence

    left = sum(1 for u in player.used if not u)
    return Divergence(player.answered, f"{left} recorded ECR message(s) never came")


def _report(diffs: list, summary: str) -> None:
    if diffs:
        click.echo(f"DIFF: {len(diffs)} difference(s); {summary}")
        for d in diffs:
            click.echo(f"  {d}")
        sys.exit(EXIT_DIFF)
    click.echo(f"match: {summary}")
    sys.exit(EXIT_OK)
