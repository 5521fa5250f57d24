"""TOML scenarios (parsing, errors, customer actions end to end) and a fleet in one process."""

from __future__ import annotations

import threading

import pytest

from firmware_protocol.native.messages import Outcome, Reason
from posterm.families.native.ecr import Terminal
from posterm.emulator import Fleet, parse_scenario
from posterm.emulator.firmware import FirmwareConfig
from posterm.errors import ConfigError
from posterm.host import demo

CODE = {n: f"28990000000000000{n}" for n in range(1, 9)}


def test_scenario_parses_actions_terminal_overrides_and_masks_pins():
    s = parse_scenario("""
[terminal]
poll_interval = 0.3
poll_attempts = 4

[[payment]]
expect = "approved"
expect_reason = "none"
actions = [
  { action = "present_code", code = "289900000000000003", after = 0.2 },
  { action = "wait", seconds = 0.1 },
  { action = "type_pin", digits = "147258", key_interval = 0.01 },
]

[[payment]]
actions = ["do_nothing"]
""", "s.toml")
    assert s.terminal == {"poll_interval": 0.3, "poll_attempts": 4}
    first = s.payments[0]
    assert first.expect is Outcome.APPROVED and first.expect_reason is Reason.NONE
    assert [a.kind for a in first.actions] == ["present_code", "wait", "type_pin"]
    assert first.actions[0].after == 0.2 and first.actions[2].key_interval == 0.01
    assert "147258" not in repr(s) and "…0003" in repr(first.actions[0])
    assert s.payments[1].actions[0].kind == "do_nothing"
    cfg = FirmwareConfig().with_overrides(s.terminal)
    assert cfg.poll_interval == 0.3 and cfg.poll_attempts == 4


@pytest.mark.parametrize("text, where", [
    ("[[payment]]\nactions = [{ action = \"dance\" }]", "payment[0].actions[0].action"),
    ("[[payment]]\nactions = [{ action = \"present_code\" }]", "payment[0].actions[0].code"),
    ("[[payment]]\nactions = [{ action = \"type_pin\", digits = \"12\" }]", "payment[0].actions[0].digits"),
    ("[[payment]]\nactions = [{ action = \"present_code\", code = \"abc\" }]", "payment[0].actions[0].code"),
    ("[[payment]]\nexpect = \"maybe\"", "payment[0].expect"),
    ("[[payment]]\ncolour = 1", "payment[0].colour"),
    ("[terminal]\npoll_interval = -1", "terminal.poll_interval"),
    ("[terminal]\nspeed = 1", "terminal.speed"),
    ("[shop]\nx = 1", "shop"),
    ("[[payment]\n", "not valid TOML"),
])
def test_bad_scenarios_are_config_errors_naming_the_key(text, where):
    with pytest.raises(ConfigError) as info:
        parse_scenario(text, "bad.toml")
    assert "bad.toml" in str(info.value) and where in str(info.value)


def test_bad_pin_in_scenario_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        parse_scenario('[[payment]]\nactions = [{ action = "type_pin", digits = "14725x" }]')
    assert "14725x" not in str(info.value)


def test_scenario_file_drives_the_customer_end_to_end(posterm_terminal, tmp_path):
    scenario = tmp_path / "day.toml"
    scenario.write_text("""
[terminal]
poll_interval = 0.2
poll_attempts = 5

[[payment]]                      # phone confirmation, but this customer confirms after 0.3 s
expect = "approved"
actions = [{ action = "confirm_on_phone", after = 0.3 }]

[[payment]]                      # cancels on the PIN pad
expect = "cancelled"
actions = [{ action = "cancel_pin", after = 0.1 }]

[[payment]]                      # ignores the phone prompt: polls run out, the terminal cancels
expect = "cancelled"
expect_reason = "confirmation_timeout"
actions = ["do_nothing"]
""")
    posterm_terminal.set_scenario(scenario)
    with Terminal.open(posterm_terminal.port, journal=str(tmp_path / "d.db")) as term:
        r1 = term.pay(100, "CNY", payment_code=CODE[5], timeout=30)
        r2 = term.pay(100_001, "CNY", payment_code=CODE[1], timeout=30)
        r3 = term.pay(100, "CNY", payment_code=CODE[5], timeout=30)
    assert r1.approved and posterm_terminal.host.order_status(r1.order_id) == "APPROVED"
    assert r2.outcome is Outcome.CANCELLED and r2.reason == Reason.CUSTOMER_CANCELLED
    assert (r3.outcome, r3.reason) == (Outcome.CANCELLED, Reason.CONFIRMATION_TIMEOUT)
    assert posterm_terminal.host.order_status(r3.order_id) == "CANCELLED"
    results = posterm_terminal.firmware.scenario_results
    assert [r.ok for r in results] == [True, True, True]
    orders = {o.order_id: o for o in posterm_terminal.journal_orders()}
    assert orders[r1.order_id].outcome is Outcome.APPROVED and orders[r3.order_id].outcome is Outcome.CANCELLED
    assert posterm_terminal.host.check_books() == []


