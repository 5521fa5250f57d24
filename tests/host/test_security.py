"""The account security centre (issue 17, sec-factor): the emulated phone and its codes,
two-factor payments from a terminal, verification before key operations, alerts to the
inbox and to a signed webhook, the payment-password reset, and `host security`."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import re
import threading

import pytest

from firmware_protocol.host.messages import HostStatus as S
from firmware_protocol.native.messages import Reason
from posterm.host import HostRefused, alerts, identity, phone, security
from posterm.host.security import CustomerProof, OperatorProof, VerificationFailed
from tests.host.conftest import db_arg, db_dump as dump_db, CODE
from tests.host.test_host import enter_pin, pay, query

PW = "246802"
OP_PW = "operator-secret-1"


def last_code(host, account):
    """The newest verification code in the account's phone inbox (as the customer reads it)."""
    for e in phone.inbox(host.ctx, account):
        if e["kind"] == "code":
            return re.search(r"code (\d{6})", e["text"]).group(1)
    return None


def other(code):
    return "000000" if code != "000000" else "111111"


def db_dump(host) -> str:
    return dump_db(db_arg(host))


def two_factor_account(host, name="tia", **kw):
    host.add_account(name, name.title(), balance_minor=1_000_000, password=PW, two_factor=True, **kw)


def waiting_payment(host, term, account, order, amount=150_000):
    code = host.issue_code(account)
    assert pay(term, amount, code, order=order).status is S.NEED_PIN
    assert enter_pin(term, order, code, pin=PW).status is S.WAIT_BUYER


# ---------------------------------------------------------------------- the phone and its codes

def test_a_code_is_shown_only_by_the_phone_single_use_five_tries_five_minutes(host, clock):
    host.add_account("ann", "Ann", password=PW)
    rid = phone.send(host.ctx, "ann", "unfreeze")
    code = last_code(host, "ann")
    assert re.fullmatch(r"\d{6}", code)
    dump = db_dump(host)
    # neither the inbox nor the request holds it in clear (as a value of its own, not six digits
    # that happen to stand inside a hex blob or a timestamp of the dump)
    assert not re.search(rf"(?<![0-9A-Fa-f.]){code}(?![0-9A-Fa-f.])", dump)
    assert "verification code" not in dump       # the inbox's texts are sealed
    row = host.store.view().verification(rid)
    assert row["code_mac"] != code and len(row["code_mac"]) == 64
    with host.store.transaction() as tx:
        assert phone.check_code(host.ctx, tx, "ann", "set-limits", code).why == "none"    # bound to its purpose
        assert phone.check_code(host.ctx, tx, "ann", "unfreeze", code).ok
        assert phone.check_code(host.ctx, tx, "ann", "unfreeze", code).why == "none"      # single use
    phone.send(host.ctx, "ann", "unfreeze")
    code = last_code(host, "ann")
    with host.store.transaction() as tx:
        results = [phone.check_code(host.ctx, tx, "ann", "unfreeze", other(code)) for _ in range(5)]
        assert [r.why for r in results] == ["wrong"] * 4 + ["dead"] and results[3].tries_left == 1
        assert phone.check_code(host.ctx, tx, "ann", "unfreeze", code).why == "none"      # dead: even the right one
    phone.send(host.ctx, "ann", "unfreeze")
    code = last_code(host, "ann")
    clock.advance(300.5)
    with host.store.transaction() as tx:
        assert phone.check_code(host.ctx, tx, "ann", "unfreeze", code).why == "expired"


def test_the_inbox_keeps_the_newest_200(host):
    host.add_account("ann", "Ann")
    with host.store.transaction() as tx:
        for n in range(phone.INBOX_CAP + 5):
            phone.notify(host.ctx, tx, "ann", "note", f"message {n}")
    box = phone.inbox(host.ctx, "ann", 500)
    assert len(box) == phone.INBOX_CAP and box[0]["text"] == "message 204" and box[-1]["text"] == "message 5"



