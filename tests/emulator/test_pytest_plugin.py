"""The pytest11 plugin as a user's project sees it: installed by the entry point, under xdist."""

from __future__ import annotations

import subprocess
import sys

EXAMPLE = '''
from posterm.families.native.ecr import Terminal


def test_checkout(posterm_terminal):
    with Terminal.open(posterm_terminal.port) as term:
        result = term.pay(1234, "CNY", payment_code="289900000000000001")
    assert result.approved
    assert any(r.order_id == result.order_id for r in posterm_terminal.receipts())
    assert [o.order_id for o in posterm_terminal.journal_orders()] == [result.order_id]
    assert posterm_terminal.host.order_status(result.order_id) == "APPROVED"


def test_customer_walks_away(posterm_terminal, tmp_path):
    scenario = tmp_path / "walk.toml"
    scenario.write_text('[[payment]]\\nactions = [{ action = "walk_away", after = 0.1 }]\\n')
    posterm_terminal.set_scenario(scenario)
    with Terminal.open() as term:                          # $POSTERM_PORT is the fixture's pty
        assert term.pay(500, "CNY").result == "cancelled"   # no code from the ECR: the terminal's scanner


def test_pin_payment(posterm_terminal):                     # docs/panel.md: the fixture's control methods
    assert posterm_terminal.present_code("289900000000000003") == "held"   # for the scan prompt
    assert posterm_terminal.wrong_pin() == "held"
    posterm_terminal.type_pin()                                            # after the wrong one
    with Terminal.open() as term:
        assert term.pay(100, "CNY").approved
    state = posterm_terminal.state()
    assert state["last_result"]["outcome"] == "approved" and state["customer"] == "automatic"
    assert "tries" in " ".join(e.get("msg", {}).get("text", "") for e in posterm_terminal.traffic())
'''


def test_the_documented_fixture_works_under_xdist(tmp_path):
    (tmp_path / "test_shop.py").write_text(EXAMPLE)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "test_shop.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "3 passed" in r.stdout
