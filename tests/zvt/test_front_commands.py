"""The emulated ZVT terminal's commands beyond a sale: pre-authorisation and its booking,
repeat receipt, diagnosis, abort after an approval, intermediate status, result codes and
the receipt-number state file. Sans-IO against the ECR role of the link (bytes in, bytes
out, the firmware's part played by the test), and end to end over TCP where the host's
side of it matters."""

from __future__ import annotations

import json
import logging
import stat
import time

import pytest

from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason, Stage
from firmware_protocol.zvt import (
    Abort, Aborted, Authorisation, BookTotal, Completion, Diagnosis, Fields, IntermediateStatus, PartialReversal,
    PreAuthorisation, PreAuthReversal, PrintLine, RepeatReceipt, Reversal, StatusInformation,
)
from posterm.families.events import MessageReceived, ResultDelivery
from posterm.families.zvt import front as front_mod
from posterm.families.zvt.ecr import reason_for
from posterm.families.zvt.front import RESULT_CODES, ZvtFront
from tests.zvt import test_front as _emulated
from tests.zvt.test_front import CNY, CONFIG, PASSWORD, Ecr, _info, _kinds, _lines, _Pair

tcp_ecr = _emulated.tcp_ecr      # the fixture: the emulated terminal on TCP and a register on it

HELLO = m.HelloReply(protocol_version=1, capabilities=0, terminal_id="T0000009", merchant_id="M100000001",
                     firmware_version="fw-1")


class Register(_Pair):
    """A register and the front, in memory; the test plays the firmware."""

    def __init__(self, front: ZvtFront | None = None, config: int = CONFIG) -> None:
        super().__init__()
        if front is not None:
            self.front = front
        natives = self.command_natives(front_mod.Registration(PASSWORD, config, CNY))
        assert isinstance(natives[0], m.Hello)
        self.firmware_says(HELLO)
        assert isinstance(self.seen[-1], Completion)

    def command(self, cmd) -> tuple[list, list, list]:
        """Send ``cmd``: (what the firmware heard, what the register got, the front's events)."""
        before = len(self.seen)
        events = self.to_front(self.ecr.send(cmd, self.now))
        natives = [e.message for e in events if isinstance(e, MessageReceived)]
        return natives, self.seen[before:], events

    def command_natives(self, cmd) -> list:
        return self.command(cmd)[0]

    def firmware(self, msg) -> tuple[list, list]:
        """The firmware says ``msg``: (what the register got, the front's events)."""
        before = len(self.seen)
        events = self.firmware_says(msg)
        return self.seen[before:], events

    def sale(self, amount: int = 1000, cmd=None, outcome: Outcome = Outcome.APPROVED,
             reason: int = Reason.NONE) -> tuple[str, list]:
        natives = self.command_natives(cmd or Authorisation.make(amount=amount, currency=CNY))
        pay = natives[0]
        assert isinstance(pay, m.PayRequest) and pay.amount_minor == amount
        self.firmware(m.Print(lines=("SALE", f"AMOUNT {amount}"), order_id=pay.order_id))
        got, _ = self.firmware(m.PayResult(order_id=pay.order_id, outcome=outcome, amount_minor=amount,
                                           currency="CNY", reason=reason, code_last4="0001",
                                           paid_at="2026-12-02T01:02:03Z"))
        return pay.order_id, got


def _refund_ok(req: m.Refund) -> m.RefundResult:
    return m.RefundResult(order_id=req.order_id, refund_id=req.refund_id, outcome=Outcome.APPROVED,
                          amount_minor=req.amount_minor, currency=req.currency, refunded_total_minor=req.amount_minor)


# -- pre-authorisation ------------------------------------------------------------------------

def test_a_pre_authorisation_is_answered_like_a_payment_with_its_receipt_number():
    reg = Register()
    order_id, got = reg.sale(1000, PreAuthorisation.make(amount=1000, currency=CNY, type_byte=0x40))
    assert _kinds(got) == ["StatusInformation", "PrintLine", "PrintLine", "Completion"]
    info = got[0].fields
    assert (info.result_code, info.amount, info.receipt_no, info.card_name) == (0, 1000, 1, "Alipay")
    assert reg.front.order_of(1) == order_id


