"""The ZVT driver where a dialog goes wrong or a password is missing: an approval whose
completion never comes, an abort the terminal never answers, the password the operations
fall back on, the refund's receipt number, the transport a URL implies. The scripted
terminal and fake clock of test_ecr (no threads, no sleeps)."""

from __future__ import annotations

import pytest

from firmware_protocol.zvt import Abort, Ack, Authorisation, Completion, Registration, IntermediateStatus, Refund, Reversal, StatusInformation

from posterm.ecr.results import Outcome
from posterm.errors import LocalProtocolError, PosTimeout
from posterm.families.zvt.ecr import ABORT_GRACE, NO_PASSWORD, ZvtTerminal, framing_for
from tests.zvt.test_ecr import APPROVAL, PASSWORD, rig, scripted


@pytest.mark.parametrize("url, framing", [
    ("tcp://10.0.0.5:20007", "tcp"), ("socket://127.0.0.1:20007", "tcp"), ("SOCKET://h:1", "tcp"),
    ("/dev/ttyUSB0", "serial"), ("/dev/pts/3", "serial"), ("rfc2217://h:2217", "serial"),
    ("virtual://x", "serial"), ("loop://", "serial"),
])
def test_the_transport_a_url_implies(url, framing):
    assert framing_for(url) == framing


def test_the_driver_takes_its_framing_from_the_port_name(tmp_path):
    from posterm.transport.virtual import VirtualTransport

    a, _ = VirtualTransport.pair()
    assert ZvtTerminal(a, port_name="socket://127.0.0.1:20007", journal=None)._link.transport == "tcp"
    assert ZvtTerminal(a, port_name="/dev/ttyUSB0", journal=None)._link.transport == "serial"
    assert ZvtTerminal(a, port_name="socket://h:1", journal=None, framing="serial")._link.transport == "serial"


def test_an_approval_whose_completion_never_comes_is_returned_approved(tmp_path):
    """The status information (journaled, acknowledged) is the result; the terminal then
    goes quiet. pay gives up waiting for the completion and returns the approval: the
    register must not tell the operator "unknown" about a payment it holds approved."""
    def no_completion(cmd, pt):
        if isinstance(cmd, Authorisation):
            return [Ack(), StatusInformation.make(result_code=0, amount=cmd.fields.amount, currency=978, **APPROVAL)]
        return scripted()(cmd, pt)

    term, pt, _, journal = rig(tmp_path, script=no_completion)
    result = term.pay(1250, "EUR", order_id="NC-1", timeout=10)
    assert result.outcome is Outcome.APPROVED and result.trade_no == "975"
    entry = journal.get("NC-1")
    assert (entry.state, entry.outcome) == ("final", "approved")
    assert any(isinstance(m, StatusInformation) for m in pt.acked)
    assert term.recover() == []


def test_an_abort_asked_for_waits_a_bounded_time_for_the_terminal(tmp_path):
    """Ctrl-C (abort() while pay runs) and a terminal that never answers the 06 B0: pay does
    not wait out its own timeout, but ABORT_GRACE and T3; the order is unfinished."""
    def deaf(cmd, pt):
        if isinstance(cmd, Authorisation):
            return [Ack(), IntermediateStatus(0x0A)]
        return [] if isinstance(cmd, Abort) else scripted()(cmd, pt)

    term, pt, line, journal = rig(tmp_path, script=deaf)
    term.hello()
    start = line.clock()
    with pytest.raises(PosTimeout, match="after Abort.*unfinished"):
        term.pay(1250, "EUR", order_id="AB-1", timeout=600, on_progress=lambda p: term.abort())
    waited = line.clock() - start
    assert waited <= ABORT_GRACE + term._link.config.t3 + 1 and waited < 600
    assert journal.get("AB-1").state == "sent"
    assert [a.note for a in journal.attempts("AB-1")] == ["no outcome within 600 s (Abort sent, not confirmed)"]
    (res,) = term.recover()
    assert res.outcome is Outcome.CANCELLED and journal.get("AB-1").outcome == "cancelled"


