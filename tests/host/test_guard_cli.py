"""The guard and the back office from the command line: `host account add --real-name`,
`account verify`, the password rules, `set-security --over-limit/--remind-at`, `host audit`,
`host merchant|terminal add|list`, `host decisions`, `host settlements`, `host bill`."""

from __future__ import annotations

import json


from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Totals
from tests.host.conftest import db_arg, host_cli, raw_execute
from tests.host.test_host import pay

ID = "11010519491231002X"


run = host_cli


def test_real_name_at_account_add_and_verify(host_db):
    db = host_db
    code, _, err = run(db, "account", "add", "a1", "--name", "A", "--real-name")
    assert code == 2 and "--id-number" in err and "--real-name-of" in err
    code, _, err = run(db, "account", "add", "a1", "--name", "A", "--real-name", "--id-number", "110105194912310021",
                       "--real-name-of", "Zhang San")
    assert code == 2 and "--id-number" in err and "check digit" in err and "110105194912310021" not in err
    code, out, _ = run(db, "account", "add", "a1", "--name", "A", "--real-name", "--id-number", ID,
                       "--real-name-of", "Zhang San")
    assert code == 0 and "real-name verified" in out
    s = json.loads(run(db, "security", "a1", "--json")[1])
    assert s["real_name_verified"] and s["identity_verified"] and s["id_last4"] == "002X"
    # without an ID an account is not verified, and the flag alone does not verify it
    assert run(db, "account", "add", "a2", "--name", "B")[0] == 0
    assert not json.loads(run(db, "security", "a2", "--json")[1])["real_name_verified"]
    code, out, err = run(db, "account", "set-security", "a2", "--real-name")
    assert code == 1 and "ID number" in err
    code, out, _ = run(db, "account", "verify", "a2", "--id-number", "440524198001010013", "--real-name-of", "Li Si")
    assert code == 0 and "****0013" in out
    assert json.loads(run(db, "security", "a2", "--json")[1])["real_name_verified"]


def test_password_rules_at_the_cli(host_db):
    db = host_db
    code, _, err = run(db, "account", "add", "p1", "--name", "P", "--set-password", input="123456\n123456\n")
    assert code == 2 and "payment password" in err and "run of digits" in err and "123456" not in err
    code, _, err = run(db, "account", "add", "p1", "--name", "P", "--real-name", "--id-number", ID,
                       "--real-name-of", "Zhang San", "--set-password", input="491231\n491231\n")
    assert code == 2 and "birth date" in err
    assert run(db, "account", "add", "p1", "--name", "P", "--real-name", "--id-number", ID,
               "--real-name-of", "Zhang San", "--set-password", input="135790\n135790\n")[0] == 0
    code, _, err = run(db, "account", "set-password", "p1", input="135790\n123149\n123149\n")
    assert code == 2 and "birth date" in err.splitlines()[-1] and len(err.strip().splitlines()) == 1
    code, _, err = run(db, "account", "set-password", "p1", input="135790\n777777\n777777\n")
    assert code == 2 and "one digit repeated" in err


def test_limit_handling_and_security_view(host_db):
    db = host_db
    run(db, "account", "add", "l1", "--name", "L")
    s = json.loads(run(db, "security", "l1", "--json")[1])
    assert (s["over_limit"], s["remind_at_percent"]) == ("reject", 80)
    assert run(db, "account", "set-security", "l1", "--remind-at", "50")[0] == 0                # free
    code, _, err = run(db, "account", "set-security", "l1", "--over-limit", "confirm")           # verified
    assert code == 1 and "--purpose over-limit" in err
    assert run(db, "operator", "add", "sue", input="support-pw-1\n")[0] == 0
    assert run(db, "account", "set-security", "l1", "--over-limit", "confirm", "--operator", "sue",
               "--password-stdin", input="support-pw-1\n")[0] == 0
    s = json.loads(run(db, "security", "l1", "--json")[1])
    assert (s["over_limit"], s["remind_at_percent"]) == ("confirm", 50)
    code, out, _ = run(db, "security", "l1")
    assert code == 0 and "over_limit" in out and "outflow_rule" in out and "ledger_running_total_minor" in out
    assert run(db, "account", "set-security", "l1", "--remind-at", "101")[0] == 2


