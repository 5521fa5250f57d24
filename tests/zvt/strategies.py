"""Hypothesis strategies for ZVT values: one per BMP type, Fields, TLV trees, every typed command."""

from __future__ import annotations

from hypothesis import strategies as st

from firmware_protocol.zvt import apdu as z
from firmware_protocol.zvt.bmp import BMPS, Fields
from firmware_protocol.zvt.codecs import BcdDigits, BcdInt, CardDigits, FixedText, ReceiptNumber, VarLength
from firmware_protocol.zvt.tlv import Tlv, TlvContainer, constructed

cp437_text = st.text(st.characters(codec="cp437"), max_size=40)
digits = st.text("0123456789", min_size=6, max_size=6)


def tag_strategy(nested: bool = True):
    """One- and two-byte BER tags; ``nested=False`` gives primitive tags only."""
    keep = 0xFF if nested else 0xDF  # bit 6 (0x20) marks a constructed tag
    one = st.integers(0, 0xFF).map(lambda b: (b & keep) if b & 0x1F != 0x1F else (b & keep) - 1)
    two = st.builds(lambda a, b: (((a & keep) | 0x1F) << 8) | b, st.integers(0, 0xFF), st.integers(0, 0x7F))
    return st.one_of(one, two)


def tlv_items(depth: int = 3):
    def item(tag):
        if constructed(tag):
            return tlv_items(depth - 1).map(lambda items: Tlv(tag, items))
        return st.binary(max_size=300).map(lambda v: Tlv(tag, v))
    return st.lists(tag_strategy(nested=depth > 0).flatmap(item), max_size=4).map(tuple)


tlv_containers = tlv_items().map(TlvContainer)


def _value(spec):
    s = spec.schema
    inner = getattr(s, "subcon", None)  # LLVar(x) is Prefixed(VarLength, x)
    if spec.bmp == 0x06:
        return tlv_containers
    if isinstance(s, ReceiptNumber):
        return st.one_of(st.integers(0, 9999), st.just(0xFFFF))
    if isinstance(s, BcdInt):
        return st.integers(0, 10 ** (2 * s.width) - 1)
    if isinstance(s, BcdDigits):
        return st.text("0123456789", min_size=2 * s.width, max_size=2 * s.width)
    if isinstance(s, FixedText):
        return st.text(st.characters(codec="cp437"), max_size=s.width).filter(
            lambda t: not t.endswith(s.pad.decode()) and len(t.encode("cp437")) <= s.width)
    if spec.type is int:
        return st.integers(0, 255)
    limit = 99 if isinstance(getattr(s, "lengthfield", None), VarLength) and s.lengthfield.digits == 2 else 999
    if isinstance(inner, CardDigits):
        return st.text("0123456789DE", max_size=2 * limit - 1)
    if spec.type is str:
        return st.text(st.characters(codec="cp437"), max_size=limit).filter(
            lambda t: not t.endswith("\x00") and len(t.encode("cp437")) <= limit)
    size = getattr(s, "length", None)
    if isinstance(size, int):
        return st.binary(min_size=size, max_size=size)
    return st.binary(max_size=limit)


VALUES = {spec.name: _value(spec) for spec in BMPS.values()}


def fields(names=None, max_fields: int = 6):
    names = sorted(names or VALUES)
    return st.lists(st.sampled_from(names), unique=True, max_size=max_fields).flatmap(
        lambda chosen: st.fixed_dictionaries({n: VALUES[n] for n in chosen})).map(lambda kw: Fields(**kw))


def _ok(build):
    """Drop the few combinations a command refuses on construction (ambiguous layouts)."""
    def make(*a, **kw):
        try:
            return build(*a, **kw)
        except z.ZvtFieldError:
            return None
    return make


byte = st.integers(0, 255)
tlv_only = fields(["tlv", "service_byte"])
COMMANDS = {
    "Registration": st.builds(_ok(z.Registration), digits, byte, st.one_of(st.none(), st.integers(0, 9999)), tlv_only),
    "Authorisation": st.builds(z.Authorisation, fields()),
    "LogOff": st.just(z.LogOff()),
    "Completion": st.one_of(
        st.builds(_ok(z.Completion), st.none(), st.none(), fields()),
        st.builds(z.Completion, cp437_text.filter(lambda t: not t.endswith("\x00")), byte, fields(["tlv"]))),
    "Aborted": st.builds(z.Aborted, byte, fields()),
    "RepeatReceipt": st.builds(z.RepeatReceipt, digits, fields()),
    "Reversal": st.builds(z.Reversal, digits, fields()),
    "Refund": st.builds(z.Refund, digits, fields()),
    "EndOfDay": st.builds(z.EndOfDay, digits, fields(["tlv"])),
    "PreAuthorisation": st.builds(z.PreAuthorisation, fields()),
    "PartialReversal": st.builds(z.PartialReversal, fields()),
    "BookTotal": st.builds(z.BookTotal, fields()),
    "PreAuthReversal": st.builds(z.PreAuthReversal, fields()),
    "Diagnosis": st.builds(z.Diagnosis, fields(["tlv"])),
    "PrintTextBlock": st.builds(z.PrintTextBlock, fields(["tlv"])),
    "DisplayText": st.builds(z.DisplayText, fields()),
    "StatusInformation": st.builds(z.StatusInformation, fields()),
    "Abort": st.just(z.Abort()),
    "ReadCard": st.builds(z.ReadCard, byte, fields()),
    "PrintLine": st.builds(z.PrintLine, byte, cp437_text.filter(lambda t: not t.endswith("\x00"))),
    "StatusEnquiry": st.one_of(st.just(z.StatusEnquiry()), st.builds(z.StatusEnquiry, digits, tlv_only)),
    "IntermediateStatus": st.one_of(st.builds(z.IntermediateStatus, byte),
                                    st.builds(z.IntermediateStatus, byte, byte, fields(["tlv"]))),
    "Ack": st.just(z.Ack()),
    "Nack": st.builds(z.Nack, byte),
}
