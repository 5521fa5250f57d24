"""`posterm crypto`: payment-crypto tools for engineers. Keys in, check values out.

No command prints a key or a PIN: only KCVs, headers and encrypted blocks.
"""

from __future__ import annotations

import click

from posterm.cli.common import emit_json
from posterm.errors import CryptoError


def _hex(value: str, what: str, sizes: tuple[int, ...]) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError:
        raise click.BadParameter(f"{what} must be hex") from None
    if len(raw) not in sizes:
        raise click.BadParameter(f"{what} must be {' or '.join(str(2 * s) for s in sizes)} hex digits")
    return raw


def _key_from(key_file: str | None, what: str, sizes: tuple[int, ...]) -> bytes:
    if key_file:
        with open(key_file, encoding="ascii", errors="replace") as fh:
            return _hex(fh.read(), what, sizes)
    return _hex(click.prompt(f"{what} (hex, hidden)", hide_input=True), what, sizes)


@click.group()
def crypto() -> None:
    """Payment crypto tools: KCVs, PIN blocks, TR-31 headers, DUKPT derivations.

    Keys are read from a file or a hidden prompt, never from a flag (flags end up
    in shell history). Nothing here prints a key or a PIN.
    """


@crypto.command()
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), help="File with the key in hex.")
@click.option("--algorithm", type=click.Choice(["AES", "TDES"]), default="AES", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def kcv(key_file, algorithm, as_json):
    """Key check value of a key (AES: CMAC of zeros; TDES: encrypted zeros)."""
    from posterm.crypto import common as c

    sizes = (16, 24, 32) if algorithm == "AES" else (16, 24)
    key = _key_from(key_file, "key", sizes)
    value = c.kcv(key, c.Algorithm[algorithm], 3).hex().upper()
    emit_json({"kcv": value, "algorithm": algorithm}) if as_json else click.echo(value)


@crypto.command()
@click.option("--format", "fmt", type=click.Choice(["0", "3", "4"]), default="4", show_default=True)
@click.option("--pan", required=True, help="PAN or payment code the block is bound to.")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="PIN key in hex (AES for format 4, TDES for 0/3).")
def pinblock(fmt, pan, key_file):
    """Encrypt a PIN block; the PIN is read from a hidden prompt."""
    from posterm.crypto import common as c

    pin = click.prompt("PIN", hide_input=True)
    try:
        if fmt == "4":
            key = c.Key(_key_from(key_file, "PIN key", (16, 24, 32)), c.Usage.PIN, c.Algorithm.AES)
            block = c.encrypt_pin_block_4(key, pin, pan)
        else:
            key = c.Key(_key_from(key_file, "PIN key", (16, 24)), c.Usage.PIN, c.Algorithm.TDES)
            clear = c.pin_block_0(pin, pan) if fmt == "0" else c.pin_block_3(pin, pan)
            block = c.tdes_ecb(key.material(c.Usage.PIN), clear)
    except CryptoError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(block.hex().upper())


@crypto.group()
def tr31() -> None:
    """TR-31 key blocks."""


@tr31.command("inspect")
@click.argument("block")
@click.option("--json", "as_json", is_flag=True)
def tr31_inspect(block, as_json):
    """Show a TR-31 block's clear header (never the key)."""
    from posterm.crypto import common as c

    try:
        header, _ = c.parse_tr31_header(block.strip())
    except CryptoError as exc:
        raise click.UsageError(str(exc)) from None
    fields = {"version": header.version, "length": header.length, "usage": header.usage,
              "algorithm": header.algorithm, "mode": header.mode, "key_version": header.key_version,
              "exportability": header.exportability, "optional_blocks": dict(header.optional_blocks)}
    if as_json:
        emit_json(fields)
    else:
        for k, v in fields.items():
            click.echo(f"{k:<16} {v}")


@crypto.command("dukpt")
@click.option("--bdk-file", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--ksn", required=True, help="KSN in hex: 24 digits (AES) or 20 (TDES).")
@click.option("--json", "as_json", is_flag=True)
def dukpt(bdk_file, ksn, as_json):
    """Derive a transaction's DUKPT keys from a BDK and show their KCVs."""
    from posterm.crypto import common as c

    raw_ksn = _hex(ksn, "KSN", (10, 12))
    bdk = _key_from(bdk_file, "BDK", (16,))
    try:
        if len(raw_ksn) == 12:
            tk = c.aes_dukpt_transaction_key(c.aes_dukpt_initial_key(bdk, raw_ksn[:8]), raw_ksn)
            keys = {p: c.kcv(c.aes_dukpt_working_key(tk, raw_ksn, p)) for p in ("pin", "mac_generation",
                                                                                  "mac_verification", "data_encrypt")}
        else:
            tk = c.tdes_dukpt_transaction_key(c.tdes_dukpt_ipek(bdk, raw_ksn), raw_ksn)
            keys = {p: c.kcv(c.tdes_dukpt_working_key(tk, p), c.Algorithm.TDES) for p in c.TDES_VARIANTS}
    except CryptoError as exc:
        raise click.UsageError(str(exc)) from None
    out = {p: v.hex().upper() for p, v in keys.items()}
    if as_json:
        emit_json({"ksn": raw_ksn.hex().upper(), "kcv": out})
    else:
        for p, v in out.items():
            click.echo(f"{p:<18} KCV {v}")
