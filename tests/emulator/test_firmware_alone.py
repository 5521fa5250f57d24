"""The firmware alone (sans-IO, no threads, no host): ECR messages in, crafted host answers
in, and what it says back."""

from __future__ import annotations

import logging

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.native import messages as m
from posterm.crypto.pinpad import OperatorPassword, SecureModule
from posterm.emulator.firmware import Firmware, FirmwareConfig, Identity
from posterm.emulator.orders import OrderStore
from posterm.emulator.peripherals import OperatorKeypad, PinPad


@pytest.fixture
def fw(tmp_path):
    journal = OrderStore(tmp_path / "journal.db")
    firmware = Firmware(Identity(), journal, PinPad(SecureModule()),
                        OperatorKeypad(OperatorPassword(password="246810")), config=FirmwareConfig(print_time=0.01))
    firmware.start(0.0)
    yield firmware
    journal.close()


def test_an_error_from_the_ecr_is_logged_never_answered_with_an_error(fw, caplog):
    with caplog.at_level(logging.WARNING, logger="posterm.emulator"):
        fw.on_message(m.Error(code=m.ErrorCode.UNKNOWN_MESSAGE, text="what?", in_reply_to=0x0011), 1.0)
    assert fw.take_ecr() == []            # two peers answering errors with errors would never stop
    assert "UNKNOWN_MESSAGE" in caplog.text
    fw.on_message(m.Progress(order_id="X", stage=m.Stage.AUTHORISING, text="?"), 1.0)
    (err,) = fw.take_ecr()                # anything else that is not a request still gets one
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.UNKNOWN_MESSAGE


# ------------------------------------------------------------------ cancel needs the operator for a paid order

NOW = "2026-11-22T10:00:00+00:00"


def _paid(fw, order_id="P-1"):
    fw.journal.begin_order(order_id, 700, "CNY", "0001", False, NOW)
    fw.journal.finish_order(order_id, m.Outcome.APPROVED, m.Reason.NONE, NOW, trade_no="T1")


def _finish(fw, now):
    """Run the timers (the receipt) and return what went to the ECR, Progress and Print left out."""
    fw.tick(now)
    return [x for x in fw.take_ecr() if not isinstance(x, (m.Progress, m.Print))]


def test_cancel_of_a_paid_order_without_the_password_is_refused_at_the_terminal(fw):
    _paid(fw)
    fw.on_message(m.Cancel(order_id="P-1"), 1.0)
    assert fw.take_host_calls() == []                               # nothing reaches the host
    (r,) = _finish(fw, 1.1)
    assert (r.outcome, r.reason) == (m.Outcome.DECLINED, m.Reason.OPERATOR_PASSWORD_WRONG)
    assert fw.state is m.TerminalState.IDLE and fw.journal.get("P-1").outcome is m.Outcome.APPROVED


def test_wrong_cancel_passwords_count_toward_the_lock_shared_with_refunds(fw):
    _paid(fw)
    for i in range(5):
        fw.on_message(m.Cancel(order_id="P-1", operator_password="135790"), 1.0 + i)
        assert fw.take_host_calls() == []
        (r,) = _finish(fw, 1.1 + i)
        assert r.outcome is m.Outcome.DECLINED
        assert r.reason in (m.Reason.OPERATOR_PASSWORD_WRONG, m.Reason.OPERATOR_LOCKED)
    fw.on_message(m.Refund(order_id="P-1", amount_minor=1, currency="CNY", refund_id="RF-1",
                           operator_password="246810"), 10.0)
    (rf,) = _finish(fw, 10.1)
    assert rf.reason == m.Reason.OPERATOR_LOCKED
    fw.on_message(m.Cancel(order_id="P-1"), 11.0)                   # no password, locked: says so
    (r,) = _finish(fw, 11.1)
    assert r.reason == m.Reason.OPERATOR_LOCKED


