"""The payment host through its signed message interface: test codes, limits, PINs,
exactly-once, refunds, cancels, settlement, replay and MAC checks, risk, secrets."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostStatus as S, pin_pan
from firmware_protocol.native.messages import Outcome, Reason, Totals
from posterm.errors import PosTimeout
from posterm.host import Host, HostRefused, phone
from posterm.host.store.schema import TABLES
from tests.host.conftest import CODE, PIN, support, terminal

_n = iter(range(10 ** 9))


def pay(term, amount, code=CODE[1], order=None, qr=False, timeout=5.0):
    order = order or f"ORD{next(_n):08d}"
    return term.request(h.AuthRequest(terminal_id=term.terminal_id, order_id=order, amount_minor=amount,
                                      currency="CNY", payment_code=None if qr else code, dynamic_qr=qr), timeout)


def enter_pin(term, order, code, pin=PIN):
    sm = term.module
    sm.begin_pin_entry(pin_pan(code[-4:]))
    for d in pin:
        sm.press(d)
    e = sm.finish()
    return term.request(h.PinVerify(terminal_id=term.terminal_id, order_id=order, pin_block=e.block, pin_ksn=e.ksn,
                                    pin_format=e.format), 5)


def query(term, order):
    return term.request(h.HostQuery(terminal_id=term.terminal_id, order_id=order), 5)


def test_code_001_password_free_then_pin_then_limit(term):
    r = pay(term, 100_000)
    assert r.status is S.APPROVED and r.trade_no and r.code_last4 == "0001"
    r = pay(term, 100_001, order="PIN-1")
    assert r.status is S.NEED_PIN and r.pin_tries_left == 3
    r = enter_pin(term, "PIN-1", CODE[1])
    assert r.status is S.APPROVED
    assert pay(term, 500_000).status is S.NEED_PIN          # exactly the per-transaction limit: allowed
    r = pay(term, 500_001)
    assert (r.status, r.reason) == (S.DECLINED, Reason.OVER_TRANSACTION_LIMIT)


@pytest.mark.parametrize("code, amount, status, reason", [
    (2, 500, S.APPROVED, Reason.NONE), (2, 501, S.DECLINED, Reason.INSUFFICIENT_BALANCE),
    (3, 1, S.NEED_PIN, Reason.NONE), (4, 100, S.WAIT_BUYER, Reason.NONE), (5, 100, S.WAIT_BUYER, Reason.NONE),
    (7, 100, S.DECLINED, Reason.RISK_REJECTED), (8, 100, S.DECLINED, Reason.ACCOUNT_FROZEN)])
def test_test_codes(term, code, amount, status, reason):
    r = pay(term, amount, CODE[code])
    assert (r.status, r.reason) == (status, reason)


def test_test_codes_are_reusable(term):
    assert all(pay(term, 100).status is S.APPROVED for _ in range(3))


def test_phone_confirmation_004_after_2s_and_005_never(term, clock):
    pay(term, 100, CODE[4], order="PH-4")
    pay(term, 100, CODE[5], order="PH-5")
    clock.advance(1.9)
    assert query(term, "PH-4").status is S.WAIT_BUYER
    clock.advance(0.2)
    assert query(term, "PH-4").status is S.APPROVED
    clock.advance(30)
    assert query(term, "PH-5").status is S.WAIT_BUYER
    r = term.request(h.HostCancel(terminal_id=term.terminal_id, order_id="PH-5"), 5)
    assert r.status is S.CANCELLED


def test_outage_006_is_silent_then_query_resolves(term, clock):
    with pytest.raises(PosTimeout):
        pay(term, 100, CODE[6], order="OUT-1")
    with pytest.raises(PosTimeout):
        query(term, "OUT-1")
    clock.advance(31)
    assert query(term, "OUT-1").status is S.APPROVED


def test_wrong_pin_three_times_locks(term, host):
    pay(term, 100, CODE[3], order="WP-1")
    r = enter_pin(term, "WP-1", CODE[3], "000000")
    assert (r.status, r.reason, r.pin_tries_left) == (S.NEED_PIN, Reason.WRONG_PIN, 2)
    enter_pin(term, "WP-1", CODE[3], "000000")
    r = enter_pin(term, "WP-1", CODE[3], "000000")
    assert (r.status, r.reason) == (S.DECLINED, Reason.PIN_LOCKED)
    pay(term, 100, CODE[3], order="WP-2")
    r = enter_pin(term, "WP-2", CODE[3], PIN)  # even the right PIN: locked
    assert r.status is not S.APPROVED
    assert host.security("demo-003")["pin_locked"]


def test_daily_limit_boundary_and_midnight_in_account_tz(host, term, clock):
    host.set_limits("demo-001", support(host), daily_limit=300_000, password_free=500_000)   # raising: verified
    # 2026-11-18 23:59:00 Asia/Shanghai
    clock.now = 1_795_017_540.0
    assert pay(term, 200_000).status is S.APPROVED
    assert pay(term, 100_000).status is S.APPROVED            # exactly the daily limit
    r = pay(term, 1)
    assert (r.status, r.reason) == (S.DECLINED, Reason.OVER_DAILY_LIMIT)
    clock.advance(61)                                           # 00:00:01 the next day, Shanghai time
    assert pay(term, 300_000).status is S.APPROVED


def test_real_name_and_currency(host, term):
    host.set_flags("demo-001", real_name=False)
    assert pay(term, 20_000).status is S.APPROVED
    assert pay(term, 20_001).reason == Reason.NOT_REAL_NAME_VERIFIED
    r = term.request(h.AuthRequest(terminal_id=term.terminal_id, order_id="USD-1", amount_minor=100, currency="USD",
                                   payment_code=CODE[1]), 5)
    assert r.reason == Reason.CURRENCY_MISMATCH


def test_one_time_codes(host, term, clock):
    host.add_account("alice", "Alice", balance_minor=50_000, password="135790", home_region="CN-SH")
    code = host.issue_code("alice")
    assert len(code) == 18 and 25 <= int(code[:2]) <= 30
    assert pay(term, 100, code).status is S.APPROVED
    assert pay(term, 100, code).reason == Reason.CODE_USED
    late = host.issue_code("alice")
    clock.advance(61)
    assert pay(term, 100, late).reason == Reason.CODE_EXPIRED
    assert pay(term, 100, "259999999999999999").reason == Reason.CODE_INVALID


def test_exactly_once_same_order(term, host):
    a = pay(term, 1234, order="DUP-1")
    b = pay(term, 1234, order="DUP-1")
    assert a.trade_no == b.trade_no and a.status is b.status is S.APPROVED
    c = pay(term, 999, order="DUP-1")
    assert (c.status, c.reason) == (S.DECLINED, Reason.ORDER_CONFLICT)
    assert host.account("demo-001")["balance_minor"] == 1_000_000 - 1234


def test_1000_concurrent_duplicates_make_one_trade(host):
    terms = [terminal(host, f"T{n:07d}") for n in range(1, 51)]
    answers: list = []
    lock = threading.Lock()

    def worker(t):
        for _ in range(20):
            r = pay(t, 777, order="CONC-1")
            with lock:
                answers.append(r.trade_no)

    threads = [threading.Thread(target=worker, args=(t,)) for t in terms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 1000 and len(set(answers)) == 1
    db = host.store.read()
    assert db.execute("SELECT COUNT(*) FROM trades WHERE order_id = 'CONC-1'").fetchone()[0] == 1
    assert host.account("demo-001")["balance_minor"] == 1_000_000 - 777


def test_refunds_partial_full_idempotent_never_more(term, host):
    pay(term, 1000, order="RF-1")

    def refund(rid, amount):
        return term.request(h.HostRefund(terminal_id=term.terminal_id, order_id="RF-1", refund_id=rid,
                                         amount_minor=amount, currency="CNY"), 5)

    assert refund("R1", 400).outcome == Outcome.APPROVED
    again = refund("R1", 400)
    assert again.outcome == Outcome.APPROVED and again.refunded_total_minor == 400  # idempotent
    assert refund("R2", 601).reason == Reason.REFUND_EXCEEDS_PAID
    assert refund("R2", 600).refunded_total_minor == 1000
    assert refund("R3", 1).outcome == Outcome.DECLINED
    assert host.account("demo-001")["balance_minor"] == 1_000_000
    r = term.request(h.HostRefund(terminal_id=term.terminal_id, order_id="NOPE", refund_id="R9", amount_minor=1,
                                  currency="CNY"), 5)
    assert r.reason == Reason.ORDER_NOT_FOUND


def test_cancel_paid_refunds_and_window(term, host, clock):
    pay(term, 500, order="C-1")
    r = term.request(h.HostCancel(terminal_id=term.terminal_id, order_id="C-1"), 5)
    assert r.status is S.REFUNDED and r.refunded_minor == 500
    pay(term, 500, order="C-2")
    clock.advance(24 * 3600 + 1)
    r = term.request(h.HostCancel(terminal_id=term.terminal_id, order_id="C-2"), 5)
    assert (r.status, r.reason) == (S.APPROVED, Reason.CANCEL_WINDOW_EXPIRED)
    r = term.request(h.ReversalAdvice(terminal_id=term.terminal_id, order_id="C-2"), 5)
    assert r.status is S.REFUNDED


def test_settlement_agrees(term):
    pay(term, 1000, order="S-1")
    pay(term, 2000, order="S-2")
    term.request(h.HostRefund(terminal_id=term.terminal_id, order_id="S-2", refund_id="SR-1", amount_minor=500,
                              currency="CNY"), 5)
    pay(term, 100, CODE[5], order="S-3")
    term.request(h.HostCancel(terminal_id=term.terminal_id, order_id="S-3"), 5)
    mine = (Totals("CNY", 2, 3000, 1, 500, 1),)
    r = term.request(h.SettleRequest(terminal_id=term.terminal_id, batch_no=1, totals=mine), 5)
    assert r.agrees and r.totals == mine
    r = term.request(h.SettleRequest(terminal_id=term.terminal_id, batch_no=2, totals=mine), 5)
    assert not r.agrees and r.totals == ()  # nothing new since batch 1


def test_dynamic_qr_paid_by_wallet(term, host):
    r = pay(term, 888, qr=True, order="QR-1")
    assert r.status is S.SHOW_QR and r.qr_data
    assert host.wallet_scan(r.qr_data, "demo-001") == "APPROVED"
    assert query(term, "QR-1").status is S.APPROVED


def test_replay_and_bad_mac_refused(term, host):
    signed = term.sign(h.HostQuery(terminal_id=term.terminal_id, order_id="X"))
    assert host.handle(signed).status is S.NOT_FOUND
    again = host.handle(signed)
    assert isinstance(again, h.HostError) and again.reason == Reason.REPLAY_DETECTED
    forged = term.sign(h.HostQuery(terminal_id=term.terminal_id, order_id="X"))
    forged = dataclasses.replace(forged, order_id="Y")
    r = host.handle(forged)
    assert isinstance(r, h.HostError) and r.reason == Reason.MAC_INVALID
    unsigned = h.HostQuery(terminal_id=term.terminal_id, order_id="X")
    assert host.handle(unsigned).reason == Reason.MAC_INVALID


def pin_verify(term, order, code, pin=PIN) -> h.PinVerify:
    """A PinVerify with a freshly entered PIN block (not yet sent)."""
    sm = term.module
    sm.begin_pin_entry(pin_pan(code[-4:]))
    for d in pin:
        sm.press(d)
    e = sm.finish()
    return h.PinVerify(terminal_id=term.terminal_id, order_id=order, pin_block=e.block, pin_ksn=e.ksn,
                       pin_format=e.format)


def test_replayed_pin_block_refused_without_using_a_try(term, host):
    pay(term, 100, CODE[3], order="PR-1")
    wrong = pin_verify(term, "PR-1", CODE[3], "000000")
    assert term.request(wrong, 5).pin_tries_left == 2
    again = term.request(wrong, 5)            # the same PIN block in a fresh, correctly MAC'd request
    assert isinstance(again, h.HostError) and (again.code, again.reason) == (2, Reason.REPLAY_DETECTED)
    assert host.account("demo-003")["pin_tries"] == 1      # the replay used no try
    assert query(term, "PR-1").status is S.NEED_PIN        # and the payment still waits for the PIN
    right = pin_verify(term, "PR-1", CODE[3])
    assert term.request(right, 5).status is S.APPROVED
    # A PIN block captured from that payment, offered for the next one: refused, not verified.
    pay(term, 100, CODE[3], order="PR-2")
    stolen = dataclasses.replace(right, order_id="PR-2")
    r = term.request(stolen, 5)
    assert isinstance(r, h.HostError) and r.reason == Reason.REPLAY_DETECTED
    assert query(term, "PR-2").status is S.NEED_PIN
    assert term.request(pin_verify(term, "PR-2", CODE[3]), 5).status is S.APPROVED


def test_pin_block_from_another_terminals_pin_pad_refused(host, term):
    other = terminal(host, "T0000002")
    pay(term, 100, CODE[3], order="PO-1")
    foreign = pin_verify(other, "PO-1", CODE[3])             # right PIN, another device's key
    r = term.request(dataclasses.replace(foreign, terminal_id=term.terminal_id), 5)
    assert isinstance(r, h.HostError) and (r.code, r.reason) == (6, Reason.KEY_ERROR)
    assert query(term, "PO-1").status is S.NEED_PIN
    assert host.account("demo-003")["pin_tries"] == 0
    # That PIN block was not consumed on its own device either: T0000002 can still use fresh ones.
    pay(other, 100, CODE[3], order="PO-2")
    assert other.request(pin_verify(other, "PO-2", CODE[3]), 5).status is S.APPROVED


def test_unknown_terminal_and_replayed_logon_refused(host):
    from posterm.emulator.hostlink import HostRefusedLogon

    with pytest.raises(HostRefusedLogon):
        terminal(host, "T9999999")
    link = terminal(host, "T0000002")
    req = link.sign(h.LogonRequest(terminal_id="T0000002", merchant_id="M100000001", firmware_version="x",
                                   terminal_nonce=b"\x01" * 16))
    assert isinstance(host.handle(req), h.LogonChallenge)
    again = link.sign(h.LogonRequest(terminal_id="T0000002", merchant_id="M100000001", firmware_version="x",
                                     terminal_nonce=b"\x01" * 16))
    r = host.handle(again)
    assert isinstance(r, h.LogonResult) and not r.accepted and r.reason == Reason.REPLAY_DETECTED


def test_accounts_passwords_freeze_report_bill(host, term):
    host.add_account("bob", "Bob Example", balance_minor=10_000, password="112233", home_region="CN-SH")
    with pytest.raises(HostRefused):
        host.set_password("bob", "445566", old="000000")
    host.set_password("bob", "445566", old="112233")
    assert host.security("bob")["payment_password_set"]
    code = host.issue_code("bob")
    r = pay(term, 100, code, order="BOB-1")
    assert r.status in (S.APPROVED, S.NEED_PIN)
    case = host.report("BOB-1", "I did not make this payment")
    assert host.account("bob")["frozen"] and host.cases()[0]["id"] == case
    sec = host.security("bob")
    assert sec["frozen"] and sec["open_cases"] and any(a["kind"] == "report" for a in sec["recent_alerts"])
    with pytest.raises(HostRefused):
        host.issue_code("bob")
    with pytest.raises(HostRefused, match="resolution"):
        host.close_case(case, "  ")
    second = host.report("BOB-1", "and again")
    with pytest.raises(HostRefused, match="other open case"):
        host.close_case(case, "customer confirmed the payment", unfreeze=True, proof=support(host))
    assert host.cases()[0]["status"] == "open"                  # the refusal changed nothing
    host.close_case(second, "duplicate of the first report")
    host.close_case(case, "customer confirmed the payment", unfreeze=True, proof=support(host))
    closed = host.cases()[0]
    assert closed["status"] == "closed" and closed["resolution"] == "customer confirmed the payment"
    assert closed["closed_at_iso"] and not host.account("bob")["frozen"]
    assert not host.security("bob")["open_cases"]
    with pytest.raises(HostRefused, match="already closed"):
        host.close_case(case, "again")
    host.freeze("bob", True)
    host.freeze("bob", False, proof=support(host))
    assert not host.account("bob")["frozen"]


def test_bill_lists_payments_refunds_cancels(host, term, clock):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    pay(term, 300, order="B-1")
    term.request(h.HostRefund(terminal_id=term.terminal_id, order_id="B-1", refund_id="BR-1", amount_minor=100,
                              currency="CNY"), 5)
    pay(term, 200, order="B-2")
    term.request(h.HostCancel(terminal_id=term.terminal_id, order_id="B-2"), 5)
    month = datetime.fromtimestamp(clock(), ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    kinds = [(b["kind"], b["amount_minor"]) for b in host.bill("demo-001", month)]
    assert ("payment", -300) in kinds and ("refund", 100) in kinds and ("cancel", 200) in kinds


def test_risk_rules_on_a_real_account(host_db, clock):
    rules = {"velocity": {"count": 3, "window_s": 60, "action": "reject"}, "night": {"enabled": False}}
    host = Host.open(host_db, clock=clock, risk_config=rules)
    host.add_account("carol", "Carol", balance_minor=100_000, password="123789", home_region="CN-BJ")
    term = terminal(host)
    results = []
    for _ in range(4):
        results.append(pay(term, 100, host.issue_code("carol")))
    assert results[0].status is S.NEED_PIN  # terminal in CN-SH, home CN-BJ: confirm
    assert results[-1].reason == Reason.RISK_REJECTED  # 4th within 60 s
    alerts = host.security("carol")["recent_alerts"]
    assert any("payments within" in a["text"] for a in alerts) and any("CN-BJ" in a["text"] for a in alerts)
    decisions = [tuple(r) for r in host.store.read().execute("SELECT decision FROM risk_decisions").fetchall()]
    assert ("reject",) in decisions and ("confirm",) in decisions
    assert host.check_books() == []
    host.close()


def test_no_secrets_in_the_database(host, term):
    host.add_account("dave", "Dave", balance_minor=10_000, password="135791")
    code = host.issue_code("dave")
    pay(term, 100, code)
    pay(term, 100, CODE[3], order="SEC-1")
    enter_pin(term, "SEC-1", CODE[3])
    rows = repr([host.store.read().execute(f"SELECT * FROM {t}").fetchall() for t in TABLES]).encode()
    blobs = [rows]
    if host.store.dialect == "sqlite":  # and the files, WAL included
        host.close()
        blobs.append(b"".join(p.read_bytes() for p in host.store.path.parent.glob("host.db*")))
    for blob in blobs:
        for secret in (b"147258", b"135791", code.encode(), CODE[1].encode()):
            assert secret not in blob


def test_tcp_server_and_client(host):
    from posterm.host.client import TcpHostClient
    from posterm.host.server import serve

    with serve(host) as server:
        assert server.address.startswith("tcp://127.0.0.1:")
        client = TcpHostClient(server.address)
        term = terminal(host, "T0000003", client=client)
        assert pay(term, 100).status is S.APPROVED
        with pytest.raises(PosTimeout):
            pay(term, 100, CODE[6], timeout=0.3)
        client.close()


def test_a_newer_terminals_optional_items_stay_under_the_mac_over_tcp(host):
    # A newer terminal adds an optional item (tag >= 0x80) this host does not know. The
    # decoder skips it, so the MAC must be checked over the payload as received, not over
    # the message encoded again (which would drop the item and fail the MAC).
    import dataclasses
    import time

    from firmware_protocol.native import frame as fr
    from firmware_protocol.native.tlv import encode as tlv_encode
    from posterm.host.client import TcpHostClient
    from posterm.host.server import serve
    from posterm.host.wire import read_message
    from posterm.transport.tcp import TcpTransport

    with serve(host) as server:
        client = TcpHostClient(server.address)
        term = terminal(host, "T0000003", client=client)
        term.logon()
        msg = h.AuthRequest(terminal_id="T0000003", order_id="NEWER-1", amount_minor=100, currency="CNY",
                            payment_code=CODE[1])
        ksn = term.module.next_ksn()
        unsigned = dataclasses.replace(msg, ksn=ksn, mac=b"\x00" * h.MAC_SIZE)
        newer = tlv_encode(unsigned, extra=[(0x9A, b"from a newer firmware")])
        mac = term.module.request_mac(ksn, h.mac_input(newer))
        payload = tlv_encode(dataclasses.replace(unsigned, mac=mac), extra=[(0x9A, b"from a newer firmware")])
        conn = TcpTransport.connect(server.address, timeout=3.0)
        try:
            conn.write(fr.encode_frame(fr.FrameKind.DATA, 1, payload))
            seq, reply, raw = read_message(conn, fr.Framer(), time.monotonic() + 5)
        finally:
            conn.close()
            client.close()
    assert seq == 1 and isinstance(reply, h.AuthResponse) and reply.status is S.APPROVED
    assert term.module.verify_response_mac(ksn, h.mac_input(raw), reply.mac)


def test_two_factor_needs_the_password_and_the_phone(host, term):
    host.add_account("tia", "Tia Example", balance_minor=1_000_000, password="246802", two_factor=True,
                     confirm="phone")
    code = host.issue_code("tia")
    r = pay(term, 150_000, code, order="2FA-1")                 # above the password-free threshold
    assert r.status is S.NEED_PIN                                # the password first, phone preference or not
    r = enter_pin(term, "2FA-1", code, pin="246802")
    assert r.status is S.WAIT_BUYER                              # the right password alone does not pay
    assert query(term, "2FA-1").status is S.WAIT_BUYER
    sms = next(e["text"] for e in phone.inbox(host.ctx, "tia") if e["kind"] == "code")
    assert host.wallet_confirm("2FA-1", code=sms.split("code ")[1][:6]) == "APPROVED"   # the code the phone got
    assert query(term, "2FA-1").status is S.APPROVED
    host.set_flags("tia", two_factor=False, proof=support(host))
    code = host.issue_code("tia")
    assert pay(term, 150_000, code, order="2FA-2").status is S.WAIT_BUYER   # back to the phone alone


def test_real_name_threshold_is_200_in_the_accounts_currency(host, term):
    # 200.00 CNY is 20000 minor units; 200 JPY is 200 (no minor unit). Unverified payers above it are declined.
    host.add_account("jp", "Unverified Yen", currency="JPY", balance_minor=100_000, real_name=False, password_free=1_000)
    code = host.issue_code("jp")
    r = term.request(h.AuthRequest(terminal_id=term.terminal_id, order_id="JPY-1", amount_minor=201, currency="JPY",
                                   payment_code=code), 5)
    assert r.status is S.DECLINED and r.reason == Reason.NOT_REAL_NAME_VERIFIED
    code = host.issue_code("jp")
    r = term.request(h.AuthRequest(terminal_id=term.terminal_id, order_id="JPY-2", amount_minor=200, currency="JPY",
                                   payment_code=code), 5)
    assert r.status is S.APPROVED


def test_a_cancel_records_the_terminals_reason(host, term):
    r = pay(term, 150_000, CODE[3], order="CXL-1")              # waits for the PIN
    assert r.status is S.NEED_PIN
    r = term.request(h.HostCancel(terminal_id=term.terminal_id, order_id="CXL-1",
                                  reason=int(Reason.CUSTOMER_CANCELLED)), 5)
    assert r.status is S.CANCELLED and r.reason == Reason.CUSTOMER_CANCELLED

