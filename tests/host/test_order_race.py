"""Two terminals of one merchant racing the same new order id (issue: both journaled the sale).

Deterministic: both look-ups reach the host before either authorisation, then both
authorise. The host knows which terminal owns the order (``AuthResponse.owner_terminal_id``)
and the second terminal answers its ECR ORDER_CONFLICT, outside its batch, so the
settlement batches add up to what the host holds.
"""

from __future__ import annotations

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.native import messages as m
from posterm.crypto.pinpad import OperatorPassword, SecureModule
from posterm.emulator.firmware import Firmware, FirmwareConfig, Identity
from posterm.emulator.hostlink import SignedHostLink
from posterm.emulator.orders import OrderStore
from posterm.emulator.peripherals import OperatorKeypad, PinPad

from .conftest import CODE, terminal

OPERATOR = "246810"


class Till:
    """One emulated terminal's firmware, signed to the in-process host, driven by hand."""

    def __init__(self, host, tmp_path, tid: str) -> None:
        self.tid = tid
        self.module = SecureModule()
        self.module.inject_kbpk(host.hsm.kbpk_for_injection(tid))
        self.module.load_key_block(host.hsm.initial_key_block(tid).block)
        if host.store.read().execute("SELECT 1 FROM terminals WHERE id = ?", (tid,)).fetchone() is None:
            host.register_terminal(tid, "M100000001", "CN-SH")
        self.link = SignedHostLink(self.module, host.client(), terminal_id=tid, merchant_id="M100000001",
                                   firmware_version="test 1", location="CN-SH")
        self.journal = OrderStore(tmp_path / f"{tid}.db")
        self.fw = Firmware(Identity(terminal_id=tid), self.journal, PinPad(self.module),
                           OperatorKeypad(OperatorPassword(password=OPERATOR)), config=FirmwareConfig(print_time=0.01))
        self.fw.start(0.0)
        self.now = 0.0

    def calls(self):
        return self.fw.take_host_calls()

    def answer(self, call) -> None:
        self.now += 0.01
        self.fw.on_host_reply(call.token, self.link.request(call.message, 5.0), self.now)

    def run_until_idle(self) -> list[m.Message]:
        """Answer every host call and run the timers until the firmware is idle; what the ECR got."""
        out = []
        for _ in range(200):
            for call in self.calls():
                self.answer(call)
            self.now += 0.05
            self.fw.tick(self.now)
            out += [x for x in self.fw.take_ecr() if not isinstance(x, (m.Progress, m.Print))]
            if self.fw.state is m.TerminalState.IDLE and not self.fw._host_out:
                return out
        raise AssertionError(f"{self.tid} never went idle ({self.fw.state.name})")


@pytest.fixture
def tills(host, tmp_path):
    a, b = Till(host, tmp_path, "T0000001"), Till(host, tmp_path, "T0000002")
    yield a, b
    a.journal.close()
    b.journal.close()


def _approved_at_host(host, tid):
    return host.store.read().execute("SELECT COUNT(*), COALESCE(SUM(amount_minor), 0) FROM trades "
                                     "WHERE terminal_id = ? AND status = 'APPROVED'", (tid,)).fetchone()


@pytest.mark.parametrize("code", [CODE[1], None], ids=["same-code", "each-its-own-code"])
def test_two_terminals_racing_one_new_order_id_count_it_once(host, tills, code):
    a, b = tills
    pay_a = m.PayRequest(amount_minor=100, currency="CNY", order_id="RACE-1", payment_code=CODE[1])
    pay_b = m.PayRequest(amount_minor=100, currency="CNY", order_id="RACE-1", payment_code=code or CODE[3])
    a.fw.on_message(pay_a, 0.0)
    b.fw.on_message(pay_b, 0.0)
    (qa,), (qb,) = a.calls(), b.calls()
    assert isinstance(qa.message, h.HostQuery) and isinstance(qb.message, h.HostQuery)
    a.answer(qa)                          # both look-ups pass: the host has no RACE-1 yet
    b.answer(qb)
    (auth_a,), (auth_b,) = a.calls(), b.calls()
    assert isinstance(auth_a.message, h.AuthRequest) and isinstance(auth_b.message, h.AuthRequest)
    a.answer(auth_a)                      # A's authorisation lands first and owns the order
    b.answer(auth_b)
    (ra,), (rb,) = a.run_until_idle(), b.run_until_idle()
    assert ra.outcome is m.Outcome.APPROVED
    assert rb.reason == m.Reason.ORDER_CONFLICT
    rec = b.journal.get("RACE-1")
    assert rec is None or (rec.final and rec.outcome is not m.Outcome.APPROVED)   # never B's sale
    assert b.fw.status().unfinished == 0                                         # nothing to reconcile

    # Settle both: the batches add up to what the host holds, and both agree with it.
    totals = {}
    for t in (a, b):
        t.fw.on_message(m.Settle(operator_password=OPERATOR), t.now)
        (report,) = [x for x in t.run_until_idle() if isinstance(x, m.SettleReport)]
        assert report.host_agrees, t.tid
        totals[t.tid] = sum(x.approved_minor for x in report.totals)
    held = {t.tid: _approved_at_host(host, t.tid)[1] for t in (a, b)}
    assert totals == held == {"T0000001": 100, "T0000002": 0}


