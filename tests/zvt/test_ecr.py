"""The ZVT ECR driver against a terminal scripted here from firmware_protocol.zvt and the ZVT
link (PT role), over a VirtualTransport pair, on a fake clock: the driver's every read lets the
terminal take its turn first, and a read that finds nothing moves the clock on by the time the
driver would have waited. No threads, no sleeps."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytest

from firmware_protocol.zvt import (
    Abort, Aborted, Ack, Authorisation, CardTotal, Completion, EndOfDay, IndividualTotals, IntermediateStatus,
    Nack, PrintLine, PrintTextBlock, Refund, Registration, Reversal, StatusEnquiry, StatusInformation, Tlv,
    TlvContainer,
)

from posterm.ecr.journal import Journal
from posterm.ecr.results import Outcome, OutcomeMismatch, Reason
from posterm.errors import Disconnected, LocalProtocolError, PosTimeout
from posterm.families.events import Delivered, MessageReceived
from posterm.families.interfaces import EcrDriver
from posterm.families.pump import Pump
from posterm.families.zvt.ecr import Unsupported, ZvtRefused, ZvtTerminal, outcome_for, reason_for
from posterm.families.zvt.link import ZvtLink
from posterm.transport.virtual import VirtualTransport

FRAMINGS = ["serial", "tcp"]
PASSWORD = "123456"
OPERATOR = "654321"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


Script = Callable[[Any, "Terminal"], list]


class Terminal:
    """The PT: its ZVT link on end ``b``; ``script(command, pt)`` gives the messages that answer
    a command (80 00 00 or 84 xx first, then what the PT sends holding control)."""

    def __init__(self, end: VirtualTransport, framing: str, clock: Clock, script: Script) -> None:
        self.end = end
        self.link = ZvtLink("pt", framing)
        self.pump = Pump(self.link, None, self._write, clock=clock)
        self.clock = clock
        self.script = script
        self.received: list[Any] = []
        self.acked: list[Any] = []          # our messages the ECR acknowledged 80 00 00
        self.after_write: Callable[[bytes], None] | None = None

    def _write(self, data: bytes) -> None:
        self.end.write(data)
        if self.after_write is not None:
            self.after_write(data)

    def step(self) -> None:
        try:
            data = self.end.read(4096, 0)
        except Disconnected:
            return
        for event in self.pump.feed(data, self.clock()):
            if isinstance(event, MessageReceived):
                self.received.append(event.message)
                for message in self.script(event.message, self):
                    self.pump.send(message)
            elif isinstance(event, Delivered):
                self.acked.append(event.message)

    def commands(self, kind: type) -> list:
        return [m for m in self.received if isinstance(m, kind)]


class Line:
    """The driver's transport: end ``a``, the terminal stepped before each read; a read that
    finds nothing moves the fake clock on by its timeout."""

    def __init__(self, end: VirtualTransport, pt: Terminal, clock: Clock) -> None:
        self.end = end
        self.pt = pt
        self.clock = clock
        self.before_write: Callable[[bytes], None] | None = None
        self.description = "test line"

    def read(self, max_bytes: int, timeout: float) -> bytes:
        self.pt.step()
        data = self.end.read(max_bytes, 0)
        if not data:
            self.clock.t += max(timeout, 0.001)
            self.pt.step()
            data = self.end.read(max_bytes, 0)
        return data

    def write(self, data: bytes) -> None:
        if self.before_write is not None:
            self.before_write(data)
        self.end.write(data)

    def close(self) -> None:
        self.end.close()


APPROVAL = dict(receipt_no=231, trace=975, card_name="Alipay+", pan="559883EEEEEE8074", terminal_id="52523535",
                date="0405", time="225558")


def scripted(*, decline: int | None = None, hold: bool = False) -> Script:
    """A terminal that approves (or declines with ``decline``, or waits for the customer with
    ``hold`` until an abort), prints a receipt, reverses and closes the day."""

    def script(cmd: Any, pt: Terminal) -> list:
        if isinstance(cmd, Registration):
            if cmd.password != PASSWORD:
                return [Ack(), Aborted(0x83)]
            return [Ack(), Completion.make(terminal_id="52523535", currency=978)]
        if isinstance(cmd, StatusEnquiry):
            return [Ack(), Completion(software_version="POSTERM-ZVT 1.0", terminal_status=0)]
        if isinstance(cmd, Authorisation):
            if hold:
                return [Ack(), IntermediateStatus(0x0A)]
            if decline is not None:
                return [Ack(), IntermediateStatus(0x04),
                        StatusInformation.make(result_code=decline, amount=cmd.fields.amount, currency=978),
                        Aborted(decline)]
            return [Ack(), IntermediateStatus(0x0A), IntermediateStatus(0x01),
                    StatusInformation.make(result_code=0, amount=cmd.fields.amount, currency=978, **APPROVAL),
                    PrintLine(0, "POSTERM DEMO SHOP"), PrintLine(0, ""), PrintLine(0xFF, "THANK YOU"),
                    Completion()]
        if isinstance(cmd, Abort):
            return [Ack(), Aborted(0x6C)]
        if isinstance(cmd, Reversal):
            if cmd.password != OPERATOR:
                return [Ack(), Aborted(0x83)]
            return [Ack(), StatusInformation.make(result_code=0, amount=1250, currency=978, receipt_no=232,
                                                  trace=977),
                    Completion()]
        if isinstance(cmd, Refund):
            return [Ack(), StatusInformation.make(result_code=0, amount=cmd.fields.amount, currency=978,
                                                  receipt_no=233, trace=978), Completion()]
        if isinstance(cmd, EndOfDay):
            totals = IndividualTotals(233, 234, {"eurocard": CardTotal(2, 958)}).encode()
            block = PrintTextBlock.make(tlv=TlvContainer((Tlv(0x25, (Tlv(0x07, b"END OF DAY"),
                                                                      Tlv(0x07, b"TOTAL EUR 9.58"))),)))
            return [Ack(), StatusInformation.make(result_code=0, amount=958, trace=982, date="0406", time="081706",
                                                  single_amounts=totals),
                    block, Completion()]
        return [Nack(0x83)]

    return script


def rig(tmp_path, framing: str = "serial", script: Script | None = None, manipulator=None, **kw):
    clock = Clock()
    a, b = VirtualTransport.pair(manipulator)
    pt = Terminal(b, framing, clock, script or scripted())
    line = Line(a, pt, clock)
    journal = Journal(tmp_path / "journal.db")
    term = ZvtTerminal(line, port_name="test", journal=journal, framing=framing, password=PASSWORD, clock=clock,
                       **kw)
    return term, pt, line, journal


# -- the API ----------------------------------------------------------------------------------


def test_the_driver_has_the_ecr_driver_shape(tmp_path):
    term, *_ = rig(tmp_path)
    assert isinstance(term, EcrDriver)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_registration_until_completion(tmp_path, framing):
    term, pt, _, _ = rig(tmp_path, framing)
    info = term.hello()
    assert info.terminal_id == "52523535"
    reg = pt.commands(Registration)[0]
    assert (reg.password, reg.config_byte, reg.currency) == (PASSWORD, 0xDE, 978)
    pt.step()                    # the terminal reads our last 80 00 00
    assert pt.link.idle and term._link.idle


def test_registration_refused_is_one_clear_error(tmp_path):
    term, *_ = rig(tmp_path)
    term._password = "000000"
    with pytest.raises(ZvtRefused, match="registration refused.*0x83"):
        term.hello()


@pytest.mark.parametrize("framing", FRAMINGS)
def test_approved_payment_with_progress_and_receipt(tmp_path, framing):
    term, pt, _, journal = rig(tmp_path, framing)
    progress = []
    result = term.pay(1250, "EUR", order_id="A-1", on_progress=progress.append)
    assert result.outcome is Outcome.APPROVED and result.amount_minor == 1250 and result.currency == "EUR"
    assert result.trade_no == "975" and result.code_last4 == "8074"
    assert result.receipt == ("POSTERM DEMO SHOP", "", "THANK YOU")
    assert [(p.status, p.stage.name, p.order_id) for p in progress] == [
        (0x0A, "WAITING_FOR_SCAN", "A-1"), (0x01, "WAITING_FOR_PIN", "A-1")]
    auth = pt.commands(Authorisation)[0]
    assert (auth.fields.amount, auth.fields.currency) == (1250, 978)
    entry = journal.get("A-1")
    assert (entry.state, entry.outcome) == ("final", "approved")
    assert entry.result["zvt"]["receipt_no"] == 231 and entry.result["zvt"]["trace"] == 975
    pt.step()
    # the ECR acknowledged the completions: its registration's (the session's first transaction
    # registers first) and the payment's
    assert len(pt.commands(Registration)) == 1
    assert sum(isinstance(m, Completion) for m in pt.acked) == 2


def test_declined_payment_maps_the_result_code(tmp_path):
    term, _, _, journal = rig(tmp_path, script=scripted(decline=0x33))
    result = term.pay(500_000, "EUR", order_id="D-1")
    assert result.outcome is Outcome.DECLINED and result.reason is Reason.INSUFFICIENT_BALANCE
    assert "0x33" in result.reason_text
    assert journal.get("D-1").outcome == "declined"


def test_result_codes():
    assert outcome_for(0) == (Outcome.APPROVED, Reason.NONE)
    assert outcome_for(0x6C) == (Outcome.CANCELLED, Reason.CUSTOMER_CANCELLED)
    assert outcome_for(0x6C, aborted_by_ecr=True) == (Outcome.CANCELLED, Reason.ABORTED_BY_ECR)
    assert outcome_for(0x37) == (Outcome.DECLINED, Reason.WRONG_PIN)
    assert reason_for(0x99) is Reason.OTHER


# -- the journal before the acknowledgement ---------------------------------------------------------


def _is_status_information(data: bytes) -> bool:
    # serial: the frame may follow the ACK byte of the ECR's last frame in one write
    return b"\x10\x02\x04\x0f" in data or data.startswith(b"\x04\x0f")


@pytest.mark.parametrize("framing", FRAMINGS)
def test_result_journaled_before_its_ack_leaves_line_killed_after_status_information(tmp_path, framing):
    term, pt, line, journal = rig(tmp_path, framing)
    seen_at_ack: list[str | None] = []

    def kill_after_status(data: bytes) -> None:
        if _is_status_information(data):
            pt.end.close()          # the line dies right after the status information

    def before_write(data: bytes) -> None:
        entry = journal.get("K-1")
        seen_at_ack.append(entry.outcome if entry else None)

    pt.after_write = kill_after_status
    line.before_write = before_write
    with pytest.raises(Disconnected):
        term.pay(1250, "EUR", order_id="K-1")
    entry = journal.get("K-1")
    assert (entry.state, entry.outcome) == ("final", "approved")
    assert entry.result["zvt"]["receipt_no"] == 231
    assert seen_at_ack[-1] == "approved"         # the write that carried the 80 00 00 came after the journal
    assert not any(isinstance(m, StatusInformation) for m in pt.acked)
    assert term.recover() == []                  # nothing unfinished: the approval is final


def test_journal_failure_acknowledges_nothing(tmp_path):
    term, pt, _, journal = rig(tmp_path)

    def broken(*a, **kw):
        raise OSError("disk full")

    journal.record_outcome = broken
    with pytest.raises(OSError):
        term.pay(1250, "EUR", order_id="J-1")
    for _ in range(3):
        pt.step()
    assert not any(isinstance(m, StatusInformation) for m in pt.acked)


# -- a bad line -------------------------------------------------------------------------------------


def _corrupt_first(prefix: bytes, direction: str):
    done = []

    def manipulator(data: bytes, d: str) -> bytes:
        if d == direction and not done and prefix in data:
            done.append(data)
            return data[:-1] + bytes([data[-1] ^ 0xFF])        # a wrong CRC byte
        return data

    return manipulator, done


def test_a_naked_command_is_repeated_and_pays_once(tmp_path):
    manipulator, done = _corrupt_first(b"\x10\x02\x06\x01", "a->b")
    term, pt, _, _ = rig(tmp_path, manipulator=manipulator)
    result = term.pay(1250, "EUR", order_id="N-1")
    assert done and result.approved
    assert len(pt.commands(Authorisation)) == 1
    assert term.link_stats["retransmits"] == 1 and pt.link.stats["naks_sent"] == 1


def test_a_naked_status_information_is_repeated_and_journaled_once(tmp_path):
    manipulator, done = _corrupt_first(b"\x10\x02\x04\x0f", "b->a")
    term, pt, _, journal = rig(tmp_path, manipulator=manipulator)
    result = term.pay(1250, "EUR", order_id="N-2")
    assert done and result.approved
    assert term.link_stats["naks_sent"] == 1 and pt.link.stats["retransmits"] == 1
    assert journal.attempts("N-2") == []                  # one answer, recorded once


# -- reversal, refund, end of day, status -------------------------------------------------------------


def test_reversal_by_the_journaled_receipt_number(tmp_path):
    term, pt, _, journal = rig(tmp_path)
    term.pay(1250, "EUR", order_id="R-1")
    result = term.cancel("R-1", operator_password=OPERATOR)
    assert result.outcome is Outcome.CANCELLED
    rev = pt.commands(Reversal)[0]
    assert rev.fields.receipt_no == 231 and rev.password == OPERATOR
    assert journal.get("R-1", "cancel").outcome == "cancelled"
    assert journal.get("R-1").outcome == "approved"        # the sale's row never downgrades


def test_reversal_needs_a_journaled_approval(tmp_path):
    term, pt, _, _ = rig(tmp_path)
    with pytest.raises(LocalProtocolError, match="receipt number"):
        term.cancel("nope", operator_password=OPERATOR)
    assert pt.received == []


def test_refund_and_its_id_never_sent_twice(tmp_path):
    term, pt, _, _ = rig(tmp_path)
    term.pay(1250, "EUR", order_id="F-1")
    first = term.refund("F-1", 500, "RF-1", OPERATOR)
    again = term.refund("F-1", 500, "RF-1", OPERATOR)
    assert first.approved and again.approved and first.refunded_total_minor == 500
    assert len(pt.commands(Refund)) == 1
    assert pt.commands(Refund)[0].fields.amount == 500


def test_end_of_day_totals(tmp_path):
    term, pt, _, _ = rig(tmp_path)
    report = term.settle(OPERATOR)
    assert report.outcome is Outcome.APPROVED and report.batch_no == 982
    (totals,) = report.totals
    assert (totals.currency, totals.approved_count, totals.approved_minor) == ("EUR", 2, 958)
    assert report.receipt == ("END OF DAY", "TOTAL EUR 9.58")
    assert pt.commands(EndOfDay)[0].password == OPERATOR


def test_status_enquiry(tmp_path):
    term, pt, _, _ = rig(tmp_path)
    st = term.status()
    assert st.state.name == "IDLE" and term.software_version == "POSTERM-ZVT 1.0"
    assert pt.commands(StatusEnquiry)[0].password == PASSWORD


# -- abort --------------------------------------------------------------------------------------------


def test_pay_aborts_when_its_timeout_passes(tmp_path):
    term, pt, line, journal = rig(tmp_path, script=scripted(hold=True))
    start = line.clock()
    result = term.pay(1250, "EUR", order_id="T-1", timeout=30)
    assert result.outcome is Outcome.CANCELLED and result.reason is Reason.ABORTED_BY_ECR
    assert result.gave_up_after == 30 and line.clock() - start >= 30
    assert len(pt.commands(Abort)) == 1
    assert journal.get("T-1").outcome == "cancelled"


def test_abort_asked_while_paying(tmp_path):
    term, pt, _, _ = rig(tmp_path, script=scripted(hold=True))
    result = term.pay(1250, "EUR", order_id="T-2", on_progress=lambda p: term.abort())
    assert result.outcome is Outcome.CANCELLED and result.gave_up_after is None
    assert len(pt.commands(Abort)) == 1


def test_abort_with_nothing_in_progress_is_refused_quietly(tmp_path):
    term, pt, _, _ = rig(tmp_path, script=lambda cmd, pt: [Nack(0x83)])
    assert term.abort() is None
    assert len(pt.commands(Abort)) == 1 and term._link.idle


def test_approved_for_another_amount_is_journaled_and_raised(tmp_path):
    def other_amount(cmd, pt):
        if isinstance(cmd, Authorisation):
            return [Ack(), StatusInformation.make(result_code=0, amount=9999, currency=978, **APPROVAL), Completion()]
        return []

    term, _, _, journal = rig(tmp_path, script=other_amount)
    with pytest.raises(OutcomeMismatch, match="9999"):
        term.pay(1250, "EUR", order_id="M-1")
    entry = journal.get("M-1")
    assert entry.outcome == "approved" and entry.result["amount_minor"] == 9999 and entry.amount_minor == 1250


def test_no_outcome_at_all_stays_unfinished_and_recover_records_it_cancelled(tmp_path):
    def silent(cmd, pt):
        return [Ack(), IntermediateStatus(0x0A)] if isinstance(cmd, Authorisation) else []   # ignores the abort

    term, pt, _, journal = rig(tmp_path, script=silent)
    with pytest.raises(PosTimeout, match="unfinished"):
        term.pay(1250, "EUR", order_id="U-1", timeout=10)
    assert journal.get("U-1").state == "sent"
    with pytest.raises(LocalProtocolError, match="charge twice"):
        term.pay(1250, "EUR", order_id="U-1")               # never sent again while unfinished
    assert [a.what for a in journal.attempts("U-1")] == ["gave_up"]
    # No result was ever acknowledged: a ZVT terminal does not keep it. Nothing is sent.
    sent = len(pt.received)
    (res,) = term.recover()
    assert res.outcome is Outcome.CANCELLED and "never acknowledged" in res.reason_text
    assert (journal.get("U-1").state, journal.get("U-1").outcome) == ("final", "cancelled")
    assert len(pt.received) == sent and term.recover() == []
    assert term.pay(1250, "EUR", order_id="U-1").outcome is Outcome.CANCELLED   # the journal answers
    assert len(pt.commands(Authorisation)) == 1


def test_an_unacknowledged_result_for_no_order_of_ours_is_refused(tmp_path):
    """The register gave a payment up and restarted (a new driver on the same line); the
    terminal then sends that payment's approval while the new driver registers. It is for no
    order of the new driver's: never acknowledged (the terminal reverses it), never taken for
    the registration's, and the unfinished order is left to recover."""
    def slow(cmd, pt):
        if isinstance(cmd, Authorisation):
            return [Ack(), IntermediateStatus(0x0A)]          # then ignores the abort
        return scripted()(cmd, pt) if isinstance(cmd, Registration) else []

    term, pt, line, journal = rig(tmp_path, script=slow)
    with pytest.raises(PosTimeout):
        term.pay(1250, "EUR", order_id="G-1", timeout=10)
    again = ZvtTerminal(line, port_name="test", journal=journal, framing="serial", password=PASSWORD,
                        clock=line.clock)
    pt.pump.send(StatusInformation.make(result_code=0, amount=1250, currency=978, **APPROVAL))
    assert again.hello(timeout=30).terminal_id == "52523535"      # once the PT gave the result up (T3)
    assert not any(isinstance(m, StatusInformation) for m in pt.acked)
    assert again.link_stats["results_refused"] == 1
    assert journal.get("G-1").state == "sent"


