"""The firmware alone (sans-IO, no threads, no host): reconciling the orders a killed terminal
left in flight. Host answers are crafted here, so every branch is reached quickly."""

from __future__ import annotations

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Outcome, Reason
from posterm.crypto.pinpad import OperatorPassword, SecureModule
from posterm.emulator.firmware import Firmware, FirmwareConfig, Identity
from posterm.emulator.orders import OrderStore
from posterm.emulator.peripherals import OperatorKeypad, PinPad

CFG = FirmwareConfig(reconcile_base=1.0, reconcile_max=8.0)


@pytest.fixture
def journal(tmp_path):
    j = OrderStore(tmp_path / "journal.db")
    j.begin_order("K-1", 1234, "CNY", "0005", False, "2026-11-22T10:00:00+00:00")  # then: kill -9
    yield j
    j.close()


def restarted(journal, config=CFG) -> Firmware:
    fw = Firmware(Identity(), journal, PinPad(SecureModule()), OperatorKeypad(OperatorPassword(password="246810")),
                  config=config)
    assert fw.start(100.0) == 1
    fw.tick(100.0)
    return fw


def answer(status: h.HostStatus, **kw) -> h.AuthResponse:
    return h.AuthResponse(order_id="K-1", status=status, amount_minor=1234, currency="CNY", **kw)


def only_call(fw: Firmware):
    calls = fw.take_host_calls()
    assert len(calls) == 1, calls
    return calls[0]


def test_host_never_saw_it_gets_a_reversal_advice(journal):
    fw = restarted(journal)
    q = only_call(fw)
    assert isinstance(q.message, h.HostQuery) and q.message.order_id == "K-1"
    fw.on_host_reply(q.token, answer(h.HostStatus.NOT_FOUND), 100.1)
    rev = only_call(fw)
    assert isinstance(rev.message, h.ReversalAdvice) and rev.message.order_id == "K-1"
    assert not journal.get("K-1").final                           # not final until the host has it
    fw.on_host_reply(rev.token, answer(h.HostStatus.NOT_FOUND), 100.2)
    rec = journal.get("K-1")
    assert rec.final and rec.outcome is Outcome.CANCELLED and journal.unfinished() == []
    fw.tick(1000.0)
    assert fw.take_host_calls() == []                             # settled: never asked again


def test_pending_at_the_host_is_cancelled(journal):
    fw = restarted(journal)
    q = only_call(fw)
    fw.on_host_reply(q.token, answer(h.HostStatus.WAIT_BUYER), 100.1)
    cancel = only_call(fw)
    assert isinstance(cancel.message, h.HostCancel)
    fw.on_host_reply(cancel.token, answer(h.HostStatus.CANCELLED, reason=Reason.HOST_UNAVAILABLE), 100.2)
    assert journal.get("K-1").outcome is Outcome.CANCELLED


def test_approved_at_the_host_is_kept_approved(journal):
    fw = restarted(journal)
    q = only_call(fw)
    fw.on_host_reply(q.token, answer(h.HostStatus.APPROVED, trade_no="T123", paid_at="2026-11-22T10:00:01+00:00"),
                     100.1)
    rec = journal.get("K-1")
    assert rec.outcome is Outcome.APPROVED and rec.trade_no == "T123"
    assert fw.take_host_calls() == []                             # nothing to undo


def test_approved_at_the_host_is_reversed_when_the_ecr_cannot_query(journal):
    # Concert: the ECR was told "not processed" (or nothing) and has no query to learn better,
    # so an approval that happened meanwhile is given back, never kept unseen.
    from dataclasses import replace

    fw = restarted(journal, replace(CFG, void_unfinished=True))
    q = only_call(fw)
    fw.on_host_reply(q.token, answer(h.HostStatus.APPROVED, trade_no="T123"), 100.1)
    assert not journal.get("K-1").final
    cancel = only_call(fw)
    assert isinstance(cancel.message, h.HostCancel) and cancel.message.order_id == "K-1"
    fw.on_host_reply(cancel.token, answer(h.HostStatus.REFUNDED, reason=Reason.HOST_UNAVAILABLE), 100.2)
    rec = journal.get("K-1")
    assert rec.final and rec.outcome is Outcome.CANCELLED and journal.unfinished() == []


def test_silent_host_is_asked_again_with_capped_back_off(journal):
    fw = restarted(journal)
    now, gaps = 100.0, []
    for _ in range(6):
        call = only_call(fw)
        fw.on_host_reply(call.token, None, now, "PosTimeout")
        due = fw.next_deadline()
        gaps.append(round(due - now, 3))
        assert fw.take_host_calls() == []                         # nothing before it is due
        now = due
        fw.tick(now)
    assert gaps == sorted(gaps) and gaps[0] >= CFG.reconcile_base and max(gaps) <= CFG.reconcile_max
    assert not journal.get("K-1").final and [r.order_id for r in journal.unfinished()] == ["K-1"]
    assert fw.status().unfinished == 1
