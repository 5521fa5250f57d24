"""``posterm decode``: what a frame or APDU pasted from a log says, fields named, secrets masked.

The command reads hex (arguments, or stdin with ``-``), hands the bytes to the protocol
family's decoder (:meth:`posterm.families.ProtocolFamily.decode`) and prints one block per
frame found, or the list of descriptions with ``--json``. It knows no protocol itself.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from posterm.cli.common import FAMILY, LazyHelpOption, protocol_help

MAX_INPUT = 1024 * 1024          # characters of hex text: a log excerpt, not a capture file
_JUNK = re.compile(r"0[xX]|[\s:,\-]")
_NOT_HEX = re.compile(r"[^0-9a-fA-F]")
EXIT_UNDECODED = 1

EXIT_HELP = """\b
Exit codes:
  0  every frame decoded
  1  some frame did not decode, or is malformed (bad CRC or LRC, cut off, unknown
     command, garbage): its block says why, the others are still shown
  2  usage error (no bytes, not hex, more than 1 MiB, a family without a decoder)"""


def read_hex(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> bytes:
    """The bytes the HEX arguments (or stdin, for ``-``) spell. Spaces, newlines, colons,
    commas, dashes and ``0x`` prefixes are ignored. Raises click.BadParameter, one line that
    never quotes the input (it may hold a PAN)."""
    if value == ("-",):
        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.read(MAX_INPUT + 1) if stream is not None else sys.stdin.read(MAX_INPUT + 1).encode()
        where = "stdin: "
        if len(raw) > MAX_INPUT:
            raise click.BadParameter(f"{where}more than {MAX_INPUT} bytes of input: decode a smaller part", ctx, param)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise click.BadParameter(f"{where}not hex text (a byte above 7F; for a binary capture, pipe it"
                                     " through `xxd -p`)", ctx, param) from None
    else:
        if "-" in value:
            raise click.BadParameter("'-' (read stdin) stands alone", ctx, param)
        where = ""
        text = " ".join(value)
        if len(text) > MAX_INPUT:
            raise click.BadParameter(f"more than {MAX_INPUT} characters of input: decode a smaller part", ctx, param)
    digits = _JUNK.sub("", text)
    bad = _NOT_HEX.search(digits)
    if bad is not None:
        shown = bad.group() if bad.group().isascii() and bad.group().isprintable() else f"U+{ord(bad.group()):04X}"
        raise click.BadParameter(f"{where}not hex: {shown!r} after {bad.start()} hex digits", ctx, param)
    if not digits:
        raise click.BadParameter(f"{where}no bytes given", ctx, param)
    if len(digits) % 2:
        raise click.BadParameter(f"{where}an odd number of hex digits ({len(digits)}): a byte is two", ctx, param)
    return bytes.fromhex(digits)


@click.command(epilog=EXIT_HELP)
@click.option("--protocol", envvar="POSTERM_PROTOCOL", type=FAMILY, default=None, cls=LazyHelpOption,
              help_text=lambda: protocol_help(env=True, what="Protocol family of the bytes"))
@click.option("--json", "as_json", is_flag=True, help="Print the list of frame descriptions as JSON.")
@click.argument("hex_input", metavar="HEX", nargs=-1, required=True, callback=read_hex)
def decode(protocol: str | None, as_json: bool, hex_input: bytes) -> None:
    """Decode frames or APDUs pasted from a log: HEX is the bytes in hex ('10 02 80 00',
    '06:01:0A', '0x06 0x01'; quotes optional), or '-' to read them from stdin (at most 1 MiB).

    One block per frame found: what it is, its fields by name (ZVT: CLASS INSTR, the
    command's own fields, BMPs, the TLV of BMP 06 nested; posterm: the message and its TLV
    fields; Concert: the request or answer), and what is wrong with it. Secrets are always
    masked (passwords, PAN, track data, PIN blocks, a payment code but its last 4 digits),
    so the output can go into a ticket.

    ZVT takes serial frames (DLE STX ... DLE ETX CRC: the CRC is checked, and a frame with
    a bad one is still decoded and flagged) or bare APDUs as on TCP, several in a row.

    \b
    Examples:
      posterm decode --protocol zvt 06 00 06 12 34 56 DE 09 78
          (a Registration, from ../shared/zvt/captures/1681273860.511128000_ecr_pt)
      posterm decode --protocol zvt 10 02 80 00 00 10 03 F5 1F
      xxd -p capture.blob | posterm decode --protocol zvt --json -
    """
    from posterm.families import family

    entries = family(protocol).decode(hex_input)
    if as_json:
        click.echo(json.dumps(entries))
    else:
        click.echo(render(entries), nl=False)
    sys.exit(EXIT_UNDECODED if any("error" in e for e in entries) else 0)


# ------------------------------------------------------------------ text


_HEAD_KEYS = ("offset", "kind", "summary", "error", "fields")


def render(entries: list[dict[str, Any]]) -> str:
    """The text of ``entries`` (:meth:`~posterm.families.ProtocolFamily.decode`'s shape):
    one block per frame, a header line, ``error`` first, other keys, then the fields nested."""
    lines: list[str] = []
    for n, e in enumerate(entries, 1):
        head = f"#{n} at byte {e.get('offset')}: {e.get('kind')}"
        if e.get("summary"):
            head += f"  {e['summary']}"
        lines.append(head)
        if "error" in e:
            lines.append(f"  error: {e['error']}")
        for key, value in e.items():
            # command, message, class and instr are in the summary already
            if key not in _HEAD_KEYS and key not in ("command", "message", "class", "instr"):
                lines.append(f"  {key}: {_scalar(value)}")
        for field in e.get("fields") or ():
            _field(field, 1, lines)
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")


def _field(field: Any, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    if not isinstance(field, dict):
        lines.append(f"{pad}{_scalar(field)}")
        return
    label = " ".join(str(field[k]) for k in ("id", "name") if field.get(k) not in (None, ""))
    if "value" in field and not field.get("items"):   # with items, the raw value is for --json
        text = f"{pad}{label}: {_scalar(field['value'])}"
        if field.get("note") not in (None, ""):
            text += f" ({field['note']})"
        lines.append(text)
    else:
        lines.append(f"{pad}{label}:" + (f" ({field['note']})" if field.get("note") not in (None, "") else ""))
    for item in field.get("items") or ():
        _field(item, depth + 1, lines)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        # quoted when it would not read back as itself (spaces at the ends, CR, empty)
        return json.dumps(value, ensure_ascii=False) if (not value or value != value.strip()
                                                          or not value.isprintable()) else value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
