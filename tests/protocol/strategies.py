"""Valid values for every message type, derived from the field codecs.

Two generators from the same rules: hypothesis strategies (``message_values``) for
property tests, and ``random_message`` on a seeded ``random.Random`` for the
deterministic fuzz corpus. Both raise :class:`LookupError` for a codec they do
not know, so a new codec (or a new message using one) fails the coverage test
instead of going untested.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from firmware_protocol import FieldError, Message, message_types
from firmware_protocol.native.messages import AMOUNT, CURRENCY, U32, Totals
from firmware_protocol.native.tlv import Blob, Codec, EnumCodec, Flag, StructCodec, Text, UInt

MAX_REPEATS = 6        # repeated fields: enough to see order kept, far below the payload cap
BLOB_CAP = 64          # no Blob in the catalogue is longer; keeps messages small
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sessions"

# Codecs of the fields of the fixed structs carried by StructCodec, per dataclass.
STRUCT_FIELDS: dict[type, dict[str, Codec]] = {
    Totals: {
        "currency": CURRENCY,
        "approved_count": U32,
        "approved_minor": AMOUNT,
        "refunded_count": U32,
        "refunded_minor": AMOUNT,
        "cancelled_count": U32,
    },
}

_OMIT = object()  # an optional field left out: the message gets its default


def catalogue() -> list[type[Message]]:
    """Every registered message class, by type code."""
    return [cls for _, cls in sorted(message_types().items())]


@functools.cache
def _pattern_alphabet(codec: Text) -> list[str]:
    """Printable ASCII characters a pattern-restricted Text accepts, probed one by one.

    Works for the catalogue's patterns (a character class repeated); a pattern of
    another shape gives characters that fail the final fullmatch filter, and the
    strategy reports itself unsatisfiable rather than testing nothing.
    """
    probe = max(codec.min_len, 1)
    chars = [chr(c) for c in range(0x20, 0x7F) if codec.pattern.fullmatch(chr(c) * probe)]
    if not chars:
        raise LookupError(f"cannot derive an alphabet from /{codec.pattern.pattern}/")
    return chars


def _clip(value: str, encoding: str, max_bytes: int) -> str:
    return value.encode(encoding)[:max_bytes].decode(encoding, "ignore")


# ------------------------------------------------------------ hypothesis strategies


def codec_values(codec: Codec) -> st.SearchStrategy[Any]:
    """Values ``codec`` accepts. Exact type checks: a new codec subclass must be added here."""
    kind = type(codec)
    if kind is EnumCodec:
        members = st.sampled_from(list(codec.enum_type))
        if codec.strict:
            return members
        return st.one_of(members, st.integers(0, codec.maximum))  # unknown codes stay ints
    if kind is UInt:
        return st.integers(codec.minimum, codec.maximum)
    if kind is Flag:
        return st.booleans()
    if kind is Blob:
        return st.binary(min_size=codec.min_len, max_size=min(codec.max_len, max(BLOB_CAP, codec.min_len)))
    if kind is Text:
        lo, hi, enc = codec.min_len, codec.max_len, codec.encoding
        if codec.pattern is not None:
            chars = "".join(_pattern_alphabet(codec))
            return st.text(chars, min_size=lo, max_size=hi).filter(codec.pattern.fullmatch)
        alphabet = st.characters(max_codepoint=0x7F) if enc == "ascii" else st.characters(
            blacklist_categories=("Cs",))
        return (st.text(alphabet, max_size=hi).map(lambda s: _clip(s, enc, hi))
                .filter(lambda s: len(s.encode(enc)) >= lo))
    if kind is StructCodec and codec.cls in STRUCT_FIELDS:
        fields = STRUCT_FIELDS[codec.cls]
        return st.builds(codec.cls, **{name: codec_values(c) for name, c in fields.items()})
    raise LookupError(f"no strategy for codec {codec!r} ({kind.__name__})")


def _build(cls: type[Message], kwargs: dict[str, Any]) -> Message | None:
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not _OMIT})
    except FieldError:  # a cross-field rule (validate()) refused the combination
        return None


@functools.cache  # one strategy per class: hypothesis validates a fresh strategy on every draw
def message_values(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Valid instances of ``cls``: every field from its codec, optional ones sometimes left out."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for spec in cls.FIELDS:
        s = codec_values(spec.codec)
        if spec.repeated:
            s = st.lists(s, max_size=MAX_REPEATS).map(tuple)
        if not spec.required:
            s = st.one_of(st.just(_OMIT), s)
        fields[spec.name] = s
    return st.fixed_dictionaries(fields).map(lambda kw: _build(cls, kw)).filter(lambda m: m is not None)


@functools.cache
def any_message() -> st.SearchStrategy[Message]:
    return st.one_of([message_values(cls) for cls in catalogue()])


# ------------------------------------------------------ seeded generator (fuzz corpus)


def random_value(codec: Codec, rng: random.Random) -> Any:
    """One value ``codec`` accepts, from ``rng``; same rules as :func:`codec_values`."""
    kind = type(codec)
    if kind is EnumCodec:
        members = list(codec.enum_type)
        if not codec.strict and rng.random() < 0.2:
            return rng.randrange(codec.maximum + 1)
        return rng.choice(members)
    if kind is UInt:
        edge = (codec.minimum, codec.maximum)
        return rng.choice(edge) if rng.random() < 0.2 else rng.randint(codec.minimum, codec.maximum)
    if kind is Flag:
        return rng.random() < 0.5
    if kind is Blob:
        hi = min(codec.max_len, max(BLOB_CAP, codec.min_len))
        return rng.randbytes(rng.randint(codec.min_len, hi))
    if kind is Text:
        lo, hi = codec.min_len, min(codec.max_len, max(codec.min_len, 40))
        n = rng.randint(lo, hi)
        if codec.pattern is not None:
            chars = _pattern_alphabet(codec)
            for _ in range(100):
                s = "".join(rng.choice(chars) for _ in range(n))
                if codec.pattern.fullmatch(s):
                    return s
            raise LookupError(f"no value found for /{codec.pattern.pattern}/")
        pool = "abcXYZ019 -:é€中文" if codec.encoding == "utf-8" else "abcXYZ019 -:"
        s = _clip("".join(rng.choice(pool) for _ in range(n)), codec.encoding, codec.max_len)
        return s if len(s.encode(codec.encoding)) >= lo else "x" * lo
    if kind is StructCodec and codec.cls in STRUCT_FIELDS:
        return codec.cls(**{name: random_value(c, rng) for name, c in STRUCT_FIELDS[codec.cls].items()})
    raise LookupError(f"no generator for codec {codec!r} ({kind.__name__})")


def random_message(cls: type[Message], rng: random.Random) -> Message:
    """A valid ``cls`` from ``rng`` (retries combinations a cross-field rule refuses)."""
    for _ in range(200):
        kwargs: dict[str, Any] = {}
        for spec in cls.FIELDS:
            if not spec.required and rng.random() < 0.4:
                continue
            if spec.repeated:
                kwargs[spec.name] = tuple(random_value(spec.codec, rng) for _ in range(rng.randrange(MAX_REPEATS)))
            else:
                kwargs[spec.name] = random_value(spec.codec, rng)
        msg = _build(cls, kwargs)
        if msg is not None:
            return msg
    raise LookupError(f"no valid {cls.__name__} found in 200 tries")


def fixture_frames() -> list[bytes]:
    """Every frame recorded in fixtures/sessions (real captures; secrets masked)."""
    out = []
    for path in sorted(FIXTURES.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") == "frame":
                out.append(bytes.fromhex(rec["hex"]))
    return out


def struct_fields_match() -> bool:
    """STRUCT_FIELDS names exactly the dataclass fields (a new field must get a codec here)."""
    return all({f.name for f in dataclasses.fields(cls)} == set(fields) for cls, fields in STRUCT_FIELDS.items())