def test_cancel_with_the_password_goes_to_the_host(fw):
    _paid(fw)
    fw.on_message(m.Cancel(order_id="P-1", operator_password="246810"), 1.0)
    (call,) = fw.take_host_calls()
    assert isinstance(call.message, h.HostCancel)
    fw.on_host_reply(call.token, h.AuthResponse(order_id="P-1", status=h.HostStatus.REFUNDED, amount_minor=700,
                                                currency="CNY", refunded_minor=700, trade_no="T1"), 1.1)
    (r,) = _finish(fw, 1.2)
    assert r.outcome is m.Outcome.CANCELLED and r.refunded_minor == 700


@pytest.mark.parametrize("host_did_it", [True, False])
def test_a_cancel_whose_host_answer_was_lost_is_unknown_and_a_query_asks_the_host(fw, host_did_it):
    # The host may have refunded the order before its answer was lost (killed after its commit):
    # the terminal must neither say "declined" to the cancel nor keep saying APPROVED to a Query.
    _paid(fw)
    fw.on_message(m.Cancel(order_id="P-1", operator_password="246810"), 1.0)
    (call,) = fw.take_host_calls()
    fw.on_host_reply(call.token, None, 1.1, "HostTimeout")
    (r,) = _finish(fw, 1.2)
    assert r.outcome is m.Outcome.UNKNOWN
    assert not fw.journal.get("P-1").final                          # out of the batch until resolved
    fw.on_message(m.Query(order_id="P-1"), 2.0)
    calls = fw.take_host_calls()
    assert calls and isinstance(calls[-1].message, h.HostQuery)    # the host is asked, not the journal
    status = h.HostStatus.REFUNDED if host_did_it else h.HostStatus.APPROVED
    fw.on_host_reply(calls[-1].token, h.AuthResponse(order_id="P-1", status=status, amount_minor=700, currency="CNY",
                                                     refunded_minor=700 if host_did_it else 0, trade_no="T1"), 2.1)
    (q,) = _finish(fw, 2.2)
    want = m.Outcome.CANCELLED if host_did_it else m.Outcome.APPROVED
    assert q.outcome is want and fw.journal.get("P-1").outcome is want and fw.journal.get("P-1").final


@pytest.mark.parametrize("status, cancels", [(h.HostStatus.WAIT_BUYER, True), (h.HostStatus.APPROVED, False)])
def test_password_free_cancel_asks_the_host_first_when_the_terminal_does_not_know(fw, status, cancels):
    fw.on_message(m.Cancel(order_id="ELSEWHERE-1"), 1.0)           # not in this terminal's journal
    (q,) = fw.take_host_calls()
    assert isinstance(q.message, h.HostQuery)
    fw.on_host_reply(q.token, h.AuthResponse(order_id="ELSEWHERE-1", status=status, amount_minor=500,
                                             currency="CNY"), 1.1)
    if cancels:                                                     # unpaid: no password needed
        (c,) = fw.take_host_calls()
        assert isinstance(c.message, h.HostCancel)
        fw.on_host_reply(c.token, h.AuthResponse(order_id="ELSEWHERE-1", status=h.HostStatus.CANCELLED,
                                                 amount_minor=500, currency="CNY"), 1.2)
        (r,) = _finish(fw, 1.3)
        assert r.outcome is m.Outcome.CANCELLED
    else:                                                           # paid: the operator must say so
        assert fw.take_host_calls() == []
        (r,) = _finish(fw, 1.2)
        assert (r.outcome, r.reason) == (m.Outcome.DECLINED, m.Reason.OPERATOR_PASSWORD_WRONG)


# ------------------------------------------------------------------ the host refuses this terminal's logon


