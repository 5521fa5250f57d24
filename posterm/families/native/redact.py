"""The native family's redaction: which bytes of its frames and fields of its messages are secret.

Fields are marked ``secret=True`` in the message catalogue (``tlv(..., secret=True)``).
A payment code keeps its last 4 digits (``**************0001``); every other
secret (PIN blocks, passwords, key blocks, MACs) is replaced entirely.  Raw frame
bytes are masked in place, byte for byte, so a hex dump keeps its layout and a
recording can mark where a value was removed. The masking itself (the mask byte, how a
code is shortened, hex dumps) is shared by every family: :mod:`posterm.ecr.trace`.
"""

from __future__ import annotations

from typing import Any

from firmware_protocol.native import frame as fr
from firmware_protocol.errors import ProtocolError
from firmware_protocol.native.tlv import Message, message_types, split_items

from posterm.ecr.trace import MASK_BYTE, jsonable, mask_code

PAYMENT_CODE_FIELDS = frozenset({"payment_code"})


def message_fields(msg: Message) -> dict[str, Any]:
    """The message's fields as JSON-friendly values, secrets masked.

    Returns a dict with ``type`` and one key per present field; enums become their
    names, bytes become upper-case hex, a secret field becomes ``"<redacted>"``
    (a payment code keeps its last 4 digits).
    """
    out: dict[str, Any] = {"type": type(msg).__name__}
    for spec in msg.FIELDS:
        value = getattr(msg, spec.name)
        if value is None:
            continue
        if spec.secret:
            out[spec.name] = mask_code(value) if spec.name in PAYMENT_CODE_FIELDS else "<redacted>"
        else:
            out[spec.name] = jsonable(value)
    return out


def redacted_spans(payload: bytes) -> list[tuple[int, int, str]]:
    """(start, end, field) spans of secret values inside a message payload.

    For a payment code the last 4 digits are left out of the span. An
    undecodable payload yields a single span over everything after the type
    code: when in doubt, mask.
    """
    try:
        type_code, items = split_items(payload)
    except ProtocolError:
        return [(2, len(payload), "undecodable")] if len(payload) > 2 else []
    cls = message_types().get(type_code)
    if cls is None:
        return [(2, len(payload), "unknown-type")] if len(payload) > 2 else []
    spans = []
    for tag, offset, value in items:
        spec = cls.BY_TAG.get(tag)
        if spec is None or not spec.secret:
            continue
        start = offset + 3
        end = start + len(value)
        if spec.name in PAYMENT_CODE_FIELDS:
            end = max(start, end - 4)
        if end > start:
            spans.append((start, end, spec.name))
    return spans


def redact_frame(raw: bytes) -> tuple[bytes, list[str]]:
    """Mask secret values inside one raw frame (DATA frames; ACK/NAK pass through).

    Returns the masked bytes (same length; the CRC is left as it was, so the
    masked frame no longer checks: it is for eyes and files, not for the wire)
    and the names of the fields that were masked.
    """
    if len(raw) < fr.HEADER_SIZE + fr.CRC_SIZE or raw[0] != fr.SOF:
        return raw, []
    payload = raw[fr.HEADER_SIZE:-fr.CRC_SIZE]
    spans = redacted_spans(payload)
    if not spans:
        return raw, []
    out = bytearray(raw)
    for start, end, _ in spans:
        out[fr.HEADER_SIZE + start : fr.HEADER_SIZE + end] = bytes([MASK_BYTE]) * (end - start)
    return bytes(out), [name for _, _, name in spans]

