"""ZVT (the German counter protocol, ZVT-Kassenschnittstelle): the wire contract.

Read ZVT.md beside this file for the bytes and the rules. Imports construct and the
standard library only.

* :mod:`.apdu`: :class:`Apdu` (any CLASS INSTR), the typed commands, :func:`decode`.
* :mod:`.bmp`: the BMP catalogue and :class:`Fields`; :mod:`.tlv`: the BMP 06 container.
* :mod:`.framing`: the serial frame (DLE STX ... DLE ETX CRC-16/KERMIT), the serial and
  TCP framers.

    >>> from firmware_protocol.zvt import Authorisation, decode
    >>> msg = Authorisation.make(amount=1250, currency=978)
    >>> msg.encode().hex(" ")
    '06 01 0a 04 00 00 00 00 12 50 49 09 78'
    >>> decode(msg.encode()).amount
    1250
"""

from firmware_protocol.zvt.apdu import *  # noqa: F401,F403
from firmware_protocol.zvt.apdu import __all__ as _apdu_all
from firmware_protocol.zvt.bmp import (
    BMPS, CANONICAL_ORDER, CARD_GROUPS, SECRET_BMPS, BmpSpec, CardTotal, Fields, IndividualTotals,
)
from firmware_protocol.zvt.errors import (
    UnknownBmp, UnknownCommand, ZvtFieldError, ZvtFrameError, ZvtMessageError,
)
from firmware_protocol.zvt.framing import (
    ACK, DLE, ETX, MAX_SERIAL_FRAME, NAK, STX, SerialFramer, TcpFramer, ZvtBadFrame, ZvtFrame, ZvtGarbage,
    crc_kermit, decode_serial, encode_serial,
)
from firmware_protocol.zvt.tlv import TAG_NAMES, Tlv, TlvContainer

__all__ = [*_apdu_all,
           "ACK", "BMPS", "BmpSpec", "CANONICAL_ORDER", "CARD_GROUPS", "CardTotal", "DLE", "ETX", "Fields",
           "IndividualTotals", "MAX_SERIAL_FRAME", "NAK", "SECRET_BMPS", "STX", "SerialFramer", "TAG_NAMES",
           "TcpFramer", "Tlv", "TlvContainer", "UnknownBmp", "UnknownCommand", "ZvtBadFrame", "ZvtFieldError",
           "ZvtFrame", "ZvtFrameError", "ZvtGarbage", "ZvtMessageError", "crc_kermit", "decode_serial",
           "encode_serial"]
