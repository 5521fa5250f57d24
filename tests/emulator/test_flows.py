"""Every flow end to end: the driver over a real pty, the emulated terminal, the embedded host."""

from __future__ import annotations

import threading

import pytest

from firmware_protocol.native.messages import Outcome, Reason, Stage
from posterm.families.native.ecr import Terminal

CODE = {n: f"28990000000000000{n}" for n in range(1, 9)}


@pytest.fixture
def term(posterm_terminal, tmp_path):
    with Terminal.open(posterm_terminal.port, journal=str(tmp_path / "drv.db")) as t:
        t.emu = posterm_terminal
        yield t
    assert posterm_terminal.error is None


def host_status(term, order_id):
    return term.emu.host.order_status(order_id)


@pytest.mark.parametrize("code, amount, outcome, reason, host", [
    (1, 100_000, Outcome.APPROVED, Reason.NONE, "APPROVED"),                    # password-free
    (1, 100_001, Outcome.APPROVED, Reason.NONE, "APPROVED"),                    # PIN typed by the customer
    (1, 500_001, Outcome.DECLINED, Reason.OVER_TRANSACTION_LIMIT, "DECLINED"),
    (2, 501, Outcome.DECLINED, Reason.INSUFFICIENT_BALANCE, "DECLINED"),
    (3, 100, Outcome.APPROVED, Reason.NONE, "APPROVED"),
    (4, 100, Outcome.APPROVED, Reason.NONE, "APPROVED"),                        # phone, after 2 s
    (5, 100, Outcome.CANCELLED, Reason.CONFIRMATION_TIMEOUT, "CANCELLED"),      # phone never: queries, cancel
    (7, 100, Outcome.DECLINED, Reason.RISK_REJECTED, "DECLINED"),
    (8, 100, Outcome.DECLINED, Reason.ACCOUNT_FROZEN, "DECLINED"),
])
def test_test_codes_through_the_driver(term, code, amount, outcome, reason, host):
    stages = []
    r = term.pay(amount, "CNY", payment_code=CODE[code], timeout=30, on_progress=lambda p: stages.append(p.stage))
    assert (r.outcome, r.reason) == (outcome, reason)
    assert host_status(term, r.order_id) == host
    assert stages  # the terminal reported progress
    if outcome is Outcome.APPROVED:
        assert r.trade_no and r.code_last4 == CODE[code][-4:]
        assert any(r.order_id == rc.order_id for rc in term.emu.receipts())
    assert term.emu.host.check_books() == []


def test_scanned_by_the_terminal_and_dynamic_qr(term):
    r = term.pay(1234, "CNY", timeout=30)   # no code from the ECR: the terminal's scanner reads one
    assert r.approved
    r = term.pay(2345, "CNY", dynamic_qr=True, timeout=30)  # the customer's wallet scans the QR
    assert r.approved and host_status(term, r.order_id) == "APPROVED"


def test_abort_mid_flow(term):
    result, waiting = {}, threading.Event()
    t = threading.Thread(target=lambda: result.setdefault("r", term.pay(
        100, "CNY", payment_code=CODE[5], order_id="AB-1", timeout=30,
        on_progress=lambda p: p.stage is Stage.WAITING_FOR_PHONE and waiting.set())))
    t.start()
    assert waiting.wait(30)       # the customer is being asked: now the ECR aborts
    term.abort()
    t.join(30)
    assert result["r"].outcome is Outcome.CANCELLED and result["r"].reason == Reason.ABORTED_BY_ECR
    assert host_status(term, "AB-1") == "CANCELLED"


