"""Recording and replay of ZVT sessions (see :mod:`firmware_protocol.zvt`).

What a recording of this family holds (the format is :mod:`posterm.record.format`):

* the transport is read off the bytes, as the emulated terminal's front reads it: a side
  whose first byte is DLE (10) or NAK (15), or ACK (06) followed by DLE, ACK or NAK, is on
  a serial line (DLE STX ... DLE ETX CRC and single-byte ACK / NAK); anything else is TCP
  (bare APDUs). The first side to tell decides for both (ZVT's register speaks first); a
  lone 06 waits for its next byte;
* one ``frame`` record per APDU each way, ``kind`` ``"ack"`` (80 00 00, listed by ``show``
  with ``--acks``), ``"nack"`` (84 xx) or ``"apdu"`` (any other): ``hex`` is the frame as it
  crossed the line (serial: the whole stuffed frame with its CRC; TCP: the APDU), on serial
  ``apdu`` is the APDU unstuffed; ``msg`` is :func:`message_fields` (``type`` the command's
  class name, then its own fields and its BMPs by name), or ``null`` with ``error`` for an
  APDU that does not decode;
* on serial, one ``frame`` of ``kind`` ``"ACK"`` / ``"NAK"`` per control byte (so a pcapng
  export has them as Wireshark's zvt dissector expects), a NAK also as a ``nak`` event;
  ``retransmit`` marks a frame sent again with no ACK between (event ``retransmit``, cause
  ``nak`` or ``timeout``). TCP has neither;
* events ``garbage`` and ``bad_frame`` (bytes masked), ``partial``;
* ``identity`` when the terminal's Completion ends a Registration (BMP 29 terminal id, 2A
  VU number); the register's Registration (06 00, not a repeat) opens a new ECR session.

Secrets never reach the file. Masked (as :data:`~posterm.ecr.trace.MASK_BYTE`, in ``hex``,
``apdu`` and the chunks at the same offsets): the password a command starts with
(Registration, Reversal, Refund, End of day, Repeat receipt, Status enquiry), the values of
every secret BMP (:data:`~firmware_protocol.zvt.SECRET_BMPS`: track data, CVV, password,
PIN data, MAC) and of the PAN (22) but for its last two bytes (its last 4 digits, as
terminals print them; a PAN of 8 digits or fewer is masked whole). On serial the CRC of a frame holding a secret is masked too: with
the rest of the frame known, a CRC-16 narrows a 6-digit password to a handful of values.
``msg`` reads ``"<masked>"`` for those fields (the PAN with ``E`` for each masked digit, as
ZVT itself masks a PAN); ``masked`` lists the ``[start, end, field]`` spans in the APDU and
``redacted`` the field names, so replay can put values back. What does not decode (an
unknown command, a BMP not in the catalogue, a bad frame, a stalled partial frame) is masked
after its header (CLASS INSTR LEN, or DLE STX), garbage whole: when in doubt, mask. A DLE stuffed inside a password makes its
frame a byte longer; that the byte counts of a recording show.

Replay rebuilds each APDU from ``apdu`` (``hex`` on TCP) with the masked spans refilled
(:func:`substitute`: the password from ``secrets``, a PAN or track as ``E`` digits) and
runs :class:`~posterm.families.zvt.link.ZvtLink` on each side, so ACK bytes, 80 00 00 and
the master-rights turns suit the live peer; the framing (serial / TCP) is the live
transport's. :data:`RECORDING` is what the family gives :mod:`posterm.record`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable

from construct import ConstructError

from firmware_protocol.errors import ProtocolError
from firmware_protocol.zvt import (
    ACK,
    BMPS,
    DLE,
    NAK,
    Ack,
    Command,
    Completion,
    Nack,
    SerialFramer,
    TcpFramer,
    ZvtBadFrame,
    ZvtFrame,
    ZvtGarbage,
    decode,
    describe,
)
from firmware_protocol.zvt.apdu import HEADER_LONG, HEADER_SHORT, FieldsRun, apdu_size
from firmware_protocol.zvt.bmp import Bmp
from firmware_protocol.zvt.codecs import CardDigits, bcd_encode
from firmware_protocol.zvt.errors import BadValue

from posterm.ecr.trace import MASK_BYTE
from posterm.errors import ConfigError, LinkFailed, PosError
from posterm.families.events import Delivered, MessageReceived, SendFailed, UndecodableMessage
from posterm.families.interfaces import FamilyRecording, Observed, PcapInterface
from posterm.families.observer import FramedObserver, Side
from posterm.families.pump import Pump
from posterm.record.replay import (
    Divergence,
    EcrReplayResult,
    Exchange,
    Pacer,
    Recorded,
    ReplayPlayer,
    diff_fields,
    masked_values,
)

__all__ = ["DEFAULT_MASKS", "DEMO_SECRETS", "RECORDING", "ZvtObserver", "ZvtReplayTerminal", "build_zvt_script",
           "line_transport", "message_fields", "replay_zvt_ecr", "secret_spans", "substitute"]

PROTOCOL = "zvt"
MASK = "<masked>"
PAN_BMP = 0x22
PAN_KEPT = 2                  # bytes of a PAN left as they are: its last 4 digits (of 9 digits or more)
# Fields of ZVT answers that change on every run of the same session: never diffed.
# (Receipt numbers are mapped recorded -> live instead, so a reversal names the live payment.)
DEFAULT_MASKS = frozenset({"time", "date", "full_date", "trace", "original_trace", "receipt_no", "turnover_no",
                           "aid", "expiry", "card_sequence_no"})
# Demo values put back where a recording masked a password (override with secrets=):
# the emulated terminal's operator password.
DEMO_SECRETS = {"password": "246810"}
APDU_KINDS = frozenset({"apdu", "ack", "nack"})   # frame kinds that hold an APDU (ACK / NAK: serial bytes)
LINGER = 0.3     # seconds the replaying terminal stays on the line once played (its last ACK byte)
_REGISTRATION = (0x06, 0x00)


# ------------------------------------------------------------------ the transport, the secrets


def line_transport(head: bytes | bytearray) -> str | None:
    """``"serial"`` or ``"tcp"`` from the first bytes one side of a ZVT line sent; ``None``
    while they cannot tell (nothing yet, or a lone 06: an ACK byte, or class 06 of an APDU).

    No ZVT command class is 10 or 15; after an ACK byte comes a frame (DLE) or another
    control byte, after class 06 an INSTR."""
    if not head:
        return None
    first = head[0]
    if first in (DLE, NAK):
        return "serial"
    if first == ACK:
        if len(head) < 2:
            return None
        return "serial" if head[1] in (DLE, ACK, NAK) else "tcp"
    return "tcp"


def _header_size(apdu: bytes) -> int:
    return HEADER_LONG if len(apdu) >= HEADER_SHORT and apdu[2] == 0xFF else HEADER_SHORT


def _prefix_size(schema: Any) -> int:
    """The LL / LLL length prefix of a BMP's value (0 for a fixed-width one)."""
    return getattr(getattr(schema, "lengthfield", None), "digits", 0)