def test_security_notices_reach_every_wallet_inbox_after_its_messages(host):
    from posterm.host import notices

    host.add_account("ann", "Ann")
    with host.store.transaction() as tx:
        phone.notify(host.ctx, tx, "ann", "note", "hello")
    n = notices.add(host.ctx, "Never tell anyone your payment password.")
    box = phone.inbox(host.ctx, "ann")
    assert [e["text"] for e in box] == ["hello", "Never tell anyone your payment password."]
    assert box[-1]["kind"] == "security_notice" and box[-1]["ref"] == str(n.id)
    notices.remove(host.ctx, n.id)
    assert [e["text"] for e in phone.inbox(host.ctx, "ann")] == ["hello"]

# ---------------------------------------------------------------------- two-factor payments

def test_two_factor_payment_confirmed_with_the_code_from_the_inbox(host, term):
    two_factor_account(host)
    waiting_payment(host, term, "tia", "2F-1")
    code = last_code(host, "tia")
    with pytest.raises(HostRefused, match="needs the verification code"):
        host.wallet_confirm("2F-1")
    with pytest.raises(HostRefused, match="4 tries left"):
        host.wallet_confirm("2F-1", code=other(code))
    assert query(term, "2F-1").status is S.WAIT_BUYER
    assert host.wallet_confirm("2F-1", code=code) == "APPROVED"
    assert query(term, "2F-1").status is S.APPROVED          # the terminal sees it through its query
    assert any(a["kind"] == "verification_failed" for a in host.security("tia")["recent_alerts"])


def test_five_wrong_codes_kill_it_and_decline_the_payment(host, term):
    two_factor_account(host)
    waiting_payment(host, term, "tia", "2F-2")
    code = last_code(host, "tia")
    for _ in range(4):
        with pytest.raises(HostRefused, match="tries left"):
            host.wallet_confirm("2F-2", code=other(code))
    with pytest.raises(HostRefused, match="no longer valid; the payment is declined"):
        host.wallet_confirm("2F-2", code=other(code))
    r = query(term, "2F-2")
    assert r.status is S.DECLINED and "5 times" in r.reason_text
    assert host.wallet_confirm("2F-2", code=code) == "DECLINED"   # the right code, too late
    texts = [e["text"] for e in phone.inbox(host.ctx, "tia")]
    assert any("verification_failed" in t and "no longer valid" in t for t in texts)


def test_an_unconfirmed_two_factor_payment_times_out_after_5_minutes(host, term, clock):
    two_factor_account(host)
    waiting_payment(host, term, "tia", "2F-3")
    clock.advance(299)
    assert query(term, "2F-3").status is S.WAIT_BUYER
    clock.advance(2)
    r = query(term, "2F-3")
    assert (r.status, r.reason) == (S.DECLINED, Reason.CONFIRMATION_TIMEOUT)


def test_biometric_preference_approve_and_refuse_on_the_phone(host, term):
    two_factor_account(host, "bea")
    with pytest.raises(VerificationFailed, match="needs verification"):
        host.set_flags("bea", confirm_pref="biometric")
    phone.send(host.ctx, "bea", "confirm-pref")
    host.set_flags("bea", confirm_pref="biometric", proof=CustomerProof(PW, last_code(host, "bea")))
    waiting_payment(host, term, "bea", "BIO-1")
    assert last_code(host, "bea") is not None and phone.inbox(host.ctx, "bea")[0]["kind"] == "approve"
    with pytest.raises(HostRefused, match="approves payments on the phone"):
        host.wallet_confirm("BIO-1", code="123456")
    assert phone.answer(host.ctx, "bea", approve=True)["trade_status"] == "APPROVED"
    assert query(term, "BIO-1").status is S.APPROVED
    waiting_payment(host, term, "bea", "BIO-2")
    rid = phone.inbox(host.ctx, "bea")[0]["ref"]
    assert phone.answer(host.ctx, "bea", int(rid), approve=False)["state"] == "refused"
    r = query(term, "BIO-2")
    assert (r.status, r.reason) == (S.DECLINED, Reason.CUSTOMER_CANCELLED)
    with pytest.raises(HostRefused, match="refused"):
        phone.answer(host.ctx, "bea", int(rid), approve=True)      # answered once


# ---------------------------------------------------------------------- key operations