def test_query_cancel_refund_settle_and_keys(term):
    r = term.pay(5000, "CNY", payment_code=CODE[1], timeout=30)
    assert term.query(r.order_id).approved
    rf = term.refund(r.order_id, 2000, "RF-A", "246810", timeout=30)
    assert rf.outcome is Outcome.APPROVED and rf.refunded_total_minor == 2000
    assert term.refund(r.order_id, 2000, "RF-A", "246810", timeout=30).refunded_total_minor == 2000  # idempotent
    assert term.refund(r.order_id, 3001, "RF-B", "246810", timeout=30).outcome is Outcome.DECLINED
    bad = term.refund(r.order_id, 1, "RF-C", "000000", timeout=30)
    assert bad.outcome is Outcome.DECLINED and bad.reason == Reason.OPERATOR_PASSWORD_WRONG
    c = term.pay(700, "CNY", payment_code=CODE[1], timeout=30)
    assert term.cancel(c.order_id, "246810").outcome is Outcome.CANCELLED
    assert host_status(term, c.order_id) == "REFUNDED"
    st = term.settle("246810", timeout=30)
    assert st.host_agrees and st.totals[0].approved_count == 1
    key = term.key_status()
    assert key.loaded and key.counters_left > 1000


def test_scenario_customer_walks_away_and_wrong_pin(term, tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text("""
[[payment]]
expect = "cancelled"
actions = [{ action = "walk_away", after = 0.1 }]

[[payment]]
actions = [
  { action = "present_code", code = "289900000000000003" },
  { action = "type_pin", digits = "000000" },
  { action = "type_pin", digits = "147258" },
]
""")
    term.emu.set_scenario(scenario)          # returns once the firmware has it
    r = term.pay(100, "CNY", timeout=30)
    assert r.outcome is Outcome.CANCELLED
    r = term.pay(100, "CNY", timeout=30)
    assert r.approved


def test_no_secrets_on_the_terminal_side(term, posterm_terminal, tmp_path):
    term.pay(100_001, "CNY", payment_code=CODE[1], timeout=30)
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "posterm" / "terminals").rglob("*") if p.is_file())
    assert b"147258" not in blobs and b"246810" not in blobs and CODE[1].encode() not in blobs


def test_operator_password_guards_settle_and_key_loading_and_locks(term):
    before = term.key_status()
    st = term.settle("000000", timeout=30)
    assert st.reason == Reason.OPERATOR_PASSWORD_WRONG and not st.totals
    k = term.load_key("D0112B1TX00E0000" + "0" * 96, "000000")
    assert k.reason == Reason.OPERATOR_PASSWORD_WRONG
    k = term.load_key("D0112B1TX00E0000" + "0" * 96, "246810")         # right password, garbage block
    assert k.reason == Reason.KEY_ERROR and k.loaded and k.kcv == before.kcv
    assert term.pay(100, "CNY", payment_code=CODE[1], timeout=30).approved  # the old key still works
    for _ in range(5):                                                   # 5 wrong in a row: locked
        assert term.settle("135790", timeout=30).reason in (Reason.OPERATOR_PASSWORD_WRONG, Reason.OPERATOR_LOCKED)
    locked = term.settle("246810", timeout=30)                           # even the right one now
    assert locked.reason == Reason.OPERATOR_LOCKED and not locked.totals
    assert term.refund("X", 1, "RF-X", "246810", currency="CNY", timeout=30).reason == Reason.OPERATOR_LOCKED


def test_refund_id_reused_with_another_amount_keeps_the_approved_refund(term):
    r = term.pay(100_000, "CNY", payment_code=CODE[1], timeout=30)
    assert term.refund(r.order_id, 50_000, "RF-R", "246810", timeout=30).outcome is Outcome.APPROVED
    again = term.refund(r.order_id, 30_000, "RF-R", "246810", timeout=30)
    assert (again.outcome, again.reason) == (Outcome.DECLINED, Reason.ORDER_CONFLICT)
    rf = term.emu.journal.refund("RF-R")
    assert (rf["outcome"], rf["amount_minor"]) == (Outcome.APPROVED, 50_000)
    st = term.settle("246810", timeout=30)
    assert st.host_agrees
    assert (st.totals[0].refunded_count, st.totals[0].refunded_minor) == (1, 50_000)


