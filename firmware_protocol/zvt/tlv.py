"""BMP 06, the TLV container: BER-TLV inside a ZVT APDU.

Byte layout::

    06  L  tag len value  tag len value ...      L and every len: BER length
    tag     one byte; low five bits 11111 = more tag bytes follow, each with bit 8 set
            but the last (1F 44, 1F 0E ...); at most MAX_TAG_BYTES bytes
    len     00..7F itself; 81 xx; 82 xx xx (big-endian). 80 (indefinite) and 83+ are refused
    value   bytes, or, when bit 6 (0x20) of the first tag byte is set (a constructed tag:
            25, 34, 60, E4, E9 ...), more tag-len-value items, nested at most MAX_DEPTH deep

Rules: lengths are built in the shortest form (a container read with a longer form, 81 05,
decodes the same but does not re-encode byte-identical). Nesting is bounded: each level
is its own schema, the last refuses a constructed tag, so hostile input cannot recurse.
Tags are ints of their bytes (``0x1F44``). The tag names below are for traces and the
decoder; values are kept as bytes and read with :meth:`Tlv.text`, :meth:`Tlv.bcd` etc.
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import (
    Adapter,
    Construct,
    GreedyBytes,
    IfThenElse,
    Prefixed,
    Struct,
    stream_read,
    stream_write,
)

from firmware_protocol.zvt.codecs import TEXT_ENCODING, UntilEnd, bcd_decode
from firmware_protocol.zvt.errors import BadValue, ZvtFieldError

MAX_TAG_BYTES = 3
MAX_DEPTH = 8
MAX_LENGTH = 0xFFFF

# The tags seen in ZVT (spec chapter 9 and the shared captures), for names in traces.
TAG_NAMES = {
    0x07: "text line", 0x09: "end-of-line marker", 0x10: "permitted commands", 0x12: "number of columns",
    0x14: "ISO character set", 0x1A: "max data length", 0x1F07: "receipt type", 0x1F0E: "date",
    0x1F0F: "time", 0x1F15: "card reading control", 0x1F40: "device name", 0x1F41: "software version",
    0x1F42: "serial number", 0x1F43: "device state", 0x1F44: "terminal id", 0x1F45: "ATS",
    0x1F4C: "card type", 0x1F4D: "sub type", 0x1F4F: "ATQA", 0x1F50: "SAK", 0x1F60: "card type",
    0x1F62: "BMP-60 prefix", 0x1F63: "BMP-60 data", 0x25: "print texts", 0x26: "permitted ZVT commands",
    0x27: "supported character sets", 0x28: "supported languages", 0x34: "date and time",
    0x40: "EMV config", 0x43: "application id", 0x4C: "UUID", 0x60: "application", 0xE4: "device information",
    0xE9: "BMP-60 data",
}


def tag_bytes(tag: int) -> bytes:
    """The bytes of ``tag``; raises ZvtFieldError if they are not one well-formed BER tag."""
    if type(tag) is not int or not 0 <= tag < 1 << (8 * MAX_TAG_BYTES):
        raise ZvtFieldError(f"TLV tag must be an int of at most {MAX_TAG_BYTES} bytes")
    raw = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
    more = raw[0] & 0x1F == 0x1F
    if not more and len(raw) > 1:
        raise ZvtFieldError(f"TLV tag 0x{tag:X}: a one-byte tag cannot have more bytes")
    if more and (len(raw) == 1 or any(b & 0x80 == 0 for b in raw[1:-1]) or raw[-1] & 0x80):
        raise ZvtFieldError(f"TLV tag 0x{tag:X}: continuation bytes are malformed")
    return raw


def constructed(tag: int) -> bool:
    """True when ``tag`` holds nested items (bit 6 of its first byte)."""
    first = tag >> (8 * (max(1, (tag.bit_length() + 7) // 8) - 1))
    return bool(first & 0x20)


@dataclass(frozen=True, slots=True)
class Tlv:
    """One TLV item. ``value`` is bytes for a primitive tag, a tuple of :class:`Tlv` for a
    constructed one (checked on construction)."""

    tag: int
    value: bytes | tuple["Tlv", ...]

    def __post_init__(self) -> None:
        tag_bytes(self.tag)
        if constructed(self.tag):
            if not isinstance(self.value, tuple) or not all(isinstance(v, Tlv) for v in self.value):
                raise ZvtFieldError(f"TLV tag 0x{self.tag:X} is constructed: its value is a tuple of Tlv")
        elif not isinstance(self.value, bytes):
            raise ZvtFieldError(f"TLV tag 0x{self.tag:X} is primitive: its value is bytes")

    @property
    def name(self) -> str:
        return TAG_NAMES.get(self.tag, f"tag {self.tag:X}")

    @property
    def items(self) -> tuple["Tlv", ...]:
        """The nested items (empty for a primitive tag)."""
        return self.value if isinstance(self.value, tuple) else ()

    def text(self) -> str:
        """The value as code page 437 text."""
        return self._raw().decode(TEXT_ENCODING)

    def bcd(self) -> str:
        """The value as BCD digits; raises ZvtFieldError if it is not BCD."""
        try:
            return bcd_decode(self._raw())
        except BadValue as exc:
            raise ZvtFieldError(f"TLV tag 0x{self.tag:X}: {exc}") from None

    def uint(self) -> int:
        """The value as a big-endian unsigned int."""
        return int.from_bytes(self._raw(), "big")

    def hex(self) -> str:
        return self._raw().hex()

    def _raw(self) -> bytes:
        if not isinstance(self.value, bytes):
            raise ZvtFieldError(f"TLV tag 0x{self.tag:X} is constructed, not a value")
        return self.value

    def find(self, tag: int) -> "Tlv | None":
        """The first item with ``tag`` below this one, depth first."""
        return _find(self.items, tag)

    def find_all(self, tag: int) -> list["Tlv"]:
        return _find_all(self.items, tag)


@dataclass(frozen=True, slots=True)
class TlvContainer:
    """The value of BMP 06: the top-level TLV items, in order."""

    items: tuple[Tlv, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.items, tuple) or not all(isinstance(v, Tlv) for v in self.items):
            raise ZvtFieldError("a TLV container holds a tuple of Tlv")

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def find(self, tag: int) -> Tlv | None:
        """The first item with ``tag`` anywhere in the container, depth first."""
        return _find(self.items, tag)

    def find_all(self, tag: int) -> list[Tlv]:
        return _find_all(self.items, tag)


def _find(items, tag):
    for item in items:
        if item.tag == tag:
            return item
        hit = _find(item.items, tag)
        if hit is not None:
            return hit
    return None


def _find_all(items, tag):
    out = []
    for item in items:
        if item.tag == tag:
            out.append(item)
        out += _find_all(item.items, tag)
    return out


# ------------------------------------------------------------------ schemas


class BerTag(Construct):
    """A BER tag of 1..MAX_TAG_BYTES bytes, as an int."""

    def _parse(self, stream, context, path) -> int:
        raw = stream_read(stream, 1, path)
        if raw[0] & 0x1F == 0x1F:
            while True:
                if len(raw) >= MAX_TAG_BYTES:
                    raise BadValue(f"{path}: TLV tag longer than {MAX_TAG_BYTES} bytes")
                raw += stream_read(stream, 1, path)
                if not raw[-1] & 0x80:
                    break
        return int.from_bytes(raw, "big")

    def _build(self, obj, stream, context, path):
        try:
            raw = tag_bytes(obj)
        except ZvtFieldError as exc:
            raise BadValue(str(exc)) from None
        stream_write(stream, raw, len(raw), path)
        return obj


class BerLength(Construct):
    """A BER definite length: one byte below 0x80, else 81 xx or 82 xx xx."""

    def _parse(self, stream, context, path) -> int:
        first = stream_read(stream, 1, path)[0]
        if first < 0x80:
            return first
        if first in (0x81, 0x82):
            return int.from_bytes(stream_read(stream, first - 0x80, path), "big")
        raise BadValue(f"{path}: BER length form 0x{first:02X} is not supported (00..7F, 81, 82)")

    def _build(self, obj, stream, context, path):
        if type(obj) is not int or not 0 <= obj <= MAX_LENGTH:
            raise BadValue(f"{path}: TLV length out of range 0..{MAX_LENGTH}")
        raw = bytes([obj]) if obj < 0x80 else bytes([0x81, obj]) if obj < 0x100 else b"\x82" + obj.to_bytes(2, "big")
        stream_write(stream, raw, len(raw), path)
        return obj


class _Deeper(Construct):
    """What a constructed tag holds at the last allowed depth: nothing is accepted."""

    def _parse(self, stream, context, path):
        raise BadValue(f"{path}: TLV nested deeper than {MAX_DEPTH} levels")

    def _build(self, obj, stream, context, path):
        raise BadValue(f"{path}: TLV nested deeper than {MAX_DEPTH} levels")


class _ToTlv(Adapter):
    """construct's list of containers <-> a tuple of :class:`Tlv`."""

    def _decode(self, obj, context, path):
        try:
            return tuple(Tlv(item.tag, item.value if isinstance(item.value, tuple) else bytes(item.value))
                         for item in obj)
        except ZvtFieldError as exc:
            raise BadValue(str(exc)) from None

    def _encode(self, obj, context, path):
        return [{"tag": item.tag, "value": item.value} for item in obj]


def _level(inner):
    return _ToTlv(UntilEnd(Struct(
        "tag" / BerTag(),
        "value" / Prefixed(BerLength(), IfThenElse(lambda ctx: constructed(ctx.tag), inner, GreedyBytes)),
    )))


# One schema per nesting level, built from the deepest up: depth is bounded by construction.
TlvItems = _Deeper()
for _ in range(MAX_DEPTH):
    TlvItems = _level(TlvItems)


class _Container(Adapter):
    def _decode(self, obj, context, path) -> TlvContainer:
        return TlvContainer(obj)

    def _encode(self, obj, context, path):
        if not isinstance(obj, TlvContainer):
            raise BadValue(f"{path}: BMP 06 holds a TlvContainer")
        return obj.items


# The value of BMP 06 (after its tag byte): a BER length, then the items.
TlvField = _Container(Prefixed(BerLength(), TlvItems))
