"""ZVT APDUs and the typed commands.

Byte layout of an APDU (the unit on TCP; inside DLE STX ... DLE ETX on serial)::

    CLASS  INSTR  LEN             data
    06     01     0B              04 00 00 00 00 01 00 49 09 78 ...
    06     D3     FF 61 04        1121 bytes (LEN = FF then two bytes little-endian
                                  when the data is 255 bytes or more)

Rules:

* :class:`Apdu` is the generic value: any CLASS INSTR, data kept as bytes. It is what a
  framer hands on; an APDU of a command we do not know is still an Apdu (a framer never
  dies on it) and :func:`decode` raises :class:`UnknownCommand` carrying it.
* Data is capped at :data:`MAX_DATA` bytes (16 KiB: some 380 40-column receipt lines, more
  than any print block seen) on build and on parse, so no peer-chosen length buys more.
* A typed command is a frozen dataclass with a declarative data schema (``SCHEMA``,
  construct). Its field names are the schema's names; BMPs live in ``fields``
  (:class:`~firmware_protocol.zvt.bmp.Fields`) and read as attributes too
  (``msg.amount`` is ``msg.fields.amount``). Dispatch on CLASS INSTR is closed
  (:data:`COMMANDS`); class 84 is a negative acknowledgement whatever INSTR (the error).
* Layouts that are ambiguous on the wire (an optional fixed field followed by BMPs) are
  parsed with the fixed field first, and values whose bytes would read back otherwise are
  refused on construction, so build and parse are inverse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from construct import (
    Adapter,
    Computed,
    Construct,
    ConstructError,
    GreedyBytes,
    Int8ub,
    Int16ul,
    Optional,
    Prefixed,
    Select,
    SelectError,
    StreamError,
    Struct,
    Terminated,
    stream_read,
    stream_write,
)

from firmware_protocol.zvt.bmp import (
    BMPS, EMPTY, FIELD_NAMES, Bmp, Fields, IndividualTotals, UnknownBmpSignal, fields_from_items,
)
from firmware_protocol.zvt.codecs import BcdDigits, BcdInt, LLLVar, Text, UntilEnd, bcd_decode
from firmware_protocol.zvt.tlv import Tlv, TlvContainer
from firmware_protocol.zvt.errors import (
    BadValue, UnknownBmp, UnknownCommand, ZvtFieldError, ZvtFrameError, ZvtMessageError,
)

MAX_DATA = 16 * 1024
HEADER_SHORT = 3          # CLASS INSTR LEN
HEADER_LONG = 5           # CLASS INSTR FF LL HH
MAX_APDU = HEADER_LONG + MAX_DATA


# ------------------------------------------------------------------ the generic APDU


class ApduLength(Construct):
    """LEN: one byte below 255, else FF and two bytes little-endian."""

    def _parse(self, stream, context, path) -> int:
        first = stream_read(stream, 1, path)[0]
        if first != 0xFF:
            return first
        return Int16ul._parsereport(stream, context, path)

    def _build(self, obj, stream, context, path) -> int:
        if type(obj) is not int or not 0 <= obj <= MAX_DATA:
            raise BadValue(f"APDU data is at most {MAX_DATA} bytes")
        raw = bytes([obj]) if obj < 0xFF else b"\xff" + obj.to_bytes(2, "little")
        stream_write(stream, raw, len(raw), path)
        return obj


ApduSchema = Struct(
    "cls" / Int8ub,
    "instr" / Int8ub,
    "data" / Prefixed(ApduLength(), GreedyBytes),
    Terminated,
)


def apdu_size(head: bytes | bytearray) -> int | None:
    """The whole size of the APDU starting ``head`` (header + data), or None if ``head`` is
    too short to tell. Does not check the cap: the caller compares with :data:`MAX_APDU`."""
    if len(head) < HEADER_SHORT:
        return None
    if head[2] != 0xFF:
        return HEADER_SHORT + head[2]
    if len(head) < HEADER_LONG:
        return None
    return HEADER_LONG + int.from_bytes(head[3:5], "little")


@dataclass(frozen=True, slots=True)
class Apdu:
    """One APDU, any CLASS INSTR. ``encode()`` gives its bytes; :meth:`decode` reads exactly one."""

    cls: int
    instr: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if type(self.cls) is not int or type(self.instr) is not int or not (0 <= self.cls <= 255 and 0 <= self.instr <= 255):
            raise ZvtFieldError("APDU CLASS and INSTR are bytes (0..255)")
        if not isinstance(self.data, bytes) or len(self.data) > MAX_DATA:
            raise ZvtFieldError(f"APDU data is bytes, at most {MAX_DATA}")

    @property
    def control(self) -> tuple[int, int]:
        return (self.cls, self.instr)

    def encode(self) -> bytes:
        return ApduSchema.build({"cls": self.cls, "instr": self.instr, "data": self.data})

    @classmethod
    def decode(cls, raw: bytes) -> "Apdu":
        """Exactly one APDU. Raises ZvtFrameError if the length disagrees with the bytes."""
        size = apdu_size(raw)
        if size is None or size != len(raw):
            raise ZvtFrameError(f"APDU of {len(raw)} bytes does not match its LEN field"
                                if size is not None else f"APDU of {len(raw)} bytes is shorter than its header")
        if size > MAX_APDU:
            raise ZvtFrameError(f"APDU data of {size - HEADER_LONG} bytes exceeds the {MAX_DATA}-byte cap")
        c = ApduSchema.parse(raw)
        return cls(c.cls, c.instr, bytes(c.data))

    def __repr__(self) -> str:
        return f"Apdu({self.cls:02X} {self.instr:02X}, {len(self.data)} data bytes)"


# ------------------------------------------------------------------ schema pieces


class _FieldsRun(Adapter):
    """The rest of the data as a run of BMPs <-> :class:`Fields`."""

    def __init__(self) -> None:
        super().__init__(UntilEnd(Bmp))

    def _decode(self, obj, context, path) -> Fields:
        return fields_from_items(obj)

    def _encode(self, obj, context, path):
        if not isinstance(obj, Fields):
            raise BadValue("fields must be a Fields")
        return [{"bmp": b, "value": v} for b, v in obj.present()]


Password = BcdDigits(3)
FieldsRun = _FieldsRun()


def _none(name):
    return name / Computed(None)


def _fields_only():
    return Struct("fields" / FieldsRun, Terminated)


def _password_and_fields():
    return Struct("password" / Password, "fields" / FieldsRun, Terminated)


def _check_password(password: str | None, optional: bool = False) -> None:
    if password is None and optional:
        return
    if not isinstance(password, str) or len(password) != 6 or not (password.isascii() and password.isdigit()):
        raise ZvtFieldError("the password is 6 decimal digits")


def _check_byte(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if type(value) is not int or not 0 <= value <= 255:
        raise ZvtFieldError(f"{name} is a byte (0..255)")


def _check_fields(fields: Any) -> None:
    if not isinstance(fields, Fields):
        raise ZvtFieldError("fields must be a Fields")


def _leading_bytes(fields: Fields) -> bytes:
    return FieldsRun.build(fields)[:3]


def _looks_bcd(raw: bytes) -> bool:
    try:
        bcd_decode(raw)
        return True
    except BadValue:
        return False


# ------------------------------------------------------------------ typed commands

COMMANDS: dict[tuple[int, int], type["Command"]] = {}


def _command(cls_byte: int, instr: int, name: str):
    def register(klass):
        klass.CLASS, klass.INSTR, klass.NAME = cls_byte, instr, name
        if (cls_byte, instr) in COMMANDS:  # pragma: no cover - guards an edit of the catalogue
            raise ImportError(f"apdu: {cls_byte:02X} {instr:02X} registered twice")
        COMMANDS[(cls_byte, instr)] = klass
        return klass
    return register


class Command:
    """Base of the typed commands. ``encode()`` -> APDU bytes; ``from_data(data)`` reads the
    data part (raises ZvtMessageError / ZvtFieldError / UnknownBmp)."""

    __slots__ = ()
    CLASS: ClassVar[int]
    INSTR: ClassVar[int]
    NAME: ClassVar[str]
    SCHEMA: ClassVar[Any]

    def __getattr__(self, name: str):
        # BMPs read as attributes: msg.amount is msg.fields.amount.
        if name in FIELD_NAMES:
            fields = object.__getattribute__(self, "fields")
            return getattr(fields, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @classmethod
    def make(cls, **kw: Any) -> "Command":
        """Build from keyword arguments: the command's own fields, and BMPs by name
        (``Authorisation.make(amount=100, currency=978)``)."""
        own = {f.name for f in dataclasses.fields(cls)}
        bmps = {k: kw.pop(k) for k in list(kw) if k not in own and k in FIELD_NAMES}
        if bmps:
            kw["fields"] = Fields(**bmps)
        return cls(**kw)

    @property
    def control(self) -> tuple[int, int]:
        return (self.CLASS, self.INSTR)

    def data(self) -> bytes:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        try:
            return self.SCHEMA.build(values)
        except BadValue as exc:
            raise ZvtFieldError(f"{self.NAME}: {_last_line(exc)}") from None
        except ConstructError:
            raise ZvtFieldError(f"{self.NAME}: a value does not fit its field") from None

    def apdu(self) -> Apdu:
        return Apdu(self.CLASS, self.INSTR, self.data())

    def encode(self) -> bytes:
        return self.apdu().encode()

    @classmethod
    def from_data(cls, data: bytes) -> "Command":
        try:
            c = cls.SCHEMA.parse(data)
        except UnknownBmpSignal as exc:
            raise UnknownBmp(exc.bmp) from None
        except BadValue as exc:
            raise ZvtFieldError(f"{cls.NAME}: {_last_line(exc)}") from None
        except SelectError:
            raise ZvtMessageError(f"{cls.NAME}: the data matches none of its layouts") from None
        except StreamError as exc:
            raise ZvtMessageError(f"{cls.NAME}: data ends inside a field ({_last_line(exc)})") from None
        except ConstructError as exc:
            raise ZvtMessageError(f"{cls.NAME}: malformed data ({type(exc).__name__})") from None
        kw = {f.name: c[f.name] for f in dataclasses.fields(cls)}
        try:
            return cls(**kw)
        except ZvtFieldError as exc:
            raise ZvtFieldError(f"{cls.NAME}: {exc}") from None


def _last_line(exc: Exception) -> str:
    # construct prefixes "Error in path ..." lines; the last line is the message.
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


@_command(0x06, 0x00, "Registration")
@dataclass(frozen=True, slots=True)
class Registration(Command):
    """06 00, ECR -> PT: password (6 digits), config byte, currency (ISO 4217 numeric,
    untagged 2 bytes BCD, optional), then optionally BMP 03 service byte and BMP 06 TLV.
    Without a currency, BMPs whose first two bytes are BCD would read back as a currency:
    such values are refused."""

    password: str = field(repr=False)
    config_byte: int
    currency: int | None = None
    fields: Fields = EMPTY

    SCHEMA = Select(
        Struct("password" / Password, "config_byte" / Int8ub, "currency" / BcdInt(2), "fields" / FieldsRun,
               Terminated),
        Struct("password" / Password, "config_byte" / Int8ub, _none("currency"), "fields" / FieldsRun, Terminated),
    )

    def __post_init__(self) -> None:
        _check_password(self.password)
        _check_byte("config byte", self.config_byte)
        if self.currency is not None and (type(self.currency) is not int or not 0 <= self.currency <= 9999):
            raise ZvtFieldError("currency is an ISO 4217 numeric code, 0..9999 in two BCD bytes")
        _check_fields(self.fields)
        if self.currency is None and self.fields and _looks_bcd(_leading_bytes(self.fields)[:2]):
            raise ZvtFieldError("without a currency, these BMPs would read back as one: give the currency")


@_command(0x06, 0x01, "Authorisation")
@dataclass(frozen=True, slots=True)
class Authorisation(Command):
    """06 01, ECR -> PT: a payment. BMPs: 04 amount, 49 currency, 19 payment type, 01
    timeout, 02 max status infos, 05 pump, 0E/22/23/24/2D card data, 3C, 8A, 06 ..."""

    fields: Fields = EMPTY
    SCHEMA = _fields_only()

    def __post_init__(self) -> None:
        _check_fields(self.fields)

    @property
    def payment_type(self) -> int | None:
        return self.fields.type_byte


@_command(0x06, 0x02, "Log off")
@dataclass(frozen=True, slots=True)
class LogOff(Command):
    """06 02, ECR -> PT: no data."""

    SCHEMA = Struct(Terminated)


@_command(0x06, 0x0F, "Completion")
@dataclass(frozen=True, slots=True)
class Completion(Command):
    """06 0F, PT -> ECR: hands control back. Usually BMPs (27 result code, 19 status byte,
    29 terminal id, 49 currency, 06 TLV); after a status enquiry it starts with the software
    version (LLLVAR, untagged, so its first byte is F0..F9) and a terminal status byte."""

    software_version: str | None = None
    terminal_status: int | None = None
    fields: Fields = EMPTY

    SCHEMA = Select(
        Struct("software_version" / LLLVar(Text()), "terminal_status" / Int8ub, "fields" / FieldsRun, Terminated),
        Struct(_none("software_version"), _none("terminal_status"), "fields" / FieldsRun, Terminated),
    )

    def __post_init__(self) -> None:
        if (self.software_version is None) != (self.terminal_status is None):
            raise ZvtFieldError("software version and terminal status come together")
        if self.software_version is not None and not isinstance(self.software_version, str):
            raise ZvtFieldError("software version is a str")
        _check_byte("terminal status", self.terminal_status, optional=True)
        _check_fields(self.fields)
        if self.software_version is None and self.fields and 0xF0 <= _leading_bytes(self.fields)[0] <= 0xF9:
            raise ZvtFieldError("a BMP F0..F9 first would read back as a software version")

    @property
    def status_byte(self) -> int | None:
        return self.fields.type_byte


@_command(0x06, 0x1E, "Abort (terminal)")
@dataclass(frozen=True, slots=True)
class Aborted(Command):
    """06 1E, PT -> ECR: the transaction was aborted; result code, then optional BMPs."""

    result_code: int
    fields: Fields = EMPTY

    SCHEMA = Struct("result_code" / Int8ub, "fields" / FieldsRun, Terminated)

    def __post_init__(self) -> None:
        _check_byte("result code", self.result_code)
        _check_fields(self.fields)


def _password_command(cls_byte: int, instr: int, class_name: str, name: str, doc: str):
    """A command whose data is the password, then BMPs."""

    def __post_init__(self) -> None:
        _check_password(self.password)
        _check_fields(self.fields)

    klass = dataclasses.make_dataclass(
        class_name,
        [("password", "str", field(repr=False)), ("fields", "Fields", field(default=EMPTY))],
        bases=(Command,), frozen=True, slots=True,
        namespace={"SCHEMA": _password_and_fields(), "__post_init__": __post_init__, "__doc__": doc,
                   "__module__": __name__},
    )
    return _command(cls_byte, instr, name)(klass)


def _fields_command(cls_byte: int, instr: int, class_name: str, name: str, doc: str, **props):
    """A command whose data is a run of BMPs only."""

    def __post_init__(self) -> None:
        _check_fields(self.fields)

    namespace = {"SCHEMA": _fields_only(), "__post_init__": __post_init__, "__doc__": doc, "__module__": __name__}
    for prop, bmp_name in props.items():
        namespace[prop] = property(lambda self, _n=bmp_name: getattr(self.fields, _n))
    klass = dataclasses.make_dataclass(
        class_name, [("fields", "Fields", field(default=EMPTY))], bases=(Command,), frozen=True, slots=True,
        namespace=namespace)
    return _command(cls_byte, instr, name)(klass)


RepeatReceipt = _password_command(0x06, 0x20, "RepeatReceipt", "Repeat receipt", "06 20, ECR -> PT: password, optional BMPs.")
Reversal = _password_command(0x06, 0x30, "Reversal", "Reversal",
                             "06 30, ECR -> PT: password, then BMPs (87 receipt number, 06 TLV ...).")
Refund = _password_command(0x06, 0x31, "Refund", "Refund", "06 31, ECR -> PT: password, then BMPs (04 amount, 49 currency ...).")
EndOfDay = _password_command(0x06, 0x50, "EndOfDay", "End of day", "06 50, ECR -> PT: password, optional BMP 06.")
PreAuthorisation = _fields_command(0x06, 0x22, "PreAuthorisation", "Pre-authorisation",
                                   "06 22, ECR -> PT: a reservation; BMPs as an authorisation.",
                                   payment_type="type_byte")
PartialReversal = _fields_command(0x06, 0x23, "PartialReversal", "Partial reversal",
                                  "06 23, ECR -> PT: partial reversal of a pre-authorisation (87, 04, 19, 49, 06).",
                                  payment_type="type_byte")
BookTotal = _fields_command(0x06, 0x24, "BookTotal", "Book total",
                            "06 24, ECR -> PT: book a pre-authorisation (87 receipt, 04 amount ...).",
                            payment_type="type_byte")
PreAuthReversal = _fields_command(0x06, 0x25, "PreAuthReversal", "Pre-authorisation reversal",
                                  "06 25, ECR -> PT: reverse a pre-authorisation (19, 87, 49).",
                                  payment_type="type_byte")
Diagnosis = _fields_command(0x06, 0x70, "Diagnosis", "Diagnosis", "06 70, ECR -> PT: optional BMP 06.")
PrintTextBlock = _fields_command(0x06, 0xD3, "PrintTextBlock", "Print text block",
                                 "06 D3, PT -> ECR: a receipt as TLV (1F07 receipt type, 25 print texts of 07 lines).")
DisplayText = _fields_command(0x06, 0xE0, "DisplayText", "Display text",
                              "06 E0, ECR -> PT: F0 duration, F1..F8 text lines, F9 beeps.")
StatusInformation = _fields_command(0x04, 0x0F, "StatusInformation", "Status information",
                                    "04 0F, PT -> ECR: the transaction's result and data, all as BMPs.",
                                    card_type="type_byte")


@_command(0x06, 0xB0, "Abort")
@dataclass(frozen=True, slots=True)
class Abort(Command):
    """06 B0, ECR -> PT: abort the transaction in progress (no data)."""

    SCHEMA = Struct(Terminated)


@_command(0x06, 0xC0, "Read card")
@dataclass(frozen=True, slots=True)
class ReadCard(Command):
    """06 C0, ECR -> PT: timeout (seconds, binary), then BMPs (19 card type, FC dialog control, 06)."""

    timeout: int
    fields: Fields = EMPTY

    SCHEMA = Struct("timeout" / Int8ub, "fields" / FieldsRun, Terminated)

    def __post_init__(self) -> None:
        _check_byte("timeout", self.timeout)
        _check_fields(self.fields)

    @property
    def card_type(self) -> int | None:
        return self.fields.type_byte


@_command(0x06, 0xD1, "Print line")
@dataclass(frozen=True, slots=True)
class PrintLine(Command):
    """06 D1, PT -> ECR: attribute byte, then the line's text (code page 437, no CR LF; empty
    for an empty line)."""

    attribute: int
    text: str = ""

    SCHEMA = Struct("attribute" / Int8ub, "text" / Text(), Terminated)

    def __post_init__(self) -> None:
        _check_byte("attribute", self.attribute)
        if not isinstance(self.text, str) or self.text.endswith("\x00"):
            raise ZvtFieldError("text is a str (not ending in NUL)")
        try:
            Text().build(self.text)
        except BadValue:
            raise ZvtFieldError("text is code page 437") from None


@_command(0x05, 0x01, "Status enquiry")
@dataclass(frozen=True, slots=True)
class StatusEnquiry(Command):
    """05 01, ECR -> PT: optional password, then optional BMP 03 service byte and BMP 06
    (BMPs need the password before them)."""

    password: str | None = field(default=None, repr=False)
    fields: Fields = EMPTY

    SCHEMA = Select(
        Struct("password" / Password, "fields" / FieldsRun, Terminated),
        Struct(_none("password"), "fields" / Computed(EMPTY), Terminated),
    )

    def __post_init__(self) -> None:
        _check_password(self.password, optional=True)
        _check_fields(self.fields)
        if self.password is None and self.fields:
            raise ZvtFieldError("BMPs in a status enquiry need the password before them")


@_command(0x04, 0xFF, "Intermediate status")
@dataclass(frozen=True, slots=True)
class IntermediateStatus(Command):
    """04 FF, PT -> ECR: status byte (what the terminal is waiting for), optional timeout
    byte, then optional BMP 06 (which needs the timeout before it)."""

    status: int
    timeout: int | None = None
    fields: Fields = EMPTY

    SCHEMA = Struct("status" / Int8ub, "timeout" / Optional(Int8ub), "fields" / FieldsRun, Terminated)

    def __post_init__(self) -> None:
        _check_byte("status", self.status)
        _check_byte("timeout", self.timeout, optional=True)
        _check_fields(self.fields)
        if self.timeout is None and self.fields:
            raise ZvtFieldError("BMPs in an intermediate status need the timeout byte before them")


@_command(0x80, 0x00, "Ack")
@dataclass(frozen=True, slots=True)
class Ack(Command):
    """80 00 00: positive acknowledgement of a command."""

    SCHEMA = Struct(Terminated)


@dataclass(frozen=True, slots=True)
class Nack(Command):
    """84 xx 00: negative acknowledgement; ``error`` is the INSTR byte (83 = unknown command,
    9C = repeat, ...). Class 84 is a Nack whatever the INSTR."""

    error: int

    CLASS = 0x84
    NAME = "Nack"
    SCHEMA = Struct(Terminated)

    def __post_init__(self) -> None:
        _check_byte("error", self.error)

    @property
    def control(self) -> tuple[int, int]:
        return (0x84, self.error)

    def data(self) -> bytes:
        return b""

    def apdu(self) -> Apdu:
        return Apdu(0x84, self.error, b"")


NACK_CLASS = 0x84


def decode_apdu(apdu: Apdu) -> Command:
    """The typed command an :class:`Apdu` holds. Raises UnknownCommand (CLASS INSTR not in
    :data:`COMMANDS`), UnknownBmp, ZvtMessageError or ZvtFieldError."""
    if apdu.cls == NACK_CLASS:
        if apdu.data:
            raise ZvtMessageError("a negative acknowledgement (84 xx) carries no data")
        return Nack(apdu.instr)
    klass = COMMANDS.get(apdu.control)
    if klass is None:
        raise UnknownCommand(apdu)
    return klass.from_data(apdu.data)


def decode(raw: bytes) -> Command:
    """Exactly one APDU's bytes -> its typed command. Raises ZvtFrameError as well as the
    errors of :func:`decode_apdu`; every error is a ProtocolError."""
    return decode_apdu(Apdu.decode(bytes(raw)))


def encode(message: Command | Apdu) -> bytes:
    """The APDU bytes of a typed command or a generic Apdu."""
    return message.encode()


# ------------------------------------------------------------------ for traces and the decoder

MASK = "<masked>"
_SECRET_OWN_FIELDS = frozenset({"password"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, TlvContainer):
        return [_tlv_item(t) for t in value]
    return value


def _tlv_item(item: Tlv) -> dict:
    out: dict[str, Any] = {"tag": f"{item.tag:02X}", "name": item.name}
    if item.items or isinstance(item.value, tuple):
        out["items"] = [_tlv_item(t) for t in item.items]
    else:
        out["value"] = item.value.hex()
        if item.value and all(0x20 <= b < 0x7F for b in item.value):
            out["text"] = item.value.decode("ascii")
    return out


def describe(message: "Command | Apdu", *, mask: bool = True) -> dict:
    """A JSON-able account of one APDU for traces and ``posterm decode``: the command's name,
    CLASS and INSTR, its own fields, its BMPs (number, name, value) and the TLV as nested
    items. Secrets (the password, :data:`~firmware_protocol.zvt.bmp.SECRET_BMPS`) read
    ``"<masked>"`` unless ``mask`` is False. An :class:`Apdu` is described as bytes."""
    if isinstance(message, Apdu):
        return {"command": None, "class": f"{message.cls:02X}", "instr": f"{message.instr:02X}",
                "data": message.data.hex()}
    cls_byte, instr = message.control
    out: dict[str, Any] = {"command": message.NAME, "class": f"{cls_byte:02X}", "instr": f"{instr:02X}"}
    for f in dataclasses.fields(message):
        if f.name == "fields":
            continue
        value = getattr(message, f.name)
        out[f.name] = MASK if mask and f.name in _SECRET_OWN_FIELDS and value is not None else _jsonable(value)
    bmps = []
    fields = getattr(message, "fields", EMPTY)
    for bmp, value in fields.present():
        spec = BMPS[bmp]
        entry: dict[str, Any] = {"bmp": f"{bmp:02X}", "name": spec.name,
                                 "value": MASK if mask and spec.secret else _jsonable(value)}
        if bmp == 0x60:
            try:
                totals = IndividualTotals.decode(value)
            except ZvtFieldError:
                pass
            else:
                entry["totals"] = {"receipt_start": totals.receipt_start, "receipt_end": totals.receipt_end,
                                   **{n: {"count": t.count, "total": t.total} for n, t in totals.totals.items()}}
        bmps.append(entry)
    if bmps:
        out["bmps"] = bmps
    return out


__all__ = [
    "Abort", "Aborted", "Ack", "Apdu", "ApduLength", "ApduSchema", "Authorisation", "BMPS", "BookTotal", "COMMANDS",
    "Command", "Completion", "Diagnosis", "DisplayText", "EndOfDay", "HEADER_LONG", "HEADER_SHORT",
    "IntermediateStatus", "LogOff", "MAX_APDU", "MAX_DATA", "Nack", "PartialReversal", "PreAuthReversal",
    "PreAuthorisation", "PrintLine", "PrintTextBlock", "ReadCard", "Refund", "Registration", "RepeatReceipt",
    "Reversal", "StatusEnquiry", "StatusInformation", "apdu_size", "decode", "decode_apdu", "describe", "encode",
]
