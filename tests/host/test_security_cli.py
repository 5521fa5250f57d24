"""The security centre through `posterm host ...`: the phone, verified key operations, the
operator log, webhooks, the view, and a terminal's two-factor payment confirmed from the CLI."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from firmware_protocol.host.messages import HostStatus as S
from firmware_protocol.native.messages import Reason
from posterm.cli import main
from posterm.host import Host
from tests.host.conftest import host_cli, support, terminal
from tests.host.test_host import enter_pin, pay, query
from tests.host.test_security import Receiver


def run(db, *args, input=None):
    r = CliRunner().invoke(main, ["host", *args, "--db", str(db)], input=input)
    return r.exit_code, r.output


def code_of(db, account):
    code, out = run(db, "phone", account, "--json")
    assert code == 0, out
    return next(re.search(r"code (\d{6})", e["text"]).group(1) for e in json.loads(out) if e["kind"] == "code")


def test_raise_a_limit_with_the_phones_code_and_the_password(host_db):
    db = host_db
    assert run(db, "account", "add", "ivy", "--name", "Ivy", "--daily-limit", "100.00", "--set-password",
               input="135790\n135790\n")[0] == 0
    assert run(db, "account", "set-limits", "ivy", "--daily-limit", "50.00")[0] == 0         # lowering: free
    code, out = run(db, "account", "set-limits", "ivy", "--daily-limit", "500.00")
    assert code == 1 and "send-code ivy --purpose set-limits" in out
    code, out = run(db, "phone", "send-code", "ivy", "--purpose", "set-limits")
    assert code == 0 and "request" in out
    sms = code_of(db, "ivy")
    code, out = run(db, "phone", "ivy")
    assert code == 0 and sms in out and "verification code" in out                       # the phone shows it
    wrong = "000000" if sms != "000000" else "111111"
    code, out = run(db, "account", "set-limits", "ivy", "--daily-limit", "500.00", "--code", wrong,
                    "--password-stdin", input="135790\n")
    assert code == 1 and "4 tries left" in out
    code, out = run(db, "account", "set-limits", "ivy", "--daily-limit", "500.00", "--code", sms,
                    "--password-stdin", input="135790\n")
    assert code == 0, out
    assert json.loads(run(db, "security", "ivy", "--json")[1])["daily_limit_minor"] == 50000
    code, out = run(db, "operator", "log", "--account", "ivy", "--json")
    log = json.loads(out)
    assert [e["outcome"].split(":")[0] for e in log[:3]] == ["ok", "failed", "failed"]
    assert sms not in out and "135790" not in out
    code, out = run(db, "security", "ivy")
    assert code == 0 and "second factor:" in out and "security audit:" in out and "raise-limits" in out


def test_over_limit_confirm_needs_verification_then_a_payment_over_the_limit_asks(tmp_path):
    """--over-limit confirm lets payments over a limit through with a confirmation: a
    relaxation, so it needs the password and the phone's code (purpose over-limit)."""
    db = tmp_path / "host.db"
    h = Host.open(db)
    try:
        h.add_account("olga", "Olga", balance_minor=1_000_000, password="135790", per_tx_limit=50_000)
        term = terminal(h)
        r = pay(term, 60_000, h.issue_code("olga"), order="OL-1")
        assert (r.status, r.reason) == (S.DECLINED, Reason.OVER_TRANSACTION_LIMIT)        # reject, the default
        code, out = run(db, "account", "set-security", "olga", "--over-limit", "confirm")
        assert code == 1 and "this needs verification" in out and "--purpose over-limit" in out
        assert run(db, "phone", "send-code", "olga", "--purpose", "over-limit")[0] == 0
        sms = code_of(db, "olga")
        wrong = "000000" if sms != "000000" else "111111"
        code, out = run(db, "account", "set-security", "olga", "--over-limit", "confirm", "--code", wrong,
                        "--password-stdin", input="135790\n")
        assert code == 1 and "wrong verification code (4 tries left)" in out
        s = json.loads(run(db, "security", "olga", "--json")[1])
        assert s["over_limit"] == "reject"                                                   # unchanged
        assert s["recent_alerts"][0]["kind"] == "verification_failed"
        assert "over-limit-confirm refused" in s["recent_alerts"][0]["text"]
        code, out = run(db, "account", "set-security", "olga", "--over-limit", "confirm", "--code", sms,
                        "--password-stdin", input="135790\n")
        assert code == 0, out
        s = json.loads(run(db, "security", "olga", "--json")[1])
        assert s["over_limit"] == "confirm"
        assert [(e["action"], e["outcome"].split(":")[0]) for e in s["recent_audit"][:3]] == [
            ("over-limit-confirm", "ok"), ("over-limit-confirm", "failed"), ("over-limit-confirm", "failed")]
        pcode = h.issue_code("olga")
        assert pay(term, 60_000, pcode, order="OL-2").status is S.NEED_PIN                # over: the password asked
        assert enter_pin(term, "OL-2", pcode, pin="135790").status is S.APPROVED
        assert run(db, "account", "set-security", "olga", "--over-limit", "reject")[0] == 0   # back: free
        assert pay(term, 60_000, h.issue_code("olga"), order="OL-3").reason == Reason.OVER_TRANSACTION_LIMIT
    finally:
        h.close()


