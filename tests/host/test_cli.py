from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from posterm.cli import main
from tests.host.conftest import raw_query


def run(db, *args, input=None):
    r = CliRunner().invoke(main, ["host", *args, "--db", str(db)], input=input)
    return r.exit_code, r.output


def test_account_lifecycle(host_db):
    db = host_db
    code, out = run(db, "account", "add", "erin", "--name", "Erin", "--balance", "100.00", "--set-password",
                    input="135790\n135790\n")
    assert code == 0, out
    code, out = run(db, "account", "show", "erin", "--json")
    a = json.loads(out)
    assert a["balance_minor"] == 10000 and a["password_set"] and "verifier" not in a
    assert run(db, "account", "set-limits", "erin", "--daily-limit", "50.00")[0] == 0
    assert json.loads(run(db, "security", "erin", "--json")[1])["daily_limit_minor"] == 5000
    assert run(db, "account", "freeze", "erin")[0] == 0
    assert json.loads(run(db, "security", "erin", "--json")[1])["frozen"]
    assert run(db, "wallet", "code", "erin")[0] == 1  # frozen: no codes
    assert run(db, "account", "unfreeze", "erin")[0] == 1        # a key operation: verification needed
    assert run(db, "operator", "add", "sup", input="support-pass-1\n")[0] == 0
    code, out = run(db, "account", "unfreeze", "erin", "--operator", "sup", "--password-stdin",
                    input="support-pass-1\n")
    assert code == 0, out
    code, out = run(db, "wallet", "code", "erin")
    assert code == 0 and len(out.strip()) == 18
    code, out = run(db, "account", "add", "erin", "--name", "Again")
    assert code == 1 and "exists" in out
    code, out = run(db, "account", "add", "x", "--name", "X", "--balance", "1.001")
    assert code == 2


def test_trades_json_and_csv(host_db):
    db = host_db
    code, out = run(db, "trades", "--json")
    assert code == 0 and json.loads(out) == []
    assert run(db, "trades", "--csv")[0] == 0
    assert json.loads(run(db, "cases", "--json")[1]) == []


def test_serve_prints_address_and_stops_on_sigterm(host_db):
    p = subprocess.Popen([sys.executable, "-m", "posterm", "host", "serve", "--db", str(host_db)],
                         stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("tcp://127.0.0.1:")
    finally:
        p.terminate()
        assert p.wait(10) == 0


def _serve_once(db, *extra):
    p = subprocess.Popen([sys.executable, "-m", "posterm", "host", "serve", "--db", str(db), *extra],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("tcp://127.0.0.1:")
    finally:
        p.terminate()
        assert p.wait(10) == 0


def _merchants_and_accounts(db):
    return ([r[0] for r in raw_query(db, "SELECT id FROM merchants")],
            sorted(r[0] for r in raw_query(db, "SELECT id FROM accounts")))


def test_only_serve_loads_the_demo_data(host_db):
    db = host_db
    assert json.loads(run(db, "trades", "--json")[1]) == []
    assert run(db, "cases")[0] == 0
    code, out = run(db, "account", "show", "demo-001")
    assert code == 1 and "no account demo-001" in out
    assert run(db, "account", "add", "erin", "--name", "Erin", "--balance", "1.00")[0] == 0
    assert run(db, "wallet", "code", "erin")[0] == 0
    assert run(db, "security", "erin")[0] == 0
    assert run(db, "bill", "erin", "--month", "2026-12")[0] == 0
    assert _merchants_and_accounts(db) == ([], ["erin"])       # no command above seeded it
    _serve_once(db, "--no-demo")
    assert _merchants_and_accounts(db) == ([], ["erin"])
    _serve_once(db)                                              # no merchant yet: serve loads the demo
    merchants, accounts = _merchants_and_accounts(db)
    assert merchants == ["M100000001"] and "demo-001" in accounts and "erin" in accounts
    assert run(db, "account", "show", "demo-001")[0] == 0


ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


def test_text_output_prints_times_as_iso_8601_with_offset(tmp_path, monkeypatch):
    import re
    import time as _time

    from firmware_protocol.host import messages as h
    from posterm.host import Host
    from tests.host.conftest import CODE, terminal

    monkeypatch.setenv("TZ", "Asia/Shanghai")
    _time.tzset()
    try:
        db = tmp_path / "host.db"
        host = Host.open(db)
        term = terminal(host)
        term.request(h.AuthRequest(terminal_id=term.terminal_id, order_id="ISO-1", amount_minor=100, currency="CNY",
                                   payment_code=CODE[1]), 5)
        host.report("ISO-1", "not me")
        host.close()
        for args in (("cases",), ("trades",), ("account", "show", "demo-001")):
            code, out = run(db, *args)
            assert code == 0, out
            assert re.search(ISO, out) and "+08:00" in out, (args, out)
            assert not re.search(r"\b1[0-9]{9}\.[0-9]+", out), (args, out)   # no epoch seconds left
        case = json.loads(run(db, "cases", "--json")[1])[0]
        assert isinstance(case["created_at"], float)                         # JSON fields as they were ...
        assert re.fullmatch(ISO, case["created_at_iso"]) and case["created_at_iso"].endswith("+08:00")  # and ISO
        acct = json.loads(run(db, "account", "show", "demo-001", "--json")[1])
        assert isinstance(acct["created_at"], float) and re.fullmatch(ISO, acct["created_at_iso"])
        trade = json.loads(run(db, "trades", "--json")[1])[0]
        assert re.fullmatch(ISO, trade["created_at"])                         # trades' JSON was ISO already
        assert run(db, "operator", "add", "sup", input="support-pass-1\n")[0] == 0
        code, out = run(db, "close-case", str(case["id"]), "--resolution", "reviewed", "--unfreeze",
                        "--operator", "sup", "--password-stdin", input="support-pass-1\n")
        assert code == 0 and "unfrozen" in out, out
        code, out = run(db, "cases")
        assert "closed" in out and "reviewed" in out and not re.search(r"\b1[0-9]{9}\.[0-9]+", out), out
    finally:
        monkeypatch.undo()
        _time.tzset()


def test_account_set_security_turns_two_factor_on_and_off(host_db):
    db = host_db
    assert run(db, "account", "add", "zed", "--name", "Zed", "--balance", "100.00", "--set-password",
               input="135790\n135790\n")[0] == 0
    code, out = run(db, "account", "set-security", "zed", "--two-factor", "--confirm", "phone")
    assert code == 1 and "verification" in out, out                     # changing --confirm: verified
    assert run(db, "account", "set-security", "zed", "--two-factor")[0] == 0    # turning it on: free
    assert json.loads(run(db, "security", "zed", "--json")[1])["two_factor"] is True
    code, out = run(db, "account", "set-security", "zed", "--no-two-factor")
    assert code == 1 and "send-code zed --purpose two-factor-off" in out, out
    assert run(db, "phone", "send-code", "zed", "--purpose", "two-factor-off")[0] == 0
    sms = json.loads(run(db, "phone", "zed", "--json")[1])[0]["text"]
    code, out = run(db, "account", "set-security", "zed", "--no-two-factor", "--code", sms.split("code ")[1][:6],
                    "--password-stdin", input="135790\n")
    assert code == 0, out
    assert json.loads(run(db, "security", "zed", "--json")[1])["two_factor"] is False
    assert run(db, "account", "set-security", "zed")[0] == 2          # nothing to change: a usage error