def test_cancelling_a_paid_order_needs_the_operator_password(term):
    c = term.pay(700, "CNY", payment_code=CODE[1], timeout=30)
    for password in (None, "000000"):
        r = term.cancel(c.order_id, password, timeout=30)
        assert (r.outcome, r.reason) == (Outcome.DECLINED, Reason.OPERATOR_PASSWORD_WRONG)
        assert host_status(term, c.order_id) == "APPROVED"           # nothing refunded
    assert term.cancel(c.order_id, "246810", timeout=30).outcome is Outcome.CANCELLED
    assert host_status(term, c.order_id) == "REFUNDED"


def test_two_factor_account_types_the_pin_then_confirms_on_the_phone(term, tmp_path):
    host = term.emu.host
    host.add_account("tfa", "Two Factor", balance_minor=1_000_000, password="135790", two_factor=True)
    code = host.issue_code("tfa")
    scenario = tmp_path / "s.toml"
    scenario.write_text(f"""
[terminal]
poll_interval = 0.2

[[payment]]
actions = [
  {{ action = "present_code", code = "{code}" }},
  {{ action = "type_pin", digits = "135790" }},
  {{ action = "confirm_on_phone", after = 0.3 }},
]
""")
    term.emu.set_scenario(scenario)
    stages = []
    r = term.pay(150_000, "CNY", timeout=30, on_progress=lambda p: stages.append(p.stage.name))
    assert r.approved, r
    assert stages.index("WAITING_FOR_PIN") < stages.index("WAITING_FOR_PHONE")
    assert host_status(term, r.order_id) == "APPROVED"


def test_two_factor_customer_scanning_the_qr_types_the_code_from_the_phone(term, tmp_path):
    """A wallet scan of the terminal's QR on a two-factor account asks for a code: the
    customer reads it in the phone's inbox and types it; the terminal is paid then."""
    host = term.emu.host
    host.add_account("tqr", "Two Factor QR", balance_minor=1_000_000, password="135790", two_factor=True)
    scenario = tmp_path / "s.toml"
    scenario.write_text(f"""
[terminal]
poll_interval = 0.2

[[payment]]
actions = [{{ action = "scan_qr", code = "{host.issue_code("tqr")}" }}]
""")
    term.emu.set_scenario(scenario)
    r = term.pay(2_000, "CNY", dynamic_qr=True, timeout=30)
    assert r.approved, r
    assert host_status(term, r.order_id) == "APPROVED"
    from posterm.host import phone

    (sent,) = [e for e in phone.inbox(host.ctx, "tqr") if e["kind"] == "code"]
    assert f"order {r.order_id}" in sent["text"]
    assert host.store.view().verification(int(sent["ref"]))["state"] == "used"     # the code, not the scan, paid


def test_customer_scanning_the_qr_over_a_limit_with_confirm_types_the_code_from_the_phone(term, tmp_path):
    """No two-factor, but --over-limit confirm: a scan over the per-transaction limit waits
    for the phone's code; the emulated customer types it and the terminal is paid."""
    from posterm.host import phone
    from tests.host.conftest import support

    host = term.emu.host
    host.add_account("oqr", "Over QR", balance_minor=1_000_000, password="135790", per_tx_limit=50_000)
    host.set_flags("oqr", over_limit="confirm", proof=support(host))
    scenario = tmp_path / "s.toml"
    scenario.write_text(f"""
[terminal]
poll_interval = 0.2

[[payment]]
actions = [{{ action = "scan_qr", code = "{host.issue_code("oqr")}" }}]
""")
    term.emu.set_scenario(scenario)
    r = term.pay(60_000, "CNY", dynamic_qr=True, timeout=30)
    assert r.approved, r
    assert host_status(term, r.order_id) == "APPROVED"
    (sent,) = [e for e in phone.inbox(host.ctx, "oqr") if e["kind"] == "code"]
    assert "pay 600.00 CNY" in sent["text"] and f"(order {r.order_id})" in sent["text"]
    assert host.store.view().verification(int(sent["ref"]))["state"] == "used"     # the code, not the scan, paid