def test_book_total_gives_back_the_difference_and_is_booked_once():
    reg = Register()
    order_id, _ = reg.sale(1000, PreAuthorisation.make(amount=1000, currency=CNY))
    natives, _, _ = reg.command(BookTotal.make(receipt_no=1, amount=700, currency=CNY))
    refund = natives[0]
    assert isinstance(refund, m.Refund)
    assert (refund.order_id, refund.amount_minor, refund.operator_password) == (order_id, 300, PASSWORD)
    got, _ = reg.firmware(_refund_ok(refund))
    assert _kinds(got)[0] == "StatusInformation" and isinstance(got[-1], Completion)
    # the booking has its own receipt number; the pre-authorisation's (1) named it in BMP 87
    assert (got[0].fields.amount, got[0].fields.receipt_no, got[0].fields.result_code) == (700, 2, 0)
    natives, got, _ = reg.command(BookTotal.make(receipt_no=1, amount=700))
    assert natives == [] and got == [Aborted(0xB8)]                # booked already: "error pre-authorisation"


def test_book_total_above_the_reserved_amount_is_refused_and_equal_books_without_the_host():
    reg = Register()
    reg.sale(1000, PreAuthorisation.make(amount=1000, currency=CNY))
    natives, got, _ = reg.command(BookTotal.make(receipt_no=1, amount=1001))
    assert natives == [] and got == [Aborted(0xB7)]                # "pre-authorisation incorrect (amount too high)"
    natives, got, _ = reg.command(BookTotal.make(receipt_no=1, amount=1000))
    assert natives == [] and _kinds(got) == ["StatusInformation", "Completion"]
    assert got[0].fields.amount == 1000 and got[0].fields.result_code == 0


def test_a_booking_repeated_after_a_lost_answer_is_the_same_refund_at_the_host():
    reg = Register()
    reg.sale(1000, PreAuthorisation.make(amount=1000, currency=CNY))
    first = reg.command_natives(BookTotal.make(receipt_no=1, amount=400))[0]
    got, _ = reg.firmware(m.RefundResult(order_id=first.order_id, refund_id=first.refund_id, outcome=Outcome.UNKNOWN,
                                         amount_minor=600, currency="CNY", reason=Reason.HOST_UNAVAILABLE))
    assert got[-1] == Aborted(0xA1)
    again = reg.command_natives(BookTotal.make(receipt_no=1, amount=400))[0]
    assert again.refund_id == first.refund_id and again.amount_minor == 600


def test_partial_reversal_releases_its_amount_and_book_total_then_sees_the_rest():
    reg = Register()
    reg.sale(1000, PreAuthorisation.make(amount=1000, currency=CNY))
    release = reg.command_natives(PartialReversal.make(receipt_no=1, amount=250))[0]
    assert isinstance(release, m.Refund) and release.amount_minor == 250
    got, _ = reg.firmware(_refund_ok(release))
    assert isinstance(got[-1], Completion) and got[0].fields.amount == 250
    natives, got, _ = reg.command(BookTotal.make(receipt_no=1, amount=800))
    assert natives == [] and got == [Aborted(0xB7)]                # only 750 is still reserved
    book = reg.command_natives(BookTotal.make(receipt_no=1, amount=700))[0]
    assert book.amount_minor == 50 and book.refund_id != release.refund_id


def test_pre_authorisation_reversal_cancels_the_payment():
    reg = Register()
    order_id, _ = reg.sale(1000, PreAuthorisation.make(amount=1000, currency=CNY))
    cancel = reg.command_natives(PreAuthReversal.make(receipt_no=1))[0]
    assert isinstance(cancel, m.Cancel) and cancel.order_id == order_id and cancel.operator_password == PASSWORD
    got, _ = reg.firmware(m.PayResult(order_id=order_id, outcome=Outcome.CANCELLED, amount_minor=1000, currency="CNY"))
    assert isinstance(got[-1], Completion) and got[0].fields.receipt_no == 2 and got[0].fields.result_code == 0
    assert reg.command(PreAuthReversal.make(receipt_no=1))[1] == [Aborted(0xB4)]      # already reversed
    assert reg.command(BookTotal.make(receipt_no=1, amount=5))[1] == [Aborted(0xB4)]


def test_pre_authorisation_commands_need_a_pre_authorisation():
    reg = Register()
    reg.sale(1000)                                                   # a sale, not a reservation
    for cmd in (BookTotal.make(receipt_no=1, amount=5), PartialReversal.make(receipt_no=1, amount=5),
                PreAuthReversal.make(receipt_no=1), PreAuthReversal.make(receipt_no=77), BookTotal.make(amount=5)):
        natives, got, _ = reg.command(cmd)
        assert natives == [] and got == [Aborted(0xB8)], cmd