runs = host_cli      # (exit code, stdout, stderr) apart


def test_a_two_factor_wallet_scan_waits_for_the_phones_code(tmp_path):
    """The customer scans the terminal's QR with `host wallet scan`: a two-factor account's
    payment is not paid by the scan alone, it waits for the code sent to the phone."""
    db = tmp_path / "host.db"
    h = Host.open(db)
    try:
        h.add_account("quin", "Quin", balance_minor=1_000_000, password="246802", two_factor=True)
        term = terminal(h)
        r = pay(term, 2_000, order="QR-2F", qr=True)
        assert r.status is S.SHOW_QR
        code, out, err = runs(db, "wallet", "scan", r.qr_data, "--account", "quin")
        assert code == 0 and out.strip() == "wait_buyer", (out, err)
        assert "wallet confirm QR-2F --merchant M100000001 --code" in err
        assert query(term, "QR-2F").status is S.WAIT_BUYER                  # the terminal keeps waiting
        code, out = run(db, "phone", "quin")
        assert "pay 20.00 CNY to merchant M100000001 (order QR-2F)" in out, out
        sms = code_of(db, "quin")
        code, out = run(db, "wallet", "confirm", "QR-2F")
        assert code == 1 and "needs the verification code" in out
        code, out = run(db, "wallet", "confirm", "QR-2F", "--code", "000000" if sms != "000000" else "111111")
        assert code == 1 and "wrong verification code (4 tries left)" in out
        assert query(term, "QR-2F").status is S.WAIT_BUYER
        code, out = run(db, "wallet", "confirm", "QR-2F", "--code", sms)
        assert code == 0 and out.strip() == "approved", out
        assert query(term, "QR-2F").status is S.APPROVED
        kinds = [a["kind"] for a in json.loads(run(db, "security", "quin", "--json")[1])["recent_alerts"]]
        assert "verification_failed" in kinds
    finally:
        h.close()


def test_a_two_factor_wallet_scan_preferring_biometric_waits_for_the_approval(tmp_path):
    db = tmp_path / "host.db"
    h = Host.open(db)
    try:
        h.add_account("bo", "Bo", balance_minor=1_000_000, password="246802", two_factor=True)
        h.set_flags("bo", confirm_pref="biometric", proof=support(h))
        term = terminal(h)
        r = pay(term, 2_000, order="QR-BIO", qr=True)
        code, out, err = runs(db, "wallet", "scan", r.qr_data, "--account", "bo")
        assert code == 0 and out.strip() == "wait_buyer" and "posterm host phone approve bo" in err
        code, out = run(db, "phone", "bo")
        assert "[approve] approve on this phone to pay 20.00 CNY" in out, out
        code, out = run(db, "wallet", "confirm", "QR-BIO")
        assert code == 1 and "approves payments on the phone" in out
        assert query(term, "QR-BIO").status is S.WAIT_BUYER
        code, out = run(db, "phone", "approve", "bo")
        assert code == 0 and "approved; payment approved" in out, out
        assert query(term, "QR-BIO").status is S.APPROVED
    finally:
        h.close()


