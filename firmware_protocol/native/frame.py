"""The link frame: how one message crosses a serial line, a pty or a TCP stream.

Byte layout (all integers big-endian)::

    offset  size  field
    0       1     SOF           0xA5, start of frame
    1       1     version       link framing version, LINK_VERSION (1)
    2       1     kind          0x01 DATA, 0x02 ACK, 0x03 NAK
    3       1     seq           0..255, sender's sequence number (ACK/NAK: the seq answered)
    4       2     length        payload length n, 0..MAX_PAYLOAD (4096)
    6       2     length_check  length XOR 0xFFFF (lets the framer reject a false start at once)
    8       n     payload       a message (firmware_protocol.native.messages); empty for ACK/NAK
    8+n     2     crc           CRC-16/XMODEM (poly 0x1021, init 0) over bytes 0 .. 8+n-1

Rules:

* The framer hunts for SOF, checks the 8-byte header (known version and kind,
  ``length <= MAX_PAYLOAD``, ``length ^ length_check == 0xFFFF``) before it waits
  for the body, so a corrupt length never makes it wait for or allocate more than
  ``MAX_FRAME`` bytes. A header that fails is garbage: skip one byte, hunt again.
* A frame whose header is good but whose CRC is wrong is reported as a
  :class:`BadFrame` (the link answers NAK) and the framer resumes one byte after
  its SOF, so a false start inside garbage cannot swallow a real frame.
* ``Frame`` below is the reference schema (interpreted construct, RawCopy +
  Checksum). ``encode_frame`` / :func:`decode_frame` / :class:`Framer` use
  ``_HEADER``, a ``struct`` of the fixed-size ``FrameHeader`` (construct, even
  compiled, spent ~5 us a header in containers and streams: most of a frame's
  cost), plus ``binascii.crc_hqx`` on whole, length-checked frames only;
  tests/protocol/test_differential.py proves they accept and reject the same
  bytes and build the same bytes.
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass

from construct import (
    Bytes,
    Check,
    Checksum,
    Const,
    ConstructError,
    Enum,
    Int8ub,
    Int16ub,
    RawCopy,
    Rebuild,
    Struct,
    Terminated,
    len_,
    this,
)

from firmware_protocol.errors import FrameError

SOF = 0xA5
_SOF_BYTE = bytes([SOF])
LINK_VERSION = 1
MAX_PAYLOAD = 4096
HEADER_SIZE = 8
CRC_SIZE = 2
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE


class FrameKind(enum.IntEnum):
    DATA = 0x01
    ACK = 0x02
    NAK = 0x03


_KINDS = frozenset(int(k) for k in FrameKind)
_KIND_BY_CODE = {int(k): k for k in FrameKind}


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM of ``data`` (``binascii.crc_hqx`` with initial value 0)."""
    return binascii.crc_hqx(data, 0)


# Fixed-size header. ``length`` is taken from the context key ``payload_length``
# when building, so the header never disagrees with the payload it precedes.
FrameHeader = Struct(
    "sof" / Const(bytes([SOF])),
    "version" / Int8ub,
    "kind" / Int8ub,
    "seq" / Int8ub,
    "length" / Rebuild(Int16ub, this.payload_length),
    "length_check" / Rebuild(Int16ub, this.length ^ 0xFFFF),
)
# The same eight bytes as FrameHeader, for the hot path: sof, version, kind, seq, length, length_check.
_HEADER = struct.Struct(">BBBBHH")
if _HEADER.size != FrameHeader.sizeof():  # pragma: no cover - guards an edit of one without the other
    raise ImportError("frame: _HEADER and FrameHeader disagree on the header size")

# The reference schema of a whole frame: strict, interpreted, self-checking.
FrameBody = Struct(
    "sof" / Const(bytes([SOF])),
    "version" / Const(LINK_VERSION, Int8ub),
    "kind" / Enum(Int8ub, FrameKind),
    Check(lambda ctx: int(ctx.kind) in _KINDS),
    "seq" / Int8ub,
    "length" / Rebuild(Int16ub, len_(this.payload)),
    "length_check" / Rebuild(Int16ub, this.length ^ 0xFFFF),
    Check(this.length_check == this.length ^ 0xFFFF),
    Check(this.length <= MAX_PAYLOAD),
    "payload" / Bytes(this.length),
)
Frame = Struct(
    "body" / RawCopy(FrameBody),
    "crc" / Checksum(Int16ub, crc16, this.body.data),
    Terminated,
)


@dataclass(frozen=True, slots=True)
class LinkFrame:
    """One decoded frame. ``raw`` is the exact bytes seen on the wire."""

    kind: FrameKind
    seq: int
    payload: bytes
    raw: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.seq <= 255:
            raise FrameError(f"seq {self.seq} out of range 0..255")
        if len(self.payload) > MAX_PAYLOAD:
            raise FrameError(f"payload of {len(self.payload)} bytes exceeds the {MAX_PAYLOAD}-byte cap")


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame with a plausible header but a wrong CRC or an unsupported version."""

    seq: int
    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes skipped while hunting for a start of frame."""

    data: bytes


