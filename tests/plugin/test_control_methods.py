"""The pytest plugin's ``posterm_terminal`` has the panel's controls as methods (the same
ones the page's buttons and the JSON API use: posterm.emulator.control.TerminalControl)."""

from __future__ import annotations

import threading

from posterm.emulator.control import TerminalControl
from posterm.families.native.ecr import Terminal
from posterm.panel.backend import ACTIONS
from posterm.testing.pytest_plugin import ControlledTerminal

# API action -> the fixture's method that does it
METHODS = {"present-code": "present_code", "scan-qr": "scan_qr", "pin": "type_pin", "phone/confirm": "confirm_on_phone",
           "phone/refuse": "refuse_on_phone", "do-nothing": "do_nothing", "walk-away": "walk_away",
           "keys": "press_keys", "fault": "line_fault", "unplug": "unplug", "replug": "replug", "restart": "restart",
           "customer": "set_manual", "sale": "sale"}


def test_every_api_action_is_a_method():
    assert set(METHODS) == set(ACTIONS)
    for method in set(METHODS.values()) | {"wrong_pin", "cancel_pin", "state", "traffic", "scenario_toml"}:
        assert callable(getattr(TerminalControl, method)), method
    missing = set(METHODS.values()) - set(ControlledTerminal._CONTROL) - {"sale"}   # the register: the panel's own ECR
    assert not missing


def test_the_docs_example_actions_held_for_their_prompts(posterm_terminal):
    assert posterm_terminal.present_code("289900000000000003") == "held"   # idle: held for the scan prompt
    assert posterm_terminal.type_pin() == "held"
    with Terminal.open(posterm_terminal.port) as term:
        assert term.pay(100, "CNY", timeout=60).approved
    s = posterm_terminal.wait_for(lambda s: s["last_result"] is not None)
    assert s["last_result"]["outcome"] == "approved" and s["host"]["answer"]["status"] == "APPROVED"


def test_a_manual_customer_driven_by_methods(posterm_terminal, tmp_path):
    posterm_terminal.set_manual(True)
    box = {}

    def pay():
        with Terminal.open(posterm_terminal.port, journal=str(tmp_path / "drv.db")) as term:
            box["r"] = term.pay(100, "CNY", timeout=60)
    th = threading.Thread(target=pay, daemon=True)
    th.start()
    assert posterm_terminal.wait_for_prompt("scan")["customer"] == "manual"
    assert posterm_terminal.present_code("289900000000000003") == "now"
    posterm_terminal.wait_for_prompt("pin")
    posterm_terminal.wrong_pin()
    posterm_terminal.wait_for(lambda s: (s["host"]["answer"] or {}).get("reason") == "wrong_pin")   # ("tries left" shows from the first prompt on)
    posterm_terminal.press_keys("1 4 7 2 5 8 OK")
    th.join(60)
    assert box["r"].approved
    posterm_terminal.unplug()
    assert posterm_terminal.wait_for(lambda s: s["line"]["unplugged"])
    posterm_terminal.replug()
    posterm_terminal.restart()
    assert posterm_terminal.wait_for(lambda s: s["line"]["restarts"] == 1 and not s["line"]["unplugged"])
    toml = posterm_terminal.scenario_toml()
    assert 'digits = "000000"' in toml and 'action = "restart"' in toml and 'expect = "approved"' in toml
    assert any(e["type"] == "frame" for e in posterm_terminal.traffic())
