"""Every `posterm host` command family on both stores (--db a file, or a postgresql:// URL):
accounts, the wallet, the phone, notices, operators and their log, webhooks, the audit, bills,
risk decisions, settlements, cases and reports, trades, merchants, terminals, apps, the BDK."""

from __future__ import annotations

import json
import re

from tests.host.conftest import host_cli


_run = host_cli


def ok(db, *args, input=None) -> str:
    code, out, err = _run(db, *args, input=input)
    assert code == 0, (args, code, err)
    return out


def test_every_host_command_family_on_each_store(host_db):
    db = host_db
    ok(db, "merchant", "add", "M2", "--name", "Second Shop")
    ok(db, "terminal", "add", "T9", "--merchant", "M2", "--location", "CN-BJ")
    assert json.loads(ok(db, "merchant", "list", "--json"))[0]["terminals"] == 1
    assert json.loads(ok(db, "terminal", "list", "--json"))["terminals"][0]["terminal_id"] == "T9"
    assert ok(db, "terminal", "key", "T9").startswith("D")
    ok(db, "account", "add", "cli1", "--name", "C", "--balance", "50.00")
    assert json.loads(ok(db, "account", "show", "cli1", "--json"))["balance_minor"] == 5000
    assert ok(db, "wallet", "code", "cli1").strip()
    ok(db, "account", "freeze", "cli1", "--why", "lost phone")
    assert json.loads(ok(db, "security", "cli1", "--json"))["frozen"]
    ok(db, "phone", "send-code", "cli1", "--purpose", "unfreeze")
    inbox = ok(db, "phone", "cli1", "--json")            # the code and the freeze alert, sealed at rest
    assert "frozen" in inbox and "code" in inbox
    nid = re.search(r"\d+", ok(db, "notice", "add", "Never tell anyone your PIN")).group()
    assert "Never tell" in ok(db, "notice", "list")
    ok(db, "notice", "remove", nid)
    ok(db, "operator", "add", "sup1", input="support-password-1\nsupport-password-1\n")
    assert "sup1" in ok(db, "operator", "list")
    ok(db, "operator", "log")
    assert "0 differ" in ok(db, "audit")
    ok(db, "bill", "cli1", "--month", "2026-12")
    ok(db, "decisions")
    ok(db, "settlements")
    ok(db, "cases")
    ok(db, "trades", "--json")
    ok(db, "app", "list")
    ok(db, "bdk", "status")
