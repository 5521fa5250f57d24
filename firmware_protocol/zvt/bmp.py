"""The BMP fields: one byte naming the field, then its value in the field's own encoding.

A ZVT command's data is (after any fixed fields the command starts with) a run of BMPs::

    04 00 00 00 00 25 00     amount 2500 (6 bytes BCD)
    49 09 78                 currency 978 (2 bytes BCD)
    8B F1 F1 4D 61 ... 00    card name, LLVAR: F1 F1 = 11 bytes follow
    06 82 04 5D ...          TLV container, BER length (see tlv.py)

The BMP number decides the length, so the catalogue :data:`BMPS` is closed: an unknown
BMP is a :class:`~firmware_protocol.zvt.errors.UnknownBmp` error (nothing after it can be
read). :class:`Fields` holds the BMPs of one command by name; it remembers the order it
was decoded in, so a decoded command re-encodes byte-identical. BMP 19 is one field with
three meanings by command (payment type in 06 01 / 06 22, status byte in 06 0F, card type
in 06 C0 and 04 0F): it is called ``type_byte`` here and named per command by properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields as dc_fields, make_dataclass
from typing import Any

from construct import Array, Bytes, Construct, ConstructError, Int8ub, Struct, Switch, Terminated, this

from firmware_protocol.zvt.codecs import (
    BcdDigits, BcdInt, CardDigits, FixedText, LLLVar, LLVar, ReceiptNumber, Text,
)
from firmware_protocol.zvt.errors import BadValue, ZvtFieldError
from firmware_protocol.zvt.tlv import TlvContainer, TlvField


@dataclass(frozen=True, slots=True)
class BmpSpec:
    """One BMP: its number, the attribute name in :class:`Fields`, the value's schema, the
    Python type of the value, and whether the value is a secret to be masked in traces."""

    bmp: int
    name: str
    schema: Any
    type: Any
    secret: bool = False
    doc: str = ""


_B = Int8ub
_SPECS = [
    BmpSpec(0x01, "timeout", _B, int, doc="time-out, seconds (binary)"),
    BmpSpec(0x02, "max_status_infos", _B, int, doc="maximum number of status informations"),
    BmpSpec(0x03, "service_byte", _B, int, doc="service byte (bit field)"),
    BmpSpec(0x04, "amount", BcdInt(6), int, doc="amount in minor units, 6 bytes BCD"),
    BmpSpec(0x05, "pump_no", _B, int, doc="pump number"),
    BmpSpec(0x06, "tlv", TlvField, TlvContainer, doc="TLV container"),
    BmpSpec(0x0B, "trace", BcdInt(3), int, doc="trace number, 3 bytes BCD"),
    BmpSpec(0x0C, "time", BcdDigits(3), str, doc="time HHMMSS"),
    BmpSpec(0x0D, "date", BcdDigits(2), str, doc="date MMDD"),
    BmpSpec(0x0E, "expiry", BcdDigits(2), str, doc="card expiry YYMM"),
    BmpSpec(0x17, "card_sequence_no", BcdInt(2), int, doc="card sequence number"),
    BmpSpec(0x19, "type_byte", _B, int, doc="payment type / status byte / card type (by command)"),
    BmpSpec(0x22, "pan", LLVar(CardDigits()), str, secret=True, doc="PAN, E = masked digit"),
    BmpSpec(0x23, "track2", LLVar(CardDigits()), str, secret=True, doc="track 2 data"),
    BmpSpec(0x24, "track3", LLLVar(CardDigits()), str, secret=True, doc="track 3 data"),
    BmpSpec(0x27, "result_code", _B, int, doc="result code (00 = success)"),
    BmpSpec(0x29, "terminal_id", BcdDigits(4), str, doc="terminal id, 8 digits"),
    BmpSpec(0x2A, "vu_number", FixedText(15, b" "), str, doc="VU (merchant) number, 15 bytes, space padded"),
    BmpSpec(0x2D, "track1", LLVar(), bytes, secret=True, doc="track 1 data"),
    BmpSpec(0x2E, "sync_chip_data", LLLVar(), bytes, doc="synchronous chip data"),
    BmpSpec(0x37, "original_trace", BcdInt(3), int, doc="trace number of the original transaction"),
    BmpSpec(0x3A, "cvv", BcdDigits(2), str, secret=True, doc="card verification value (mail order)"),
    BmpSpec(0x3B, "aid", FixedText(8, b"\x00"), str, doc="authorisation attribute, 8 bytes, NUL padded"),
    BmpSpec(0x3C, "additional_text", LLLVar(Text()), str, doc="additional data / text"),
    BmpSpec(0x3D, "password", BcdDigits(3), str, secret=True, doc="password, 6 digits"),
    BmpSpec(0x49, "currency", BcdInt(2), int, doc="ISO 4217 numeric currency, 2 bytes BCD"),
    BmpSpec(0x60, "single_amounts", LLLVar(), bytes, doc="individual totals (see IndividualTotals)"),
    BmpSpec(0x87, "receipt_no", ReceiptNumber(), int, doc="receipt number, 2 bytes BCD (FFFF: none)"),
    BmpSpec(0x88, "turnover_no", BcdInt(3), int, doc="turnover record number"),
    BmpSpec(0x8A, "zvt_card_type", _B, int, doc="ZVT card type"),
    BmpSpec(0x8B, "card_name", LLVar(Text()), str, doc="card name"),
    BmpSpec(0x8C, "card_type_id", _B, int, doc="network operator's card type id"),
    BmpSpec(0x92, "offline_chip", LLLVar(), bytes, doc="additional data, ec-cash chip offline"),
    BmpSpec(0x9A, "geldkarte", LLLVar(), bytes, doc="Geldkarte payment record"),
    BmpSpec(0xA0, "result_code_as", _B, int, doc="result code of the authorisation system"),
    BmpSpec(0xA7, "chip_ef_id", LLVar(), bytes, doc="chip data, EF_ID"),
    BmpSpec(0xAA, "full_date", BcdDigits(3), str, doc="date YYMMDD"),
    BmpSpec(0xAF, "ef_info", LLLVar(), bytes, doc="EF_Info"),
    BmpSpec(0xBA, "aid_param", Bytes(5), bytes, doc="AID parameter"),
    BmpSpec(0xD0, "algo_key", _B, int, doc="algorithm key"),
    BmpSpec(0xD1, "card_offset", LLVar(), bytes, secret=True, doc="card offset / PIN data"),
    BmpSpec(0xD2, "direction", _B, int, doc="direction"),
    BmpSpec(0xD3, "key_position", _B, int, doc="key position"),
    BmpSpec(0xE0, "input_min", _B, int, doc="minimum input length"),
    *(BmpSpec(0xE0 + n, f"text2_line{n}", LLVar(Text()), str, doc=f"text 2, line {n}") for n in range(1, 9)),
    BmpSpec(0xE9, "input_max", _B, int, doc="maximum input length"),
    BmpSpec(0xEA, "input_echo", _B, int, doc="echo the input"),
    BmpSpec(0xEB, "mac", Bytes(8), bytes, secret=True, doc="MAC over text 1 and text 2"),
    BmpSpec(0xF0, "display_duration", _B, int, doc="display duration, seconds"),
    *(BmpSpec(0xF0 + n, f"text1_line{n}", LLVar(Text()), str, doc=f"text 1, line {n}") for n in range(1, 9)),
    BmpSpec(0xF9, "beeps", _B, int, doc="number of beeps"),
    BmpSpec(0xFA, "display_status", _B, int, doc="status"),
    BmpSpec(0xFB, "ok_required", _B, int, doc="confirmation with OK required"),
    BmpSpec(0xFC, "dialog_control", _B, int, doc="dialog control"),
]

BMPS: dict[int, BmpSpec] = {s.bmp: s for s in _SPECS}
BY_NAME: dict[str, BmpSpec] = {s.name: s for s in _SPECS}
SECRET_BMPS = frozenset(s.bmp for s in _SPECS if s.secret)
if len(BMPS) != len(_SPECS) or len(BY_NAME) != len(_SPECS):  # pragma: no cover - guards an edit of the table
    raise ImportError("bmp: a BMP number or name is listed twice")

# How a command built here orders its BMPs: result code, amount, currency, type byte first
# (the order terminals and ECRs send them in), the rest by number, the TLV container last.
_FIRST = (0x27, 0x04, 0x49, 0x19)
CANONICAL_ORDER = _FIRST + tuple(sorted(b for b in BMPS if b not in _FIRST and b != 0x06)) + (0x06,)



class UnknownBmpSignal(BadValue):
    """Raised inside the schema for a BMP number not in the catalogue (becomes UnknownBmp)."""

    def __init__(self, bmp: int) -> None:
        super().__init__(f"unknown BMP 0x{bmp:02X}")
        self.bmp = bmp


class _NoSuchBmp(Construct):
    """The default of the BMP dispatch: nothing after an unknown BMP can be read."""

    def _parse(self, stream, context, path):
        raise UnknownBmpSignal(context.bmp)

    def _build(self, obj, stream, context, path):
        raise UnknownBmpSignal(context.bmp)


# One BMP on the wire: the closed dispatch on its number.
Bmp = Struct(
    "bmp" / Int8ub,
    "value" / Switch(this.bmp, {s.bmp: s.schema for s in _SPECS}, default=_NoSuchBmp()),
)


def _post_init(self) -> None:
    for spec in _SPECS:
        value = getattr(self, spec.name)
        if value is None:
            continue
        if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
            raise ZvtFieldError(f"BMP {spec.bmp:02X} ({spec.name}) takes {spec.type.__name__}")
        try:
            spec.schema.build(value)
        except (ConstructError, ValueError, OverflowError) as exc:
            detail = str(exc).splitlines()[-1] if isinstance(exc, BadValue) else "out of range"
            raise ZvtFieldError(f"BMP {spec.bmp:02X} ({spec.name}): {detail}") from None
    if not isinstance(self.order, tuple) or any(b not in BMPS for b in self.order):
        raise ZvtFieldError("Fields.order is a tuple of known BMP numbers")


def _present(self) -> list[tuple[int, Any]]:
    """(bmp, value) of the fields that are set, in wire order: the decoded order first."""
    values = {s.bmp: getattr(self, s.name) for s in _SPECS}
    seen = [b for b in self.order if values[b] is not None]
    rest = [b for b in CANONICAL_ORDER if values[b] is not None and b not in seen]
    return [(b, values[b]) for b in seen + rest]


def _items(self) -> dict[str, Any]:
    """The fields that are set, by name, in wire order."""
    return {BMPS[b].name: v for b, v in self.present()}


def _repr(self) -> str:
    parts = [f"{BMPS[b].name}={'<masked>' if b in SECRET_BMPS else repr(v)}" for b, v in self.present()]
    return f"Fields({', '.join(parts)})"


def _bool(self) -> bool:
    return any(getattr(self, s.name) is not None for s in _SPECS)


Fields = make_dataclass(
    "Fields",
    [(s.name, f"{s.type.__name__} | None", field(default=None)) for s in _SPECS]
    + [("order", "tuple[int, ...]", field(default=(), compare=False, repr=False))],
    frozen=True, slots=True, repr=False,
    namespace={"__post_init__": _post_init, "present": _present, "items": _items, "__repr__": _repr,
               "__bool__": _bool, "__module__": __name__},
)
Fields.__doc__ = (
    "The BMPs of one command, by name (every name in :data:`BMPS`; unset = None).\n\n"
    "Validated on construction (ZvtFieldError). ``order`` is the BMP order seen on decode (not compared);\n"
    "fields not in it go out in :data:`CANONICAL_ORDER`. ``present()`` lists (bmp, value) in wire order;\n"
    "``items()`` the same by name. The repr masks secret BMPs (PAN, tracks, password, CVV, PIN data, MAC)."
)
FIELD_NAMES = tuple(f.name for f in dc_fields(Fields) if f.name != "order")
EMPTY = Fields()


def fields_from_items(items: list) -> "Fields":
    """Parsed (bmp, value) containers -> Fields; raises BadValue on a BMP given twice."""
    values: dict[str, Any] = {}
    order = []
    for item in items:
        spec = BMPS[item.bmp]
        if spec.name in values:
            raise BadValue(f"BMP {item.bmp:02X} ({spec.name}) appears twice")
        values[spec.name] = item.value
        order.append(item.bmp)
    return _parsed_fields(values, tuple(order))


_FIELD_SLOTS = tuple(s.name for s in _SPECS)


def _parsed_fields(values: dict[str, Any], order: tuple[int, ...]) -> "Fields":
    """Fields from values the BMP schemas have just parsed: each already is what its schema
    builds, so the constructor's check (a build of every value, half the cost of a decode)
    is skipped. Values made by hand always go through ``Fields(...)``."""
    obj = object.__new__(Fields)
    for name in _FIELD_SLOTS:
        object.__setattr__(obj, name, values.get(name))
    object.__setattr__(obj, "order", order)
    return obj


# ------------------------------------------------------------------ BMP 60 in an end of day


CARD_GROUPS = ("girocard", "jcb", "eurocard", "amex", "visa", "diners", "others")

IndividualTotalsSchema = Struct(
    "receipt_start" / BcdInt(2),
    "receipt_end" / BcdInt(2),
    "groups" / Array(len(CARD_GROUPS), Struct("count" / Int8ub, "total" / BcdInt(6))),
    Terminated,
)


@dataclass(frozen=True, slots=True)
class CardTotal:
    count: int
    total: int


@dataclass(frozen=True, slots=True)
class IndividualTotals:
    """BMP 60 of an end of day's status information: the receipt range, then count and
    total (minor units) per card group, in the order of :data:`CARD_GROUPS`."""

    receipt_start: int
    receipt_end: int
    totals: dict[str, CardTotal]

    @classmethod
    def decode(cls, raw: bytes) -> "IndividualTotals":
        """Raises ZvtFieldError if ``raw`` is not the 53-byte individual totals layout."""
        try:
            c = IndividualTotalsSchema.parse(raw)
        except ConstructError:
            raise ZvtFieldError("BMP 60 is not the individual totals layout (4 + 7 x 7 bytes)") from None
        return cls(c.receipt_start, c.receipt_end,
                   {name: CardTotal(g.count, g.total) for name, g in zip(CARD_GROUPS, c.groups)})

    def encode(self) -> bytes:
        try:
            return IndividualTotalsSchema.build({
                "receipt_start": self.receipt_start, "receipt_end": self.receipt_end,
                "groups": [{"count": self.totals.get(n, CardTotal(0, 0)).count,
                            "total": self.totals.get(n, CardTotal(0, 0)).total} for n in CARD_GROUPS]})
        except ConstructError:
            raise ZvtFieldError("individual totals out of range") from None


__all__ = ["BMPS", "BY_NAME", "Bmp", "BmpSpec", "CANONICAL_ORDER", "EMPTY", "FIELD_NAMES", "Fields", "SECRET_BMPS",
           "CARD_GROUPS", "CardTotal", "IndividualTotals", "UnknownBmpSignal", "fields_from_items"]