def _pan_kept(size: int) -> int:
    """Bytes at the end of a ``size``-byte PAN left as they are: none of a short one."""
    return PAN_KEPT if size > 2 * PAN_KEPT else 0


def secret_spans(message: Command, apdu: bytes) -> list[tuple[int, int, str]]:
    """``(start, end, field)`` spans of ``apdu`` (the bytes ``message`` was decoded from)
    that hold a secret: the password a command starts with, the values (after their length
    prefix) of secret BMPs, the PAN but for its last :data:`PAN_KEPT` bytes.

    When the BMPs do not re-encode to the bytes they came from, everything after the header
    is one span (``"undecodable"``): when in doubt, mask."""
    hdr = _header_size(apdu)
    spans: list[tuple[int, int, str]] = []
    own = {f.name for f in dataclasses.fields(message)}
    if "password" in own and getattr(message, "password") is not None:
        spans.append((hdr, hdr + 3, "password"))
    fields = getattr(message, "fields", None)
    if not fields:
        return spans
    try:
        run = FieldsRun.build(fields)
    except ConstructError:   # the secrets cannot be placed: mask all
        run = None
    pos = len(apdu) - len(run) if run is not None else -1
    if run is None or pos < hdr or apdu[pos:] != run:
        return [(hdr, len(apdu), "undecodable")] if len(apdu) > hdr else []
    for bmp, value in fields.present():
        spec = BMPS[bmp]
        size = len(Bmp.build({"bmp": bmp, "value": value}))
        if spec.secret:
            start, end = pos + 1 + _prefix_size(spec.schema), pos + size
            if bmp == PAN_BMP:
                end -= _pan_kept(end - start)
            if end > start:
                spans.append((start, end, spec.name))
        pos += size
    return spans