def test_a_refused_logon_declines_the_payment_and_says_host_offline(fw):
    fw.on_message(m.PayRequest(amount_minor=100, currency="CNY", order_id="R-1",
                               payment_code="289900000000000001"), 1.0)
    (call,) = fw.take_host_calls()
    fw.on_host_reply(call.token, None, 1.1, "HostRefusedLogon", refused=m.Reason.TERMINAL_UNKNOWN)
    (r,) = _finish(fw, 1.2)
    # The request never reached the host (it was refused at logon): nothing was charged.
    assert (r.outcome, r.reason) == (m.Outcome.DECLINED, m.Reason.TERMINAL_UNKNOWN)
    assert fw.take_host_calls() == []                               # no query, no reversal
    st = fw.status()
    assert not st.host_online and st.unfinished == 0
    assert fw.host_refusal == m.Reason.TERMINAL_UNKNOWN


# ------------------------------------------------------------------ a new order id is looked up first

PAY = m.PayRequest(amount_minor=100, currency="CNY", order_id="N-1", payment_code="289900000000000001")


def _look_up(fw, now=1.0):
    fw.on_message(PAY, now)
    (q,) = fw.take_host_calls()
    assert isinstance(q.message, h.HostQuery) and q.message.order_id == "N-1"
    assert fw.journal.get("N-1") is None             # a look-up cannot charge: nothing to reconcile yet
    assert fw.take_ecr() == []                       # and nothing new on the ECR line
    return q


def test_an_order_id_the_host_does_not_have_is_journaled_then_authorised(fw):
    q = _look_up(fw)
    fw.on_host_reply(q.token, h.AuthResponse(order_id="N-1", status=h.HostStatus.NOT_FOUND), 1.1)
    (auth,) = fw.take_host_calls()
    assert isinstance(auth.message, h.AuthRequest)
    assert fw.journal.get("N-1").state == "in_flight"


@pytest.mark.parametrize("status, outcome", [(h.HostStatus.WAIT_BUYER, m.Outcome.UNKNOWN),
                                             (h.HostStatus.DECLINED, m.Outcome.DECLINED)])
def test_an_order_id_another_terminal_used_is_answered_not_taken(fw, status, outcome):
    q = _look_up(fw)
    fw.on_host_reply(q.token, h.AuthResponse(order_id="N-1", status=status, amount_minor=100, currency="CNY",
                                             reason=m.Reason.INSUFFICIENT_BALANCE), 1.1)
    (r,) = _finish(fw, 1.2)
    assert (r.outcome, r.reason) == (outcome, m.Reason.ORDER_CONFLICT)
    assert fw.take_host_calls() == []                # never authorised, cancelled or reversed here
    assert fw.journal.get("N-1") is None and fw.status().unfinished == 0


def test_abort_during_the_look_up_sends_nothing_more(fw):
    q = _look_up(fw)
    fw.on_message(m.Abort(order_id="N-1"), 1.05)
    fw.on_host_reply(q.token, h.AuthResponse(order_id="N-1", status=h.HostStatus.APPROVED), 1.1)
    (r,) = _finish(fw, 1.2)
    assert (r.outcome, r.reason) == (m.Outcome.CANCELLED, m.Reason.ABORTED_BY_ECR)
    assert fw.take_host_calls() == []                # another terminal's paid order is not ours to cancel


def test_no_answer_to_the_look_up_declines_nothing_charged(fw):
    q = _look_up(fw)
    fw.on_host_reply(q.token, None, 11.0, "PosTimeout")
    (r,) = _finish(fw, 11.1)
    assert (r.outcome, r.reason) == (m.Outcome.DECLINED, m.Reason.HOST_UNAVAILABLE)
    assert fw.take_host_calls() == [] and fw.journal.get("N-1") is None


def test_the_look_up_can_be_turned_off(tmp_path):
    journal = OrderStore(tmp_path / "j.db")
    try:
        fw = Firmware(Identity(), journal, PinPad(SecureModule()), OperatorKeypad(OperatorPassword(password="1")),
                      config=FirmwareConfig(check_new_orders=False))
        fw.on_message(PAY, 1.0)
        (auth,) = fw.take_host_calls()
        assert isinstance(auth.message, h.AuthRequest) and journal.get("N-1").state == "in_flight"
    finally:
        journal.close()
