"""The security centre's guard (issue 17): real-name ID numbers, payment-password rules,
balance monitoring and the audit, unusual outflow, reject-or-confirm at the limits and the
limit reminder. Payments go through the signed authorisation path (tests/host/test_host.py)."""

from __future__ import annotations

from datetime import date

import pytest

from firmware_protocol.host.messages import HostStatus as S
from firmware_protocol.native.messages import Reason
from posterm.crypto.hsm import Hsm
from posterm.host import HostRefused, identity, monitor, phone
from tests.host.conftest import db_arg, db_dump, raw_execute, support
from tests.host.test_host import enter_pin, pay

ID = "11010519491231002X"          # the GB 11643 example: born 1949-12-31, check character X
ID2 = "440524198001010013"


def kinds(host, account):
    return [a["kind"] for a in host.security(account)["recent_alerts"]]


# ---------------------------------------------------------------------- ID numbers

def test_the_id_number_check_digit_and_birth_date():
    assert identity.id_problem(ID) is None and identity.id_problem(ID.lower()) is None
    assert identity.id_problem(ID2) is None
    assert identity.parse_id(ID).birth == date(1949, 12, 31)
    assert "check digit" in identity.id_problem("110105194912310021")
    assert "18 characters" in identity.id_problem(ID[:-1])
    assert "not a date" in identity.id_problem("11010519490231002X")       # 31 February: never
    assert "not plausible" in identity.id_problem("110105" + "20990101" + "0010", today=date(2026, 1, 1))
    assert "province" in identity.id_problem("990105194912310024")
    assert "17 digits" in identity.id_problem("1101051949123100XX")
    assert "****002X" in repr(identity.parse_id(ID)) and ID not in repr(identity.parse_id(ID))
    with pytest.raises(HostRefused, match="check digit"):
        identity.parse_id("110105194912310021")


def test_identity_hash_is_keyed_by_the_hsm_and_kept_across_reopen(tmp_path):
    a, b = Hsm.ephemeral(), Hsm.ephemeral()
    assert a.identity_hash(ID) == a.identity_hash(ID) != b.identity_hash(ID)
    assert len(a.identity_hash(ID)) == 32 and a._identity_key not in (a._bdk, a._kbpk_master)
    first = Hsm.open(tmp_path / "hsm")
    again = Hsm.open(tmp_path / "hsm")
    assert first.identity_hash(ID) == again.identity_hash(ID)
    assert first._identity_key.hex() not in repr(first)


def test_real_name_verification_keeps_only_hashes_and_the_last_4(host, tmp_path):
    host.add_account("ida", "Ida", balance_minor=1000, password="135790", id_number=ID, id_name="张三")
    view = host.store.view()
    assert host.account("ida")["real_name"]
    assert identity.state(view, "ida")["id_last4"] == "002X"
    assert identity.matches(view, "ida", ID) and identity.matches(view, "ida", ID.lower())
    assert not identity.matches(view, "ida", ID2)
    assert not identity.matches(view, "demo-001", ID)                       # not verified with an ID
    raw = b"".join(open(p, "rb").read() for p in tmp_path.glob("host.db*"))   # the files (SQLite) ...
    raw += db_dump(db_arg(host)).encode()                                     # ... and every row (both)
    assert ID.encode() not in raw and "张三".encode() not in raw and b"19491231" not in raw
    assert "real_name" in kinds(host, "ida")


def test_real_name_needs_a_valid_number_and_the_name(host):
    with pytest.raises(HostRefused, match="check digit"):
        host.add_account("bad", "Bad", id_number="110105194912310021", id_name="Bad")
    with pytest.raises(HostRefused, match="both"):
        host.add_account("bad", "Bad", id_number=ID)
    assert host.store.view().account("bad") is None
    host.add_account("nov", "Not Verified", real_name=False)
    with pytest.raises(HostRefused, match="ID number"):
        host.set_flags("nov", real_name=True)                                # a flag alone verifies nothing
    assert identity.verify_account(host.ctx, "nov", ID2, "Li Si") == "0013"
    assert host.account("nov")["real_name"]


def test_an_unverified_account_keeps_the_small_amount_cap(host, term):
    host.add_account("small", "Small", balance_minor=100_000, real_name=False)
    assert pay(term, 20_000, host.issue_code("small")).status is S.APPROVED
    r = pay(term, 20_001, host.issue_code("small"))
    assert (r.status, r.reason) == (S.DECLINED, Reason.NOT_REAL_NAME_VERIFIED)
    host.set_flags("small", over_limit="confirm", proof=support(host))    # confirming does not lift it
    assert pay(term, 20_001, host.issue_code("small")).reason == Reason.NOT_REAL_NAME_VERIFIED


