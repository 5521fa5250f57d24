"""Message bodies: a type code followed by tag-length-value fields.

Byte layout of a frame payload::

    offset  size  field
    0       2     type     message type code (catalogue in messages.py and host.py)
    2       ...   items    zero or more TLV items, each:
                             1  tag     bit 7 set = optional to understand (skippable)
                             2  length  value length, 0..MAX_PAYLOAD
                             n  value   encoded by the field's codec

Rules:

* Tags 0x00-0x7F are *comprehension required*: a receiver that does not know
  one rejects the message (:class:`UnknownMandatoryField`). Tags 0x80-0xFF are
  *optional to understand*: an older receiver skips them, so a newer peer can
  add such fields without breaking older ones.
* A non-repeated tag may appear once. Items may come in any order; encoders
  emit them in tag order. Absent optional fields are not sent.
* An unknown message type is :class:`UnknownMessageType`, never ``None``.
* Integers are unsigned big-endian of the codec's fixed width; text is UTF-8
  (ASCII where the codec says so), never NUL-terminated.

``Envelope`` is the reference construct schema; :func:`encode` / :func:`decode`
use a bounded loop over the same layout, and tests hold the two to the same
accept/reject decisions.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

from construct import Bytes, ConstructError, GreedyRange, Int8ub, Int16ub, Rebuild, Struct, Terminated, len_, this

from firmware_protocol.errors import (
    FieldError,
    MessageError,
    ProtocolError,
    UnknownMandatoryField,
    UnknownMessageType,
)
from firmware_protocol.native.frame import MAX_PAYLOAD

OPTIONAL_TAG_BIT = 0x80

TlvItem = Struct(
    "tag" / Int8ub,
    "length" / Rebuild(Int16ub, len_(this.value)),
    "value" / Bytes(this.length),
)
Envelope = Struct(
    "type" / Int16ub,
    "items" / GreedyRange(TlvItem),
    Terminated,
)

_ITEM_HEAD = struct.Struct(">BH")
_TYPE = struct.Struct(">H")


# ---------------------------------------------------------------- value codecs


class Codec:
    """Turns one field value into bytes and back; validates both ways."""

    doc: str = ""

    def encode(self, value: Any) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`FieldError` if ``value`` is not valid for this codec."""


class UInt(Codec):
    def __init__(self, width: int, minimum: int = 0, maximum: int | None = None) -> None:
        self.width = width
        self.minimum = minimum
        self.maximum = (1 << (8 * width)) - 1 if maximum is None else maximum
        self.doc = f"u{8 * width}"

    def check(self, name: str, value: Any) -> None:
        if type(value) is not int and not isinstance(value, enum.IntEnum):
            raise FieldError(f"{name} must be an int, not {type(value).__name__}")
        if not self.minimum <= value <= self.maximum:
            raise FieldError(f"{name}={value} out of range {self.minimum}..{self.maximum}")

    def encode(self, value: int) -> bytes:
        return int(value).to_bytes(self.width, "big")

    def decode(self, data: bytes) -> int:
        if len(data) != self.width:
            raise FieldError(f"integer field of {len(data)} bytes, expected {self.width}")
        return int.from_bytes(data, "big")


class EnumCodec(UInt):
    """An IntEnum on the wire. ``strict=False`` keeps unknown codes as plain ints
    (for reason codes a newer peer may add); ``strict=True`` rejects them."""

    def __init__(self, enum_type: type[enum.IntEnum], width: int = 1, strict: bool = True) -> None:
        super().__init__(width)
        self.enum_type = enum_type
        self.strict = strict
        self.doc = f"u{8 * width} {enum_type.__name__}"
        # value -> member: a dict hit is what enum_type(value) returns, without its ~0.5 us call
        self._members = {int(m): m for m in enum_type}
        # Fast paths for the common case; anything else takes the full checks below.
        self._in_range = frozenset(m for m in enum_type if self.minimum <= m <= self.maximum)
        self._by_wire = {int(m).to_bytes(width, "big"): m for m in self._in_range}

    def check(self, name: str, value: Any) -> None:
        if type(value) is self.enum_type and value in self._in_range:
            return
        super().check(name, value)
        if self.strict and not isinstance(value, self.enum_type) and value not in self._members:
            try:
                self.enum_type(value)
            except ValueError:
                raise FieldError(f"{name}={value} is not a valid {self.enum_type.__name__}") from None

    def decode(self, data: bytes) -> Any:
        member = self._by_wire.get(data)
        if member is not None:
            return member
        raw = super().decode(data)
        member = self._members.get(raw)
        if member is not None:
            return member
        try:
            return self.enum_type(raw)
        except ValueError:
            if self.strict:
                raise FieldError(f"{raw} is not a valid {self.enum_type.__name__}") from None
            return raw