def test_the_operations_fall_back_on_the_terminal_password(tmp_path):
    term, pt, _, _ = rig(tmp_path)
    term.pay(1250, "EUR", order_id="PW-1")
    term.cancel("PW-1")                                  # no operator password: the terminal's
    assert pt.commands(Reversal)[0].password == PASSWORD
    term.refund("PW-1", 100, "RF-PW-1")
    assert pt.commands(Refund)[0].password == PASSWORD


def test_without_any_password_the_error_says_how_to_give_one(tmp_path):
    term, pt, _, _ = rig(tmp_path)
    term._password = None
    with pytest.raises(LocalProtocolError) as exc:
        term.hello()
    assert str(exc.value) == NO_PASSWORD and "--terminal-password" in NO_PASSWORD
    for call in (lambda: term.settle(), lambda: term.cancel("X"), lambda: term.refund("X", 1, "R", currency="EUR")):
        with pytest.raises(LocalProtocolError, match="--terminal-password"):
            call()
    assert pt.received == []


def test_the_first_transaction_of_a_session_registers_once(tmp_path):
    """The config byte decides who prints: a session that never said hello registers before
    its first transaction (once), so the receipt comes to the register."""
    term, pt, _, _ = rig(tmp_path)
    result = term.pay(1250, "EUR", order_id="REG-1")
    assert result.receipt and len(pt.commands(Registration)) == 1
    term.pay(1250, "EUR", order_id="REG-2")
    term.settle("654321")
    assert len(pt.commands(Registration)) == 1


def test_a_refused_registration_leaves_the_terminal_settings_and_the_payment_goes_on(tmp_path):
    term, pt, _, _ = rig(tmp_path)
    term._password = "000000"                     # the scripted terminal refuses it
    assert term.pay(1250, "EUR", order_id="REG-3").approved
    term.pay(1250, "EUR", order_id="REG-4")
    assert len(pt.commands(Registration)) == 1    # tried once per session


def test_a_refund_names_the_payment_by_its_journaled_receipt_number(tmp_path):
    term, pt, _, _ = rig(tmp_path, script=scripted())
    term.pay(1250, "EUR", order_id="RN-1")
    out = term.refund("RN-1", 500, "RF-RN-1", "654321")
    assert out.approved
    refund = pt.commands(Refund)[0]
    assert refund.fields.receipt_no == 231 and refund.fields.amount == 500
    term.refund("ELSEWHERE", 100, "RF-X", "654321", currency="EUR")   # not in the journal: no receipt number
    assert pt.commands(Refund)[1].fields.receipt_no is None


def test_the_trace_masks_pan_and_track_data_and_withholds_their_hex(tmp_path, caplog):
    import logging

    pan, track2 = "4761739001010010", "4761739001010010D22122011143804400000"

    def with_card_data(cmd, pt):
        if isinstance(cmd, Authorisation):
            return [Ack(), StatusInformation.make(result_code=0, amount=cmd.fields.amount, currency=978, pan=pan,
                                                  track2=track2, receipt_no=5), Completion()]
        return scripted()(cmd, pt)

    term, _, _, journal = rig(tmp_path, script=with_card_data, trace=True)
    with caplog.at_level(logging.DEBUG, logger="posterm.wire"):
        result = term.pay(1250, "EUR", order_id="TR-1")
    assert result.code_last4 == "0010"                      # the last four digits, as for every family
    text = caplog.text
    assert '"pan", "value": "<masked>"' in text and '"track2", "value": "<masked>"' in text
    assert "(hex withheld: the APDU holds a secret BMP)" in text
    for secret in (pan, track2, "47 61 73 90", pan[:8]):
        assert secret not in text
    assert pan not in str(journal.get("TR-1").result) and track2 not in str(journal.get("TR-1").result)
