"""The field encodings ZVT uses, as construct adapters (bytes in memory only).

* BCD, fixed width: two decimal digits a byte, high nibble first (``04`` amount
  ``00 00 00 00 25 00`` = 2500). As an int (:class:`BcdInt`) or as a digit string where
  leading zeros mean something, such as dates and ids (:class:`BcdDigits`).
* LLVAR / LLLVAR: a length of two / three decimal digits, each sent as ``F0 + digit``
  (``F1 F1`` = 11 bytes follow, ``F0 F7 F0`` = 70), then that many bytes.
* Card digits (PAN, track 2/3): BCD-packed nibbles where ``E`` marks a masked digit, ``D``
  the track separator and a trailing ``F`` pads an odd count (:class:`CardDigits`).
* Text: code page 437, ZVT's default character set. Trailing NULs (C string ends some
  terminals send) are dropped on decode; fixed-width text is padded with spaces or NULs.

Every adapter raises :class:`firmware_protocol.zvt.errors.BadValue` (a ConstructError, so
``Select`` can try another branch) with a message that never quotes the value.
"""

from __future__ import annotations

from construct import Adapter, Bytes, Construct, GreedyBytes, Prefixed, stream_read, stream_write

from firmware_protocol.zvt.errors import BadValue

TEXT_ENCODING = "cp437"


def bcd_encode(digits: str) -> bytes:
    """Pack an even-length string of decimal digits; raises BadValue."""
    if len(digits) % 2 or not (digits.isascii() and digits.isdigit()):
        raise BadValue("BCD needs an even number of decimal digits")
    return bytes.fromhex(digits)


def bcd_decode(raw: bytes) -> str:
    """Unpack BCD to a digit string; raises BadValue on a nibble above 9."""
    digits = raw.hex()
    if not digits.isdigit():
        raise BadValue("not BCD (a nibble above 9)")
    return digits


class BcdDigits(Adapter):
    """``width`` bytes of BCD as a string of ``2 * width`` digits (dates, times, ids)."""

    def __init__(self, width: int) -> None:
        super().__init__(Bytes(width))
        self.width = width

    def _decode(self, obj, context, path) -> str:
        return bcd_decode(obj)

    def _encode(self, obj, context, path) -> bytes:
        if not isinstance(obj, str) or len(obj) != 2 * self.width:
            raise BadValue(f"{path}: expected a string of {2 * self.width} digits")
        return bcd_encode(obj)


class BcdInt(Adapter):
    """``width`` bytes of BCD as a non-negative int (amounts, counters, currency codes)."""

    def __init__(self, width: int) -> None:
        super().__init__(Bytes(width))
        self.width = width

    def _decode(self, obj, context, path) -> int:
        return int(bcd_decode(obj))

    def _encode(self, obj, context, path) -> bytes:
        if type(obj) is not int or not 0 <= obj < 10 ** (2 * self.width):
            raise BadValue(f"{path}: expected an int 0..{10 ** (2 * self.width) - 1}")
        return bcd_encode(f"{obj:0{2 * self.width}d}")


class ReceiptNumber(BcdInt):
    """BMP 87: two BCD bytes, or ``FF FF`` (65535), which a partial reversal's abort uses
    for "no receipt" (the EVerest ``zvt`` crate's reading of spec 2.10.1)."""

    NONE = 0xFFFF

    def __init__(self) -> None:
        super().__init__(2)

    def _decode(self, obj, context, path) -> int:
        return self.NONE if obj == b"\xff\xff" else super()._decode(obj, context, path)

    def _encode(self, obj, context, path) -> bytes:
        return b"\xff\xff" if obj == self.NONE else super()._encode(obj, context, path)