def _masked(data: bytes, spans: Any) -> bytes:
    out = bytearray(data)
    for s, e, *_ in spans:
        out[s:e] = bytes([MASK_BYTE]) * (e - s)
    return bytes(out)


def _wire_positions(apdu: bytes) -> list[int]:
    """Where each APDU byte starts inside its serial frame (after DLE STX; a DLE is doubled)."""
    out, pos = [], 2
    for b in apdu:
        out.append(pos)
        pos += 2 if b == DLE else 1
    out.append(pos)        # where DLE ETX begins
    return out


def _wire_spans(apdu: bytes, spans: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    where = _wire_positions(apdu)
    return [(where[s], where[e]) for s, e, _ in spans]


def message_fields(message: Command) -> dict[str, Any]:
    """The command as JSON-able fields, secrets masked: ``type`` (its class name), its own
    fields (:func:`firmware_protocol.zvt.describe`, the password ``"<masked>"``), then its
    BMPs by name (individual totals under ``totals``). A PAN reads as ZVT masks one, ``E``
    for each masked digit: what :func:`secret_spans` leaves of it."""
    d = describe(message, mask=True)
    out: dict[str, Any] = {"type": type(message).__name__}
    for key, value in d.items():
        if key not in ("command", "class", "instr", "bmps") and value is not None:   # an optional field not sent
            out[key] = value
    for entry in d.get("bmps", ()):
        name = entry["name"]
        out[name] = _masked_pan(message.fields.pan) if name == "pan" else entry["value"]
        if "totals" in entry:
            out["totals"] = entry["totals"]
    return out


def _masked_pan(pan: str) -> str:
    raw = CardDigits().build(pan)
    kept = _pan_kept(len(raw))
    digits = (b"\xee" * (len(raw) - kept) + raw[len(raw) - kept:]).hex().upper()
    return digits[:-1] if digits.endswith("F") else digits


# ------------------------------------------------------------------ the observer


class _Pending:
    """A side's framer until the line says which transport it is. It holds a lone 06 at most:
    any other first byte, or a second one, tells (:func:`line_transport`)."""

    def __init__(self) -> None:
        self.head = bytearray()

    @property
    def pending(self) -> int:
        return len(self.head)

    def feed(self, data: bytes) -> None:
        self.head += data

    def pop(self) -> None:
        return None

    def discard_partial(self) -> bytes:
        out = bytes(self.head)
        self.head.clear()
        return out


class _Side(Side):
    def __init__(self) -> None:
        super().__init__(_Pending())
        self.last_frame: bytes | None = None   # serial: this side's last frame (to see a resend)
        self.acked = True                      # the peer took that frame (its ACK byte, or a frame of its own)


class ZvtObserver(FramedObserver):
    """A :class:`~posterm.families.interfaces.RecordObserver` of ZVT, serial or TCP (see the
    module): each APDU a ``frame`` record, secrets masked where they lie. ``transport``:
    ``"serial"`` or ``"tcp"`` when the caller knows; ``None`` (default) reads it off the bytes."""

    def __init__(self, transport: str | None = None) -> None:
        if transport not in (None, "serial", "tcp"):
            raise ValueError(f"transport must be serial, tcp or None, not {transport!r}")
        self.transport: str | None = None
        self._command: tuple[int, int] | None = None   # the register's command of the dialog in progress
        super().__init__()
        if transport is not None:
            self._start(transport)

    def new_side(self) -> _Side:
        return _Side()

    def _start(self, transport: str) -> None:
        """The line told: both sides get their framer, each with what it held."""
        self.transport = transport
        for side in self._sides.values():
            held = side.framer.discard_partial()
            side.framer = SerialFramer() if transport == "serial" else TcpFramer()
            side.framer.feed(held)   # the other side's held bytes pop at its next feed, as its own

    def feed(self, sender: str, data: bytes, offset: int) -> list[Observed]:
        side = self._sides[sender]
        if self.transport is None:
            side.framer.feed(data)
            kind = line_transport(side.framer.head)
            if kind is None:
                return []
            self._start(kind)
            data = b""
        return super().feed(sender, data, offset)

    def mask_pending(self, sender: str, offset: int) -> list[tuple[int, int]]:
        """A partial frame's bytes after its header (serial: DLE STX; TCP: CLASS INSTR LEN)."""
        pending = self._sides[sender].framer.pending
        keep = 2 if self.transport == "serial" else HEADER_SHORT if self.transport == "tcp" else pending
        return [(offset + keep, offset + pending)] if pending > keep else []

    def item(self, sender: str, d: _Side, other: _Side, item: Any, start: int) -> list[Observed]:
        if isinstance(item, int):
            d.consumed += 1
            kind = "ACK" if item == ACK else "NAK"
            rec = Observed({"type": "frame", "kind": kind, "hex": f"{item:02X}"})
            if item == ACK:
                other.acked = True
                return [rec]
            other.nak_since = True
            return [rec, Observed({"type": "event", "event": "nak"})]
        if isinstance(item, ZvtGarbage):
            d.consumed += len(item.data)
            # it may be a frame cut off by the next DLE STX, secrets and all
            return [Observed({"type": "event", "event": "garbage", "n": len(item.data)}, ((start, d.consumed),))]
        if isinstance(item, ZvtBadFrame):
            return self._bad_frame(d, item, start)
        d.consumed += len(item.raw)
        return self._frame(sender, d, other, item, start)

    def _bad_frame(self, d: _Side, item: ZvtBadFrame, start: int) -> list[Observed]:
        raw = item.raw
        if self.transport == "tcp":
            # the header of an APDU above the cap; the framer skips the rest as it comes: mask it all
            size = apdu_size(raw) or len(raw)
            d.consumed = start + size
            masks: tuple[tuple[int, int], ...] = ((start + len(raw), start + size),) if size > len(raw) else ()
            hexed = raw
        else:
            d.consumed += len(raw)
            masks = ((start + 2, start + len(raw)),) if len(raw) > 2 else ()
            hexed = raw[:2] + bytes([MASK_BYTE]) * max(0, len(raw) - 2)
        return [Observed({"type": "event", "event": "bad_frame", "reason": item.reason, "hex": hexed.hex().upper()},
                         masks)]

    def _frame(self, sender: str, d: _Side, other: _Side, frame: ZvtFrame, start: int) -> list[Observed]:
        apdu, raw = frame.apdu, frame.raw
        serial = self.transport == "serial"
        hdr = _header_size(apdu)
        try:
            message: Command | None = decode(apdu)
        except ProtocolError as exc:
            message, error = None, str(exc)   # the wire contract's messages never quote a value
            spans = [(hdr, len(apdu), "undecodable")] if len(apdu) > hdr else []
        else:
            error = None
            spans = secret_spans(message, apdu)
        masked_apdu = _masked(apdu, spans)
        if serial:
            wire = _wire_spans(apdu, spans)
            if spans:
                wire.append((len(raw) - 2, len(raw)))   # the CRC would narrow the secret down
            masked_raw = _masked(raw, wire)
        else:
            wire = [(s, e) for s, e, _ in spans]
            masked_raw = masked_apdu
        kind = "ack" if isinstance(message, Ack) else "nack" if isinstance(message, Nack) else "apdu"
        rec: dict[str, Any] = {"type": "frame", "kind": kind, "hex": masked_raw.hex().upper()}
        if serial:
            rec["apdu"] = masked_apdu.hex().upper()
        if message is not None:
            rec["msg"] = message_fields(message)
        else:
            rec["msg"] = None
            rec["error"] = error
        if spans:
            rec["masked"] = [[s, e, name] for s, e, name in spans]
            rec["redacted"] = list(dict.fromkeys(name for _, _, name in spans))
        retransmit = serial and d.last_frame == raw and not d.acked
        cause = "nak" if d.nak_since else "timeout"
        d.last_frame, d.acked, d.nak_since = raw, False, False
        other.acked = True        # a frame answers the other side's last one: it was taken
        ctl = (apdu[0], apdu[1])
        new_session = sender == "ecr" and ctl == _REGISTRATION and not retransmit
        if retransmit:
            rec["retransmit"] = True
        out = [Observed(rec, tuple((start + s, start + e) for s, e in wire), new_session=new_session)]
        if retransmit:
            out.append(Observed({"type": "event", "event": "retransmit", "cause": cause}))
            return out
        if sender == "ecr" and message is not None and not isinstance(message, (Ack, Nack)):
            self._command = ctl
        elif sender == "terminal" and isinstance(message, Completion):
            if self._command == _REGISTRATION and message.fields.terminal_id is not None:
                identity = {"terminal_id": message.fields.terminal_id}
                if message.fields.vu_number is not None:
                    identity["merchant_id"] = message.fields.vu_number.strip()
                if message.software_version is not None:
                    identity["firmware_version"] = message.software_version
                out.append(Observed({"type": "identity", **identity}))
            self._command = None
        return out


# ------------------------------------------------------------------ the script


def _password(secrets: dict[str, str]) -> bytes:
    value = secrets.get("password") or secrets.get("operator_password") or DEMO_SECRETS["password"]
    try:
        raw = bcd_encode(value)
    except BadValue:
        raw = b""
    if len(raw) != 3:
        raise ConfigError("the ZVT password given to put back (--secret password=...) is 6 decimal digits")
    return raw


def substitute(apdu: bytes, masked: list, secrets: dict[str, str] | None = None) -> bytes:
    """Put values back into an APDU whose ``masked`` spans (``[start, end, field]``) were
    masked: a password (own field or BMP 3D) from ``secrets`` (``password``, or
    ``operator_password``; default :data:`DEMO_SECRETS`), a PAN or track 2/3 as masked
    digits (``E``), a CVV as zeros; other secrets (track 1, PIN data, MAC) stay as masked
    bytes. Raises :class:`ConfigError` for a span that does not fit the APDU."""
    secrets = dict(secrets or {})
    out = bytearray(apdu)
    for span in masked:
        try:
            s, e, name = int(span[0]), int(span[1]), str(span[2])
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"a masked span {span!r} is not [start, end, field]") from None
        if not 0 <= s < e <= len(out):
            raise ConfigError(f"a masked span [{s}, {e}] lies outside its {len(out)}-byte APDU")
        if name == "password":
            value = _password(secrets)
        elif name in ("pan", "track2", "track3"):
            value = b"\xee" * (e - s)
        elif name == "cvv":
            value = b"\x00" * (e - s)
        else:
            continue
        if len(value) != e - s:
            raise ConfigError(f"the recording's {name} span is {e - s} bytes, its value {len(value)}")
        out[s:e] = value
    return bytes(out)


