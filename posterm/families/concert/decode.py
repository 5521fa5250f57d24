"""``posterm decode --protocol concert``: what pasted Concert bytes say, the report masked.

The input is a run of control bytes (ENQ, ACK, NAK, EOT) and ``STX body ETX LRC`` frames,
as on the line. A frame is a request (ECR -> terminal, 34 bytes of body) or an answer
(terminal -> ECR, 80 bytes long, 25 short), told apart by its length. A wrong LRC is
reported (``error``) and the frame still decoded; the long answer's report (card or
payment-code data) keeps only its last 4 characters, as in traces and recordings
(:func:`~posterm.families.concert.record.concert_fields`); a malformed answer's error does
not quote its bytes (:func:`~posterm.families.concert.record.bad_frame_reason`).
"""

from __future__ import annotations

from typing import Any

from firmware_protocol import currency as cur
from firmware_protocol.concert import (
    CONTROL_NAMES, LONG_ANSWER_BODY, REQUEST_BODY, SHORT_ANSWER_BODY, AnswerFlag, ConcertAnswer, ConcertFramer,
    ConcertGarbage, ConcertRequest, Status, TxnType, lrc,
)
from firmware_protocol.errors import ProtocolError

from posterm.families.concert.record import bad_frame_reason, concert_fields

_ENUMS = {"txn_type": TxnType, "status": Status, "answer_flag": AnswerFlag}
_SIZES = {REQUEST_BODY + 3: ("request", "ecr"), LONG_ANSWER_BODY + 3: ("answer", "terminal"),
          SHORT_ANSWER_BODY + 3: ("answer", "terminal")}


def decode(data: bytes) -> list[dict[str, Any]]:
    """One description per control byte, frame or run of garbage in ``data`` (see the module)."""
    data = bytes(data)
    framer = ConcertFramer()
    framer.feed(data)
    out: list[dict[str, Any]] = []
    offset = 0
    while (item := framer.pop()) is not None:
        if isinstance(item, int):
            name = CONTROL_NAMES[item]
            out.append({"offset": offset, "kind": name.lower(), "summary": f"{item:02X} {name}"})
            size = 1
        elif isinstance(item, ConcertGarbage):
            size = len(item.data)
            out.append({"offset": offset, "kind": "garbage", "summary": f"{size} byte{'s' * (size != 1)}",
                        "error": "not a frame (STX ... ETX LRC) nor a control byte"})
        else:
            size = len(item)
            out.append(_frame(offset, item))
        offset += size
    if framer.pending:
        out.append({"offset": offset, "kind": "frame", "summary": "cut off",
                    "error": f"frame cut off: {framer.pending} bytes after STX, no ETX and LRC"})
    return out


def _frame(offset: int, raw: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {"offset": offset, "kind": "frame", "summary": f"{len(raw)} bytes"}
    kind_sender = _SIZES.get(len(raw))
    if kind_sender is None:
        entry["error"] = (f"a Concert frame is {REQUEST_BODY + 3} bytes (request) or {LONG_ANSWER_BODY + 3} or"
                          f" {SHORT_ANSWER_BODY + 3} (answer), not {len(raw)}")
        return entry
    kind, sender = kind_sender
    entry["summary"] = kind
    problems = []
    want = lrc(raw[1:-1])
    if raw[-1] != want:
        problems.append(f"bad LRC: the frame ends {raw[-1]:02X}, its bytes give {want:02X} (decoded as received)")
        raw = raw[:-1] + bytes([want])
    try:
        msg = (ConcertRequest if sender == "ecr" else ConcertAnswer).decode(raw)
    except (ProtocolError, ValueError) as exc:
        problems.append(bad_frame_reason(exc, sender))
    else:
        fields = concert_fields(msg)
        entry["message"] = fields.pop("type")
        entry["summary"] = f"{kind}: {_gist(msg)}"
        entry["fields"] = [_field(k, v) for k, v in fields.items()]
    if problems:
        entry["error"] = "; ".join(problems)
    return entry


def _gist(msg: ConcertRequest | ConcertAnswer) -> str:
    if isinstance(msg, ConcertRequest):
        return f"{msg.txn_type.name.lower()} {msg.amount_minor} ({msg.currency or msg.currency_numeric})"
    return f"{msg.status.name.lower()} {msg.amount_minor} ({msg.currency or msg.currency_numeric})"


def _field(name: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "value": value}
    if name in _ENUMS:
        out["note"] = _ENUMS[name](value).name.lower()
    elif name == "currency_numeric":
        try:
            out["note"] = cur.from_numeric(value)
        except KeyError:
            pass
    return out
