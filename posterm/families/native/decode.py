"""``posterm decode --protocol posterm``: what pasted native frames say, secrets masked.

The input is a run of link frames (``A5 01 kind seq length check payload CRC``,
firmware_protocol/native/frame.py), garbage allowed between them. A DATA frame's payload
is decoded as its message (ECR <-> terminal or terminal <-> host) and its fields listed
by TLV tag, masked as traces mask them (:func:`~posterm.families.native.redact.message_fields`:
a payment code keeps its last 4 digits, other secrets read ``<redacted>``); an item whose
tag the message does not know is listed by tag and length, its value not shown. A frame
with a wrong CRC is reported (``error``) and its payload still decoded; a bad header, an
unknown message, a field that does not validate: an entry with an ``error``.
"""

from __future__ import annotations

from typing import Any

from firmware_protocol.errors import ProtocolError
from firmware_protocol.native import frame as fr
from firmware_protocol.native.tlv import decode as decode_message, message_types, split_items

from posterm.families.native.redact import message_fields

_CONTROL_KINDS = {fr.FrameKind.ACK: "ack", fr.FrameKind.NAK: "nak"}


def decode(data: bytes) -> list[dict[str, Any]]:
    """One description per frame or run of garbage in ``data`` (see the module), masked."""
    data = bytes(data)
    out: list[dict[str, Any]] = []
    framer = fr.Framer()
    framer.feed(data)
    offset = 0
    while (item := framer.pop()) is not None:
        if isinstance(item, fr.LinkFrame):
            out.append(_frame(offset, item.kind, item.seq, item.payload))
        elif isinstance(item, fr.BadFrame):
            entry = _frame(offset, fr.FrameKind(item.raw[2]), item.seq, item.raw[fr.HEADER_SIZE:-fr.CRC_SIZE])
            entry["error"] = item.reason + (f"; {entry['error']}" if "error" in entry else "")
            out.append(entry)
            # The framer resumes one byte into a bad frame (a real one may start inside it);
            # a pasted frame is one frame: go on after it.
            framer.clear()
            framer.feed(data[offset + len(item.raw):])
        else:
            n = len(item.data)
            out.append({"offset": offset, "kind": "garbage", "summary": f"{n} byte{'s' * (n != 1)}",
                        "error": "not a frame (a frame starts A5 01)"})
        offset = len(data) - framer.pending
    if framer.pending:
        out.append({"offset": offset, "kind": "frame", "summary": "cut off",
                    "error": f"frame cut off: {framer.pending} bytes, fewer than its header's length says"})
    return out


def _frame(offset: int, kind: fr.FrameKind, seq: int, payload: bytes) -> dict[str, Any]:
    if kind in _CONTROL_KINDS:
        return {"offset": offset, "kind": _CONTROL_KINDS[kind], "summary": f"{kind.name} of seq {seq}", "seq": seq}
    entry: dict[str, Any] = {"offset": offset, "kind": "frame", "summary": f"DATA seq {seq}", "seq": seq,
                             "payload_bytes": len(payload)}
    try:
        type_code, items = split_items(payload)
    except ProtocolError as exc:
        entry["error"] = str(exc)
        return entry
    entry["type"] = f"0x{type_code:04X}"
    cls = message_types().get(type_code)
    if cls is None:
        entry["summary"] += f": unknown message type 0x{type_code:04X}"
        entry["error"] = f"unknown message type 0x{type_code:04X}"
        return entry
    entry["summary"] += f": {cls.__name__}"
    entry["message"] = cls.__name__
    try:
        msg = decode_message(payload)   # optional tags it does not know (bit 7 set) are skipped
    except ProtocolError as exc:
        entry["error"] = str(exc)
        return entry
    values = message_fields(msg)
    by_tag = cls.BY_TAG
    fields: list[dict[str, Any]] = []
    listed: set[int] = set()
    for tag, _, value in items:
        spec = by_tag.get(tag)
        if spec is None:
            fields.append({"id": f"tag {tag:02X}", "name": "(unknown, optional)", "value": f"{len(value)} bytes",
                           "note": "value not shown"})
            continue
        if tag in listed:   # a repeated field: its values are listed once, together
            continue
        listed.add(tag)
        fields.append(_field(tag, spec.name, values.get(spec.name)))
    entry["fields"] = fields
    return entry


def _field(tag: int, name: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f"tag {tag:02X}", "name": name}
    if isinstance(value, dict):
        out["items"] = [{"name": k, "value": v} for k, v in value.items()]
    else:
        out["value"] = value
    return out