# -- repeat receipt, diagnosis ----------------------------------------------------------------

def test_repeat_receipt_resends_the_last_payment_receipt():
    reg = Register()
    assert reg.command(RepeatReceipt(PASSWORD))[1] == [Aborted(0x83)]      # nothing to repeat
    _, paid = reg.sale(1234)
    assert reg.command(RepeatReceipt("000000"))[1] == [Aborted(0x83)]      # wrong password
    natives, got, events = reg.command(RepeatReceipt(PASSWORD))
    assert natives == [] and not any(isinstance(e, ResultDelivery) for e in events)
    assert _kinds(got) == ["StatusInformation", "PrintLine", "PrintLine", "Completion"]
    first = paid[0].fields
    again = got[0].fields
    assert (again.receipt_no, again.amount, again.trace, again.card_name) == (first.receipt_no, 1234, first.trace,
                                                                             "Alipay")
    assert again.pan is None                                     # no card data kept for a repeat
    assert [p.text for p in got[1:3]] == ["SALE", "AMOUNT 1234"]


def test_repeat_receipt_as_a_text_block_when_the_register_asked_for_them():
    from firmware_protocol.zvt import PrintTextBlock, Tlv, TlvContainer

    reg = Register()
    reg.sale(500)
    reg.command_natives(front_mod.Registration(PASSWORD, CONFIG, CNY, Fields(tlv=TlvContainer((
        Tlv(0x26, (Tlv(0x0A, b"\x06\xd3"),)),)))))
    reg.firmware(HELLO)
    _, got, _ = reg.command(RepeatReceipt(PASSWORD))
    assert _kinds(got) == ["StatusInformation", "PrintTextBlock", "Completion"]
    assert isinstance(got[1], PrintTextBlock)


def test_diagnosis_reports_whether_the_host_answers():
    reg = Register()
    natives, _, _ = reg.command(Diagnosis())
    assert isinstance(natives[0], m.StatusRequest)
    got, _ = reg.firmware(m.Status(state=m.TerminalState.IDLE, host_online=True))
    # spec 2.17: intermediate status, the receipt, 06 0F (no 04 0F in a diagnosis)
    assert _kinds(got)[0] == "IntermediateStatus" and got[0].status == 0x04
    assert set(_kinds(got)[1:-1]) == {"PrintLine"} and isinstance(got[-1], Completion)
    assert "HOST ONLINE" in [p.text for p in got[1:-1]] and "TERMINAL 00000009" in [p.text for p in got[1:-1]]
    reg.command(Diagnosis())
    got, _ = reg.firmware(m.Status(state=m.TerminalState.IDLE, host_online=False))
    assert "HOST NOT REACHED" in [p.text for p in got if isinstance(p, PrintLine)] and got[-1] == Aborted(0xA1)
    assert not any(isinstance(p, StatusInformation) for p in got)


# -- abort, intermediate status, result codes, print lines -----------------------------------

def test_an_approval_after_the_register_aborted_is_reversed_and_the_payment_ends_aborted():
    reg = Register()
    pay = reg.command_natives(Authorisation.make(amount=990, currency=CNY))[0]
    natives, _, _ = reg.command(Abort())
    assert natives == [m.Abort(order_id=pay.order_id)]
    assert reg.command(Abort())[0] == []                          # told once
    reg.firmware(m.Progress(order_id=pay.order_id, stage=Stage.CANCELLING, text="Cancelling..."))
    assert reg.seen[-1] == IntermediateStatus(0x05)                # "PT is sending auto-reversal"
    reg.firmware(m.Print(lines=("SALE", "RESULT APPROVED"), order_id=pay.order_id))
    got, events = reg.firmware(m.PayResult(order_id=pay.order_id, outcome=Outcome.APPROVED, amount_minor=990,
                                           currency="CNY"))
    assert ResultDelivery(pay.order_id, False, "aborted by the ECR") in events
    assert _kinds(got) == ["StatusInformation", "Aborted"]        # no approved receipt, no 06 0F
    assert got[0].fields.result_code == 0x6C and got[-1] == Aborted(0x6C) and got[0].fields.receipt_no is None
    assert reg.front.order_of(1) is None and reg.front.idle