def test_raising_a_limit_needs_password_and_code_lowering_is_free(host):
    host.add_account("kim", "Kim", password=PW, daily_limit=100_000)
    host.set_limits("kim", daily_limit=50_000)                              # lower: free
    with pytest.raises(VerificationFailed, match="send-code kim --purpose set-limits"):
        host.set_limits("kim", daily_limit=200_000)
    phone.send(host.ctx, "kim", "set-limits")
    code = last_code(host, "kim")
    with pytest.raises(VerificationFailed, match="wrong payment password"):
        host.set_limits("kim", CustomerProof("999999", code), daily_limit=200_000)
    assert host.account("kim")["pin_tries"] == 1                              # counted like a wrong PIN
    with pytest.raises(VerificationFailed, match="wrong verification code"):
        host.set_limits("kim", CustomerProof(PW, other(code)), daily_limit=200_000)
    assert host.account("kim")["daily_limit"] == 50_000
    host.set_limits("kim", CustomerProof(PW, code), daily_limit=200_000)
    assert host.account("kim")["daily_limit"] == 200_000
    audit = security.audit_log(host.ctx, account_id="kim")
    assert [a["outcome"].split(":")[0] for a in audit][:4] == ["ok", "failed", "failed", "failed"]
    assert not any(PW in json.dumps(a) or code in json.dumps(a) for a in audit)
    kinds = [a["kind"] for a in host.security("kim")["recent_alerts"]]
    assert kinds.count("verification_failed") == 2


def test_two_factor_off_unfreeze_and_close_case_need_verification(host, term):
    two_factor_account(host, "uma")
    with pytest.raises(VerificationFailed):
        host.set_flags("uma", two_factor=False)
    phone.send(host.ctx, "uma", "two-factor-off")
    host.set_flags("uma", two_factor=False, proof=CustomerProof(PW, last_code(host, "uma")))
    assert not host.account("uma")["two_factor"]
    host.set_flags("uma", two_factor=True)                                   # turning it on: free
    host.freeze("uma", True, "suspicious")
    with pytest.raises(VerificationFailed):
        host.freeze("uma", False)
    phone.send(host.ctx, "uma", "unfreeze")
    host.freeze("uma", False, proof=CustomerProof(PW, last_code(host, "uma")))
    assert not host.account("uma")["frozen"]
    pay(term, 100, host.issue_code("uma"), order="UMA-1")
    case = host.report("UMA-1", "not me")
    second = host.report("UMA-1", "and again")
    with pytest.raises(VerificationFailed):
        host.close_case(case, "fine", unfreeze=True)
    phone.send(host.ctx, "uma", "unfreeze")
    code = last_code(host, "uma")
    with pytest.raises(HostRefused, match="other open case"):
        host.close_case(case, "fine", unfreeze=True, proof=CustomerProof(PW, code))
    host.close_case(second, "duplicate")
    host.close_case(case, "fine", unfreeze=True, proof=CustomerProof(PW, code))    # the refusal left it unused
    assert not host.account("uma")["frozen"]


def test_support_staff_verify_with_their_own_credentials_logged(host):
    host.add_account("ola", "Ola", password=PW)
    security.add_operator(host.ctx, "alice", OP_PW)
    host.freeze("ola", True)
    with pytest.raises(VerificationFailed, match="wrong operator password"):
        host.freeze("ola", False, proof=OperatorProof("alice", "not-the-password"))
    host.freeze("ola", False, proof=OperatorProof("alice", OP_PW))
    log = security.audit_log(host.ctx, operator="alice")
    assert [(a["action"], a["outcome"].split(":")[0]) for a in log] == [("unfreeze", "ok"), ("unfreeze", "failed")]
    assert OP_PW not in db_dump(host)
    host.freeze("ola", True)
    for _ in range(security.OPERATOR_TRIES):
        with pytest.raises(VerificationFailed):
            host.freeze("ola", False, proof=OperatorProof("alice", "wrong-wrong"))
    with pytest.raises(VerificationFailed, match="locked"):
        host.freeze("ola", False, proof=OperatorProof("alice", OP_PW))
    assert security.operators(host.ctx)[0]["locked"]


# ---------------------------------------------------------------------- alerts and webhooks

