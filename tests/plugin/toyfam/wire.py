"""The toy protocol's wire contract: one frame per line.

    <json>|<crc>\\n

``<json>`` is one compact JSON object (ASCII, keys sorted, no spaces), ``<crc>`` four
upper-case hex digits of CRC-16/XMODEM over the JSON bytes (``binascii.crc_hqx(json, 0)``).
A line is at most :data:`MAX_FRAME` bytes, newline included; a longer one is garbage up to
the next newline (the framer never buffers more).

Every frame has ``k`` (its kind), ``s`` (the sender's session: a random 0..65535 chosen when
the link is made) and ``n`` (a sequence number 0..255 per direction). A data frame is
answered by ``{"k":"ack","n":N,"s":S}`` echoing its ``n`` and ``s``; acks are not answered.
There is no NAK: a frame that fails is dropped and the sender's timer sends it again. A
frame with the ``s`` and ``n`` of the last one taken is a retransmission: acked again,
delivered once. Kinds (closed: any other is an error):

=========  ==================  ===========================================================
kind       direction           fields
=========  ==================  ===========================================================
hello      ECR -> terminal     (none)
pay        ECR -> terminal     id (order id), amount (minor units), cur (ISO 4217), code?
                               (the customer's payment code: a secret)
info       terminal -> ECR     tid, mid, fw
result     terminal -> ECR     id, outcome (approved declined cancelled), amount, cur,
                               reason (an int), last4?
ack        either              (n and s only)
=========  ==================  ===========================================================
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

MAX_FRAME = 1024
SEPARATOR = b"|"
END = b"\n"
ID_RE = re.compile(r"[A-Za-z0-9_\-.:]{1,64}")
CODE_RE = re.compile(r"[0-9]{18}")
CUR_RE = re.compile(r"[A-Z]{3}")
FW_RE = re.compile(r"[ -~]{1,32}")
LAST4_RE = re.compile(r"[0-9]{4}")
MAX_AMOUNT = 10**15
OUTCOMES = ("approved", "declined", "cancelled")


class ToyFrameError(ValueError):
    """A line that is no toy frame (checksum, JSON, kind, field). Never quotes a field's value."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that are no frame: an overlong line, dropped up to its newline."""

    data: bytes


def _text(value: Any, pattern: re.Pattern, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ToyFrameError(f"bad {what}")
    return value


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ToyFrameError(f"bad {what}")
    return value


@dataclass(frozen=True, slots=True)
class Hello:
    KIND: ClassVar[str] = "hello"

    def fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, f: dict[str, Any]) -> "Hello":
        return cls()


@dataclass(frozen=True, slots=True)
class Info:
    KIND: ClassVar[str] = "info"
    terminal_id: str
    merchant_id: str
    firmware_version: str

    def __post_init__(self) -> None:
        _text(self.terminal_id, ID_RE, "tid")
        _text(self.merchant_id, ID_RE, "mid")
        _text(self.firmware_version, FW_RE, "fw")

    def fields(self) -> dict[str, Any]:
        return {"tid": self.terminal_id, "mid": self.merchant_id, "fw": self.firmware_version}

    @classmethod
    def parse(cls, f: dict[str, Any]) -> "Info":
        return cls(f.get("tid"), f.get("mid"), f.get("fw"))


@dataclass(frozen=True, slots=True)
class Pay:
    KIND: ClassVar[str] = "pay"
    order_id: str
    amount_minor: int
    currency: str
    payment_code: str | None = field(default=None, repr=False)   # a secret: never in a repr or log

    def __post_init__(self) -> None:
        _text(self.order_id, ID_RE, "id")
        _int(self.amount_minor, 1, MAX_AMOUNT, "amount")
        _text(self.currency, CUR_RE, "cur")
        if self.payment_code is not None:
            _text(self.payment_code, CODE_RE, "code")

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.order_id, "amount": self.amount_minor, "cur": self.currency}
        if self.payment_code is not None:
            out["code"] = self.payment_code
        return out

    @classmethod
    def parse(cls, f: dict[str, Any]) -> "Pay":
        return cls(f.get("id"), f.get("amount"), f.get("cur"), f.get("code"))