def message_of(rec: dict[str, Any], secrets: dict[str, str] | None = None) -> Command | None:
    """The command of a recorded ``apdu`` frame, masked values put back (:func:`substitute`);
    ``None`` for one that did not decode when it was recorded. Raises ConfigError when a
    recorded APDU does not decode now."""
    if rec.get("msg") is None:
        return None
    try:
        apdu = bytes.fromhex(rec.get("apdu", rec["hex"]))
    except (TypeError, ValueError):
        raise ConfigError("a recorded ZVT frame's apdu is not hexadecimal") from None
    apdu = substitute(apdu, rec.get("masked") or [], secrets)
    try:
        return decode(apdu)
    except ProtocolError as exc:
        raise ConfigError(f"recorded {rec['msg'].get('type')} does not decode: {exc}") from None


def build_zvt_script(recording: Any, secrets: dict[str, str] | None = None) -> list[Exchange]:
    """The recording as exchanges: each command of the register's and what the terminal
    sent after it (its 80 00 00 or 84 xx first) before the next. The register's own
    80 00 00 and 84 xx are left out (its link sends them); resends and frames that did not
    decode are skipped."""
    script: list[Exchange] = []
    last_t = 0.0
    for n, rec in enumerate(recording.records, 2):
        if rec["type"] != "frame" or rec.get("kind") not in APDU_KINDS or rec.get("retransmit"):
            continue
        try:
            message = message_of(rec, secrets)
        except ConfigError as exc:
            raise ConfigError(f"{recording.path}: line {n}: {exc}") from None
        if message is None:
            continue
        item = Recorded(rec["t"], message, dict(rec["msg"]), n)
        if rec["from"] == "ecr":
            if isinstance(message, (Ack, Nack)):
                continue
            script.append(Exchange(item, gap=max(0.0, rec["t"] - last_t)))
        elif script:
            script[-1].answers.append(item)
        last_t = rec["t"]
    return script