class Receiver:
    """A loopback HTTP server that checks each POST's signature with hmac; ``fail_first``
    answers 500 that many times before 200."""

    def __init__(self, secret_box: list, fail_first: int = 0) -> None:
        self.events: list[tuple[str, dict, bool]] = []
        self.got = threading.Event()            # set at each POST received
        self.fail_first = fail_first
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                want = "sha256=" + hmac.new(secret_box[0].encode(), body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(want, self.headers.get("X-Posterm-Signature", ""))
                outer.events.append((self.headers["X-Posterm-Event"], json.loads(body), ok))
                failing = outer.fail_first > 0
                outer.fail_first -= 1
                self.send_response(500 if failing or not ok else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.got.set()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receiver():
    made = []

    def make(secret_box, fail_first=0):
        r = Receiver(secret_box, fail_first)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def test_alerts_reach_the_inbox_and_a_signed_webhook(host, term, receiver):
    host.add_account("wes", "Wes", balance_minor=1_000_000, password=PW)
    box: list = []
    rx = receiver(box)
    box.append(alerts.set_webhook(host.ctx, "wes", rx.url))
    assert box[0] not in db_dump(host)                                       # the secret is kept sealed
    host.set_flags("wes", large_payment=50_000)
    pay(term, 60_000, host.issue_code("wes"), order="BIG-1")                  # large payment, first terminal
    host.set_password("wes", "135790", old=PW)                                # password change
    host.freeze("wes", True, "lost phone")                                    # freeze
    with pytest.raises(VerificationFailed):
        host.freeze("wes", False, proof=CustomerProof("135790", "123456"))    # no code was sent: failed
    assert alerts.deliver(host.ctx)["delivered"] >= 5
    kinds = {e[1]["kind"] for e in rx.events}
    assert {"large_payment", "password_changed", "frozen", "risk:alert", "verification_failed"} <= kinds
    assert all(ok for _, _, ok in rx.events) and len({e[0] for e in rx.events}) == len(rx.events)
    inbox = " ".join(e["text"] for e in phone.inbox(host.ctx, "wes"))
    assert "[large_payment]" in inbox and "[frozen] lost phone" in inbox and "[password_changed]" in inbox
    assert alerts.deliver(host.ctx)["delivered"] == 0                         # delivered once


def test_a_failing_receiver_gets_the_same_event_again_after_backoff(host, clock, receiver):
    host.add_account("rita", "Rita")
    box: list = []
    rx = receiver(box, fail_first=2)
    box.append(alerts.set_webhook(host.ctx, "rita", rx.url))
    host.freeze("rita", True, "test")
    assert alerts.deliver(host.ctx) == {"delivered": 0, "retry": 1, "failed": 0}
    assert alerts.deliver(host.ctx)["retry"] == 0                             # not due for 1 s
    clock.advance(1)
    assert alerts.deliver(host.ctx)["retry"] == 1
    clock.advance(1.5)
    assert alerts.deliver(host.ctx)["delivered"] == 0                         # next try 2 s after the second
    clock.advance(0.5)
    assert alerts.deliver(host.ctx)["delivered"] == 1
    assert len(rx.events) == 3 and len({e[0] for e in rx.events}) == 1       # at least once, one event id
    assert [alerts.backoff(n) for n in (1, 2, 3, 9, 10)] == [1, 2, 4, 256, 300]


def test_a_dead_receiver_is_given_up_after_8_tries(host, clock):
    host.add_account("dan", "Dan")
    alerts.set_webhook(host.ctx, "dan", "http://127.0.0.1:9/nobody")
    host.freeze("dan", True)
    tries = []
    for _ in range(10):
        c = alerts.deliver(host.ctx, poster=lambda url, body, headers: tries.append(headers) or 0)
        clock.advance(301)
    assert len(tries) == alerts.MAX_ATTEMPTS and c == {"delivered": 0, "retry": 0, "failed": 0}
    assert host.security("dan")["outbox_failed"] == 1


def test_webhooks_are_loopback_http_only(host):
    host.add_account("lou", "Lou")
    for url in ("https://127.0.0.1/x", "http://example.com/x", "http://10.0.0.1/x", "ftp://127.0.0.1/",
                "http://user:pw@127.0.0.1/"):
        with pytest.raises(HostRefused, match="loopback"):
            alerts.set_webhook(host.ctx, "lou", url)
    alerts.set_webhook(host.ctx, "lou", "http://[::1]:8080/x")
    assert alerts.remove_webhook(host.ctx, "lou") and not alerts.remove_webhook(host.ctx, "lou")


# ---------------------------------------------------------------------- the password reset

ID = "11010519491231002X"          # GB 11643's example number: born 1949-12-31, check character X


def test_forgotten_password_reset_with_the_id_number_and_a_code_unlocks_a_pin_locked_account(host, term, clock):
    """A real registered ID number (GB 11643 check digit): three wrong PINs at a terminal
    lock the account; the reset needs that ID number and a reset-password code, never the
    old password; the new one passes the rules (each refusal says which, the code stays
    usable); afterwards the terminal takes the new password."""
    host.add_account("rex", "Rex", password=PW, balance_minor=1_000_000, id_number=ID, id_name="Wang Wu")
    code = host.issue_code("rex")
    pay(term, 150_000, code, order="LOCK-1")
    for _ in range(3):
        enter_pin(term, "LOCK-1", code, pin="000000")
    assert query(term, "LOCK-1").reason == Reason.PIN_LOCKED
    s = host.security("rex")
    assert s["pin_locked"] and s["identity_verified"] and s["id_last4"] == "002X"
    phone.send(host.ctx, "rex", "reset-password")
    sms = last_code(host, "rex")
    with pytest.raises(VerificationFailed, match="ID number does not match"):
        security.reset_password(host.ctx, "rex", "440524198001010013", sms, "135790")   # valid, but not Rex's
    for weak, why in (("222222", "one digit repeated"), ("123456", "run of digits"), ("654321", "run of digits"),
                      ("491231", "birth date in the ID"), ("19491231", "birth date in the ID")):
        with pytest.raises(identity.PasswordRuleBroken, match=why):
            security.reset_password(host.ctx, "rex", ID, sms, weak)
    with pytest.raises(VerificationFailed, match="wrong verification code"):
        security.reset_password(host.ctx, "rex", ID, other(sms), "135790")
    assert host.security("rex")["pin_locked"]                          # nothing reset so far
    security.reset_password(host.ctx, "rex", ID.lower(), sms, "135790")   # the code is still good
    s = host.security("rex")
    assert not s["pin_locked"] and s["pin_tries_used"] == 0
    assert s["recent_alerts"][0]["kind"] == "password_changed"
    outcomes = [e["outcome"] for e in s["recent_audit"] if e["action"] == "reset-password"]
    assert outcomes[0] == "ok" and sum(o.startswith("refused:") for o in outcomes) == 5
    assert sum(o.startswith("failed:") for o in outcomes) == 2
    with pytest.raises(VerificationFailed, match="no verification code is pending"):
        security.reset_password(host.ctx, "rex", ID, sms, "135792")       # single use
    clock.advance(3601)                          # past the risk rule on wrong PINs within an hour
    code = host.issue_code("rex")
    pay(term, 150_000, code, order="LOCK-2")
    assert enter_pin(term, "LOCK-2", code, pin=PW).reason == Reason.WRONG_PIN        # the old one is gone
    assert enter_pin(term, "LOCK-2", code, pin="135790").status is S.APPROVED


def test_reset_password_of_an_account_without_an_id_number_is_refused(host):
    host.add_account("noid", "No Id", password=PW)
    phone.send(host.ctx, "noid", "reset-password")
    with pytest.raises(VerificationFailed, match="ID number does not match"):
        security.reset_password(host.ctx, "noid", ID, last_code(host, "noid"), "135790")


# ---------------------------------------------------------------------- the view

def test_the_security_view_shows_every_protection_by_section(host):
    two_factor_account(host, "vic")
    alerts.set_webhook(host.ctx, "vic", "http://127.0.0.1:9/x")
    host.freeze("vic", True)
    s = host.security("vic")
    titles = [t for t, _ in s["sections"]]
    assert titles == ["account", "payment password", "second factor", "limits", "alerts", "security audit",
                      "identity and balance monitoring", "security notices"]
    limits = dict(s["sections"])["limits"]
    assert {"over_limit", "remind_at_percent"} <= set(limits) and (s["over_limit"], s["remind_at_percent"]) == (
        "reject", 80)
    assert s["two_factor"] and s["confirm_pref"] == "code" and s["frozen"] and s["webhook"].endswith("/x")
    assert s["outbox_pending"] == 1 and s["recent_alerts"][0]["kind"] == "frozen"
    assert s["recent_audit"][0]["action"] == "freeze"
    assert all(k in s for _, keys in s["sections"] for k in keys)
    assert CODE  # the demo codes are still there for other tests