def test_fleet_of_four_in_one_process_shares_one_host(tmp_path):
    with Fleet.start(4, home=tmp_path) as fleet:
        assert len(set(fleet.ports)) == 4
        results: dict[str, object] = {}

        def ecr(emu) -> None:
            with Terminal.open(emu.port, journal=str(tmp_path / f"{emu.terminal_id}.db")) as term:
                info = term.hello()
                rs = [term.pay(100 + i, "CNY", payment_code=CODE[1], timeout=30) for i in range(3)]
                results[emu.terminal_id] = (info.terminal_id, rs)

        threads = [threading.Thread(target=ecr, args=(emu,)) for emu in fleet.terminals]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == ["T0000001", "T0000002", "T0000003", "T0000004"]
        host = fleet.terminals[0].host
        assert all(emu.host is host for emu in fleet.terminals)  # one embedded host per database
        for tid, (seen_id, rs) in results.items():
            assert seen_id == tid
            assert all(r.approved and host.order_status(r.order_id) == "APPROVED" for r in rs)
        assert host.check_books() == []
        assert all(emu.error is None for emu in fleet.terminals)


def test_fleet_size_is_bounded(tmp_path):
    with pytest.raises(ConfigError):
        Fleet.start(len(demo.TERMINALS) + 1, home=tmp_path)
    with pytest.raises(ConfigError):
        Fleet.start(0, home=tmp_path)


def test_tcp_listener_and_a_remote_host_over_tcp(tmp_path):
    """`--listen tcp://...` with `--host tcp://...`: keys injected from the host's HSM state,
    every request signed and checked across the wire; an ECR may reconnect."""
    from posterm.emulator import EmulatedTerminal
    from posterm.host import Host
    from posterm.host.server import serve

    host = Host.open(tmp_path / "host.db")
    server = serve(host)
    try:
        with EmulatedTerminal.start(listen="tcp://127.0.0.1:0", host=server.address, home=tmp_path) as emu:
            assert emu.port.startswith("tcp://127.0.0.1:") and emu.host is None
            order_ids = []
            for attempt in range(2):  # the second connection is a new ECR session on the same terminal
                with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
                    r = term.pay(100 + attempt, "CNY", payment_code=CODE[1], timeout=30)
                    assert r.approved
                    order_ids.append(r.order_id)
            assert emu.error is None
        assert [host.order_status(o) for o in order_ids] == ["APPROVED", "APPROVED"]
        assert host.check_books() == []
    finally:
        server.close()
        host.close()


def test_one_order_id_on_two_terminals_is_counted_only_where_it_was_taken(tmp_path):
    with Fleet.start(2, home=tmp_path) as fleet:
        a, b = fleet.terminals
        with Terminal.open(a.port, journal=str(tmp_path / "a.db")) as ta, \
                Terminal.open(b.port, journal=str(tmp_path / "b.db")) as tb:
            first = ta.pay(1000, "CNY", order_id="SAME-1", payment_code=CODE[1], timeout=30)
            again = tb.pay(1000, "CNY", order_id="SAME-1", payment_code=CODE[1], timeout=30)
            # B tells the ECR what became of the order (paid, once, on A) and that it was not B's.
            assert first.approved and again.approved and again.trade_no == first.trade_no
            assert again.reason is Reason.ORDER_CONFLICT
            assert b.journal.get("SAME-1") is None and b.journal.totals(b.journal.batch_no()) == ()
            st_a, st_b = ta.settle("246810", timeout=30), tb.settle("246810", timeout=30)
        assert st_a.host_agrees and st_a.totals[0].approved_count == 1
        assert st_b.host_agrees and st_b.totals == ()
        host = a.host
        assert host.order_status("SAME-1") == "APPROVED" and host.check_books() == []
        assert [t.terminal_id for t in host.trades() if t.order_id == "SAME-1"] == ["T0000001"]
