"""The live-control layer (posterm.emulator.control): actions as a person at the terminal does
them, the state a panel shows, the masked traffic log, the scenario export and its replay."""

from __future__ import annotations

import threading

import pytest

from posterm.emulator.control import MAX_TRAFFIC, ControlError, TerminalControl
from posterm.emulator.firmware import FirmwareConfig
from posterm.emulator.runner import EmulatedTerminal
from posterm.emulator.scenario import parse_scenario
from posterm.errors import ConfigError
from posterm.families.native.ecr import Terminal

CODE = {n: f"28990000000000000{n}" for n in range(1, 9)}


@pytest.fixture
def emu(tmp_path):
    term = EmulatedTerminal.start(home=tmp_path / "home", config=FirmwareConfig(poll_interval=0.2, poll_attempts=50))
    control = TerminalControl(term)   # manual: the customer does only what the test says
    yield term, control
    control.close()
    term.close()
    assert term.error is None


def pay_in_thread(port, journal, amount=100, **kw):
    box = {}

    def run():
        with Terminal.open(port, journal=str(journal)) as t:
            box["r"] = t.pay(amount, "CNY", timeout=60, **kw)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, box


def test_manual_customer_pin_payment_and_what_the_panel_shows(emu, tmp_path):
    term, c = emu
    th, box = pay_in_thread(term.port, tmp_path / "drv.db")
    s = c.wait_for_prompt("scan")                       # nobody shows a code by themselves
    assert "Show your payment code" in s["display"]["text"] and s["state"] == "AWAITING_SCAN"
    assert s["customer"] == "manual" and s["order"]["amount"]
    assert c.present_code(CODE[3]) == "now"
    c.wait_for_prompt("pin")
    assert c.type_pin() == "now"
    th.join(60)
    assert box["r"].approved
    s = c.wait_for(lambda s: s["last_result"] is not None)
    assert s["last_result"]["outcome"] == "approved"
    assert any("APPROVED" in line for line in s["receipts"][-1]["lines"])
    assert s["host"]["answer"]["status"] == "APPROVED"
    frames = [e for e in s["traffic"] if e["type"] == "frame"]
    assert {e["from"] for e in frames} == {"ecr", "terminal"}
    types = {e.get("msg", {}).get("type") for e in frames}
    assert {"PayRequest", "Progress", "PayResult"} <= types
    # masked as in a recording: nothing of the code but its last four digits, anywhere
    import json
    text = json.dumps(s)
    assert CODE[3] not in text and "147258" not in text


def test_actions_given_early_wait_for_their_prompt_and_a_wrong_pin(emu, tmp_path):
    term, c = emu
    assert c.present_code(CODE[3]) == "held"            # idle: held for the next scan prompt
    assert c.wrong_pin() == "held"
    th, box = pay_in_thread(term.port, tmp_path / "drv.db")
    s = c.wait_for(lambda s: s["prompt"] == "pin" and (s["host"]["answer"] or {}).get("reason") == "wrong_pin")
    assert s["host"]["answer"].get("pin_tries_left") is not None
    c.type_pin()
    th.join(60)
    assert box["r"].approved


def test_phone_confirm_refuse_and_decline(emu, tmp_path):
    term, c = emu
    for action, outcome in (("confirm_on_phone", "approved"), ("refuse_on_phone", "cancelled")):
        th, box = pay_in_thread(term.port, tmp_path / "drv.db", payment_code=CODE[5])
        c.wait_for_prompt("phone")
        getattr(c, action)()
        th.join(60)
        assert box["r"].outcome.name.lower() == outcome, action
    th, box = pay_in_thread(term.port, tmp_path / "drv.db")
    c.wait_for_prompt("scan")
    c.present_code(CODE[7])                             # rejected by risk control
    th.join(60)
    assert box["r"].outcome.name == "DECLINED"
    assert c.state()["payments"] == {"approved": 1, "cancelled": 1, "declined": 1}


