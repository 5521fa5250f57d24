"""`posterm crypto`: a payment-crypto calculator for engineers debugging hardware.

Plain upper-case hex on stdout (``--json`` for an object). Meant for test keys: real
production keys belong in an HSM, not on a command line. Bad hex, wrong lengths and
impossible combinations give a one-line error and exit 2.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from posterm.cli.common import InputFile, emit_json
from posterm.errors import CryptoError

json_flag = click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")


class _Digits(click.ParamType):
    """lo..hi ASCII digits; ``secret`` values are never shown in an error."""

    def __init__(self, name: str, lo: int, hi: int) -> None:
        self.name, self.lo, self.hi = name, lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not (self.lo <= len(text) <= self.hi and text.isascii() and text.isdigit()):
            self.fail(f"a {self.name} is {self.lo} to {self.hi} digits", param, ctx)
        return text


PAN = _Digits("PAN", 1, 19)     # ISO 9564-1: the PAN (or a payment code) fits 19 digits
PIN = _Digits("PIN", 4, 12)


def hexarg(value: str, what: str, sizes: tuple[int, ...] | None = None) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError:
        raise click.UsageError(f"{what}: not hex") from None
    if sizes and len(raw) not in sizes:
        raise click.UsageError(f"{what}: {len(raw)} bytes, expected {' or '.join(map(str, sizes))}")
    return raw


def calc(fn: Callable) -> Callable:
    """Print the result as hex (or JSON); CryptoError becomes a usage error."""
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool = False, **kw: Any) -> None:
        try:
            out = fn(*args, **kw)
        except CryptoError as exc:
            raise click.UsageError(str(exc)) from None
        if as_json:
            emit_json({k: (v.hex().upper() if isinstance(v, bytes) else v) for k, v in out.items()})
        else:
            first = next(iter(out.values()))
            click.echo(first.hex().upper() if isinstance(first, bytes) else first)
    return wrapper


@click.group()
def crypto() -> None:
    """Payment-crypto calculator: DUKPT, PIN blocks, TR-31, CMAC, KCV.

    \b
    posterm crypto dukpt initial-key --bdk HEX --ksn HEX
    posterm crypto dukpt derive --bdk HEX --ksn HEX --usage pin
    posterm crypto dukpt derive --bdk-file bdk.hex --ksn HEX   (KCVs only)
    posterm crypto pinblock encode --format 4 --pan 4111111111111111 --key HEX
    posterm crypto tr31 inspect BLOCK                          (header only)
    posterm crypto tr31 unwrap --kbpk HEX BLOCK
    posterm crypto cmac --key HEX --data HEX
    posterm crypto retail-mac --key HEX --text 4012345678909D987 --length 4
    posterm crypto kcv --key HEX

    AES or TDES is chosen by the lengths (AES DUKPT: 12-byte KSN and an AES-128/192/256
    BDK of 16/24/32 bytes, --working-key aes128|aes192|aes256|tdes2|tdes3; TDES DUKPT:
    10-byte KSN). Keys on the command line are for test keys only;
    a BDK read with --bdk-file is treated as real and only KCVs are shown.
    Bad input: a one-line error and exit status 2.
    """


@crypto.group()
def dukpt() -> None:
    """DUKPT: AES (ANSI X9.24-3) or TDES (ANSI X9.24-1), chosen by the KSN length.

    \b
    AES: a 12-byte KSN; the BDK is AES-128, AES-192 or AES-256 by its length (16/24/32
    bytes); working keys are of the BDK's type unless --working-key says otherwise
    (aes128, aes192, aes256, tdes2, tdes3; never stronger than the BDK).
    TDES: a 10-byte KSN and a 16-byte BDK.
    """


def _initial(bdk: bytes, ksn: bytes) -> bytes:
    from posterm.crypto import common as c

    if len(ksn) == 12:
        return c.aes_dukpt_initial_key(bdk, ksn[:8])
    if len(bdk) != 16:
        raise click.UsageError(f"--bdk: TDES DUKPT (a 10-byte KSN) takes a 16-byte BDK, not {len(bdk)}")
    return c.tdes_dukpt_ipek(bdk, ksn)


BDK_SIZES = (16, 24, 32)


def _bdk(bdk: str | None, bdk_file: str | None) -> bytes:
    """The BDK from --bdk (a public test key) or --bdk-file (hex text, or 16/24/32 raw bytes)."""
    if (bdk is None) == (bdk_file is None):
        raise click.UsageError("give exactly one of --bdk HEX (test keys) or --bdk-file FILE")
    if bdk is not None:
        return _sized(hexarg(bdk, "--bdk"), "--bdk")
    try:
        with open(bdk_file, "rb") as fh:
            raw = fh.read(4096)
    except OSError as exc:
        raise click.UsageError(f"--bdk-file: cannot read it ({exc.strerror})") from None
    if len(raw) in BDK_SIZES:
        return raw
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise click.UsageError("--bdk-file: neither 16/24/32 raw bytes nor hex text") from None
    return _sized(hexarg("".join(text.split()), "--bdk-file"), "--bdk-file")


def _sized(raw: bytes, what: str) -> bytes:
    if len(raw) not in BDK_SIZES:
        raise click.UsageError(f"{what}: {len(raw)} bytes, expected 16, 24 or 32 (AES-128/192/256; TDES: 16)")
    return raw


bdk_options = [
    click.option("--bdk", default=None, help="Base derivation key, hex: 16/24/32 bytes (public test keys only)."),
    click.option("--bdk-file", default=None, type=InputFile(max_bytes=4096),
                 help="Read the BDK from a file (hex text or 16/24/32 raw bytes); only KCVs are printed then."),
]


def with_bdk(fn: Callable) -> Callable:
    for opt in reversed(bdk_options):
        fn = opt(fn)
    return fn


def _alg_of(key: bytes, ksn: bytes) -> Any:
    from posterm.crypto import common as c

    return c.Algorithm.AES if len(ksn) == 12 else c.Algorithm.TDES


def _kcv_only(out: dict, algorithm: Any) -> dict:
    """A key read from a file is treated as a real secret: show check values, never bytes."""
    from posterm.crypto import common as c

    return {f"{name}_kcv": c.kcv(v, algorithm).hex().upper() for name, v in out.items() if isinstance(v, bytes)}


@dukpt.command("initial-key")
@with_bdk
@click.option("--ksn", required=True, help="KSN, hex: 24 digits (AES) or 20 (TDES).")
@json_flag
@calc
def dukpt_initial(bdk: str | None, bdk_file: str | None, ksn: str) -> dict:
    """The initial key (AES, of the BDK's type) or IPEK (TDES) for a KSN (its KCV only with --bdk-file)."""
    raw_ksn = hexarg(ksn, "--ksn", (10, 12))
    raw_bdk = _bdk(bdk, bdk_file)
    out = {"initial_key": _initial(raw_bdk, raw_ksn)}
    return _kcv_only(out, _alg_of(raw_bdk, raw_ksn)) if bdk_file else out


# CLI usage -> (AES DUKPT usage, TDES DUKPT variant or None)
USAGES = {"derivation": None, "pin": ("pin", "pin"), "mac-gen": ("mac_generation", "mac_request"),
          "mac-verify": ("mac_verification", "mac_response"), "mac-both": ("mac_both", None),
          "data-encrypt": ("data_encrypt", None), "data-decrypt": ("data_decrypt", None),
          "data-both": ("data_both", None), "kek": ("key_encryption", None)}
WORKING_KEYS = ("aes128", "aes192", "aes256", "tdes2", "tdes3")


def _keys_for(ik: bytes, ksn: bytes, usages: list[str], working_key: str | None) -> tuple[dict[str, bytes], Any]:
    """The transaction key ("derivation") and the working keys for ``usages``; their algorithm."""
    from posterm.crypto import common as c

    if len(ksn) == 12:
        tk = c.aes_dukpt_transaction_key(ik, ksn)
        kt = c._working_type(working_key, c.aes_dukpt_key_type(tk))
        keys = {"derivation": tk, **{u: c.aes_dukpt_working_key(tk, ksn, USAGES[u][0], kt)
                                     for u in usages if u != "derivation"}}
        return keys, kt.algorithm
    if working_key is not None:
        raise click.UsageError("--working-key is for AES DUKPT (a 12-byte KSN); TDES DUKPT keys are TDES")
    tk = c.tdes_dukpt_transaction_key(ik, ksn)
    keys = {"derivation": tk}
    for u in usages:
        if u == "derivation":
            continue
        if USAGES[u][1] is None:
            raise click.UsageError(f"--usage {u} has no TDES DUKPT variant here")
        keys[u] = c.tdes_dukpt_working_key(tk, USAGES[u][1])
    return keys, c.Algorithm.TDES


@dukpt.command("derive")
@with_bdk
@click.option("--ksn", required=True, help="KSN, hex: 24 digits (AES) or 20 (TDES).")
@click.option("--usage", type=click.Choice(list(USAGES)), default="derivation", show_default=True,
              help="derivation = the transaction (intermediate derivation) key.")
@click.option("--working-key", type=click.Choice(WORKING_KEYS), default=None,
              help="AES DUKPT working key type (default: the BDK's own type; never stronger than it).")
@json_flag
@calc
def dukpt_derive(bdk: str | None, bdk_file: str | None, ksn: str, usage: str, working_key: str | None) -> dict:
    """A transaction's key for one usage (with --bdk-file: only the KCVs of the derived keys)."""
    from posterm.crypto import common as c

    raw_ksn = hexarg(ksn, "--ksn", (10, 12))
    ik = _initial(_bdk(bdk, bdk_file), raw_ksn)
    if bdk_file:
        return _derive_kcvs(ik, raw_ksn, usage, working_key)
    keys, alg = _keys_for(ik, raw_ksn, [usage], working_key)
    key = keys[usage]
    if usage == "derivation":
        alg = _alg_of(key, raw_ksn)
    return {"key": key, "kcv": c.kcv(key, alg).hex().upper(),
            "key_type": _type_name(key, alg), "usage": usage}


def _type_name(key: bytes, alg: Any) -> str:
    from posterm.crypto import common as c

    if alg is c.Algorithm.AES:
        return f"aes{len(key) * 8}"
    return {16: "tdes2", 24: "tdes3"}.get(len(key), "tdes")


@dukpt.command("next-ksn")
@click.option("--ksn", required=True, help="KSN, hex: 24 digits (AES) or 20 (TDES).")
@json_flag
@calc
def dukpt_next_ksn(ksn: str) -> dict:
    """The KSN a PIN pad uses after KSN: invalid counters (too many one-bits) are skipped."""
    from posterm.crypto import common as c

    raw = hexarg(ksn, "--ksn", (10, 12))
    if len(raw) == 12:
        nxt = raw[:8] + c.aes_dukpt_next_counter(int.from_bytes(raw[8:], "big")).to_bytes(4, "big")
    else:
        value = int.from_bytes(raw, "big")
        nxt = ((value & ~0x1FFFFF) | c.tdes_dukpt_next_counter(value & 0x1FFFFF)).to_bytes(10, "big")
    return {"ksn": nxt}


def _derive_kcvs(ik: bytes, ksn: bytes, usage: str, working_key: str | None) -> dict:
    """KCVs of every key a transaction derives: what an engineer compares with a device log."""
    from posterm.crypto import common as c

    wanted = [u for u, p in USAGES.items() if p is None or len(ksn) == 12 or p[1] is not None]
    if usage not in wanted:
        raise click.UsageError(f"--usage {usage} has no TDES DUKPT variant here")
    keys, alg = _keys_for(ik, ksn, wanted, working_key)
    tk_alg = _alg_of(ik, ksn)
    kcvs = {f"{u}_kcv": c.kcv(k, tk_alg if u == "derivation" else alg).hex().upper() for u, k in keys.items()}
    # the requested usage first: it is what the plain (non --json) output prints
    return {"kcv": kcvs[f"{usage}_kcv"], "ksn": ksn.hex().upper(), **kcvs}


@crypto.group()
def pinblock() -> None:
    """ISO 9564-1 PIN blocks, formats 0, 3 (8 bytes, TDES) and 4 (16 bytes, AES)."""


@pinblock.command("encode")
@click.option("--format", "fmt", type=click.Choice(["0", "3", "4"]), required=True)
@click.option("--pin", type=PIN, default=None,
              help="Only for published test vectors; omit it to type the PIN at a hidden prompt "
                   "(a PIN on a command line lands in shell history).")
@click.option("--pan", type=PAN, required=True)
@click.option("--key", default=None, help="PIN key, hex: gives the encrypted block (required for format 4).")
@click.option("--fill", default=None, help="Random fill, hex (format 3: nibbles; format 4: 8 bytes).")
@json_flag
@calc
def pinblock_encode(fmt: str, pin: str | None, pan: str, key: str | None, fill: str | None) -> dict:
    """Encode (and with --key, encrypt) a PIN block. The PIN is read at a hidden prompt."""
    from posterm.crypto import common as c

    if pin is None:
        pin = click.prompt("PIN", hide_input=True, err=True)

    raw_fill = hexarg(fill, "--fill") if fill is not None else None
    if fmt == "4":
        if key is None:
            raise click.UsageError("format 4 is defined enciphered: give --key (AES)")
        k = c.Key(hexarg(key, "--key", (16, 24, 32)), c.Usage.PIN, c.Algorithm.AES)
        return {"block": c.encrypt_pin_block_4(k, pin, pan, raw_fill)}
    clear = c.pin_block_0(pin, pan) if fmt == "0" else c.pin_block_3(pin, pan, raw_fill)
    if key is not None:
        return {"block": c.tdes_ecb(hexarg(key, "--key", (16, 24)), clear)}
    return {"block": clear}


@pinblock.command("pan-field")
@click.option("--pan", type=PAN, required=True)
@json_flag
@calc
def pinblock_pan_field(pan: str) -> dict:
    """The ISO 9564-1 format 4 PAN field (16 bytes) for PAN."""
    from posterm.crypto import common as c

    return {"field": c.pan_field_4(pan)}


@pinblock.command("decode")
@click.option("--format", "fmt", type=click.Choice(["0", "3", "4"]), required=True)
@click.option("--block", required=True)
@click.option("--pan", type=PAN, required=True)
@click.option("--key", default=None, help="PIN key, hex, if the block is encrypted.")
@json_flag
@calc
def pinblock_decode(fmt: str, block: str, pan: str, key: str | None) -> dict:
    """Decode a PIN block (decrypting with --key); the PAN is checked."""
    from posterm.crypto import common as c

    if fmt == "4":
        if key is None:
            raise click.UsageError("format 4 needs --key")
        k = c.Key(hexarg(key, "--key", (16, 24, 32)), c.Usage.PIN, c.Algorithm.AES)
        return {"pin": c.decrypt_pin_block_4(k, hexarg(block, "--block", (16,)), pan)}
    raw = hexarg(block, "--block", (8,))
    if key is not None:
        raw = c.tdes_ecb(hexarg(key, "--key", (16, 24)), raw, decrypt=True)
    return {"pin": c.decode_pin_block_03(raw, pan)}


@crypto.group()
def tr31() -> None:
    """ANSI TR-31 key blocks: versions B (TDES) and D (AES); A and C unwrap only."""


@tr31.command("wrap")
@click.option("--kbpk", required=True, help="Key-block protection key, hex.")
@click.option("--header", required=True, help="Header, e.g. D0000B1AX00N0000 (the length is filled in).")
@click.argument("key")
@json_flag
@calc
def tr31_wrap(kbpk: str, header: str, key: str) -> dict:
    """Wrap KEY (hex) under the KBPK."""
    from posterm.crypto import common as c

    text = header.strip()
    if len(text) < 16:
        raise click.UsageError("--header: at least 16 characters")
    try:
        h, _ = c.parse_tr31_header(text[0] + f"{len(text):04d}" + text[5:])
    except CryptoError as exc:
        raise click.UsageError(f"--header: {exc}") from None
    return {"block": c.tr31_wrap(hexarg(kbpk, "--kbpk", (16, 24, 32)), h, hexarg(key, "KEY", (8, 16, 24, 32)))}


@tr31.command("unwrap")
@click.option("--kbpk", required=True, help="Key-block protection key, hex.")
@click.argument("block")
@json_flag
@calc
def tr31_unwrap(kbpk: str, block: str) -> dict:
    """Check and unwrap BLOCK; prints the key (and with --json the header)."""
    from posterm.crypto import common as c

    try:
        h, key = c.tr31_unwrap(hexarg(kbpk, "--kbpk", (16, 24, 32)), block.strip())
    except CryptoError as exc:
        raise click.BadParameter(str(exc), param_hint="BLOCK") from None
    return {"key": key, "usage": h.usage, "algorithm": h.algorithm, "mode": h.mode,
            "exportability": h.exportability, "kcv": c.kcv(key, c.Algorithm.AES if h.algorithm == "A"
                                                             else c.Algorithm.TDES).hex().upper()}


@tr31.command("inspect")
@click.argument("block")
@json_flag
def tr31_inspect(block: str, as_json: bool) -> None:
    """The clear header of BLOCK, every field with its meaning (needs no key)."""
    from posterm.crypto import common as c

    try:
        h, hlen = c.parse_tr31_header(block.strip())
    except CryptoError as exc:
        raise click.BadParameter(str(exc), param_hint="BLOCK") from None
    if as_json:
        emit_json({"usage": h.usage, "version": h.version, "length": h.length, "algorithm": h.algorithm,
                   "mode": h.mode, "key_version": h.key_version, "exportability": h.exportability,
                   "optional_blocks": dict(h.optional_blocks), "header_length": hlen,
                   "names": {k: v for k, v in c.describe_tr31_header(h)}})
        return
    for name, value in c.describe_tr31_header(h):
        click.echo(f"{name:>16}: {value}")


@crypto.command()
@click.option("--key", required=True, help="AES key (16/24/32 bytes) or TDES key (8/16/24 bytes with --tdes), hex.")
@click.option("--data", required=True, help="Data, hex.")
@click.option("--tdes", is_flag=True, help="TDES-CMAC instead of AES-CMAC.")
@json_flag
@calc
def cmac(key: str, data: str, tdes: bool) -> dict:
    """AES-CMAC (or TDES-CMAC) of DATA."""
    from posterm.crypto import common as c

    raw = hexarg(data, "--data")
    if tdes:
        return {"mac": c.tdes_cmac(hexarg(key, "--key", (8, 16, 24)), raw)}
    return {"mac": c.aes_cmac(hexarg(key, "--key", (16, 24, 32)), raw)}


@crypto.command("retail-mac")
@click.option("--key", required=True, help="Double-length TDES key, hex (32 digits).")
@click.option("--data", default=None, help="Data, hex.")
@click.option("--text", default=None, help="Data as ASCII text instead of --data.")
@click.option("--length", type=click.IntRange(4, 8), default=8, show_default=True, help="Bytes of MAC to print.")
@json_flag
@calc
def retail_mac(key: str, data: str | None, text: str | None, length: int) -> dict:
    """ANSI X9.19 retail MAC (ISO 9797-1 algorithm 3, zero padding): legacy TDES DUKPT MACs."""
    from posterm.crypto import common as c

    if (data is None) == (text is None):
        raise click.UsageError("give exactly one of --data HEX or --text TEXT")
    if text is not None and not text.isascii():
        raise click.UsageError("--text: ASCII only")
    raw = hexarg(data, "--data") if data is not None else text.encode("ascii")
    return {"mac": c.retail_mac(hexarg(key, "--key", (16,)), raw)[:length]}


@crypto.command()
@click.option("--key", required=True, help="Key, hex.")
@click.option("--tdes", is_flag=True, help="TDES key check value (encrypt zeros) instead of AES (CMAC of zeros).")
@click.option("--length", type=click.IntRange(2, 8), default=3, show_default=True, help="Bytes of check value.")
@json_flag
@calc
def kcv(key: str, tdes: bool, length: int) -> dict:
    """Key check value."""
    from posterm.crypto import common as c

    if tdes:
        return {"kcv": c.kcv(hexarg(key, "--key", (8, 16, 24)), c.Algorithm.TDES, length)}
    return {"kcv": c.kcv(hexarg(key, "--key", (16, 24, 32)), c.Algorithm.AES, length)}