class Flag(Codec):
    doc = "u8 0/1"

    def check(self, name: str, value: Any) -> None:
        if type(value) is not bool:
            raise FieldError(f"{name} must be a bool")

    def encode(self, value: bool) -> bytes:
        return b"\x01" if value else b"\x00"

    def decode(self, data: bytes) -> bool:
        if data not in (b"\x00", b"\x01"):
            raise FieldError("flag field must be one byte 0x00 or 0x01")
        return data == b"\x01"


class Text(Codec):
    """UTF-8 (or ASCII) text of bounded length, optionally matching a pattern."""

    def __init__(self, max_len: int, min_len: int = 0, pattern: str | None = None, ascii_only: bool = False) -> None:
        self.max_len = max_len
        self.min_len = min_len
        self.pattern = re.compile(pattern) if pattern else None
        self.encoding = "ascii" if ascii_only else "utf-8"
        self.doc = f"{'ascii' if ascii_only else 'utf8'} {min_len}..{max_len} bytes" + (f" /{pattern}/" if pattern else "")

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise FieldError(f"{name} must be a str")
        if value.isascii():  # one byte per character in both encodings: no need to encode
            n = len(value)
        else:
            try:
                n = len(value.encode(self.encoding))
            except UnicodeEncodeError:
                raise FieldError(f"{name} must be {self.encoding}") from None
        if not self.min_len <= n <= self.max_len:
            raise FieldError(f"{name} must be {self.min_len}..{self.max_len} bytes, got {n}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise FieldError(f"{name} does not match {self.pattern.pattern}")

    def encode(self, value: str) -> bytes:
        return value.encode(self.encoding)

    def decode(self, data: bytes) -> str:
        try:
            return data.decode(self.encoding)
        except UnicodeDecodeError:
            raise FieldError(f"text field is not valid {self.encoding}") from None


class Blob(Codec):
    def __init__(self, min_len: int = 0, max_len: int = MAX_PAYLOAD) -> None:
        self.min_len = min_len
        self.max_len = max_len
        self.doc = f"bytes {min_len}..{max_len}" if min_len != max_len else f"bytes[{min_len}]"

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, bytes):
            raise FieldError(f"{name} must be bytes")
        if not self.min_len <= len(value) <= self.max_len:
            raise FieldError(f"{name} must be {self.min_len}..{self.max_len} bytes, got {len(value)}")

    def encode(self, value: bytes) -> bytes:
        return value

    def decode(self, data: bytes) -> bytes:
        return bytes(data)


