"""``posterm decode --protocol zvt``: what pasted ZVT bytes say, secrets masked.

The input is one of two shapes, told apart by its first bytes:

* serial: ``10 02 ... 10 03 CRC`` (DLE STX), possibly after ACK / NAK bytes (or after
  garbage, when the bytes do not read as APDUs and a frame with a good CRC is found): split
  by the serial framer; each frame's CRC is checked, and a frame with a wrong CRC is reported
  (``error``) with its APDU still decoded, so a corrupted line still shows what was meant;
  ACK 06 and NAK 15 between frames are entries of their own;
* anything else: bare APDUs (CLASS INSTR LEN data, as on TCP and in the shared captures),
  one after another, split by their own LEN.

Each APDU is described by :func:`firmware_protocol.zvt.apdu.describe` (which masks the
password and the secret BMPs: PAN, track data, CVV, PIN data, MAC) and put in the shape
:meth:`posterm.families.ProtocolFamily.decode` documents. BMP 06's TLV items are nested;
the values of the tags below that EMV data may carry (PAN, track 2, cardholder name) are
masked too. An unknown command, a bad LEN, a BMP we do not know: an entry with an
``error``, never an exception; the data of such an APDU is not shown (it may hold a secret).
"""

from __future__ import annotations

from typing import Any

from construct import Int8ub

from firmware_protocol import currency as cur
from firmware_protocol.errors import ProtocolError
from firmware_protocol.zvt import (
    ACK, DLE, NAK, STX, Apdu, SerialFramer, TcpFramer, Tlv, UnknownCommand, ZvtBadFrame, ZvtFrame, ZvtGarbage,
    crc_kermit,
)
from firmware_protocol.zvt.apdu import COMMANDS, MASK, decode_apdu, describe
from firmware_protocol.zvt.bmp import BMPS

# BMP 19 is one field with three meanings; the name a reader knows, by command.
_TYPE_BYTE = {
    (0x06, 0x01): "payment_type", (0x06, 0x22): "payment_type", (0x06, 0x23): "payment_type",
    (0x06, 0x24): "payment_type", (0x06, 0x25): "payment_type", (0x06, 0x0F): "status_byte",
    (0x06, 0xC0): "card_type", (0x04, 0x0F): "card_type",
}
# A command's own (untagged) fields that are one byte: shown with their hex as a note.
_BYTE_FIELDS = frozenset({"config_byte", "status", "terminal_status", "attribute", "result_code", "error"})
# TLV tags whose value reads as text, as BCD digits or as an unsigned number; others as hex.
_TEXT_TAGS = frozenset({0x07, 0x1F40, 0x1F41, 0x1F62, 0x1F63})
_BCD_TAGS = frozenset({0x1F44, 0x1F0E, 0x1F0F})
_UINT_TAGS = frozenset({0x09, 0x12, 0x1A, 0x1F07, 0x1F15, 0x1F43, 0x1F4C, 0x1F50, 0x1F60})
# EMV tags that can turn up in TLV and hold card data: application PAN, track 2 equivalent,
# track 1 and 2 discretionary data, cardholder name.
_SECRET_TAGS = frozenset({0x5A, 0x57, 0x56, 0x9F1F, 0x9F20, 0x9F6B, 0x5F20})
_CONTROL = {ACK: "ack", NAK: "nak"}


def decode(data: bytes, *, mask: bool = True) -> list[dict[str, Any]]:
    """One description per APDU, serial frame, control byte or run of garbage in ``data``
    (see the module). ``mask=False`` shows secrets (for tests; the CLI always masks)."""
    data = bytes(data)
    start = 0
    while start < len(data) and data[start] in _CONTROL:
        start += 1
    if data[start:start + 2] == bytes([DLE, STX]) or (data and start == len(data)):
        return _serial(data, mask)
    bare = _bare(data, mask)
    if any("error" in e for e in bare) and bytes([DLE, STX]) in data:
        # Not APDUs: serial frames with something in front of them (a stray byte in the log)?
        serial = _serial(data, mask)
        if any(e.get("crc") == "ok" for e in serial):
            return serial
    return bare