class VarLength(Construct):
    """The LL / LLL length prefix: ``digits`` bytes ``F0 + d``, most significant first."""

    def __init__(self, digits: int) -> None:
        super().__init__()
        self.digits = digits

    def _parse(self, stream, context, path) -> int:
        raw = stream_read(stream, self.digits, path)
        if any(b & 0xF0 != 0xF0 or b & 0x0F > 9 for b in raw):
            raise BadValue(f"{path}: a {'L' * self.digits}VAR length byte is not F0..F9")
        return int("".join(str(b & 0x0F) for b in raw))

    def _build(self, obj, stream, context, path) -> int:
        if type(obj) is not int or not 0 <= obj < 10 ** self.digits:
            raise BadValue(f"{path}: {'L' * self.digits}VAR data is at most {10 ** self.digits - 1} bytes")
        stream_write(stream, bytes(0xF0 | int(d) for d in f"{obj:0{self.digits}d}"), self.digits, path)
        return obj

    def _sizeof(self, context, path) -> int:
        return self.digits


def LLVar(subcon=GreedyBytes):  # noqa: N802 - named like construct's own macros
    """Up to 99 bytes behind an LL length."""
    return Prefixed(VarLength(2), subcon)


def LLLVar(subcon=GreedyBytes):  # noqa: N802
    """Up to 999 bytes behind an LLL length."""
    return Prefixed(VarLength(3), subcon)


class Text(Adapter):
    """Variable text (the rest of its length-prefixed field), code page 437, trailing NULs dropped."""

    def __init__(self) -> None:
        super().__init__(GreedyBytes)

    def _decode(self, obj, context, path) -> str:
        return obj.decode(TEXT_ENCODING).rstrip("\x00")

    def _encode(self, obj, context, path) -> bytes:
        if not isinstance(obj, str):
            raise BadValue(f"{path}: expected a str")
        try:
            return obj.encode(TEXT_ENCODING)
        except UnicodeEncodeError:
            raise BadValue(f"{path}: a character is not in code page 437") from None


class FixedText(Adapter):
    """``width`` bytes of text padded with ``pad`` (spaces for the VU number, NULs for the
    authorisation attribute); the padding is stripped on decode and restored on build."""

    def __init__(self, width: int, pad: bytes) -> None:
        super().__init__(Bytes(width))
        self.width = width
        self.pad = pad

    def _decode(self, obj, context, path) -> str:
        return obj.rstrip(self.pad).decode(TEXT_ENCODING)

    def _encode(self, obj, context, path) -> bytes:
        if not isinstance(obj, str):
            raise BadValue(f"{path}: expected a str")
        try:
            raw = obj.encode(TEXT_ENCODING)
        except UnicodeEncodeError:
            raise BadValue(f"{path}: a character is not in code page 437") from None
        if len(raw) > self.width or raw.endswith(self.pad):
            raise BadValue(f"{path}: at most {self.width} characters, not ending in padding")
        return raw.ljust(self.width, self.pad)


class CardDigits(Adapter):
    """Card data packed in nibbles: digits, ``D`` (track separator), ``E`` (masked digit),
    a trailing ``F`` pad when the count is odd. Decodes to an upper-case string
    (``"559883EEEEEE8074"``), the pad dropped."""

    _ALLOWED = frozenset("0123456789DE")

    def __init__(self) -> None:
        super().__init__(GreedyBytes)

    def _decode(self, obj, context, path) -> str:
        digits = obj.hex().upper()
        if digits.endswith("F"):
            digits = digits[:-1]
        if not set(digits) <= self._ALLOWED:
            raise BadValue(f"{path}: card data nibble is not 0-9, D or E")
        return digits

    def _encode(self, obj, context, path) -> bytes:
        if not isinstance(obj, str) or not set(obj) <= self._ALLOWED:
            raise BadValue(f"{path}: card data is digits, D and E only")
        return bytes.fromhex(obj + "F" * (len(obj) % 2))


class UntilEnd(Construct):
    """``subcon`` repeated until the (already length-bounded, in-memory) stream ends. Unlike
    ``GreedyRange`` it does not stop quietly at a bad element: the element's error propagates."""

    def __init__(self, subcon) -> None:
        super().__init__()
        self.subcon = subcon

    def _parse(self, stream, context, path):
        out = []
        while stream.read(1):
            stream.seek(-1, 1)
            out.append(self.subcon._parsereport(stream, context, path))
        return out

    def _build(self, obj, stream, context, path):
        for item in obj:
            self.subcon._build(item, stream, context, path)
        return obj