# ---------------------------------------------------------------------- payment-password rules

@pytest.mark.parametrize("password, why", [
    ("111111", "one digit repeated"), ("123456", "run of digits"), ("654321", "run of digits"),
    ("3456789", "run of digits"), ("12345", "6 to 12 digits"), ("12345a", "6 to 12 digits"),
    ("491231", "birth date"),      # YYMMDD
    ("123149", "birth date"),      # MMDDYY
    ("311249", "birth date"),      # DDMMYY
    ("19491231", "birth date"),    # YYYYMMDD
])
def test_password_rules_at_registration(host, password, why):
    with pytest.raises(HostRefused, match=why):
        host.add_account("pw", "Pw", password=password, id_number=ID, id_name="Zhang San")
    assert host.store.view().account("pw") is None


@pytest.mark.parametrize("password, why", [
    ("000000", "one digit repeated"), ("012345", "run of digits"), ("987654", "run of digits"),
    ("491231", "birth date"), ("123149", "birth date"), ("881231", "birth date"),
])
def test_password_rules_at_every_setting(host, password, why):
    host.add_account("pw", "Pw", password="135790", id_number=ID, id_name="Zhang San")
    with pytest.raises(HostRefused, match=why):
        host.set_password("pw", password, old="135790")
    host.set_password("pw", "135792", old="135790")                         # a good one is taken


def test_password_rules_allow_the_usual_ones():
    for ok in ("147258", "135790", "112233", "123789", "246810"):
        assert identity.password_problem(ok, birth=date(1949, 12, 31)) is None


# ---------------------------------------------------------------------- balance monitoring, audit

def _tamper(host, account, balance):
    raw_execute(db_arg(host), "UPDATE accounts SET balance_minor = ? WHERE id = ?", (balance, account))


def test_a_balance_the_ledger_does_not_explain_freezes_and_refuses(host, term):
    host.add_account("eve", "Eve", balance_minor=10_000, password="135790")
    assert pay(term, 1_000, host.issue_code("eve")).status is S.APPROVED
    ledger_rows = host.store.view().customer_ledger("eve")
    _tamper(host, "eve", 5_000_000)
    r = pay(term, 2_000, host.issue_code("eve"))
    assert (r.status, r.reason) == (S.DECLINED, Reason.ACCOUNT_FROZEN)
    declined = host.store.view().trade_by_no_or_order(r.order_id)
    assert (declined["status"], declined["reason_text"]) == ("DECLINED", monitor.MISMATCH_TEXT)
    assert host.account("eve")["frozen"] and "balance_mismatch" in kinds(host, "eve")
    assert host.store.view().customer_ledger("eve") == ledger_rows           # nothing moved, nothing doubled
    assert host.store.view().balance_and_total("eve")["total_minor"] == 9_000
    found = monitor.audit(host.ctx)
    assert [m["account"] for m in found.mismatched] == ["eve"]
    assert found.mismatched[0]["difference_minor"] == 5_000_000 - 9_000
    rows = dict(monitor.security_rows(host.store.view(), "eve"))
    assert "DIFFER" in rows["balance vs ledger"] and "this account differed" in rows["last audit"]
    _tamper(host, "eve", 9_000)                                               # put back for the fixture's books check
    assert monitor.audit(host.ctx).mismatched == ()


def test_a_refund_after_tampering_is_caught_as_it_posts(host, term):
    from firmware_protocol.host import messages as h

    host.add_account("fay", "Fay", balance_minor=10_000, password="135790")
    r = pay(term, 1_000, host.issue_code("fay"), order="FAY-1")
    _tamper(host, "fay", 9_500)
    back = term.request(h.HostRefund(terminal_id=term.terminal_id, order_id="FAY-1", refund_id="RF-FAY-1",
                                     amount_minor=100, currency="CNY"), 5)
    assert back.reason == Reason.NONE and r.status is S.APPROVED
    assert host.account("fay")["frozen"] and "balance_mismatch" in kinds(host, "fay")
    _tamper(host, "fay", 9_100)


def test_the_running_total_follows_every_entry(host, term):
    host.add_account("gus", "Gus", balance_minor=10_000)
    for n in range(3):
        pay(term, 100 + n, host.issue_code("gus"))
    bt = host.store.view().balance_and_total("gus")
    assert bt["balance_minor"] == bt["total_minor"] == 10_000 - 303
    assert monitor.audit(host.ctx).mismatched == ()


# ---------------------------------------------------------------------- unusual outflow