@pytest.mark.parametrize("stage, status, text", [
    (Stage.WAITING_FOR_SCAN, 0x0A, "Show your payment code"), (Stage.WAITING_FOR_PIN, 0x01, "Enter payment password"),
    (Stage.WAITING_FOR_PHONE, 0xFF, "Confirm the payment on your phone"), (Stage.AUTHORISING, 0x04, None),
    (Stage.PRINTING, 0x17, None),
])
def test_intermediate_status_by_stage(stage, status, text):
    reg = Register()
    pay = reg.command_natives(Authorisation.make(amount=990, currency=CNY))[0]
    got, _ = reg.firmware(m.Progress(order_id=pay.order_id, stage=stage, text=f"9.90 CNY\n{text or 'x'}"))
    msg = got[-1]
    assert isinstance(msg, IntermediateStatus) and msg.status == status
    if text is None:
        assert msg.timeout is None and msg.fields.tlv is None
    else:
        assert msg.timeout == 0x60                                 # 60 s, BCD
        assert [t.text() for t in msg.fields.tlv.find(0x24).find_all(0x07)] == ["9.90 CNY", text]


def test_no_intermediate_status_unless_the_registration_asks():
    reg = Register(config=CONFIG & ~0x08)
    pay = reg.command_natives(Authorisation.make(amount=990, currency=CNY))[0]
    got, _ = reg.firmware(m.Progress(order_id=pay.order_id, stage=Stage.WAITING_FOR_PIN, text="PIN"))
    assert got == []


@pytest.mark.parametrize("reason, code", [
    (Reason.WRONG_PIN, 55), (Reason.OVER_TRANSACTION_LIMIT, 61), (Reason.OVER_DAILY_LIMIT, 65),
    (Reason.INSUFFICIENT_BALANCE, 51), (Reason.ACCOUNT_FROZEN, 62), (Reason.CODE_USED, 5), (Reason.OTHER, 5),
    (Reason.CUSTOMER_CANCELLED, 0x6C), (Reason.CURRENCY_MISMATCH, 0x6F),
])
def test_declines_end_with_their_result_code(reason, code):
    reg = Register()
    _, got = reg.sale(600_000, outcome=Outcome.DECLINED, reason=reason)
    assert got[0].fields.result_code == code and got[-1] == Aborted(code)
    assert got[0].fields.receipt_no is None


def test_the_driver_reads_the_result_codes_back_as_the_same_reasons():
    # Both sides of this family agree: what the emulated terminal sends, the driver decodes.
    for reason in (Reason.WRONG_PIN, Reason.OVER_TRANSACTION_LIMIT, Reason.OVER_DAILY_LIMIT,
                   Reason.INSUFFICIENT_BALANCE, Reason.ACCOUNT_FROZEN, Reason.RISK_REJECTED, Reason.CODE_EXPIRED,
                   Reason.CODE_INVALID, Reason.INVALID_AMOUNT, Reason.PIN_LOCKED, Reason.KEY_ERROR,
                   Reason.CURRENCY_MISMATCH, Reason.HOST_UNAVAILABLE):
        assert reason_for(RESULT_CODES[reason]) is reason, reason.name
    assert all(1 <= c <= 99 or c >= 0x64 for c in RESULT_CODES.values())   # ISO codes stay in 01..63 hex


def test_print_lines_mark_the_last_one_81():
    reg = Register()
    _, got = reg.sale(700)
    lines = [msg for msg in got if isinstance(msg, PrintLine)]
    assert [p.attribute for p in lines] == [0x00, 0x81]


# -- the state file ---------------------------------------------------------------------------

def _state(tmp_path):
    return tmp_path / "terminal" / "zvt-receipts.json"


def test_receipt_numbers_and_counters_survive_a_restart(tmp_path):
    path = _state(tmp_path)
    reg = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
    first, paid = reg.sale(1000)
    second, _ = reg.sale(2000, PreAuthorisation.make(amount=2000, currency=CNY))
    trace = paid[0].fields.trace
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
    assert again.front.order_of(1) == first and again.front.order_of(2) == second
    _, third = again.sale(300)
    assert third[0].fields.receipt_no == 3 and third[0].fields.trace > trace + 1
    # the pre-authorisation is still one, and the last receipt can be repeated
    assert isinstance(again.command_natives(BookTotal.make(receipt_no=2, amount=1500))[0], m.Refund)
    later = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
    assert later.command(RepeatReceipt(PASSWORD))[1][0].fields.receipt_no == 3
    cancel = later.command_natives(Reversal(PASSWORD, Fields(receipt_no=1)))[0]
    assert isinstance(cancel, m.Cancel) and cancel.order_id == first


