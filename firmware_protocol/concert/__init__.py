"""The Ingenico Concert ECR protocol ("protocole E", Telium terminals): frames and messages.

A Concert exchange is half duplex. Whoever has something to say sends ENQ, waits
for ACK, sends one frame, waits for ACK (NAK: send it again), then sends EOT.
The frame is ``STX  fixed-width ASCII fields  ETX  LRC`` where LRC is the XOR of
every byte after STX up to and including ETX. Byte layouts (offsets inside the
body, i.e. after STX)::

    request, ECR -> terminal (34 bytes of body, 37 on the wire)
      0  2  pos_number     "01".."99", the cash register's number
      2  8  amount         minor units, zero padded ("00001250" = 12.50)
     10  1  answer_flag    "0" short answer, "1" long answer (with the 55-byte report)
     11  1  mode           payment means: "1" card, "C" cheque, ... ("0" other)
     12  1  txn_type       "0" debit (purchase), "1" credit (refund), "2" cancel, "4" pre-auth
     13  3  currency       ISO 4217 numeric ("156" CNY, "978" EUR)
     16 10  private        free data, space padded (posterm: the order id)
     26  4  delay          "A010" answer at the end of the transaction, "A011" at once
     30  4  authorization  "B010" terminal decides, "B011" force on-line authorisation

    answer, terminal -> ECR (long: 80 bytes of body, 83 on the wire; short: 25, 28)
      0  2  pos_number     echoed
      2  1  status         "0" accepted, "7" refused, "9" not processed
      3  8  amount         minor units
     11  1  mode           echoed payment means
     12 55  report         long answer only: card / payment-code data, space padded
      .  3  currency       ISO 4217 numeric
      . 10  private        the terminal's transaction reference (posterm: the order id)

The schemas are declarative ``construct`` structs over fixed-width ASCII fields;
the typed messages below validate on construction. Only construct is needed.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from functools import reduce
from operator import xor

from construct import (
    Adapter,
    Bytes,
    Checksum,
    ChecksumError,
    Const,
    ConstructError,
    Int8ub,
    RawCopy,
    Struct,
    Terminated,
)

from firmware_protocol import currency as cur
from firmware_protocol.errors import FieldError, FrameError

STX, ETX, EOT, ENQ, ACK, NAK = 0x02, 0x03, 0x04, 0x05, 0x06, 0x15
CONTROL_NAMES = {STX: "STX", ETX: "ETX", EOT: "EOT", ENQ: "ENQ", ACK: "ACK", NAK: "NAK"}
REQUEST_BODY = 34
LONG_ANSWER_BODY = 80
SHORT_ANSWER_BODY = 25
REPORT_WIDTH = 55
PRIVATE_WIDTH = 10
MAX_FRAME = 512          # no Concert frame is longer; a receiver drops a longer run at once
MAX_AMOUNT = 99_999_999  # eight digits of minor units


class ConcertFrameError(FrameError):
    """A Concert frame that cannot be read (bad LRC, wrong length, bad field)."""


class BadLrc(ConcertFrameError):
    """The LRC byte does not match the frame."""


def lrc(data: bytes) -> int:
    """XOR of ``data`` (pass the bytes after STX up to and including ETX)."""
    return reduce(xor, data, 0)


class TxnType(str, enum.Enum):
    DEBIT = "0"      # purchase
    CREDIT = "1"     # refund to the customer
    CANCEL = "2"     # cancel (void) a previous transaction; pyTeliumManager calls this "refund"
    PREAUTH = "4"    # pre-authorisation (not offered by posterm's host)


class Status(str, enum.Enum):
    ACCEPTED = "0"
    REFUSED = "7"
    NOT_PROCESSED = "9"


class AnswerFlag(str, enum.Enum):
    SHORT = "0"
    LONG = "1"


DELAY_AT_END = "A010"
DELAY_AT_ONCE = "A011"
AUTH_DEFAULT = "B010"
AUTH_FORCED = "B011"
MODE_CARD = "1"


# ------------------------------------------------------------------ field codecs


class _Digits(Adapter):
    """A zero-padded unsigned decimal of fixed width."""

    def __init__(self, width: int) -> None:
        super().__init__(Bytes(width))
        self.width = width

    def _decode(self, obj: bytes, context, path) -> int:
        if not obj.isdigit():
            raise ConcertFrameError(f"{path}: expected {self.width} digits, got {obj!r}")
        return int(obj)

    def _encode(self, obj: int, context, path) -> bytes:
        if type(obj) is not int or not 0 <= obj < 10**self.width:
            raise ConcertFrameError(f"{path}: {obj!r} does not fit {self.width} digits")
        return b"%0*d" % (self.width, obj)


class _Text(Adapter):
    """Printable ASCII of fixed width, right-padded with spaces (trailing spaces stripped)."""

    def __init__(self, width: int) -> None:
        super().__init__(Bytes(width))
        self.width = width

    def _decode(self, obj: bytes, context, path) -> str:
        if any(b < 0x20 or b > 0x7E for b in obj):
            raise ConcertFrameError(f"{path}: non-printable byte in {obj!r}")
        return obj.decode("ascii").rstrip(" ")

    def _encode(self, obj: str, context, path) -> bytes:
        raw = obj.encode("ascii", "strict") if obj.isascii() else b"\x00"
        if len(raw) > self.width or any(b < 0x20 or b > 0x7E for b in raw):
            raise ConcertFrameError(f"{path}: {obj!r} is not printable ASCII of at most {self.width} bytes")
        return raw.ljust(self.width, b" ")


RequestBody = Struct(
    "pos_number" / _Digits(2),
    "amount" / _Digits(8),
    "answer_flag" / _Text(1),
    "mode" / _Text(1),
    "txn_type" / _Text(1),
    "currency" / _Digits(3),
    "private" / _Text(PRIVATE_WIDTH),
    "delay" / _Text(4),
    "authorization" / _Text(4),
)

LongAnswerBody = Struct(
    "pos_number" / _Digits(2),
    "status" / _Text(1),
    "amount" / _Digits(8),
    "mode" / _Text(1),
    "report" / _Text(REPORT_WIDTH),
    "currency" / _Digits(3),
    "private" / _Text(PRIVATE_WIDTH),
)

ShortAnswerBody = Struct(
    "pos_number" / _Digits(2),
    "status" / _Text(1),
    "amount" / _Digits(8),
    "mode" / _Text(1),
    "currency" / _Digits(3),
    "private" / _Text(PRIVATE_WIDTH),
)


def _framed(body):
    """STX, the body, ETX, LRC over body + ETX."""
    return Struct(
        "stx" / Const(bytes([STX])),
        "body" / RawCopy(body),
        "etx" / Const(bytes([ETX])),
        "lrc" / Checksum(Int8ub, lambda data: lrc(data), lambda ctx: ctx.body.data + bytes([ETX])),
        Terminated,
    )


RequestFrame = _framed(RequestBody)
LongAnswerFrame = _framed(LongAnswerBody)
ShortAnswerFrame = _framed(ShortAnswerBody)


def frame(body: bytes) -> bytes:
    """Wrap ``body`` as STX body ETX LRC."""
    tail = body + bytes([ETX])
    return bytes([STX]) + tail + bytes([lrc(tail)])


# ------------------------------------------------------------------ typed messages


def _check_common(msg: "ConcertRequest | ConcertAnswer") -> None:
    """The fields a request and an answer share."""
    if type(msg.amount_minor) is not int or not 0 <= msg.amount_minor <= MAX_AMOUNT:
        raise FieldError(f"amount must be an int of minor units, 0..{MAX_AMOUNT}: {msg.amount_minor!r}")
    if type(msg.pos_number) is not int or not 0 <= msg.pos_number <= 99:
        raise FieldError(f"POS number must be 0..99: {msg.pos_number!r}")
    n = msg.currency_numeric
    if type(n) is not int or not 0 < n < 1000:
        raise FieldError(f"currency must be an ISO 4217 numeric code (1..999), not {n!r}")
    p = msg.private
    if len(p) > PRIVATE_WIDTH or not p.isascii() or not p.isprintable():
        raise FieldError(f"private data is at most {PRIVATE_WIDTH} printable ASCII characters: {p!r}")
    if len(msg.mode) != 1 or not msg.mode.isascii() or not msg.mode.isprintable():
        raise FieldError(f"mode must be one printable ASCII character: {msg.mode!r}")


class _Currency:
    __slots__ = ()
    currency_numeric: int

    @property
    def currency(self) -> str | None:
        """The alphabetic code, or None for a numeric code posterm does not know."""
        try:
            return cur.from_numeric(self.currency_numeric)
        except KeyError:
            return None


@dataclass(frozen=True, slots=True)
class ConcertRequest(_Currency):
    """ECR -> terminal: a payment, refund or cancel request."""

    amount_minor: int
    currency_numeric: int
    pos_number: int = 1
    txn_type: TxnType = TxnType.DEBIT
    answer_flag: AnswerFlag = AnswerFlag.LONG
    mode: str = MODE_CARD
    private: str = ""
    delay: str = DELAY_AT_END
    authorization: str = AUTH_DEFAULT

    def __post_init__(self) -> None:
        _check_common(self)
        object.__setattr__(self, "txn_type", TxnType(self.txn_type))
        object.__setattr__(self, "answer_flag", AnswerFlag(self.answer_flag))
        for name, width in (("delay", 4), ("authorization", 4)):
            value = getattr(self, name)
            if len(value) != width or not value.isascii() or not value.isprintable():
                raise FieldError(f"{name} must be {width} printable ASCII character(s): {value!r}")

    def encode(self) -> bytes:
        return RequestFrame.build({"body": {"value": {
            "pos_number": self.pos_number, "amount": self.amount_minor, "answer_flag": self.answer_flag.value,
            "mode": self.mode, "txn_type": self.txn_type.value, "currency": self.currency_numeric,
            "private": self.private, "delay": self.delay, "authorization": self.authorization}}})

    @classmethod
    def decode(cls, data: bytes) -> "ConcertRequest":
        """Parse one whole request frame. Raises BadLrc / ConcertFrameError / FieldError."""
        v = _parse(RequestFrame, data, REQUEST_BODY)
        try:
            return cls(amount_minor=v.amount, currency_numeric=v.currency, pos_number=v.pos_number,
                       txn_type=TxnType(v.txn_type), answer_flag=AnswerFlag(v.answer_flag), mode=v.mode,
                       private=v.private, delay=v.delay, authorization=v.authorization)
        except ValueError as exc:
            raise ConcertFrameError(f"request field out of range: {exc}") from None


@dataclass(frozen=True, slots=True)
class ConcertAnswer(_Currency):
    """Terminal -> ECR: the outcome. ``report`` is None in a short answer."""

    status: Status
    amount_minor: int
    currency_numeric: int
    pos_number: int = 1
    mode: str = MODE_CARD
    report: str | None = ""
    private: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        _check_common(self)
        if self.report is not None and (len(self.report) > REPORT_WIDTH or not self.report.isascii()
                                        or not self.report.isprintable()):
            raise FieldError(f"report is at most {REPORT_WIDTH} printable ASCII characters")

    @property
    def long(self) -> bool:
        return self.report is not None

    def encode(self) -> bytes:
        fields = {"pos_number": self.pos_number, "status": self.status.value, "amount": self.amount_minor,
                  "mode": self.mode, "currency": self.currency_numeric, "private": self.private}
        if self.report is None:
            return ShortAnswerFrame.build({"body": {"value": fields}})
        return LongAnswerFrame.build({"body": {"value": {**fields, "report": self.report}}})

    @classmethod
    def decode(cls, data: bytes) -> "ConcertAnswer":
        """Parse one whole answer frame, long or short (told apart by length)."""
        if len(data) == LONG_ANSWER_BODY + 3:
            v = _parse(LongAnswerFrame, data, LONG_ANSWER_BODY)
            report: str | None = v.report
        elif len(data) == SHORT_ANSWER_BODY + 3:
            v = _parse(ShortAnswerFrame, data, SHORT_ANSWER_BODY)
            report = None
        else:
            _check_lrc(data)
            raise ConcertFrameError(f"an answer frame is {SHORT_ANSWER_BODY + 3} or {LONG_ANSWER_BODY + 3}"
                                    f" bytes, not {len(data)}")
        try:
            return cls(status=Status(v.status), amount_minor=v.amount, currency_numeric=v.currency,
                       pos_number=v.pos_number, mode=v.mode, report=report, private=v.private)
        except ValueError as exc:
            raise ConcertFrameError(f"answer field out of range: {exc}") from None


def _check_lrc(data: bytes) -> None:
    if len(data) < 3 or data[0] != STX or data[-2] != ETX:
        raise ConcertFrameError("not a Concert frame (STX ... ETX LRC)")
    if lrc(data[1:-1]) != data[-1]:
        raise BadLrc(f"LRC {data[-1]:02X} does not match the frame (computed {lrc(data[1:-1]):02X})")


def _parse(schema, data: bytes, body_len: int):
    _check_lrc(data)
    if len(data) != body_len + 3:
        raise ConcertFrameError(f"frame body is {len(data) - 3} bytes; this message has {body_len}")
    try:
        return schema.parse(data).body.value
    except ChecksumError:  # pragma: no cover - _check_lrc caught it
        raise BadLrc("LRC does not match the frame") from None
    except ConcertFrameError:
        raise
    except (ConstructError, ValueError, UnicodeError) as exc:
        raise ConcertFrameError(f"malformed Concert frame: {exc}") from None


# ------------------------------------------------------------------ stream framing


class ConcertFramer:
    """Splits a byte stream into control bytes and STX...ETX LRC frames.

    The framers' one API (as :class:`firmware_protocol.native.frame.Framer`): ``feed(data)``
    buffers bytes; ``pop()`` returns the next item, or ``None`` when more bytes are needed:
    an int (a control byte: ENQ, ACK, NAK, EOT), ``bytes`` (a whole frame, LRC not yet
    checked) or :class:`ConcertGarbage`. ``pending`` counts the bytes of a partial frame;
    ``discard_partial()`` drops it (the inter-character timeout). A frame longer than
    :data:`MAX_FRAME` is dropped as garbage at once; the buffer never holds more than that.
    The caller drains ``pop()`` after each ``feed()``: items wait only for that.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self._items: deque = deque()

    @property
    def pending(self) -> int:
        """Bytes of the partial frame held (not yet returned by :meth:`pop`)."""
        return len(self._buf)

    def pop(self):
        """The next control byte, frame or garbage, or ``None``."""
        return self._items.popleft() if self._items else None

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    def discard_partial(self) -> bytes:
        """Drop a partial frame (inter-character timeout); returns what was dropped."""
        dropped = bytes(self._buf)
        self._buf.clear()
        self._in_frame = False
        return dropped

    def feed(self, data: bytes) -> None:
        out = self._items
        garbage = bytearray()
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if not self._in_frame:
                if b == STX:
                    self._in_frame = True
                    self._buf = bytearray([STX])
                elif b in (ENQ, ACK, NAK, EOT):
                    if garbage:
                        out.append(ConcertGarbage(bytes(garbage)))
                        garbage.clear()
                    out.append(b)
                else:
                    garbage.append(b)
                i += 1
                continue
            # inside a frame: copy up to ETX (then the LRC byte follows)
            if len(self._buf) >= 2 and self._buf[-1] == ETX:
                self._buf.append(b)
                i += 1
                if garbage:
                    out.append(ConcertGarbage(bytes(garbage)))
                    garbage.clear()
                out.append(bytes(self._buf))
                self._buf = bytearray()
                self._in_frame = False
                continue
            j = data.find(bytes([ETX]), i)
            end = n if j < 0 else j + 1
            self._buf += data[i:end]
            i = end
            if len(self._buf) > MAX_FRAME:
                garbage += self._buf
                self._buf = bytearray()
                self._in_frame = False
        if garbage:
            out.append(ConcertGarbage(bytes(garbage)))


@dataclass(frozen=True, slots=True)
class ConcertGarbage:
    data: bytes