def _serial(data: bytes, mask: bool) -> list[dict[str, Any]]:
    framer = SerialFramer()
    framer.feed(data)
    out: list[dict[str, Any]] = []
    offset = 0
    while (item := framer.pop()) is not None:
        if isinstance(item, int):
            out.append({"offset": offset, "kind": _CONTROL[item], "summary": f"{item:02X} {_CONTROL[item].upper()}"})
        elif isinstance(item, ZvtFrame):
            out.append(_apdu_entry(offset, "serial frame", item.apdu, mask, crc="ok"))
        elif isinstance(item, ZvtBadFrame):
            out.append(_bad_serial(offset, item, mask))
        elif isinstance(item, ZvtGarbage):
            out.append(_garbage(offset, len(item.data)))
        offset = len(data) - framer.pending
    if framer.pending:
        out.append({"offset": offset, "kind": "serial frame", "summary": "cut off",
                    "error": f"serial frame cut off: {framer.pending} bytes after DLE STX, no DLE ETX and CRC"})
    return out


def _bad_serial(offset: int, item: ZvtBadFrame, mask: bool) -> dict[str, Any]:
    raw = item.raw
    if item.reason != "CRC mismatch":
        return {"offset": offset, "kind": "serial frame", "summary": "malformed", "error": item.reason}
    # The framer has unstuffed the frame before checking its CRC: every DLE inside is doubled.
    apdu = raw[2:-4].replace(bytes([DLE, DLE]), bytes([DLE]))
    want = crc_kermit(apdu + b"\x03")
    entry = _apdu_entry(offset, "serial frame", apdu, mask, crc="bad")
    problem = (f"CRC mismatch: the frame ends {raw[-2]:02X} {raw[-1]:02X}, its bytes give {want & 0xFF:02X}"
               f" {want >> 8:02X} (the APDU is shown as received)")
    entry["error"] = f"{problem}; {entry['error']}" if "error" in entry else problem
    return entry


def _bare(data: bytes, mask: bool) -> list[dict[str, Any]]:
    framer = TcpFramer()
    framer.feed(data)
    out: list[dict[str, Any]] = []
    offset = 0
    while (item := framer.pop()) is not None:
        if isinstance(item, ZvtFrame):
            out.append(_apdu_entry(offset, "apdu", item.apdu, mask))
        else:  # ZvtBadFrame: a LEN above the cap; the framer skips what it covers
            out.append({"offset": offset, "kind": "apdu", "summary": _control(data[offset:]), "error": item.reason})
        offset = len(data) - framer.pending
    if framer.pending:
        out.append({"offset": offset, "kind": "apdu", "summary": _control(data[offset:]),
                    "error": _cut_off(data[offset:])})
    return out


def _cut_off(rest: bytes) -> str:
    if len(rest) < 3 or (rest[2] == 0xFF and len(rest) < 5):
        return f"cut off: {len(rest)} bytes, shorter than an APDU header (CLASS INSTR LEN)"
    n = rest[2] if rest[2] != 0xFF else int.from_bytes(rest[3:5], "little")
    head = 3 if rest[2] != 0xFF else 5
    return f"cut off: LEN says {n} data bytes, {len(rest) - head} follow"


def _control(raw: bytes) -> str:
    """CLASS INSTR of an APDU's first bytes, and the command's name when it is one we know."""
    text = " ".join(f"{b:02X}" for b in raw[:2])
    known = COMMANDS.get((raw[0], raw[1])) if len(raw) >= 2 else None
    return f"{text} {known.NAME}" if known is not None else text