def test_a_reversal_is_remembered_across_a_restart(tmp_path):
    path = _state(tmp_path)
    reg = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
    order_id, _ = reg.sale(1000)
    reg.command(Reversal(PASSWORD, Fields(receipt_no=1)))
    reg.firmware(m.PayResult(order_id=order_id, outcome=Outcome.CANCELLED, amount_minor=1000, currency="CNY"))
    again = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
    assert again.command(Reversal(PASSWORD, Fields(receipt_no=1)))[1] == [Aborted(0xB4)]


def test_a_damaged_line_is_skipped_and_a_damaged_head_rebuilt_from_the_entries(tmp_path, caplog):
    path = _state(tmp_path)
    reg = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
    orders = [reg.sale(100 * (n + 1))[0] for n in range(3)]
    lines = path.read_text().splitlines()
    heads = [i for i, line in enumerate(lines) if '"v":' in line]
    for i in heads:
        lines[i] = lines[i][:7]                                   # every head cut short
    lines.append('{"r": 2, "o": "../../etc"')                     # and a torn write at the end
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.ERROR, logger="posterm.emulator.zvt"):
        front = ZvtFront(PASSWORD, transport="tcp", state_path=path)
    assert "damaged" in caplog.text and "rebuilt" in caplog.text
    assert [front.order_of(n) for n in (1, 2, 3)] == orders
    again = Register(front)
    _, got = again.sale(50)
    assert got[0].fields.receipt_no == 4                          # never a number still in use


def test_a_file_that_cannot_be_read_at_all_starts_empty_and_says_so(tmp_path, caplog):
    path = _state(tmp_path)
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"\x00\xff garbage \x89PNG\n" * 10)
    path.chmod(0o600)
    with caplog.at_level(logging.ERROR, logger="posterm.emulator.zvt"):
        reg = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
    assert "could not be read" in caplog.text
    _, got = reg.sale(50)
    assert got[0].fields.receipt_no == 1
    lines = [json.loads(line) for line in path.read_text().splitlines()]   # rewritten whole: no garbage left
    assert [item["next_receipt"] for item in lines if "v" in item][-1] == 2


def test_a_symlink_for_the_state_file_is_not_followed(tmp_path, caplog):
    path = _state(tmp_path)
    path.parent.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    path.symlink_to(target)
    with caplog.at_level(logging.ERROR, logger="posterm.emulator.zvt"):
        reg = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
        reg.sale(50)
    assert target.read_text() == "keep me\n" and "not" in caplog.text


def test_the_state_file_stays_bounded_as_receipt_numbers_come_round(tmp_path, monkeypatch):
    monkeypatch.setattr(front_mod, "MAX_RECEIPT_NO", 5)
    monkeypatch.setattr(front_mod, "COMPACT_SLACK", 2000)
    path = _state(tmp_path)
    reg = Register(ZvtFront(PASSWORD, transport="tcp", state_path=path))
    sizes = []
    orders = []
    for n in range(60):
        orders.append(reg.sale(100 + n)[0])
        sizes.append(path.stat().st_size)
    assert max(sizes[30:]) < 3 * 2000 + 3 * max(sizes[:5]) + 4096     # compacted, not growing with the sales
    front = ZvtFront(PASSWORD, transport="tcp", state_path=path)
    assert len(front._paid) == 5
    assert [front.order_of(n) for n in range(1, 6)] == orders[-5:]      # 56..60 took numbers 1..5
    assert reg.front.order_of(5) == orders[-1]


# -- end to end over TCP: the host's side -------------------------------------------------------

def _wait_until(ecr: Ecr, done, timeout: float = 30.0) -> None:
    """Keep the register's line moving until ``done()`` (the emulator acts on its own thread)."""
    assert ecr.pump.run(time.monotonic() + timeout, None, before_read=lambda now: True if done() else None) is True