# Ids a terminal makes up per payment and prints (order and trade numbers): a letter or not,
# up to three letters (R, ZV, RZV: a refund of a ZVT order), then 12 or more digits / hex
# digits, and a "-N" step suffix if any. In receipt text they are compared as "<id>".
_PRINTED_ID = re.compile(r"\b[A-Z]{0,3}[0-9A-F]{12,}(?:-[0-9A-Fa-f]{1,6})?\b")
_TEXTS = frozenset({"text", "additional_text"})   # the fields (and TLV keys) that hold such text


def comparable(value: Any, key: str | None = None) -> Any:
    """``value`` (recorded fields) as replay compares it: ids a terminal makes up per
    payment and prints are ``<id>`` inside text (a print line's, BMP 3C, a TLV text line),
    and a TLV item's hex is left out where its text is given (the same bytes, twice)."""
    if isinstance(value, str):
        return _PRINTED_ID.sub("<id>", value) if key in _TEXTS else value
    if isinstance(value, list):
        return [comparable(v, key) for v in value]
    if isinstance(value, dict):
        return {k: comparable(v, k) for k, v in value.items() if not (k == "value" and "text" in value)}
    return value


def _brief(fields: dict[str, Any]) -> str:
    keys = [f"{k}={fields[k]}" for k in ("amount", "currency", "receipt_no") if k in fields]
    return "(" + ", ".join(keys) + ")" if keys else ""