@dataclass(frozen=True, slots=True)
class Result:
    KIND: ClassVar[str] = "result"
    order_id: str
    outcome: str
    amount_minor: int
    currency: str
    reason: int = 0
    code_last4: str | None = None

    def __post_init__(self) -> None:
        _text(self.order_id, ID_RE, "id")
        if self.outcome not in OUTCOMES:
            raise ToyFrameError("bad outcome")
        _int(self.amount_minor, 0, MAX_AMOUNT, "amount")
        _text(self.currency, CUR_RE, "cur")
        _int(self.reason, 0, 65535, "reason")
        if self.code_last4 is not None:
            _text(self.code_last4, LAST4_RE, "last4")

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.order_id, "outcome": self.outcome, "amount": self.amount_minor,
                               "cur": self.currency, "reason": self.reason}
        if self.code_last4 is not None:
            out["last4"] = self.code_last4
        return out

    @classmethod
    def parse(cls, f: dict[str, Any]) -> "Result":
        return cls(f.get("id"), f.get("outcome"), f.get("amount"), f.get("cur"), f.get("reason", 0), f.get("last4"))


@dataclass(frozen=True, slots=True)
class Ack:
    KIND: ClassVar[str] = "ack"

    def fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, f: dict[str, Any]) -> "Ack":
        return cls()


MESSAGES: dict[str, type] = {c.KIND: c for c in (Hello, Info, Pay, Result, Ack)}
FROM_ECR = (Hello, Pay)
FROM_TERMINAL = (Info, Result)
WIRE_KEYS = {"hello": (), "ack": (), "info": ("tid", "mid", "fw"), "pay": ("id", "amount", "cur", "code"),
             "result": ("id", "outcome", "amount", "cur", "reason", "last4")}
SECRET_FIELDS = {"pay": ("code",)}     # kind -> JSON keys that hold a secret


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: the message, the sender's session ``s`` and sequence number ``n``."""

    message: Any
    session: int
    seq: int
    raw: bytes

    @property
    def kind(self) -> str:
        return self.message.KIND


def encode(message: Any, session: int, seq: int) -> bytes:
    """The frame for ``message``. Raises ToyFrameError if it would be longer than MAX_FRAME."""
    body = json.dumps({"k": message.KIND, "s": session, "n": seq, **message.fields()},
                      separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii")
    raw = body + SEPARATOR + b"%04X" % binascii.crc_hqx(body, 0) + END
    if len(raw) > MAX_FRAME:
        raise ToyFrameError(f"a frame is at most {MAX_FRAME} bytes")
    return raw


def decode(raw: bytes) -> Frame:
    """One line (newline included) as a frame. Raises ToyFrameError, never anything else."""
    if len(raw) > MAX_FRAME or not raw.endswith(END):
        raise ToyFrameError("not one whole line")
    body, sep, crc = raw[:-1].rpartition(SEPARATOR)
    if not sep or not re.fullmatch(rb"[0-9A-F]{4}", crc):
        raise ToyFrameError("no checksum")
    if int(crc, 16) != binascii.crc_hqx(body, 0):
        raise ToyFrameError("checksum mismatch")
    try:
        obj = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ToyFrameError("not JSON") from None
    if not isinstance(obj, dict):
        raise ToyFrameError("not a JSON object")
    cls = MESSAGES.get(obj.get("k")) if isinstance(obj.get("k"), str) else None
    if cls is None:
        raise ToyFrameError("unknown kind")
    session = _int(obj.get("s"), 0, 65535, "session")
    seq = _int(obj.get("n"), 0, 255, "sequence number")
    if set(obj) - {"k", "s", "n"} - set(WIRE_KEYS[cls.KIND]):
        raise ToyFrameError("unknown field")
    return Frame(cls.parse(obj), session, seq, bytes(raw))


def secret_spans(frame: Frame) -> list[tuple[int, int]]:
    """[start, end) of the secret values inside ``frame.raw`` (the digits of a payment code)."""
    out = []
    for key in SECRET_FIELDS.get(frame.kind, ()):
        value = frame.message.fields().get(key)
        if value is None:
            continue
        needle = json.dumps(key).encode() + b":" + json.dumps(value).encode()
        at = frame.raw.find(needle)
        if at >= 0:
            start = at + len(needle) - len(value) - 1   # the value's characters, quotes left
            out.append((start, start + len(value)))
    return out


class Framer:
    """Splits a byte stream into whole lines (bytes, newline included) and :class:`Garbage`.
    The framer API of posterm.families.interfaces: feed / pop / pending / discard_partial."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False   # inside an overlong line: dropped up to its newline
        self._items: list = []

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            end = self._buf.find(END)
            if end < 0:
                if len(self._buf) > MAX_FRAME or (self._skipping and self._buf):
                    self._items.append(Garbage(bytes(self._buf)))
                    self._buf.clear()
                    self._skipping = True
                return
            line = bytes(self._buf[: end + 1])
            del self._buf[: end + 1]
            if self._skipping or len(line) > MAX_FRAME:
                self._items.append(Garbage(line))
            else:
                self._items.append(line)
            self._skipping = False

    def pop(self) -> bytes | Garbage | None:
        return self._items.pop(0) if self._items else None

    def discard_partial(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out
