"""How ZVT APDUs cross the line: the serial frame (DLE STX ... DLE ETX CRC) and TCP.

Serial (RS-232, usually 9600 8N2)::

    10 02   APDU, every 10 byte sent twice   10 03   CRC-lo CRC-hi
    DLE STX                                  DLE ETX

    CRC-16/KERMIT (reflected poly 0x1021 = 0x8408, init 0, no final XOR) over the
    *unstuffed* APDU followed by the ETX byte 03, sent low byte first, not stuffed.
    80 00 00  ->  10 02 80 00 00 10 03 F5 1F

The receiver answers one byte: ACK 06 (frame taken) or NAK 15 (send it again; the sender
repeats a NAKed frame up to twice more). Outside a frame, 06 and 15 are those control
bytes; anything else that is not DLE STX is garbage.

TCP (port 20007 by convention): bare APDUs, no DLE, no CRC, no ACK byte; an APDU's own
LEN is the only framing, and one APDU may come in several reads.

Both framers have the shared framer API: ``feed(data)``; ``pop()`` until ``None``;
``pending`` (bytes of the partial frame held); ``discard_partial()`` (the inter-byte
timeout: drops the partial frame, returns its bytes). Items: :class:`ZvtFrame` (an APDU,
CRC checked), an ``int`` control byte (ACK / NAK, serial only), :class:`ZvtGarbage`,
:class:`ZvtBadFrame` (serial: wrong CRC or a DLE followed by a byte other than DLE or
ETX; TCP: a LEN above the cap). The caller drains ``pop()`` after each ``feed()``; then
the buffer holds at most one partial frame, capped at :data:`MAX_APDU` bytes of APDU
(serial: twice that on the wire, every byte a stuffed DLE). A serial frame that grows past
the cap is garbage at once; a TCP APDU whose LEN is above the cap is reported and its
bytes are skipped as they come, never buffered.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

from construct import Checksum, ChecksumError, Const, Construct, ConstructError, Int16ul, Struct, Terminated, stream_read, stream_write, this

from firmware_protocol.zvt.apdu import HEADER_LONG, MAX_APDU, MAX_DATA, apdu_size
from firmware_protocol.zvt.errors import ZvtFrameError

DLE, STX, ETX, ACK, NAK = 0x10, 0x02, 0x03, 0x06, 0x15
_ETX = bytes([ETX])
MAX_SERIAL_FRAME = 2 + 2 * MAX_APDU + 2 + 2   # DLE STX, every byte stuffed, DLE ETX, CRC
_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def crc_kermit(data: bytes) -> int:
    """CRC-16/KERMIT of ``data`` (check value: ``crc_kermit(b"123456789") == 0x2189``).

    ``binascii.crc_hqx`` is CRC-16/XMODEM, the same polynomial unreflected. With an initial
    value of 0 and no final XOR, the reflected CRC of a message is the bit-reversed XMODEM
    CRC of the message with each byte bit-reversed: C speed, no table of our own.
    """
    x = binascii.crc_hqx(data.translate(_REVERSED), 0)
    return int(f"{x:016b}"[::-1], 2)


def stuff(apdu: bytes) -> bytes:
    """Double every DLE."""
    return apdu.replace(b"\x10", b"\x10\x10")


class _Stuffed(Construct):
    """The APDU between DLE STX and DLE ETX: parses up to (not including) the first lone
    DLE, undoing the doubling; builds with every DLE doubled."""

    def _parse(self, stream, context, path) -> bytes:
        out = bytearray()
        while True:
            b = stream_read(stream, 1, path)[0]
            if b != DLE:
                out.append(b)
                continue
            nxt = stream_read(stream, 1, path)[0]
            if nxt == DLE:
                out.append(DLE)
                continue
            stream.seek(-2, 1)
            return bytes(out)

    def _build(self, obj, stream, context, path) -> bytes:
        raw = stuff(obj)
        stream_write(stream, raw, len(raw), path)
        return obj


# The serial frame, declaratively (the reference the framer is tested against).
SerialFrame = Struct(
    "stx" / Const(bytes([DLE, STX])),
    "apdu" / _Stuffed(),
    "etx" / Const(bytes([DLE, ETX])),
    "crc" / Checksum(Int16ul, crc_kermit, this.apdu + _ETX),
    Terminated,
)


def encode_serial(apdu: bytes) -> bytes:
    """Frame one APDU for the serial line. Raises ZvtFrameError above the cap."""
    if len(apdu) > MAX_APDU:
        raise ZvtFrameError(f"APDU of {len(apdu)} bytes exceeds the {MAX_APDU}-byte cap")
    return SerialFrame.build({"apdu": bytes(apdu)})


def decode_serial(raw: bytes) -> bytes:
    """The APDU of exactly one whole serial frame (CRC checked). Raises ZvtFrameError."""
    if len(raw) > MAX_SERIAL_FRAME:
        raise ZvtFrameError("serial frame exceeds the cap")
    try:
        return SerialFrame.parse(bytes(raw)).apdu
    except ChecksumError:
        raise ZvtFrameError("CRC mismatch") from None
    except ConstructError as exc:
        raise ZvtFrameError(f"not a ZVT serial frame ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True)
class ZvtFrame:
    """One APDU off the line. ``raw`` is what the wire carried (serial: the whole frame)."""

    apdu: bytes
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ZvtBadFrame:
    """A frame we refuse: on serial the link answers NAK."""

    reason: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ZvtGarbage:
    """Bytes that are no frame (between frames, or a frame cut off by a new DLE STX)."""

    data: bytes


_HUNT = re.compile(rb"[\x10\x06\x15]")


class SerialFramer:
    """Splits the serial byte stream into frames, ACK / NAK bytes and garbage (see the module)."""

    __slots__ = ("_buf", "_scan", "_apdu")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0            # how far into _buf the current frame has been unstuffed
        self._apdu = bytearray()  # the current frame's APDU so far

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def discard_partial(self) -> bytes:
        """Drop the partial frame (the inter-byte timeout T1); returns its bytes."""
        dropped = bytes(self._buf)
        self._buf.clear()
        self._restart()
        return dropped

    def _restart(self) -> None:
        self._scan = 0
        self._apdu = bytearray()

    def _take(self, n: int) -> bytes:
        raw = bytes(self._buf[:n])
        del self._buf[:n]
        self._restart()
        return raw

    def pop(self):
        """The next :class:`ZvtFrame`, control byte, :class:`ZvtGarbage` or
        :class:`ZvtBadFrame`; ``None`` when more bytes are needed."""
        buf = self._buf
        if not buf:
            return None
        first = buf[0]
        if first in (ACK, NAK):
            del buf[:1]
            return first
        if first != DLE:
            m = _HUNT.search(buf, 1)
            return ZvtGarbage(self._take(m.start() if m else len(buf)))
        if len(buf) < 2:
            return None
        if buf[1] != STX:
            return ZvtGarbage(self._take(1))
        i = self._scan or 2
        apdu = self._apdu
        while True:
            j = buf.find(DLE, i)
            if j < 0:
                apdu += buf[i:]
                i = len(buf)
                break
            apdu += buf[i:j]
            i = j
            if len(apdu) > MAX_APDU:
                break
            if j + 1 >= len(buf):
                break
            nxt = buf[j + 1]
            if nxt == DLE:
                apdu.append(DLE)
                i = j + 2
                continue
            if nxt == ETX:
                if len(buf) < j + 4:
                    break
                crc = buf[j + 2] | (buf[j + 3] << 8)
                body = bytes(apdu)
                raw = self._take(j + 4)
                if crc != crc_kermit(body + _ETX):
                    return ZvtBadFrame("CRC mismatch", raw)
                return ZvtFrame(body, raw)
            if nxt == STX:
                # A new frame starts: what came before was cut off (or a false start in noise).
                return ZvtGarbage(self._take(j))
            return ZvtBadFrame(f"DLE followed by {nxt:02X} inside a frame", self._take(j + 2))
        if len(apdu) > MAX_APDU:
            return ZvtGarbage(self._take(i))
        self._scan = i
        return None


class TcpFramer:
    """Splits a TCP byte stream into APDUs by their LEN (see the module). A LEN above the
    cap gives one :class:`ZvtBadFrame` (its header) and the APDU's bytes are then skipped
    as they arrive; a link may rather close the connection, the stream being suspect."""

    __slots__ = ("_buf", "_skip")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def skipping(self) -> int:
        """Bytes of an oversize APDU still to be skipped."""
        return self._skip

    def feed(self, data: bytes) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self._buf += data

    def discard_partial(self) -> bytes:
        """Drop a partial APDU (and stop skipping); returns the bytes held."""
        dropped = bytes(self._buf)
        self._buf.clear()
        self._skip = 0
        return dropped

    def pop(self):
        """The next :class:`ZvtFrame` or :class:`ZvtBadFrame`; ``None`` when more bytes are needed."""
        buf = self._buf
        size = apdu_size(buf)
        if size is None:
            return None
        if size > MAX_APDU:
            header = bytes(buf[:HEADER_LONG])
            del buf[:HEADER_LONG]
            rest = size - HEADER_LONG
            n = min(rest, len(buf))
            del buf[:n]
            self._skip = rest - n
            return ZvtBadFrame(f"APDU data of {rest} bytes exceeds the {MAX_DATA}-byte cap", header)
        if len(buf) < size:
            return None
        raw = bytes(buf[:size])
        del buf[:size]
        return ZvtFrame(raw, raw)


__all__ = [
    "ACK", "DLE", "ETX", "MAX_SERIAL_FRAME", "NAK", "STX", "SerialFrame", "SerialFramer", "TcpFramer", "ZvtBadFrame",
    "ZvtFrame", "ZvtGarbage", "crc_kermit", "decode_serial", "encode_serial", "stuff",
]
