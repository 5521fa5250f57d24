"""``posterm keys``: load the PIN pad's initial DUKPT key and read its status."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from posterm.cli.common import EXIT_CODES_HELP, InputFile, emit_json, handle_errors, port_options
from posterm.cli.driver_cmd import _open, _password, json_option, timeout_option, with_password


@click.group()
def keys() -> None:
    """PIN pad keys: load an initial DUKPT key (TR-31 block), show KSN/KCV."""


@keys.command("load", epilog=EXIT_CODES_HELP)
@port_options
@click.argument("block", required=False)
@click.option("--block-file", type=InputFile(text=True, max_bytes=65536, allow_dash=True), help="Read the TR-31 key block from a file ('-' for stdin).")
@with_password
@json_option
@timeout_option
@handle_errors
def load(block, block_file, operator_password, password_stdin, as_json, timeout, **kw):
    """Send a TR-31 key block (version D, usage B1: initial DUKPT key) to the terminal.

    The block is issued by the host's HSM (`posterm host terminal key T...`, a new
    key with a new key id each time: `posterm keys load --port P --block-file <(posterm
    host terminal key T0000001)`); it is encrypted under the terminal's key-block protection key,
    so it is safe to carry, but it is still masked in traces and recordings. Loading a key
    the PIN pad held before continues its KSN counter; it never starts again from 0.
    """
    if (block is None) == (block_file is None):
        raise click.UsageError("give the key block as an argument or with --block-file, not both")
    text = (block if block is not None else sys.stdin.read() if block_file == "-"
            else Path(block_file).read_text(encoding="utf-8")).strip()
    if not re.fullmatch(r"[0-9A-Z]{16,512}", text):
        raise click.BadParameter("a TR-31 key block is 16..512 characters of 0-9 and A-Z",
                                 param_hint="BLOCK" if block is not None else "--block-file")
    pw = _password(operator_password, password_stdin)
    with _open(kw) as term:
        info = term.load_key(text, pw, timeout=timeout or 10.0)
    _show(info, as_json)
    sys.exit(0 if info.loaded and not info.reason else 1)


@keys.command("status", epilog=EXIT_CODES_HELP)
@port_options
@json_option
@timeout_option
@handle_errors
def status(as_json, timeout, **kw):
    """Show the PIN pad's KSN, counters left and KCV (never key bytes)."""
    with _open(kw) as term:
        info = term.key_status(timeout=timeout or 3.0)
    _show(info, as_json)


def _show(info, as_json: bool) -> None:
    if as_json:
        emit_json(info.to_json())
        return
    for k, v in info.to_json().items():
        click.echo(f"{k:>14}: {v}")
