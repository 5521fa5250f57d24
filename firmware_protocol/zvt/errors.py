"""The errors the ZVT wire contract raises: all :class:`firmware_protocol.errors.ProtocolError`.

Messages never quote field values (a password, a PAN or track data may be in them).
"""

from __future__ import annotations

from construct import ConstructError

from firmware_protocol.errors import FieldError, FrameError, MessageError, UnknownMessageType

__all__ = ["BadValue", "UnknownBmp", "UnknownCommand", "ZvtFieldError", "ZvtFrameError", "ZvtMessageError"]


class ZvtFrameError(FrameError):
    """An APDU or serial frame whose framing is wrong (length, DLE sequence, CRC)."""


class ZvtMessageError(MessageError):
    """A well-framed APDU whose data is not what its command carries."""


class ZvtFieldError(FieldError):
    """A field value out of range or of the wrong type (raised on construction and on decode)."""


class UnknownBmp(ZvtMessageError):
    """A BMP number we do not know: its length cannot be known either, so the rest is unreadable."""

    def __init__(self, bmp: int) -> None:
        super().__init__(f"unknown BMP 0x{bmp:02X}")
        self.bmp = bmp


class UnknownCommand(UnknownMessageType):
    """A well-framed APDU whose CLASS INSTR is not in the catalogue. ``apdu`` keeps it whole
    (an :class:`firmware_protocol.zvt.apdu.Apdu`): a terminal answers it 84 83, a trace shows it."""

    def __init__(self, apdu) -> None:
        super().__init__((apdu.cls << 8) | apdu.instr)
        self.args = (f"unknown ZVT command {apdu.cls:02X} {apdu.instr:02X} ({len(apdu.data)} data bytes)",)
        self.apdu = apdu

    def __str__(self) -> str:
        return self.args[0]


class BadValue(ConstructError):
    """Raised inside the construct schemas (so ``Select`` can try its next branch); the
    decoders turn it into :class:`ZvtFieldError` at the boundary."""