def daytime_zone() -> str:
    """Asia/Shanghai, or America/New_York while it is night (01:00-05:00) in Shanghai: the
    scan's risk check runs on the real clock, in the account's zone."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return "America/New_York" if 1 <= datetime.now(ZoneInfo("Asia/Shanghai")).hour < 5 else "Asia/Shanghai"


def test_a_wallet_scan_over_a_limit_with_confirm_waits_for_the_phones_code(tmp_path):
    """Without two-factor, --over-limit confirm: a scan over the limit is not confirmed by
    the scan itself, it waits for the code sent to the phone; under the limit it pays at once."""
    db = tmp_path / "host.db"
    h = Host.open(db)
    try:
        # a zone where it is day now: the night rule (01:00-05:00 local) would ask to confirm too
        h.add_account("oscar", "Oscar", balance_minor=1_000_000, password="246802", per_tx_limit=50_000,
                      tz=daytime_zone())
        h.set_flags("oscar", over_limit="confirm", proof=support(h))
        term = terminal(h)
        r = pay(term, 20_000, order="QR-UNDER", qr=True)
        code, out, err = runs(db, "wallet", "scan", r.qr_data, "--account", "oscar")
        assert code == 0 and out.strip() == "approved", (out, err)                # under the limit: the scan pays
        assert query(term, "QR-UNDER").status is S.APPROVED
        r = pay(term, 60_000, order="QR-OVER", qr=True)
        code, out, err = runs(db, "wallet", "scan", r.qr_data, "--account", "oscar")
        assert code == 0 and out.strip() == "wait_buyer", (out, err)
        assert "extra confirmation asked" in err and "wallet confirm QR-OVER --merchant M100000001 --code" in err
        assert query(term, "QR-OVER").status is S.WAIT_BUYER                 # the terminal keeps waiting
        code, out = run(db, "phone", "oscar")
        assert "pay 600.00 CNY to merchant M100000001 (order QR-OVER)" in out, out
        sms = code_of(db, "oscar")
        code, out = run(db, "wallet", "confirm", "QR-OVER")                  # the scan was not the confirmation
        assert code == 1 and "needs the verification code" in out, out
        code, out = run(db, "wallet", "confirm", "QR-OVER", "--code", "000000" if sms != "000000" else "111111")
        assert code == 1 and "wrong verification code (4 tries left)" in out
        assert query(term, "QR-OVER").status is S.WAIT_BUYER
        assert json.loads(run(db, "security", "oscar", "--json")[1])["balance_minor"] == 980_000   # nothing paid yet
        code, out = run(db, "wallet", "confirm", "QR-OVER", "--code", sms)
        assert code == 0 and out.strip() == "approved", out
        assert query(term, "QR-OVER").status is S.APPROVED
        s = json.loads(run(db, "security", "oscar", "--json")[1])
        assert s["balance_minor"] == 920_000
        assert "verification_failed" in [a["kind"] for a in s["recent_alerts"]]
    finally:
        h.close()


def test_a_wallet_scan_over_a_limit_with_confirm_dies_after_five_wrong_codes(tmp_path):
    db = tmp_path / "host.db"
    h = Host.open(db)
    try:
        h.add_account("otto", "Otto", balance_minor=1_000_000, password="246802", per_tx_limit=50_000)
        h.set_flags("otto", over_limit="confirm", proof=support(h))
        term = terminal(h)
        r = pay(term, 60_000, order="QR-DEAD", qr=True)
        assert runs(db, "wallet", "scan", r.qr_data, "--account", "otto")[1].strip() == "wait_buyer"
        wrong = "000000" if code_of(db, "otto") != "000000" else "111111"
        outs = [run(db, "wallet", "confirm", "QR-DEAD", "--code", wrong) for _ in range(5)]
        assert all(code == 1 for code, _ in outs)
        assert "tried 5 times" in outs[-1][1] and "the payment is declined" in outs[-1][1], outs[-1]
        r = query(term, "QR-DEAD")
        assert r.status is S.DECLINED and r.reason == Reason.OTHER
        assert json.loads(run(db, "security", "otto", "--json")[1])["balance_minor"] == 1_000_000
    finally:
        h.close()


def test_a_wallet_scan_over_a_limit_with_reject_is_declined(tmp_path):
    db = tmp_path / "host.db"
    h = Host.open(db)
    try:
        h.add_account("rita", "Rita", balance_minor=1_000_000, password="246802", per_tx_limit=50_000)
        term = terminal(h)
        r = pay(term, 60_000, order="QR-REJ", qr=True)
        code, out, err = runs(db, "wallet", "scan", r.qr_data, "--account", "rita")
        assert out.strip() == "declined", (code, out, err)
        r = query(term, "QR-REJ")
        assert (r.status, r.reason) == (S.DECLINED, Reason.OVER_TRANSACTION_LIMIT)
        assert not [e for e in json.loads(run(db, "phone", "rita", "--json")[1]) if e["kind"] == "code"]
    finally:
        h.close()


def test_a_wallet_scan_risk_control_asks_to_confirm_waits_for_the_approval(tmp_path):
    """Risk control's "confirm" (a terminal away from the account's home region) on a scan
    without two-factor: the approval on the phone, the account preferring biometric."""
    db = tmp_path / "host.db"
    h = Host.open(db)
    try:
        h.add_account("rui", "Rui", balance_minor=1_000_000, password="246802", home_region="CN-BJ")
        h.set_flags("rui", confirm_pref="biometric", proof=support(h))
        term = terminal(h)                                                   # in CN-SH
        r = pay(term, 2_000, order="QR-RISK", qr=True)
        code, out, err = runs(db, "wallet", "scan", r.qr_data, "--account", "rui")
        assert code == 0 and out.strip() == "wait_buyer" and "posterm host phone approve rui" in err, (out, err)
        code, out = run(db, "wallet", "confirm", "QR-RISK")
        assert code == 1 and "approves payments on the phone" in out
        assert query(term, "QR-RISK").status is S.WAIT_BUYER
        code, out = run(db, "phone", "approve", "rui")
        assert code == 0 and "approved; payment approved" in out, out
        assert query(term, "QR-RISK").status is S.APPROVED
    finally:
        h.close()


def test_operators_and_their_log(host_db):
    db = host_db
    assert run(db, "account", "add", "joe", "--name", "Joe")[0] == 0
    assert run(db, "account", "freeze", "joe")[0] == 0
    assert run(db, "operator", "add", "sam", input="sam-password-1\n")[0] == 0
    assert run(db, "operator", "add", "sam", input="sam-password-1\n")[0] == 1               # exists
    code, out = run(db, "account", "unfreeze", "joe", "--operator", "sam", "--password-stdin", input="nope-nope\n")
    assert code == 1 and "wrong operator password" in out
    code, out = run(db, "account", "unfreeze", "joe", "--operator", "sam", "--password-stdin", input="sam-password-1\n")
    assert code == 0, out
    rows = json.loads(run(db, "operator", "log", "--operator", "sam", "--json")[1])
    assert [(r["actor"], r["action"], r["outcome"].split(":")[0]) for r in rows] == [
        ("operator:sam", "unfreeze", "ok"), ("operator:sam", "unfreeze", "failed")]
    assert json.loads(run(db, "operator", "list", "--json")[1])[0]["name"] == "sam"
    inbox = json.loads(run(db, "phone", "joe", "--json")[1])
    assert any("[verification_failed]" in e["text"] for e in inbox) and any("[unfrozen]" in e["text"] for e in inbox)


def test_webhook_set_deliver_remove(host_db):
    db = host_db
    assert run(db, "account", "add", "kai", "--name", "Kai")[0] == 0
    box: list = []
    rx = Receiver(box)
    try:
        code, out = run(db, "webhook", "set", "kai", rx.url, "--json")
        assert code == 0, out
        box.append(json.loads(out)["secret"])
        assert run(db, "account", "freeze", "kai", "--why", "card lost")[0] == 0
        assert json.loads(run(db, "security", "kai", "--json")[1])["outbox_pending"] == 1
        code, out = run(db, "webhook", "deliver", "--json")
        assert code == 0 and json.loads(out)["delivered"] == 1
        assert rx.events[0][1]["kind"] == "frozen" and rx.events[0][2]                    # signature checked
        assert run(db, "webhook", "remove", "kai")[0] == 0
    finally:
        rx.close()


def test_reset_password_from_the_cli_with_the_id_number_and_the_phones_code(host_db):
    db = host_db
    idn = "11010519491231002X"
    assert run(db, "account", "add", "lea", "--name", "Lea", "--real-name", "--id-number", idn,
               "--real-name-of", "Lea Li", "--set-password", input="135790\n135790\n")[0] == 0
    assert run(db, "phone", "send-code", "lea", "--purpose", "reset-password")[0] == 0
    sms = code_of(db, "lea")
    args = ("account", "reset-password", "lea", "--id-number", idn, "--code", sms)
    for weak, why in (("333333", "one digit repeated"), ("123456", "run of digits"),
                      ("311249", "birth date in the ID")):
        code, out = run(db, *args, input=f"{weak}\n")
        assert code == 1 and out.startswith("posterm: error:") and why in out and weak not in out, out
    code, out = run(db, "account", "reset-password", "lea", "--id-number", "440524198001010013", "--code", sms,
                    input="246802\n")
    assert code == 1 and "ID number does not match" in out
    code, out = run(db, *args, input="246802\n")
    assert code == 0 and "payment password reset" in out, out
    code, out = run(db, "phone", "lea")
    assert "payment password reset with the ID number and a code" in out


def test_a_terminals_two_factor_payment_confirmed_with_wallet_confirm_code(host_db):
    db = host_db
    h = Host.open(db)
    try:
        h.add_account("max", "Max", balance_minor=1_000_000, password="246802", two_factor=True)
        term = terminal(h)
        code = h.issue_code("max")
        assert pay(term, 150_000, code, order="CLI-2F").status is S.NEED_PIN
        assert enter_pin(term, "CLI-2F", code, pin="246802").status is S.WAIT_BUYER
        sms = code_of(db, "max")
        assert run(db, "wallet", "confirm", "CLI-2F")[0] == 1                                # no code: refused
        rc, out = run(db, "wallet", "confirm", "CLI-2F", "--code", sms)
        assert rc == 0 and out.strip() == "approved", out
        assert query(term, "CLI-2F").status is S.APPROVED
        # biometric: changing the preference is itself verified
        assert run(db, "phone", "send-code", "max", "--purpose", "confirm-pref")[0] == 0
        rc, out = run(db, "account", "set-security", "max", "--prefer", "biometric", "--code", code_of(db, "max"),
                      "--password-stdin", input="246802\n")
        assert rc == 0, out
        code = h.issue_code("max")
        pay(term, 150_000, code, order="CLI-BIO")
        assert enter_pin(term, "CLI-BIO", code, pin="246802").status is S.WAIT_BUYER
        rc, out = run(db, "phone", "approve", "max")
        assert rc == 0 and "approved; payment approved" in out, out
        assert query(term, "CLI-BIO").status is S.APPROVED
        assert run(db, "phone", "approve", "max")[0] == 1                                    # nothing waiting
    finally:
        h.close()


def test_host_serve_delivers_webhooks_in_the_background(host_db):
    import subprocess
    import sys

    db = host_db
    assert run(db, "account", "add", "ned", "--name", "Ned")[0] == 0
    box: list = []
    rx = Receiver(box)
    p = None
    try:
        box.append(json.loads(run(db, "webhook", "set", "ned", rx.url, "--json")[1])["secret"])
        p = subprocess.Popen([sys.executable, "-m", "posterm", "host", "serve", "--no-demo", "--db", str(db)],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("tcp://127.0.0.1:")
        assert run(db, "account", "freeze", "ned", "--why", "stolen")[0] == 0      # another process raises it
        assert rx.got.wait(60), "the server did not deliver the event"
        assert rx.events[0][1]["kind"] == "frozen" and rx.events[0][2]
    finally:
        if p is not None:
            p.terminate()
            assert p.wait(30) == 0
        rx.close()