def test_a_terminal_cannot_cancel_or_reverse_another_terminals_order(host):
    a, b = terminal(host, "T0000001"), None
    host.register_terminal("T0000002", "M100000001", "CN-SH")
    b = terminal(host, "T0000002")
    r = a.request(h.AuthRequest(terminal_id="T0000001", order_id="OWN-1", amount_minor=100, currency="CNY",
                                payment_code=CODE[1]), 5.0)
    assert r.status is h.HostStatus.APPROVED and r.owner_terminal_id == "T0000001"
    for msg in (h.HostCancel(terminal_id="T0000002", order_id="OWN-1"),
                h.ReversalAdvice(terminal_id="T0000002", order_id="OWN-1")):
        got = b.request(msg, 5.0)
        assert got.status is h.HostStatus.APPROVED and got.owner_terminal_id == "T0000001"
    assert host.order_status("OWN-1") == "APPROVED"
    q = b.request(h.HostQuery(terminal_id="T0000002", order_id="OWN-1"), 5.0)
    assert q.owner_terminal_id == "T0000001"


def test_a_version_1_terminal_gets_a_decline_for_another_terminals_order(host, monkeypatch):
    a = terminal(host, "T0000001")
    host.register_terminal("T0000002", "M100000001", "CN-SH")
    monkeypatch.setattr(h, "HOST_PROTOCOL_VERSION", 1)   # logs on as a terminal before host protocol 2
    old = terminal(host, "T0000002")
    pay = {"order_id": "OLD-1", "amount_minor": 100, "currency": "CNY", "payment_code": CODE[1]}
    assert a.request(h.AuthRequest(terminal_id="T0000001", **pay), 5.0).status is h.HostStatus.APPROVED
    got = old.request(h.AuthRequest(terminal_id="T0000002", **pay), 5.0)
    # It cannot read owner_terminal_id: a decline is the answer it will not count as a sale.
    assert (got.status, got.reason) == (h.HostStatus.DECLINED, m.Reason.ORDER_CONFLICT)


def _both_pass_the_look_up_and_a_is_approved(a, b, order_id: str):
    """Both terminals look the new order id up (nothing there), both send AuthRequest; A's is
    answered (A owns the order). Returns B's AuthRequest call, not yet sent to the host."""
    pay = m.PayRequest(amount_minor=100, currency="CNY", order_id=order_id, payment_code=CODE[1])
    a.fw.on_message(pay, 0.0)
    b.fw.on_message(pay, 0.0)
    (qa,), (qb,) = a.calls(), b.calls()
    a.answer(qa)
    b.answer(qb)
    (auth_a,), (auth_b,) = a.calls(), b.calls()
    a.answer(auth_a)
    return auth_b


def test_the_answer_lost_then_the_query_finds_the_order_another_terminals(host, tills):
    a, b = tills
    auth_b = _both_pass_the_look_up_and_a_is_approved(a, b, "RACE-2")
    b.link.request(auth_b.message, 5.0)                   # B's AuthRequest reaches the host ...
    b.now += 10
    b.fw.on_host_reply(auth_b.token, None, b.now, "PosTimeout")   # ... its answer is lost
    (rb,) = b.run_until_idle()                            # B queries: the order is A's
    assert rb.reason == m.Reason.ORDER_CONFLICT
    assert b.journal.get("RACE-2").outcome is m.Outcome.DECLINED and b.fw.status().unfinished == 0
    assert host.order_status("RACE-2") == "APPROVED"


def test_aborted_while_authorising_an_order_that_turns_out_another_terminals(host, tills):
    a, b = tills
    auth_b = _both_pass_the_look_up_and_a_is_approved(a, b, "RACE-3")
    b.fw.on_message(m.Abort(order_id="RACE-3"), b.now)    # the ECR aborts B while its AuthRequest is out
    b.answer(auth_b)
    (rb,) = b.run_until_idle()
    assert rb.reason == m.Reason.ORDER_CONFLICT
    assert b.journal.get("RACE-3").outcome is m.Outcome.DECLINED     # in no batch total, cancelled or not
    assert b.journal.totals(b.journal.batch_no()) == ()
    assert host.order_status("RACE-3") == "APPROVED"                  # A's sale stands