def test_unusual_outflow_in_24h_alerts_the_customer(host, term, clock):
    host.add_account("hal", "Hal", balance_minor=2_000_000, password_free=2_000_000, per_tx_limit=2_000_000)
    for _ in range(3):                                 # three days of 100.00
        pay(term, 10_000, host.issue_code("hal"))
        clock.advance(86_400)
    def outflow_alerts():
        return [a for a in host.security("hal")["recent_alerts"] if "usual daily" in a["text"]]

    assert pay(term, 25_000, host.issue_code("hal")).status is S.APPROVED     # 250 in 24 h: not over 3x 100
    assert not outflow_alerts()
    r = pay(term, 10_000, host.issue_code("hal"))                             # 350 in 24 h: over 3x
    assert r.status is S.APPROVED                                             # alert: the payment goes on
    (alert,) = outflow_alerts()
    assert alert["kind"] == "risk:alert" and "usual daily 10000" in alert["text"]
    decided = [d for d in host.store.view().risk_decisions(account="hal", action="alert") if "paid within" in d["reasons"]]
    assert len(decided) == 1 and "35000 paid within 86400 s" in decided[0]["reasons"]


# ---------------------------------------------------------------------- limits: reject or confirm, reminder

def test_over_a_limit_rejects_or_asks_for_confirmation(host, term):
    host.add_account("ola", "Ola", balance_minor=1_000_000, password="135790", per_tx_limit=50_000,
                     daily_limit=80_000, password_free=10_000)
    code = host.issue_code("ola")
    r = pay(term, 60_000, code)
    assert (r.status, r.reason) == (S.DECLINED, Reason.OVER_TRANSACTION_LIMIT)    # reject: as before
    host.set_flags("ola", over_limit="confirm", proof=support(host))
    code = host.issue_code("ola")
    r = pay(term, 60_000, code, order="OLA-1")
    assert r.status is S.NEED_PIN                                                 # over: the password asked
    assert enter_pin(term, "OLA-1", code, pin="135790").status is S.APPROVED
    code = host.issue_code("ola")
    r = pay(term, 30_000, code, order="OLA-2")                                    # 90000 > the daily 80000
    assert r.status is S.NEED_PIN
    r = enter_pin(term, "OLA-2", code, pin="000000")
    assert r.status is S.NEED_PIN and r.reason == Reason.WRONG_PIN                # a wrong password pays nothing
    assert enter_pin(term, "OLA-2", code, pin="135790").status is S.APPROVED
    host.set_flags("ola", over_limit="reject")                              # back to reject: free
    r = pay(term, 100, host.issue_code("ola"))
    assert (r.status, r.reason) == (S.DECLINED, Reason.OVER_DAILY_LIMIT)


def test_over_a_limit_with_the_phone(host, term):
    host.add_account("pho", "Pho", balance_minor=1_000_000, per_tx_limit=50_000, confirm="phone")
    host.set_flags("pho", over_limit="confirm", proof=support(host))
    r = pay(term, 60_000, host.issue_code("pho"), order="PHO-1")
    assert r.status is S.WAIT_BUYER
    assert host.wallet_confirm("PHO-1") == "APPROVED"


def test_the_limit_reminder_once_a_day(host, term, clock):
    host.add_account("rem", "Rem", balance_minor=1_000_000, daily_limit=100_000, password_free=100_000)
    pay(term, 70_000, host.issue_code("rem"))
    assert "limit_reminder" not in kinds(host, "rem")
    assert pay(term, 15_000, host.issue_code("rem")).status is S.APPROVED         # 85%: past 80%
    assert kinds(host, "rem").count("limit_reminder") == 1
    assert "85%" in host.security("rem")["recent_alerts"][0]["text"]
    (note,) = [e["text"] for e in phone.inbox(host.ctx, "rem") if e["text"].startswith("[limit_reminder]")]
    assert "reached 85% of the daily limit" in note                               # it reached the phone
    pay(term, 5_000, host.issue_code("rem"))
    assert kinds(host, "rem").count("limit_reminder") == 1                        # once per day
    clock.advance(86_400)
    host.set_flags("rem", remind_at=50)                                           # free
    pay(term, 40_000, host.issue_code("rem"))
    assert kinds(host, "rem").count("limit_reminder") == 1
    pay(term, 10_000, host.issue_code("rem"))                                     # 50% of the day: reminded
    assert kinds(host, "rem").count("limit_reminder") == 2
    with pytest.raises(HostRefused, match="percentage"):
        host.set_flags("rem", remind_at=101)
    with pytest.raises(HostRefused, match="reject, confirm"):
        host.set_flags("rem", over_limit="maybe")