def test_pre_authorisation_and_book_total_at_the_host(tcp_ecr):
    emu, ecr = tcp_ecr
    ecr.register()
    reserved = ecr.command(PreAuthorisation.make(amount=5000, currency=CNY))
    assert isinstance(reserved[-1], Completion)
    no = _info(reserved).fields.receipt_no
    order_id = emu._link.order_of(no)
    assert emu.host.order_status(order_id) == "APPROVED"
    assert ecr.command(BookTotal.make(receipt_no=no, amount=6000))[-1] == Aborted(0xB7)
    booked = ecr.command(BookTotal.make(receipt_no=no, amount=3200, currency=CNY))
    assert isinstance(booked[-1], Completion), _kinds(booked)
    assert _info(booked).fields.amount == 3200
    assert emu.journal.get(order_id).refunded_minor == 1800            # 50.00 reserved, 32.00 kept
    assert any("REFUND" in line for line in _lines(booked))
    again = ecr.command(RepeatReceipt(PASSWORD))
    assert isinstance(again[-1], Completion) and _info(again).fields.amount == 3200
    diag = ecr.command(Diagnosis())
    assert isinstance(diag[-1], Completion) and "HOST ONLINE" in _lines(diag), _kinds(diag)


def test_pre_authorisation_reversal_at_the_host(tcp_ecr):
    emu, ecr = tcp_ecr
    ecr.register()
    no = _info(ecr.command(PreAuthorisation.make(amount=800, currency=CNY))).fields.receipt_no
    order_id = emu._link.order_of(no)
    done = ecr.command(PreAuthReversal.make(receipt_no=no))
    assert isinstance(done[-1], Completion), _kinds(done)
    assert emu.host.order_status(order_id) in ("CANCELLED", "REFUNDED")


def test_the_register_is_told_enter_pin_and_confirm_on_phone(tcp_ecr, tmp_path):
    emu, ecr = tcp_ecr
    scenario = tmp_path / "pin-phone.toml"
    scenario.write_text('[[payment]]\nactions = [{ action = "present_code", code = "289900000000000003" },'
                        ' { action = "type_pin", digits = "147258" }]\n'
                        '[[payment]]\nactions = [{ action = "present_code", code = "289900000000000004" },'
                        ' { action = "confirm_on_phone", after = 0.1 }]\n'
                        '[terminal]\npoll_interval = 0.2\n')
    emu.set_scenario(scenario)
    ecr.register()
    pin = ecr.command(Authorisation.make(amount=300, currency=CNY))
    statuses = [msg.status for msg in pin if isinstance(msg, IntermediateStatus)]
    assert 0x0A in statuses and 0x01 in statuses and isinstance(pin[-1], Completion)
    phone = ecr.command(Authorisation.make(amount=400, currency=CNY))
    texts = [" ".join(t.text() for t in msg.fields.tlv.find(0x24).find_all(0x07))
             for msg in phone if isinstance(msg, IntermediateStatus) and msg.status == 0xFF]
    assert any("phone" in t for t in texts) and isinstance(phone[-1], Completion)


def test_abort_after_the_customer_confirmed_on_the_phone_reverses_the_charge(tcp_ecr, tmp_path):
    """The customer has confirmed in the wallet (the host has the money) and the terminal has
    not polled yet when the register aborts: the payment ends 06 1E 6C and the host gives the
    money back."""
    emu, ecr = tcp_ecr
    scenario = tmp_path / "phone.toml"
    scenario.write_text('[[payment]]\nactions = [{ action = "present_code", code = "289900000000000004" },'
                        ' { action = "confirm_on_phone", after = 0.05 }]\n[terminal]\npoll_interval = 120\n')
    emu.set_scenario(scenario)
    ecr.register()
    got: list = []
    ecr.pump.send(Authorisation.make(amount=900, currency=CNY))

    def phone_asked(ev):
        if isinstance(ev, MessageReceived):
            got.append(ev.message)
            if isinstance(ev.message, IntermediateStatus) and ev.message.status == 0xFF:
                return True
        return None
    assert ecr.pump.run(time.monotonic() + 30, phone_asked) is True
    order_id = emu.firmware.order_in_flight
    _wait_until(ecr, lambda: emu.host.order_status(order_id) == "APPROVED")
    end = ecr.command(Abort())
    assert end[-1] == Aborted(0x6C), _kinds(end)
    assert not any(isinstance(msg, StatusInformation) and msg.fields.result_code == 0 for msg in got + end)
    _wait_until(ecr, lambda: emu.host.order_status(order_id) in ("CANCELLED", "REFUNDED"))
    assert emu.journal.get(order_id).outcome.name != "APPROVED"