def framing_of(transport: Any) -> str:
    """The ZVT framing for a live transport: ``"tcp"`` on a TCP connection (a wrapper's
    ``inner`` looked through), ``"serial"`` otherwise (a serial port, a pty, a virtual line)."""
    from posterm.transport.tcp import TcpTransport

    seen = 0
    while transport is not None and seen < 8:
        if isinstance(transport, TcpTransport):
            return "tcp"
        transport, seen = getattr(transport, "inner", None), seen + 1
    return "serial"


def _with_receipt(message: Command, mapping: dict[int, int]) -> Command:
    """``message`` with a recorded receipt number (BMP 87) replaced by the live one it maps to."""
    fields = getattr(message, "fields", None)
    receipt = getattr(fields, "receipt_no", None) if fields is not None else None
    if receipt is None or receipt not in mapping:
        return message
    return dataclasses.replace(message, fields=dataclasses.replace(fields, receipt_no=mapping[receipt]))


# ------------------------------------------------------------------ the terminal side


class ZvtReplayTerminal(ReplayPlayer):
    """Plays the terminal's side of a ZVT ``script`` to a live register on ``transport``.

    Each command is matched to the first unanswered recorded one of the same type and
    amount (else the next unanswered one of the same type, the differences reported); the
    recorded answers go back after their recorded delays, one at a time (each waits for the
    register's 80 00 00 of the one before). A command not in the recording is refused
    84 83 and reported. ``framing``: ``"serial"`` / ``"tcp"`` (default: the transport's,
    :func:`framing_of`).
    """

    def __init__(self, transport: Any, script: list, *, speed: float = 1.0, fast: bool = False,
                 loop: bool = False, masks: frozenset[str] = DEFAULT_MASKS,
                 report: Callable[[str], None] | None = None, framing: str | None = None, config: Any = None) -> None:
        from posterm.families.zvt.link import ZvtLink

        super().__init__(transport, script, speed=speed, fast=fast, loop=loop, masks=frozenset(masks), report=report)
        self.link = ZvtLink("pt", framing or framing_of(transport), config)
        self._inflight: Any = None     # our answer waiting for the register's 80 00 00

    @property
    def done(self) -> bool:
        return super().done and self._inflight is None

    def _match(self, fields: dict[str, Any]) -> int | None:
        for i, ex in enumerate(self.script):
            f = ex.request.fields
            if not self.used[i] and f.get("type") == fields.get("type") and f.get("amount") == fields.get("amount"):
                return i
        for i, ex in enumerate(self.script):
            if not self.used[i] and ex.request.fields.get("type") == fields.get("type"):
                return i
        return None

    def on_command(self, command: Any, now: float) -> None:
        fields = message_fields(command)
        i = self._take(lambda: self._match(fields))
        if i is None:
            self._diverge(self.answered, f"the register sent {fields['type']} {_brief(fields)}: not in the recording")
            self._send(Nack(0x83), now)
            return
        ex = self.script[i]
        self._use(i, f"register skipped {sum(not u for u in self.used[:i])} recorded command",
                  lambda e: e.request.fields["type"])
        for line in diff_fields(comparable(ex.request.fields), comparable(fields), self.masks):
            self._diverge(i, f"{fields['type']} {line}")
        for ans in ex.answers:
            self._due.append((now + self.pacer.delay(ans.t - ex.request.t), ans.message))

    def _send(self, message: Any, now: float) -> None:
        out = self.link.send(message, now)   # every byte the link has (our ACK bytes too)
        if out:
            self.t.write(out)

    def _send_due(self, now: float) -> None:
        """The next recorded answer whose time has come, once the one before was taken."""
        while self._due and self._due[0][0] <= now and self._inflight is None:
            message = self._due.pop(0)[1]
            try:
                self._send(message, now)
            except PosError as exc:
                self._diverge(self.answered, f"the recorded {type(message).__name__} cannot go now ({exc})")
                continue
            if not isinstance(message, (Ack, Nack)):
                self._inflight = message

    def run(self, until_done: bool = True, timeout: float = 3600.0) -> list[Divergence]:
        """Serve until the script is played (``until_done``), ``stop`` is set or ``timeout``;
        once played, :data:`LINGER` seconds more (the register's last frame gets its ACK).
        Returns the divergences. Raises :class:`Disconnected`, :class:`LinkFailed`."""
        from posterm.families.zvt.link import Refused

        def handle(ev: Any, now: float) -> None:
            if isinstance(ev, MessageReceived):
                self.on_command(ev.message, now)
            elif isinstance(ev, UndecodableMessage):
                self._diverge(self.answered, f"the register sent an APDU that does not decode: {ev.error}")
                self._send(Nack(0x83), now)
            elif isinstance(ev, Delivered) and ev.message is self._inflight:
                self._inflight = None
            elif isinstance(ev, SendFailed):
                raise LinkFailed(f"the register did not take {type(ev.message).__name__}")
            elif isinstance(ev, Refused) and ev.message is self._inflight:
                self._diverge(self.answered, f"the register refused {type(ev.message).__name__}"
                                             f" (84 {ev.error:02X})")
                self._inflight = None

        def after(pump: Any, now: float) -> None:
            self._send_due(now)
            pump.flush()

        return self._serve(until_done, timeout, LINGER,
                           lambda: self._due[0][0] if self._due and self._inflight is None else None, handle, after)