def encode_frame(kind: FrameKind, seq: int, payload: bytes = b"") -> bytes:
    """Build one frame. Raises :class:`FrameError` on a bad seq or an oversize payload."""
    if not 0 <= seq <= 255:
        raise FrameError(f"seq {seq} out of range 0..255")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte cap")
    if int(kind) not in _KINDS:
        raise FrameError(f"unknown frame kind {kind!r}")
    n = len(payload)
    body = _HEADER.pack(SOF, LINK_VERSION, int(kind), seq, n, n ^ 0xFFFF) + payload
    return body + binascii.crc_hqx(body, 0).to_bytes(2, "big")


def _check_header(buf: bytes | bytearray) -> tuple[int, int, int, int] | None:
    """Return (version, kind, seq, length) if the 8 bytes at the start of ``buf`` are a
    plausible header (the caller has checked the SOF)."""
    _, version, kind, seq, length, length_check = _HEADER.unpack_from(buf)
    if length > MAX_PAYLOAD or (length ^ length_check) != 0xFFFF or kind not in _KINDS:
        return None
    return version, kind, seq, length


def decode_frame(data: bytes) -> LinkFrame:
    """Decode exactly one whole frame. Raises :class:`FrameError` on anything wrong."""
    if len(data) < HEADER_SIZE + CRC_SIZE or data[0] != SOF:
        raise FrameError("not a frame: too short or no start byte")
    head = _check_header(data)
    if head is None:
        raise FrameError("bad frame header (kind, length or length check)")
    version, kind, seq, length = head
    if len(data) != HEADER_SIZE + length + CRC_SIZE:
        raise FrameError(f"frame length {len(data)} does not match header length {length}")
    raw = bytes(data)
    # CRC-16/XMODEM over the body followed by its own big-endian CRC leaves 0.
    if binascii.crc_hqx(raw, 0):
        raise FrameError("CRC mismatch")
    if version != LINK_VERSION:
        raise FrameError(f"unsupported link version {version}")
    return LinkFrame(_KIND_BY_CODE[kind], seq, raw[HEADER_SIZE:-CRC_SIZE], raw)


def decode_frame_reference(data: bytes) -> LinkFrame:
    """Decode with the interpreted reference schema ``Frame``; same contract as :func:`decode_frame`."""
    try:
        c = Frame.parse(data)
    except ConstructError as exc:
        raise FrameError(f"frame rejected: {type(exc).__name__}") from exc
    v = c.body.value
    return LinkFrame(FrameKind(int(v.kind)), v.seq, bytes(v.payload), bytes(data))


class Framer:
    """Turns a byte stream into frames; resynchronises after garbage.

    ``feed(data)`` buffers bytes; ``pop()`` returns the next :class:`LinkFrame`,
    :class:`BadFrame` or :class:`Garbage`, or ``None`` when more bytes are needed.
    The buffer never holds more than one partial frame (at most ``MAX_FRAME``
    bytes) after ``pop()`` has drained it; ``discard_partial()`` drops a partial
    frame that stalled (the link calls it on its inter-byte timeout).
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet returned as a frame or garbage."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def discard_partial(self) -> bytes:
        """A partial frame stalled (the inter-byte timeout): drop it and return what was dropped.

        The stalled start may be a false one, an 0xA5 in line noise whose bytes happened
        to look like a header, with a whole real frame behind it. So only the bytes up to
        the next SOF that starts a complete frame (by its header's length) are dropped; the
        rest stays for :meth:`pop`. With no such SOF, everything buffered is dropped.
        """
        buf = self._buf
        pos = buf.find(SOF, 1)
        while pos >= 0:
            if len(buf) - pos >= HEADER_SIZE:
                head = _check_header(bytes(buf[pos:pos + HEADER_SIZE]))
                if head is not None and len(buf) - pos >= HEADER_SIZE + head[3] + CRC_SIZE:
                    break
            pos = buf.find(SOF, pos + 1)
        cut = len(buf) if pos < 0 else pos
        dropped = bytes(buf[:cut])
        del buf[:cut]
        return dropped

    def clear(self) -> bytes:
        """Drop and return everything buffered (the port was reopened)."""
        dropped = bytes(self._buf)
        self._buf.clear()
        return dropped

    def pop(self) -> LinkFrame | BadFrame | Garbage | None:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != SOF:
            # Everything before the next SOF (or all of it) is garbage.
            start = buf.find(SOF)
            cut = len(buf) if start < 0 else start
            junk = bytes(buf[:cut])
            del buf[:cut]
            return Garbage(junk)
        if len(buf) < HEADER_SIZE:
            return None
        head = _check_header(buf)
        if head is None:
            del buf[:1]
            return Garbage(_SOF_BYTE)
        version, kind, seq, length = head
        total = HEADER_SIZE + length + CRC_SIZE
        if len(buf) < total:
            return None
        raw = bytes(buf[:total])
        # CRC-16/XMODEM over the body followed by its own big-endian CRC leaves 0.
        if binascii.crc_hqx(raw, 0):
            # Resume one byte after this SOF: the real frame may start inside it.
            del buf[:1]
            return BadFrame(seq, "CRC mismatch", raw)
        del buf[:total]
        if version != LINK_VERSION:
            return BadFrame(seq, f"unsupported link version {version}", raw)
        return LinkFrame(_KIND_BY_CODE[kind], seq, raw[HEADER_SIZE:-CRC_SIZE], raw)