def test_walk_away_keys_and_export_replays(emu, tmp_path):
    term, c = emu
    th, box = pay_in_thread(term.port, tmp_path / "drv.db")
    c.wait_for_prompt("scan")
    c.walk_away()
    th.join(60)
    assert box["r"].outcome.name == "CANCELLED"
    th, box = pay_in_thread(term.port, tmp_path / "drv.db")
    c.wait_for_prompt("scan")
    c.present_code(CODE[3])
    c.wait_for_prompt("pin")
    assert c.state()["keypad"]["pin_entry"]
    c.press_keys("1 4 7 2 5 8 OK")
    th.join(60)
    assert box["r"].approved
    toml = c.scenario_toml()
    assert 'keys = "1 4 7 2 5 8 OK"' in toml          # the export is the one place digits go (replay needs them)
    scenario = parse_scenario(toml)
    assert [p.expect.name for p in scenario.payments] == ["CANCELLED", "APPROVED"]
    assert [a.kind for a in scenario.payments[1].actions][:2] == ["present_code", "press_keys"]
    # replayed by a fresh terminal with that scenario: the same outcomes
    with EmulatedTerminal.start(home=tmp_path / "home2", scenario=scenario) as again:
        with Terminal.open(again.port, journal=str(tmp_path / "drv2.db")) as t:
            assert t.pay(100, "CNY", timeout=60).outcome.name == "CANCELLED"
            assert t.pay(100, "CNY", timeout=60).approved
        assert all(r.ok for r in again.firmware.scenario_results)


def test_cancel_key_aborts_and_restart_reconciles(emu, tmp_path):
    term, c = emu
    th, box = pay_in_thread(term.port, tmp_path / "drv.db", payment_code=CODE[5])
    c.wait_for_prompt("phone")
    c.press_keys("CANCEL")
    th.join(60)
    assert box["r"].outcome.name == "CANCELLED"
    c.restart()
    s = c.wait_for(lambda s: s["line"]["restarts"] == 1 and s["state"] == "IDLE")
    assert s["display"]["text"] == "WELCOME"
    th, box = pay_in_thread(term.port, tmp_path / "drv.db", payment_code=CODE[1])
    th.join(60)
    assert box["r"].approved                            # the restarted firmware serves the next payment


def test_unplug_loses_the_line_until_replugged_and_a_fault_is_survived(emu, tmp_path):
    term, c = emu
    c.unplug()
    assert c.wait_for(lambda s: s["line"]["unplugged"])
    before = c.state()["traffic_seq"]
    with pytest.raises(Exception):
        with Terminal.open(term.port, journal=str(tmp_path / "drv.db"), timeout=1.0) as t:
            t.status()
    assert c.state()["traffic_seq"] == before            # nothing crossed a pulled cable
    c.replug()
    c.wait_for(lambda s: not s["line"]["unplugged"])
    c.line_fault("corrupt")
    with Terminal.open(term.port, journal=str(tmp_path / "drv.db")) as t:
        assert t.pay(100, "CNY", payment_code=CODE[1], timeout=60).approved
    assert term.line_events["fault_injected"] == 1
    events = {e.get("event") for e in c.traffic() if e["type"] == "event"}
    assert "bad_frame" in events or "nak" in events


def test_bad_arguments_and_bounds(emu):
    _, c = emu
    with pytest.raises(ControlError, match="code"):
        c.present_code("12ab")
    with pytest.raises(ControlError, match="pin") as exc:
        c.type_pin("12")
    assert "12" not in str(exc.value).replace("12 digits", "")
    with pytest.raises(ControlError, match="keys"):
        c.press_keys("1 2 FIRE")
    with pytest.raises(ControlError, match="fault"):
        c.line_fault("melt")
    for _ in range(40):                                  # held actions are capped
        last = c.present_code(CODE[1])
    assert last == "full"
    assert MAX_TRAFFIC == 200


