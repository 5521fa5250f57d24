"""Every shared ZVT capture (fixtures/zvt, from a Feig cVEND terminal) decodes to what
../shared/zvt/README.md says, and re-encodes byte-identical where it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_protocol.zvt import (
    Completion, EndOfDay, IndividualTotals, IntermediateStatus, PartialReversal, PreAuthorisation, PreAuthReversal,
    PrintTextBlock, ReadCard, Registration, StatusInformation, decode, encode_serial, decode_serial,
)

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "zvt"


def load(name: str) -> bytes:
    return (CAPTURES / f"{name}.blob").read_bytes()


# The README's "re-encodes byte-identical" column.
IDENTICAL = [
    "1681273860.511128000_ecr_pt", "1681282621.302434000_ecr_pt", "1680722649.972316000_ecr_pt",
    "1680728162.647465000_pt_ecr", "1680728161.963129000_pt_ecr", "1680761818.641601000_pt_ecr",
    "1680728165.827009000_pt_ecr", "1680728215.585561000_pt_ecr",
]


def test_every_capture_is_covered():
    names = {p.stem for p in CAPTURES.glob("*.blob")}
    assert len(names) == 15
    assert (CAPTURES / "LICENSE.EVerest-zvt").is_file()
    assert set(IDENTICAL) <= names


@pytest.mark.parametrize("name", sorted(p.stem for p in CAPTURES.glob("*.blob")))
def test_every_capture_decodes_and_survives_serial_framing(name):
    raw = load(name)
    msg = decode(raw)
    assert decode(msg.encode()) == msg               # what we build we read back the same
    assert decode_serial(encode_serial(raw)) == raw  # and every capture crosses the serial frame


@pytest.mark.parametrize("name", IDENTICAL)
def test_re_encodes_byte_identical(name):
    raw = load(name)
    assert decode(raw).encode() == raw


def test_registration():
    msg = decode(load("1681273860.511128000_ecr_pt"))
    assert isinstance(msg, Registration)
    assert (msg.password, msg.config_byte, msg.currency) == ("123456", 0xDE, 978)
    assert msg.fields.tlv is None and not msg.fields
    assert Registration("123456", 0xDE, 978).encode() == load("1681273860.511128000_ecr_pt")


def test_end_of_day():
    msg = decode(load("1681282621.302434000_ecr_pt"))
    assert isinstance(msg, EndOfDay) and msg.password == "123456"
    assert EndOfDay("123456").encode() == load("1681282621.302434000_ecr_pt")
    assert "123456" not in repr(msg)  # the password stays out of traces


def test_read_card():
    msg = decode(load("1680722649.972316000_ecr_pt"))
    assert isinstance(msg, ReadCard)
    assert (msg.timeout, msg.card_type, msg.dialog_control) == (15, 16, 2)
    assert [(t.tag, t.value) for t in msg.tlv] == [(0x1F15, b"\xd0"), (0x1F60, b"\x07")]


@pytest.mark.parametrize("name, cls, fields, data", [
    ("1680728162.033575000_ecr_pt", PreAuthorisation, dict(type_byte=0x40, currency=978, amount=2500), "384HH2"),
    ("1681455683.221609000_ecr_pt", PartialReversal,
     dict(receipt_no=491, type_byte=0x40, currency=978, amount=1295), "MF2246"),
])
def test_pre_authorisation_and_partial_reversal(name, cls, fields, data):
    msg = decode(load(name))
    assert isinstance(msg, cls) and msg.payment_type == 0x40
    assert {k: getattr(msg, k) for k in fields} == fields
    assert msg.tlv.find(0x1F62).text() == "AC" and msg.tlv.find(0x1F63).text() == data
    assert msg.tlv.items[0].tag == 0xE9 and len(msg.tlv.items[0].items) == 2  # a constructed tag


def test_pre_authorisation_reversal():
    msg = decode(load("1680728213.562478000_ecr_pt"))
    assert isinstance(msg, PreAuthReversal)
    assert (msg.payment_type, msg.receipt_no, msg.currency) == (0x40, 231, 978)


def test_intermediate_status():
    msg = decode(load("1680728162.647465000_pt_ecr"))
    assert isinstance(msg, IntermediateStatus) and msg.status == 0x17
    # The README's "timeout 0" is the EVerest crate reading an absent timeout byte (its BCD
    # codec turns zero bytes into 0): the APDU is 04 FF 01 17, there is no timeout on the wire.
    assert msg.timeout is None and load("1680728162.647465000_pt_ecr") == bytes.fromhex("04ff0117")


def test_status_information_with_card_tlv():
    msg = decode(load("1680728161.963129000_pt_ecr"))
    assert isinstance(msg, StatusInformation) and msg.result_code == 0
    t = msg.tlv
    assert t.find(0x4C).hex() == "000000000000081ca72f"
    assert t.find(0x1F45).hex() == "0578807002"
    assert t.find(0x1F4C).uint() == 1
    assert t.find(0x1F4D).hex() == "fe04"
    assert t.find(0x1F4F).hex() == "0400"
    assert t.find(0x1F50).uint() == 0x20
    subs = t.find_all(0x60)
    assert len(subs) == 1 and [(s.tag, s.hex()) for s in subs[0].items] == [(0x43, "a0000000041010")]


PAYMENT = dict(result_code=0, amount=2500, type_byte=0x60, currency=978, time="225558", date="0405",
               receipt_no=231, aid="750071", trace=975, terminal_id="52523535", expiry="2405",
               zvt_card_type=6, card_type_id=1, card_name="MasterCard", vu_number="804011926")


def test_status_information_of_a_payment():
    raw = load("1680728165.675509000_pt_ecr")
    msg = decode(raw)
    assert isinstance(msg, StatusInformation) and msg.card_type == 0x60
    assert {k: getattr(msg, k) for k in PAYMENT} == PAYMENT
    assert b"804011926      " in raw  # padded with spaces to 15
    assert_masked_pan(msg.pan)
    # Not byte-identical (the README does not say it is): the card name goes out without the
    # NUL the terminal put after it.
    assert raw.replace(b"\xf1\xf1MasterCard\x00", b"\xf1\xf0MasterCard")[3:] == msg.encode()[3:]


def assert_masked_pan(pan: str) -> None:
    # On the wire: 22 F0 F8 55 98 83 EE EE EE 80 74, a PAN with six digits masked (E = masked
    # digit, the ZVT rule). The README's 5598845555548074 is the EVerest crate's integer
    # reading of those bytes (each byte as high*10+low, so EE counts as 154): same bytes.
    assert pan == "559883EEEEEE8074"
    everest = 0
    for hi, lo in zip(pan[::2], pan[1::2]):
        everest = everest * 100 + int(hi, 16) * 10 + int(lo, 16)
    assert everest == 5598845555548074


def test_status_information_with_additional_text():
    msg = decode(load("1680728215.659492000_pt_ecr"))
    assert {k: getattr(msg, k) for k in PAYMENT} == {**PAYMENT, "amount": 0, "receipt_no": 232, "trace": 977}
    assert msg.additional_text == "AS-Proc-Code= 00 076 06\rCapt.-Ref.= 0099\rAID59= 081520\r DAUER   7 TAGE"
    assert_masked_pan(msg.pan)


def test_status_information_of_an_end_of_day():
    msg = decode(load("1680761828.489701000_pt_ecr"))
    assert (msg.result_code, msg.amount, msg.trace, msg.date, msg.time) == (0, 958, 982, "0406", "081706")
    totals = IndividualTotals.decode(msg.single_amounts)
    assert (totals.receipt_start, totals.receipt_end) == (233, 234)
    assert (totals.totals["eurocard"].count, totals.totals["eurocard"].total) == (2, 958)
    assert all(t.count == 0 and t.total == 0 for name, t in totals.totals.items() if name != "eurocard")
    assert totals.encode() == msg.single_amounts


def test_completion_with_status_byte():
    msg = decode(load("1680761818.641601000_pt_ecr"))
    assert isinstance(msg, Completion)
    assert (msg.status_byte, msg.terminal_id, msg.currency, msg.result_code) == (0x10, "52523535", 978, None)
    assert msg.software_version is None


def test_completion_after_a_receipt():
    msg = decode(load("1680728219.054216000_pt_ecr"))
    assert isinstance(msg, Completion)
    assert msg.software_version == "GER-APP-v2.0.9;cS02.01.01-10.10-2-2;CC26" and msg.terminal_status == 0
    t = msg.tlv
    assert t.find(0x1F44).bcd() == "52523535"
    device = t.find(0xE4)
    assert device.find(0x1F40).text() == "cVEND plug"
    assert device.find(0x1F41).text() == msg.software_version
    assert device.find(0x1F43).uint() == 0
    # The README's serial 18632442 is again the EVerest crate's byte-wise reading (17, FD as
    # 163, 1E as 24, 3C as 42) of the binary value 17 FD 1E 3C.
    assert device.find(0x1F42).value == bytes.fromhex("17fd1e3c")
    when = t.find(0x34)
    assert (when.find(0x1F0E).bcd(), when.find(0x1F0F).bcd()) == ("20230405", "225655")


def test_empty_completion():
    msg = decode(load("1680728165.827009000_pt_ecr"))
    assert msg == Completion() and msg.encode() == bytes.fromhex("060f00")


def test_print_text_block():
    raw = load("1680728215.585561000_pt_ecr")
    assert raw[2] == 0xFF and int.from_bytes(raw[3:5], "little") == len(raw) - 5  # the long LEN form
    msg = decode(raw)
    assert isinstance(msg, PrintTextBlock)
    assert msg.tlv.find(0x1F07).uint() == 2
    texts = msg.tlv.find(0x25)
    lines = [t for t in texts.items if t.tag == 0x07]
    assert len(lines) == 33
    assert texts.find(0x09).uint() == 255
    assert lines[1].text().strip() == "** Customer Receipt **"
