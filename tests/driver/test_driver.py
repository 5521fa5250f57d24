"""posterm.families.native.ecr.Terminal against a scripted fake terminal (exact control of the far end)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason
from posterm.ecr.ids import new_order_id
from posterm.ecr.results import PaymentResult
from posterm.families.native.ecr import Terminal, TerminalRefused
from posterm.errors import Disconnected, LinkFailed, LocalProtocolError, PosTimeout
from posterm.ecr.journal import Journal
from posterm.families.native.link import LinkConfig
from tests.driver.fake_terminal import TRANSPORTS, make_pair

CODE_OK = "289900000000000001"


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.db") as j:
        yield j


@pytest.fixture(params=TRANSPORTS)
def kind(request):
    return request.param


@pytest.fixture
def term(journal, kind):
    transport, fake = make_pair(kind)
    t = Terminal(transport, journal=journal)
    t.fake = fake
    yield t
    fake.stop.set()
    t.close()
    assert fake.error is None


def test_hello_and_status(term):
    info = term.hello()
    assert info.terminal_id == "T0000001" and info.protocol_version == 1
    assert m.Capability.PIN_PAD in info.capabilities
    assert term.status().state is m.TerminalState.IDLE


def test_pay_approved_with_progress_and_receipt(term, journal):
    seen = []
    result = term.pay(1234, "CNY", payment_code=CODE_OK, on_progress=seen.append)
    assert result.approved and result.amount_minor == 1234 and result.currency == "CNY"
    assert result.code_last4 == "0001"
    assert [p.stage for p in seen] == [m.Stage.AUTHORISING]
    assert result.receipt == ("posterm fake", "AMOUNT 1234")
    entry = journal.get(result.order_id)
    assert entry.state == "final" and entry.outcome == "approved"
    assert result.to_json()["result"] == "approved"


def test_decline_is_a_result_not_an_exception(term):
    result = term.pay(600, "CNY", payment_code="289900000000000002")
    assert result.outcome is Outcome.DECLINED and result.reason is Reason.INSUFFICIENT_BALANCE
    assert result.to_json()["reason"] == "insufficient_balance"


def test_order_ids_generated_and_unique(term):
    a = term.pay(1, "CNY", payment_code=CODE_OK)
    b = term.pay(1, "CNY", payment_code=CODE_OK)
    assert a.order_id != b.order_id and a.order_id.startswith("PT")
    ids = {new_order_id() for _ in range(20_000)}   # most in the same second
    assert len(ids) == 20_000 and all(len(i) == 2 + 14 + 12 for i in ids)


def test_same_order_id_is_not_charged_twice(term):
    first = term.pay(500, "CNY", order_id="ORDER-X", payment_code=CODE_OK)
    again = term.pay(500, "CNY", order_id="ORDER-X", payment_code=CODE_OK)
    assert first.order_id == again.order_id and again.approved
    assert len(term.fake.orders) == 1


def test_float_amount_refused(term):
    with pytest.raises(LocalProtocolError):
        term.pay(12.34, "CNY")  # type: ignore[arg-type]


def test_no_answer_times_out_then_recover_resolves(term, journal):
    with pytest.raises(PosTimeout) as exc:
        term.pay(700, "CNY", order_id="HUNG-1", payment_code="289900000000000008", timeout=0.5)
    assert isinstance(exc.value, TimeoutError) and "posterm recover" in str(exc.value)
    assert [e.order_id for e in journal.unfinished()] == ["HUNG-1"]
    term.fake.mute = False  # the terminal comes back to life
    results = term.recover()
    assert [(r.order_id, r.result) for r in results] == [("HUNG-1", "approved")]
    assert journal.unfinished() == []


def test_timeout_follow_up_query_returns_definite_result(journal):
    transport, fake = make_pair()
    with Terminal(transport, journal=journal) as t:
        # ...09 is approved at the terminal but its PayResult is never sent: the
        # driver's follow-up query learns the outcome instead of guessing.
        result = t.pay(700, "CNY", order_id="SILENT-2", payment_code="289900000000000009", timeout=0.3)
        assert result.approved
        assert journal.get("SILENT-2").state == "final"
    fake.stop.set()


def test_query_cancel_refund_settle_keys(term):
    paid = term.pay(1000, "CNY", payment_code=CODE_OK)
    assert term.query(paid.order_id).approved
    assert term.query("NEVER-SEEN").reason is Reason.ORDER_NOT_FOUND
    r1 = term.refund(paid.order_id, 300, "RF-1", "246810")
    r1_again = term.refund(paid.order_id, 300, "RF-1", "246810")
    assert r1.approved and r1_again == r1 and r1.refunded_total_minor == 300
    bad = term.refund(paid.order_id, 300, "RF-2", "000000")
    assert bad.outcome is Outcome.DECLINED and bad.reason is Reason.OPERATOR_PASSWORD_WRONG
    report = term.settle("246810")
    assert report.totals[0].approved_count == 1 and report.totals[0].net_minor == 700
    cancelled = term.cancel(paid.order_id)
    assert cancelled.outcome is Outcome.CANCELLED and cancelled.refunded_minor == 1000
    keys = term.key_status()
    assert keys.loaded and keys.kcv == "ABCDEF" and "key" not in keys.to_json().get("ksn", "")


def test_abort_from_another_thread(term):
    timer = threading.Timer(0.3, term.abort)
    timer.start()
    result = term.pay(100, "CNY", payment_code="289900000000000005", timeout=5)
    assert result.outcome is Outcome.CANCELLED and result.reason is Reason.ABORTED_BY_ECR


def test_abort_with_nothing_in_flight_returns_none(term):
    assert term.abort() is None


def test_terminal_error_is_typed(term):
    term.fake.send(m.Error(code=m.ErrorCode.BUSY, text="busy"))
    with pytest.raises(TerminalRefused) as exc:
        term.status()
    assert exc.value.code is m.ErrorCode.BUSY


def test_cut_cable_mid_pay_is_typed_and_journaled(journal, kind):
    transport, fake = make_pair(kind)
    t = Terminal(transport, journal=journal)
    # Disconnected, not PosTimeout: the cut is noticed, not waited out (no wall-clock bound).
    with pytest.raises(Disconnected):
        t.pay(900, "CNY", order_id="CUT-1", payment_code="289900000000000066", timeout=60)
    entry = journal.get("CUT-1")
    assert entry.state == "sent"  # unfinished: recover() will resolve it
    assert [e.order_id for e in journal.unfinished()] == ["CUT-1"]
    t.close()
    # The cable comes back: a new connection to the same terminal state.
    transport2, fake2 = make_pair(kind)
    fake2.orders = fake.orders
    with Terminal(transport2, journal=journal) as t2:
        results = t2.recover()
    assert [(r.order_id, r.result) for r in results] == [("CUT-1", "approved")]
    assert journal.unfinished() == []
    fake2.stop.set()


def test_reconnect_resumes_by_query(journal, kind):
    transport, fake = make_pair(kind)
    spare = {}

    def reopen():
        tr, f2 = make_pair(kind)
        f2.orders = fake.orders  # same terminal, new cable
        spare["fake"] = f2
        return tr

    t = Terminal(transport, journal=journal, reconnect=True, reopen=reopen)
    result = t.pay(900, "CNY", order_id="RC-1", payment_code="289900000000000066", timeout=10)
    assert result.approved and journal.get("RC-1").state == "final"
    t.close()
    spare["fake"].stop.set()


def test_dead_line_gives_link_failed(journal):
    from posterm.transport import VirtualTransport

    a, b = VirtualTransport.pair()  # nobody reads b: frames are never ACKed
    t = Terminal(a, journal=journal, link_config=LinkConfig(ack_timeout=0.05, max_retries=2))
    with pytest.raises(LinkFailed):
        t.status(timeout=5)
    t.close()
    b.close()


def test_trace_masks_secrets(journal, caplog):
    transport, fake = make_pair()
    caplog.set_level(logging.DEBUG, logger="posterm.wire")
    with Terminal(transport, journal=journal, trace=True) as t:
        t.pay(100, "CNY", payment_code=CODE_OK)
        t.refund(t.journal.unfinished()[0].order_id if t.journal.unfinished() else
                 list(fake.orders)[0], 50, "RF-T", "246810")
    fake.stop.set()
    text = caplog.text
    assert "0001" in text  # last 4 digits stay visible
    assert CODE_OK not in text and CODE_OK.encode().hex().upper() not in text.replace(" ", "")
    assert "246810" not in text and "246810".encode().hex().upper() not in text.replace(" ", "")
    assert "-> DATA" in text and "<- ACK" in text


def test_one_operation_at_a_time(term):
    errors = []

    def slow():
        try:
            term.pay(100, "CNY", payment_code="289900000000000005", timeout=60)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    th = threading.Thread(target=slow)
    th.start()
    deadline = time.monotonic() + 30
    while not term._op_lock.locked():  # the pay is in flight (a condition, not a sleep)
        assert th.is_alive() and time.monotonic() < deadline, errors
        time.sleep(0.01)
    with pytest.raises(LocalProtocolError):
        term.status()
    term.abort()
    th.join(30)
    # The abort ends the pay: with a result, or refused as UNEXPECTED when it reached the
    # terminal before the PayRequest did (the lock is taken before the request is sent).
    assert not th.is_alive()
    assert all(isinstance(e, TerminalRefused) for e in errors), errors


def test_payment_result_json_is_stable():
    r = PaymentResult("O1", Outcome.UNKNOWN, 5, "CNY", Reason.HOST_UNAVAILABLE)
    assert r.to_json()["result"] == "unknown" and not r.final
    assert PaymentResult("O1", Outcome.DECLINED, 5, "CNY", 999).to_json()["reason"] == "code_999"