def test_a_late_result_goes_to_the_order_given_up_not_to_the_next_command(tmp_path):
    def slow(cmd, pt):
        if isinstance(cmd, Authorisation):
            return [Ack(), IntermediateStatus(0x0A)]          # then ignores the abort
        return scripted()(cmd, pt) if isinstance(cmd, Registration) else []

    term, pt, _, journal = rig(tmp_path, script=slow)
    with pytest.raises(PosTimeout):
        term.pay(1250, "EUR", order_id="L-1", timeout=10)
    # The customer pays after all: the terminal ends that dialog while the ECR says hello.
    pt.pump.send(StatusInformation.make(result_code=0, amount=1250, currency=978, **APPROVAL))
    pt.pump.send(Completion())
    info = term.hello()
    assert info.terminal_id == "52523535"
    entry = journal.get("L-1")
    assert (entry.state, entry.outcome) == ("final", "approved") and entry.result["zvt"]["receipt_no"] == 231


# -- what ZVT cannot do, and secrets ---------------------------------------------------------------------


def test_a_journaled_order_is_answered_from_the_journal(tmp_path):
    term, pt, _, _ = rig(tmp_path)
    first = term.pay(1250, "EUR", order_id="P-1")
    again = term.pay(1250, "EUR", order_id="P-1")
    assert first.approved and again.approved and len(pt.commands(Authorisation)) == 1


