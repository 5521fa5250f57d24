"""The driver CLI's answers about money: no such order, decline reasons, nothing sent, give-up."""

from __future__ import annotations

import json
import sqlite3

from tests.driver.test_cli import CODE_OK, port, run  # noqa: F401 - the pty fixture


def test_query_of_unknown_order_says_no_such_order(port):  # noqa: F811
    r = run("query", "--port", port, "NOPE")
    assert r.exit_code == 1, r.stderr
    assert "no such order: NOPE" in r.stdout and "XXX" not in r.stdout
    r = run("query", "--port", port, "NOPE", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["reason"] == "order_not_found"


def test_refund_text_shows_the_decline_reason(port):  # noqa: F811
    paid = json.loads(run("pay", "--port", port, "--amount", "3", "--payment-code", CODE_OK, "--json").stdout)
    r = run("refund", "--port", port, paid["order_id"], "--amount", "1", "--refund-id", "RF-9",
            "--operator-password", "000000")
    assert r.exit_code == 1
    assert "refund declined (operator_password_wrong)" in r.stdout


def test_port_busy_is_not_unknown_and_journals_nothing(port, tmp_path):  # noqa: F811
    from posterm.transport import open_transport

    holder = open_transport(port)  # exclusive
    try:
        r = run("pay", "--port", port, "--amount", "1", "--order-id", "BUSY-1", "--json")
    finally:
        holder.close()
    assert r.exit_code == 4, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["result"] == "not_sent" and "nothing was sent" in r.stderr and "Traceback" not in r.stderr
    db = tmp_path / "driver-journal.db"
    if db.exists():
        assert sqlite3.connect(db).execute("SELECT * FROM orders WHERE order_id='BUSY-1'").fetchall() == []


def test_pay_timeout_aborts_and_says_so(port):  # noqa: F811
    r = run("pay", "--port", port, "--amount", "1", "--payment-code", "289900000000000005", "--timeout", "0.3",
            "--json")
    assert r.exit_code == 1, r.stderr
    assert json.loads(r.stdout)["result"] == "cancelled" and "gave up after 0.3 s" in r.stderr
    r = run("pay", "--port", port, "--amount", "1", "--payment-code", CODE_OK, "--json")
    assert r.exit_code == 0, r.stderr  # the terminal is free again


def test_approval_for_another_currency_exits_3(port):  # noqa: F811
    r = run("pay", "--port", port, "--amount", "1", "--payment-code", "289900000000000012")
    assert r.exit_code == 3 and "EUR" in r.stderr and "Traceback" not in r.stderr


def test_recover_says_every_operation_is_final(port):  # noqa: F811
    r = run("recover", "--port", port)
    assert r.exit_code == 0 and "every journaled operation is final" in r.stdout
