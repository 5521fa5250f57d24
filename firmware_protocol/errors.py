"""Errors raised by the wire contract.

Everything this package raises on bad input is a :class:`ProtocolError`; the fuzz
tests hold it to that.  ``firmware_protocol`` depends on ``construct`` only, so
these do not derive from ``posterm.errors``; the link layer wraps them.
"""


class ProtocolError(Exception):
    """Root of every error the wire contract raises on bad bytes or bad values."""


class FrameError(ProtocolError):
    """A frame is malformed: bad start byte, length, check field or CRC."""


class MessageError(ProtocolError):
    """A frame's payload is not a valid message."""


class UnknownMessageType(MessageError):
    """The message type code is not in the catalogue."""

    def __init__(self, code: int) -> None:
        super().__init__(f"unknown message type 0x{code:04X}")
        self.code = code


class UnknownMandatoryField(MessageError):
    """A TLV tag below 0x80 (comprehension required) is not known for this message."""

    def __init__(self, message: str, tag: int) -> None:
        super().__init__(f"{message}: unknown mandatory field tag 0x{tag:02X}")
        self.message_name = message
        self.tag = tag


class FieldError(MessageError, ValueError):
    """A field value is out of range, missing, or of the wrong type."""