def test_audit_reports_a_tampered_balance(host_db):
    db = host_db
    run(db, "account", "add", "t1", "--name", "T", "--balance", "100.00")
    run(db, "account", "add", "t2", "--name", "T2", "--balance", "5.00")
    code, out, _ = run(db, "audit")
    assert code == 0 and "2 accounts, 0 differ" in out
    raw_execute(db, "UPDATE accounts SET balance_minor = 999999 WHERE id = 't2'")
    code, out, _ = run(db, "audit")
    assert code == 1 and "t2: balance 999999, ledger 500" in out and "t1" not in out
    code, out, _ = run(db, "audit", "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and [m["account"] for m in doc["mismatched"]] == ["t2"]
    assert "differed" in json.loads(run(db, "security", "t2", "--json")[1])["last_audit"]


def test_merchants_and_terminals(host_db):
    db = host_db
    assert run(db, "merchant", "add", "M2", "--name", "Second Shop")[0] == 0
    code, _, err = run(db, "merchant", "add", "M2", "--name", "Again")
    assert code == 1 and "exists" in err
    code, _, err = run(db, "terminal", "add", "T9", "--merchant", "M404")
    assert code == 1 and "unknown merchant" in err
    assert run(db, "terminal", "add", "T9", "--merchant", "M2", "--location", "CN-BJ")[0] == 0
    assert run(db, "terminal", "add", "T9", "--merchant", "M2")[0] == 1
    merchants = json.loads(run(db, "merchant", "list", "--json")[1])
    assert merchants == [{"merchant_id": "M2", "name": "Second Shop", "terminals": 1}]
    doc = json.loads(run(db, "terminal", "list", "--json", "--tz", "Europe/Berlin")[1])
    assert doc["tz"] == "Europe/Berlin" and doc["terminals"][0]["location"] == "CN-BJ"
    assert doc["terminals"][0]["registered_at"].endswith(("+01:00", "+02:00"))
    code, out, _ = run(db, "terminal", "list")
    assert code == 0 and out.splitlines()[0] == "1 terminals; times in UTC (the default)"
    code, out, _ = run(db, "terminal", "key", "T9")
    assert code == 0 and out.startswith("D")


def test_decisions_settlements_and_bill(host, term, clock, tmp_path):
    db = db_arg(host)
    pay(term, 1000, order="BO-1")             # demo accounts: scripted allow, recorded
    host.add_account("dora", "Dora", balance_minor=100_000)
    pay(term, 1000, host.issue_code("dora"), order="BO-2")   # first payment at this terminal: alert
    doc = json.loads(run(db, "decisions", "--json")[1])
    assert doc["tz"] == "UTC" and [d["order_id"] for d in doc["decisions"]] == ["BO-1", "BO-2"]
    doc = json.loads(run(db, "decisions", "--account", "dora", "--action", "alert", "--json")[1])
    assert doc["tz"] == "Asia/Shanghai" and len(doc["decisions"]) == 1
    assert "first payment at this terminal" in doc["decisions"][0]["reasons"]
    assert doc["decisions"][0]["time"].endswith("+08:00")
    assert json.loads(run(db, "decisions", "--action", "reject", "--json")[1])["decisions"] == []
    assert json.loads(run(db, "decisions", "--since", "2030-01-01", "--json")[1])["decisions"] == []
    code, out, _ = run(db, "decisions", "--account", "dora")
    assert code == 0 and out.splitlines()[0].startswith("1 risk decisions; times in Asia/Shanghai (the time zone")

    term.request(h.SettleRequest(terminal_id=term.terminal_id, batch_no=1,
                                 totals=(Totals("CNY", 2, 2000, 0, 0, 0),)), 5)
    doc = json.loads(run(db, "settlements", "--json")[1])
    (batch,) = doc["settlements"]
    assert batch["terminal"] == "T0000001" and batch["agrees"] and batch["totals"][0]["approved_minor"] == 2000
    code, out, _ = run(db, "settlements", "--tz", "Asia/Tokyo")
    assert code == 0 and "times in Asia/Tokyo (--tz)" in out.splitlines()[0] and "approved 2/2000" in out

    pay(term, 2500, host.issue_code("dora"), order="BO-3")
    month = "2026-11"
    code, out, _ = run(db, "bill", "dora", "--month", month)
    assert code == 0 and out.splitlines()[0] == f"bill of dora for {month}, times in Asia/Shanghai (the account's " \
                                                "time zone)"
    rows = json.loads(run(db, "bill", "dora", "--month", month, "--json")[1])
    assert [r["balance_minor"] for r in rows] == [100_000, 99_000, 96_500]
    rows = json.loads(run(db, "bill", "dora", "--month", month, "--tz", "UTC", "--json")[1])
    assert rows[0]["time"].endswith("+00:00")