def _garbage(offset: int, n: int) -> dict[str, Any]:
    return {"offset": offset, "kind": "garbage", "summary": f"{n} byte{'s' * (n != 1)}",
            "error": "not a frame (DLE STX ... DLE ETX CRC) nor ACK / NAK"}


def _apdu_entry(offset: int, kind: str, raw: bytes, mask: bool, **extra: Any) -> dict[str, Any]:
    """The description of one APDU's bytes (``raw``: CLASS INSTR LEN data)."""
    entry: dict[str, Any] = {"offset": offset, "kind": kind, "summary": _control(raw), **extra}
    try:
        apdu = Apdu.decode(raw)
    except ProtocolError as exc:
        entry["error"] = str(exc)
        return entry
    entry.update({"class": f"{apdu.cls:02X}", "instr": f"{apdu.instr:02X}", "data_bytes": len(apdu.data)})
    try:
        msg = decode_apdu(apdu)
    except UnknownCommand as exc:
        entry["summary"] += " unknown command"
        entry["error"] = str(exc)
        return entry
    except ProtocolError as exc:
        known = COMMANDS.get(apdu.control)
        if known is not None:
            entry["command"] = known.NAME
        entry["error"] = str(exc)
        return entry
    desc = describe(msg, mask=mask)
    entry["summary"] = f"{apdu.cls:02X} {apdu.instr:02X} {desc['command']}"
    entry["command"] = desc["command"]
    entry["fields"] = _fields(msg, desc, mask)
    return entry


def _fields(msg: Any, desc: dict[str, Any], mask: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, value in desc.items():
        if name in ("command", "class", "instr", "bmps") or value is None:
            continue
        field: dict[str, Any] = {"name": name, "value": value}
        if name in _BYTE_FIELDS and isinstance(value, int):
            field["note"] = f"0x{value:02X}"
        if name == "currency" and isinstance(value, int):
            _currency_note(field)
        out.append(field)
    control = msg.control
    for bmp in desc.get("bmps", []):
        number = int(bmp["bmp"], 16)
        spec = BMPS[number]
        name = _TYPE_BYTE.get(control, spec.name) if number == 0x19 else spec.name
        field = {"id": f"BMP {bmp['bmp']}", "name": name, "value": bmp["value"]}
        if number == 0x06:
            del field["value"]
            field["items"] = [_tlv(t, mask) for t in msg.fields.tlv]
        elif number == 0x60 and "totals" in bmp:
            field["items"] = _totals(bmp["totals"])
        elif number == 0x49:
            _currency_note(field)
        elif spec.schema is Int8ub and isinstance(bmp["value"], int):   # a one-byte BMP
            field["note"] = f"0x{bmp['value']:02X}"
        out.append(field)
    return out


def _currency_note(field: dict[str, Any]) -> None:
    try:
        field["note"] = cur.from_numeric(field["value"])
    except (KeyError, TypeError):
        pass


def _totals(totals: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, value in totals.items():
        if isinstance(value, dict):
            out.append({"name": name, "value": value["total"], "note": f"{value['count']} transactions"})
        else:
            out.append({"name": name, "value": value})
    return out


def _tlv(item: Tlv, mask: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f"{item.tag:02X}", "name": item.name}
    if isinstance(item.value, tuple):
        out["items"] = [_tlv(t, mask) for t in item.items]
        return out
    raw = item.value
    if mask and item.tag in _SECRET_TAGS:
        out["value"] = MASK
        return out
    out["value"] = raw.hex()
    try:
        if item.tag in _TEXT_TAGS:
            out["value"] = item.text()
        elif item.tag in _BCD_TAGS:
            out["value"] = item.bcd()
        elif item.tag in _UINT_TAGS and 0 < len(raw) <= 4:
            out["value"] = int.from_bytes(raw, "big")
            out["note"] = f"0x{raw.hex().upper()}"
    except (ProtocolError, UnicodeDecodeError):
        pass   # not what the tag usually holds: the hex stands
    return out