# ------------------------------------------------------------------ the ECR side


def replay_zvt_ecr(transport: Any, script: list, *, speed: float = 1.0, fast: bool = False, step: bool = False,
                   loops: int = 1, masks: frozenset[str] = DEFAULT_MASKS, wait_for: Callable[[str], None] | None = None,
                   min_wait: float = 3.0, fresh_ids: bool = True, framing: str | None = None,
                   config: Any = None) -> EcrReplayResult:
    """Send the register's recorded commands to a live terminal and diff what it answers.

    For each recorded command: pause its recorded gap (scaled; none with ``fast`` or
    ``step``, where ``wait_for`` is called instead), send it, and collect the terminal's
    answers (its 80 00 00 or 84 xx, then what it sends holding control) until the dialog
    ends and as many as were recorded came, waiting up to the recorded time x1.5 + 2 s,
    at least ``min_wait``. ZVT carries no order id: ``fresh_ids`` has nothing to renew;
    receipt numbers (BMP 87) the terminal gives are mapped recorded -> live, so a recorded
    reversal names the live payment. ``framing``: as :class:`ZvtReplayTerminal`. Returns
    an :class:`~posterm.record.replay.EcrReplayResult`; raises :class:`LinkFailed` when the
    terminal does not take a command, :class:`Disconnected`.
    """
    from posterm.families.zvt.link import Refused, TimedOut, ZvtLink

    pacer = Pacer(speed, fast, step, wait_for)
    link = ZvtLink("ecr", framing or framing_of(transport), config)
    pump = Pump(link, lambda wait: transport.read(4096, wait), transport.write, max_wait=0.02)
    diffs: list[Divergence] = []
    frames = 0
    index = 0
    receipts: dict[int, int] = {}

    for _ in range(max(1, loops)):
        receipts.clear()
        for ex in script:
            index += 1
            rf = ex.request.fields
            if step and wait_for is not None:
                wait_for(f"#{index} {rf['type']} {_brief(rf)}")
            elif (pause := pacer.delay(ex.gap)) > 0:
                time.sleep(pause)
            request = _with_receipt(ex.request.message, receipts)
            got: list[Any] = []
            ended: list[str] = []

            def on_event(ev: Any, request: Any = request, got: list = got, ended: list = ended) -> None:
                if isinstance(ev, Delivered) and ev.message is request:
                    got.append(Ack())
                elif isinstance(ev, Refused) and ev.message is request:
                    got.append(Nack(ev.error))
                elif isinstance(ev, MessageReceived):
                    got.append(ev.message)
                elif isinstance(ev, UndecodableMessage):
                    ended.append(f"the terminal sent an APDU that does not decode: {ev.error}")
                elif isinstance(ev, SendFailed):
                    raise LinkFailed(f"the terminal did not take {type(ev.message).__name__}")
                elif isinstance(ev, TimedOut):
                    ended.append(f"{ev.timer} ran out")

            now = time.monotonic()
            pump.send(request, now)
            frames += 1
            span = (ex.answers[-1].t - ex.request.t) if ex.answers else 0.0
            want = len(ex.answers)
            pump.run(now + max(min_wait, span * 1.5 + 2.0), on_event,
                     before_read=lambda _now, got=got, want=want: True if len(got) >= want and link.idle else None)
            frames += len(got)
            for why in ended:
                diffs.append(Divergence(index, f"after {rf['type']}: {why}"))
            lives = [message_fields(g) for g in got]
            known = (masked_values([a.fields for a in ex.answers], masks), masked_values(lives, masks))
            for j, exp in enumerate(ex.answers):
                if j >= len(got):
                    diffs.append(Divergence(index, f"after {rf['type']}: recorded {exp.fields['type']}, got nothing"))
                    break
                recorded_receipt = exp.fields.get("receipt_no")
                live_receipt = lives[j].get("receipt_no")
                if isinstance(recorded_receipt, int) and isinstance(live_receipt, int):
                    receipts[recorded_receipt] = live_receipt
                for line in diff_fields(comparable(exp.fields), comparable(lives[j]), masks, known):
                    diffs.append(Divergence(index, f"{exp.fields['type']} answer {j + 1}: {line}"))
            for extra in lives[len(ex.answers):]:
                diffs.append(Divergence(index, f"after {rf['type']}: unrecorded {extra['type']}"))
            if not link.idle:
                # the terminal still holds control: the next command could not go; end the dialog
                diffs.append(Divergence(index, f"after {rf['type']}: the terminal did not end the dialog"))
                link.reset()
    return EcrReplayResult(index, frames, diffs)


RECORDING = FamilyRecording(
    observer=ZvtObserver, build_script=build_zvt_script, replay_terminal=ZvtReplayTerminal, replay_ecr=replay_zvt_ecr,
    # DLT_USER3 (149 is the test suite's plug-in family's). Wireshark's zvt dissector, given
    # this link type under User DLTs, reads serial frames, ACK / NAK bytes and TCP APDUs.
    pcap=PcapInterface(150, "posterm-zvt", "ZVT: serial frames (DLE STX APDU DLE ETX CRC) and ACK/NAK bytes,"
                                           " or TCP APDUs; Wireshark: User DLTs -> zvt"),
    default_masks=DEFAULT_MASKS,
    show_label=lambda header: PROTOCOL,
    quiet_frames=frozenset({"ack", "ACK"}), hidden_frames=frozenset({"NAK"}))