class StructCodec(Codec):
    """A fixed construct ``Struct`` mapped to a frozen dataclass (e.g. settlement totals)."""

    def __init__(self, schema: Struct, cls: type) -> None:
        self.schema = schema
        self.cls = cls
        self.doc = f"struct {cls.__name__} ({schema.sizeof()} bytes)"

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, self.cls):
            raise FieldError(f"{name} must be a {self.cls.__name__}")

    def encode(self, value: Any) -> bytes:
        try:
            return self.schema.build({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
        except ConstructError as exc:
            raise FieldError(f"cannot encode {self.cls.__name__}: {type(exc).__name__}") from exc

    def decode(self, data: bytes) -> Any:
        try:
            c = self.schema.parse(data)
        except ConstructError as exc:
            raise FieldError(f"bad {self.cls.__name__}: {type(exc).__name__}") from exc
        kwargs = {f.name: c[f.name] for f in dataclasses.fields(self.cls)}
        for k, v in kwargs.items():
            if isinstance(v, bytes):
                kwargs[k] = v.decode("ascii", "replace")
        return self.cls(**kwargs)


# ------------------------------------------------------------------ messages


def tlv(tag: int, codec: Codec, *, default: Any = dataclasses.MISSING, repeated: bool = False, secret: bool = False) -> Any:
    """Declare a message field carried as TLV ``tag`` encoded by ``codec``.

    ``secret=True`` marks a field that traces and recordings must mask.
    A field with a default is optional; ``repeated=True`` makes a tuple that
    appears once per element on the wire.
    """
    if not 0 <= tag <= 0xFF:
        raise ValueError("tag out of range")
    meta = {"tag": tag, "codec": codec, "repeated": repeated, "secret": secret}
    if repeated and default is dataclasses.MISSING:
        default = ()
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    tag: int
    codec: Codec
    required: bool
    repeated: bool
    secret: bool
    nullable: bool = True   # None allowed (and then not sent): only when the default is None


_REGISTRY: dict[int, type["Message"]] = {}

# ------------------------------------------------------------ per-class fast paths
#
# A generic walk over FIELDS made a Python call per field for each of encode, decode
# and check: most of a message's cost. So each message class gets three functions,
# generated from its FIELDS on first use (as construct's compile() does for a Struct):
# ``check(msg)`` (the field half of __post_init__), ``encode(msg, append)`` and
# ``decode(items, allow_unknown_tags) -> kwargs``. They inline the common case of the
# built-in codecs (exact types only) and call the codec's own method whenever that case
# does not hold, so unusual values and every error take the codec's own path: same
# bytes, same values, same errors. tests/protocol/test_differential.py holds them to a
# plain walk over the codecs' methods. Only the declarations (identifiers, integers,
# encoding names) go into the generated source; wire data never does.

_PLANS: dict[type, tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = {}
_INT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FLAG_BY_WIRE = {b"\x00": False, b"\x01": True}


def _field_code(i: int, spec: _FieldSpec, cls_name: str, env: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Source lines (check, encode, decode) for field ``i``; constants go into ``env``."""
    codec, kind, name, tag = spec.codec, type(spec.codec), spec.name, spec.tag
    label = f"{cls_name}.{name}"
    env.update({f"c{i}": codec.check, f"e{i}": codec.encode, f"d{i}": codec.decode, f"L{i}": label,
                f"LR{i}": f"{label}[]", f"N{i}": name, f"REQ{i}": f"{label} is required",
                f"NUL{i}": f"{label} cannot be None (its default is not None)",
                f"TUP{i}": f"{label} must be a tuple", f"DUP{i}": f"{label} appears twice",
                f"LONG{i}": f"field 0x{tag:02X} too long"})
    # check: a condition that implies the codec's check passes, else the codec decides.
    fast = None
    if kind is UInt or kind is EnumCodec:
        if kind is UInt:
            fast = f"type(v) is int and {codec.minimum} <= v <= {codec.maximum}"
        else:
            env[f"E{i}"], env[f"R{i}"] = codec.enum_type, codec._in_range
            fast = f"type(v) is E{i} and v in R{i}"
    elif kind is Text:
        fast = f"type(v) is str and v.isascii() and {codec.min_len} <= len(v) <= {codec.max_len}"
        if codec.pattern is not None:
            env[f"P{i}"] = codec.pattern.fullmatch
            fast += f" and P{i}(v) is not None"
    elif kind is Flag:
        fast = "type(v) is bool"
    elif kind is Blob:
        fast = f"type(v) is bytes and {codec.min_len} <= len(v) <= {codec.max_len}"
    check = [f"    v = self.{name}", "    if v is None:",
             f"        raise FieldError(REQ{i})" if spec.required
             else "        pass" if spec.nullable else f"        raise FieldError(NUL{i})"]
    if spec.repeated:
        check += ["    elif not isinstance(v, tuple):", f"        raise FieldError(TUP{i})",
                  "    else:", "        for x in v:", f"            c{i}(LR{i}, x)"]
    elif fast is not None:
        check += [f"    elif not ({fast}):", f"        c{i}(L{i}, v)"]
    else:
        check += ["    else:", f"        c{i}(L{i}, v)"]

    # encode: a checked message's values, so lengths are within the codec's bounds.
    encode = [f"    v = msg.{name}", "    if v is not None:"]
    if spec.repeated:
        encode += ["        for x in v:", f"            r = e{i}(x)",
                   "            if len(r) > 0xFFFF:", f"                raise MessageError(LONG{i})",
                   f"            append(HEAD({tag}, len(r)))", "            append(r)"]
    elif kind in (UInt, EnumCodec) and codec.width in _INT_FORMATS:
        env[f"S{i}"] = struct.Struct(">BH" + _INT_FORMATS[codec.width]).pack
        encode += [f"        append(S{i}({tag}, {codec.width}, v))"]
    elif kind is Flag:
        env[f"T{i}"], env[f"F{i}"] = _ITEM_HEAD.pack(tag, 1) + b"\x01", _ITEM_HEAD.pack(tag, 1) + b"\x00"
        encode += [f"        append(T{i} if v else F{i})"]
    elif kind is Text and codec.max_len <= 0xFFFF:
        encode += [f"        r = v.encode({codec.encoding!r})", f"        append(HEAD({tag}, len(r)))",
                   "        append(r)"]
    else:
        encode += [f"        r = e{i}(v)", "        if len(r) > 0xFFFF:", f"            raise MessageError(LONG{i})",
                   f"        append(HEAD({tag}, len(r)))", "        append(r)"]

    # decode: the codec's method whenever the common case does not hold (it raises).
    decode = [f"        if tag == {tag}:"]
    if spec.repeated:
        decode += [f"            values[N{i}] = values.get(N{i}, ()) + (d{i}(raw),)", "            continue"]
        return check, encode, decode
    if kind is Text:
        decode += ["            try:", f"                x = raw.decode({codec.encoding!r})",
                   "            except UnicodeDecodeError:", f"                x = d{i}(raw)"]
    elif kind is UInt:
        decode += [f"            x = from_bytes(raw, 'big') if len(raw) == {codec.width} else d{i}(raw)"]
    elif kind is EnumCodec or kind is Flag:
        env[f"W{i}"] = codec._by_wire if kind is EnumCodec else _FLAG_BY_WIRE
        decode += [f"            x = W{i}.get(raw)", "            if x is None:", f"                x = d{i}(raw)"]
    else:
        decode += [f"            x = d{i}(raw)"]
    decode += [f"            if N{i} in values:", f"                raise FieldError(DUP{i})",
               f"            values[N{i}] = x", "            continue"]
    return check, encode, decode


def _plan(cls: type) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """Generate (check, encode, decode) for ``cls`` from its FIELDS and cache them."""
    env: dict[str, Any] = {"FieldError": FieldError, "MessageError": MessageError,
                           "UnknownMandatoryField": UnknownMandatoryField, "HEAD": _ITEM_HEAD.pack,
                           "from_bytes": int.from_bytes, "OPTIONAL": OPTIONAL_TAG_BIT, "NAME": cls.__name__}
    check, encode, decode = ["def check(self):"], ["def encode(msg, append):"], [
        "def decode(items, allow_unknown_tags):", "    values = {}", "    allowed = None",
        "    for tag, _, raw in items:"]
    for i, spec in enumerate(cls.FIELDS):
        c, e, d = _field_code(i, spec, cls.__name__, env)
        check += c
        encode += e
        decode += d
    decode += ["        if tag & OPTIONAL:", "            continue", "        if allowed is None:",
               "            allowed = frozenset(allow_unknown_tags)", "        if tag in allowed:",
               "            continue", "        raise UnknownMandatoryField(NAME, tag)", "    return values"]
    source = "\n".join(check + ["    return None", ""] + encode + ["    return None", ""] + decode) + "\n"
    exec(compile(source, f"<tlv plan {cls.__name__}>", "exec"), env)
    plan = (env["check"], env["encode"], env["decode"])
    _PLANS[cls] = plan
    return plan


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every wire message: frozen, slotted, validated on construction."""

    TYPE: ClassVar[int] = -1
    FIELDS: ClassVar[tuple[_FieldSpec, ...]] = ()
    BY_TAG: ClassVar[dict[int, _FieldSpec]] = {}

    def __post_init__(self) -> None:
        plan = _PLANS.get(type(self))
        (plan if plan is not None else _plan(type(self)))[0](self)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override in messages that need them."""

    def __repr__(self) -> str:
        parts = []
        for spec in self.FIELDS:
            value = getattr(self, spec.name)
            if value is None or (spec.repeated and not value):
                continue
            parts.append(f"{spec.name}=<redacted>" if spec.secret else f"{spec.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__


def message(type_code: int):
    """Class decorator: make a frozen, slotted, keyword-only dataclass and register
    it under ``type_code``."""

    def wrap(cls: type) -> type:
        cls = dataclass(frozen=True, slots=True, repr=False, kw_only=True)(cls)
        specs = []
        for f in dataclasses.fields(cls):
            if "tag" not in f.metadata:
                raise TypeError(f"{cls.__name__}.{f.name} needs tlv()")
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            nullable = required or f.default is None or f.default_factory is not dataclasses.MISSING
            specs.append(_FieldSpec(f.name, f.metadata["tag"], f.metadata["codec"], required, f.metadata["repeated"],
                                    f.metadata["secret"], nullable))
        tags = [s.tag for s in specs]
        if len(tags) != len(set(tags)):
            raise TypeError(f"{cls.__name__} has duplicate tags")
        if type_code in _REGISTRY:
            raise TypeError(f"message type 0x{type_code:04X} registered twice")
        cls.TYPE = type_code
        cls.FIELDS = tuple(sorted(specs, key=lambda s: s.tag))
        cls.BY_TAG = {s.tag: s for s in specs}
        _REGISTRY[type_code] = cls
        return cls

    return wrap


def message_types() -> dict[int, type[Message]]:
    """A copy of the catalogue: type code -> message class."""
    return dict(_REGISTRY)


def iter_items(msg: Message) -> Iterable[tuple[int, bytes]]:
    for spec in msg.FIELDS:
        value = getattr(msg, spec.name)
        if value is None:
            continue
        if spec.repeated:
            for item in value:
                yield spec.tag, spec.codec.encode(item)
        else:
            yield spec.tag, spec.codec.encode(value)


def encode(msg: Message, extra: Iterable[tuple[int, bytes]] = ()) -> bytes:
    """Encode ``msg`` as a frame payload. ``extra`` appends raw (tag, value) items
    (used for the MAC trailer and by tests for forward-compatibility).

    Raises :class:`MessageError` if the result would exceed ``MAX_PAYLOAD``.
    """
    cls = type(msg)
    if _REGISTRY.get(msg.TYPE) is not cls:
        raise MessageError(f"{cls.__name__} is not a registered message")
    parts = [_TYPE.pack(msg.TYPE)]
    append = parts.append
    head = _ITEM_HEAD.pack
    plan = _PLANS.get(cls)
    (plan if plan is not None else _plan(cls))[1](msg, append)
    for tag, raw in extra:
        if len(raw) > 0xFFFF:
            raise MessageError(f"field 0x{tag:02X} too long")
        append(head(tag, len(raw)))
        append(raw)
    out = b"".join(parts)
    if len(out) > MAX_PAYLOAD:
        raise MessageError(f"{type(msg).__name__} encodes to {len(out)} bytes, over the {MAX_PAYLOAD}-byte cap")
    return out


def split_items(payload: bytes) -> tuple[int, list[tuple[int, int, bytes]]]:
    """Split a payload into (type, [(tag, offset_of_item, value)]). Raises MessageError."""
    n = len(payload)
    if n < 2:
        raise MessageError("payload shorter than a message type")
    if n > MAX_PAYLOAD:
        raise MessageError("payload over the cap")
    (type_code,) = _TYPE.unpack_from(payload, 0)
    items: list[tuple[int, int, bytes]] = []
    append = items.append
    unpack = _ITEM_HEAD.unpack_from
    pos = 2
    while pos < n:
        if pos + 3 > n:
            raise MessageError(f"truncated TLV header at offset {pos}")
        tag, length = unpack(payload, pos)
        end = pos + 3 + length
        if end > n:
            raise MessageError(f"TLV 0x{tag:02X} at offset {pos} runs past the end")
        append((tag, pos, payload[pos + 3 : end]))
        pos = end
    return type_code, items


def decode(payload: bytes, allow_unknown_tags: Iterable[int] = ()) -> Message:
    """Decode one frame payload into its message.

    Raises :class:`UnknownMessageType`, :class:`UnknownMandatoryField`,
    :class:`FieldError` or :class:`MessageError`; never anything else.
    """
    type_code, items = split_items(bytes(payload))
    cls = _REGISTRY.get(type_code)
    if cls is None:
        raise UnknownMessageType(type_code)
    plan = _PLANS.get(cls)
    values = (plan if plan is not None else _plan(cls))[2](items, allow_unknown_tags)
    try:
        return cls(**values)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # missing required field reaches the constructor
        raise FieldError(f"{cls.__name__}: {exc}") from None


def decode_reference(payload: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """Split a payload with the interpreted ``Envelope`` schema (for tests and tools)."""
    try:
        c = Envelope.parse(payload)
    except ConstructError as exc:
        raise MessageError(f"payload rejected: {type(exc).__name__}") from exc
    return c.type, [(i.tag, bytes(i.value)) for i in c["items"]]


def field_specs(cls: type[Message]) -> tuple[_FieldSpec, ...]:
    """The TLV fields of a message class, in tag order (for docs and tooling)."""
    return cls.FIELDS