def test_unsupported(tmp_path):
    term, *_ = rig(tmp_path)
    with pytest.raises(Unsupported):
        term.query("A-1")
    with pytest.raises(Unsupported):
        term.pay(100, "EUR", payment_code="289900000000000001")
    with pytest.raises(LocalProtocolError):
        term.pay(1.5, "EUR")


def test_passwords_never_in_clear_in_the_trace(tmp_path, caplog):
    term, *_ = rig(tmp_path, trace=True)
    with caplog.at_level(logging.DEBUG, logger="posterm.wire"):
        term.hello()
        term.status()
        term.pay(1250, "EUR", order_id="S-1")
        term.cancel("S-1", operator_password=OPERATOR)
        term.settle(OPERATOR)
    text = caplog.text
    assert "Registration" in text and "<masked>" in text and "2A 2A 2A" in text
    for secret in (PASSWORD, OPERATOR, "12 34 56", "65 43 21"):
        assert secret not in text
    assert PASSWORD not in repr(term)


def test_open_by_url_and_a_bad_password_is_one_clear_error(tmp_path):
    a, b = VirtualTransport.pair(name="zvt-ecr-open")
    with ZvtTerminal.open("virtual://zvt-ecr-open", journal=str(tmp_path / "j.db"), password=PASSWORD) as term:
        assert term._link.transport == "serial" and term.journal is not None
    VirtualTransport.pair(name="zvt-ecr-open-2")
    with pytest.raises(LocalProtocolError, match="6 decimal digits"):
        ZvtTerminal.open("virtual://zvt-ecr-open-2", journal=str(tmp_path / "j2.db"), password="12ab")