def test_every_action_is_exported_and_the_export_replays_the_same_outcomes(tmp_path):
    """A session with every live action (as the panel's buttons do them), exported; a fresh
    terminal given the export as its scenario comes to the same outcome and reason for each
    payment. Actions done to an idle terminal (unplug, replug, a fault, a restart) go to the
    previous payment's ``then``: replayed at the next prompt, a restart would end that payment."""
    config = FirmwareConfig(poll_interval=0.2, poll_attempts=50, scan_timeout=0.5)
    term = EmulatedTerminal.start(home=tmp_path / "home", config=config)
    c = TerminalControl(term)
    done = []

    def pay(fn, **kw):
        th, box = pay_in_thread(term.port, tmp_path / "drv.db", **kw)
        fn()
        th.join(60)
        r = box["r"]
        done.append((kw, r.outcome, r.reason))

    def at(prompt, *then):
        def run():
            for step in (prompt, *then):
                c.wait_for_prompt(step) if isinstance(step, str) else step()
        return run

    try:
        pay(at("scan", lambda: c.present_code(CODE[1])))
        pay(at("scan", lambda: c.present_code(CODE[3]), "pin", c.wrong_pin,
               lambda: c.wait_for(lambda s: (s["host"]["answer"] or {}).get("reason") == "wrong_pin"), c.type_pin))
        pay(at("scan", lambda: c.present_code(CODE[5]), "phone", c.confirm_on_phone))
        pay(at("scan", lambda: c.present_code(CODE[5]), "phone", c.refuse_on_phone))
        pay(at("scan", lambda: c.present_code(CODE[7])))
        pay(at("scan", c.do_nothing))                                    # the scan prompt times out
        pay(at("scan", c.walk_away))
        pay(at("scan", lambda: c.present_code(CODE[3]), "pin", c.cancel_pin))
        pay(at("scan", lambda: c.present_code(CODE[5]), "phone", lambda: c.press_keys("CANCEL")))
        c.unplug()
        c.wait_for(lambda s: s["line"]["unplugged"])
        c.replug()
        c.wait_for(lambda s: not s["line"]["unplugged"])
        c.line_fault("corrupt")
        pay(at("scan", lambda: c.present_code(CODE[1])))
        c.restart()
        c.wait_for(lambda s: s["line"]["restarts"] == 1 and s["state"] == "IDLE")
        pay(at("scan", lambda: c.present_code(CODE[1])))
        pay(at("qr", lambda: c.scan_qr(CODE[1])), dynamic_qr=True)
        pay(at("scan", lambda: c.present_code(CODE[3]), "pin", lambda: c.press_keys("1 4 7 2 5 8 OK")))
        toml = c.scenario_toml()
    finally:
        c.close()
        term.close()
    outcomes = [o.name for _, o, _ in done]
    assert outcomes == ["APPROVED", "APPROVED", "APPROVED", "CANCELLED", "DECLINED", "CANCELLED", "CANCELLED",
                        "CANCELLED", "CANCELLED", "APPROVED", "APPROVED", "APPROVED", "APPROVED"]
    for kind in ("present_code", "type_pin", "cancel_pin", "confirm_on_phone", "refuse_on_phone", "do_nothing",
                 "walk_away", "press_keys", "line_fault", "unplug", "replug", "restart", "scan_qr"):
        assert f'action = "{kind}"' in toml, kind
    scenario = parse_scenario(toml)
    assert len(scenario.payments) == len(done)
    assert [a.kind for a in scenario.payments[8].then] == ["unplug", "replug", "line_fault"]
    assert [a.kind for a in scenario.payments[9].then] == ["restart"]
    with EmulatedTerminal.start(home=tmp_path / "home2", scenario=scenario, config=config) as again:
        replayed = []
        for kw, _, _ in done:    # one ECR session per payment, as the panel's cash register has
            with Terminal.open(again.port, journal=str(tmp_path / "drv2.db")) as t:
                r = t.pay(100, "CNY", timeout=60, **kw)
                replayed.append((kw, r.outcome, r.reason))
        assert replayed == done
        assert all(r.ok for r in again.firmware.scenario_results)
        assert again.restarts == 1 and again.line_events["fault_injected"] == 1


def test_then_takes_only_what_happens_to_the_terminal():
    with pytest.raises(ConfigError, match=r"payment\[0\]\.then\[0\]\.action"):
        parse_scenario('[[payment]]\nthen = [ { action = "present_code", code = "289900000000000001" } ]\n')
    s = parse_scenario('[[payment]]\nthen = [ { action = "restart" }, { action = "press_keys", keys = "CANCEL" } ]\n')
    assert [a.kind for a in s.payments[0].then] == ["restart", "press_keys"]
