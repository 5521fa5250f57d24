"""A bad line, an outage and a killed emulator: every flow still ends in exactly one
definite outcome that matches the host's ledger."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from firmware_protocol.native.messages import Outcome, Reason
from posterm.families.native.ecr import Terminal
from posterm.emulator.firmware import FirmwareConfig
from posterm.emulator.runner import EmulatedTerminal
from posterm.errors import PosError
from posterm.host import Host, demo

CODE = {n: f"28990000000000000{n}" for n in range(1, 9)}
HOST_OF = {Outcome.APPROVED: {"APPROVED"}, Outcome.DECLINED: {"DECLINED"}, Outcome.CANCELLED: {"CANCELLED", "REFUNDED"}}


def test_one_percent_drop_and_corruption(tmp_path):
    cfg = FirmwareConfig(poll_interval=0.2, poll_attempts=15)
    with EmulatedTerminal.start(home=tmp_path, config=cfg, faults="drop=0.01,corrupt=0.01,seed=11") as emu:
        outcomes = {}
        with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
            for i in range(24):
                code = CODE[[1, 1, 2, 3, 4, 7][i % 6]]
                order = f"F-{i}"
                try:
                    r = term.pay(100 + i, "CNY", order_id=order, payment_code=code, timeout=20)
                except PosError:
                    r = term.query(order, timeout=10)  # the journal + query resolve a lost answer
                outcomes[order] = r.outcome
        for order, outcome in outcomes.items():
            assert outcome in HOST_OF, (order, outcome)
            assert emu.host.order_status(order) in HOST_OF[outcome], order
        assert emu.host.check_books() == []


def test_host_outage_006_is_unknown_then_recovered(tmp_path):
    cfg = FirmwareConfig(poll_interval=0.2, poll_attempts=5, host_timeout=0.5, query_attempts=2, query_delay=0.1,
                         reconcile_base=0.2, reconcile_max=0.5)
    with EmulatedTerminal.start(home=tmp_path, config=cfg, host_options={"outage_seconds": 1.5}) as emu:
        with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
            r = term.pay(100, "CNY", order_id="OUT-1", payment_code=CODE[6], timeout=20)
            assert r.outcome is Outcome.UNKNOWN
            assert emu.host.order_status("OUT-1") == "APPROVED"  # the host did charge
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                q = term.query("OUT-1", timeout=5)
                if q.outcome is not Outcome.UNKNOWN and q.outcome is not Outcome.PENDING:
                    break
                time.sleep(0.3)
            assert q.outcome is Outcome.APPROVED
        assert emu.host.check_books() == []


def _start_emulator(home: Path, port_file: Path) -> subprocess.Popen:
    port_file.unlink(missing_ok=True)
    p = subprocess.Popen([sys.executable, "-m", "posterm", "emulate", "--home", str(home), "--port-file",
                          str(port_file), "--poll-interval", "0.3", "--poll-attempts", "20"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not port_file.exists():
        assert p.poll() is None, p.stderr.read().decode()
        assert time.monotonic() < deadline, "emulator did not start"
        time.sleep(0.05)
    return p


def test_kill_minus_nine_mid_flow_then_restart_reconciles(tmp_path):
    home, port_file = tmp_path / "home", tmp_path / "port"
    p = _start_emulator(home, port_file)
    port = port_file.read_text().strip()
    term = Terminal.open(port, journal=str(tmp_path / "d.db"))
    import threading

    box, polling = {}, threading.Event()
    t = threading.Thread(target=lambda: box.setdefault("r", _try(lambda: term.pay(
        100, "CNY", order_id="KILL-1", payment_code=CODE[5], timeout=20,
        on_progress=lambda p: (p.attempt or 0) >= 1 and polling.set()))))
    t.start()
    assert polling.wait(20)  # the terminal is polling the host for the phone confirmation
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    t.join(20)
    assert isinstance(box["r"], PosError)  # a typed error, not a hang
    term.close()
    p = _start_emulator(home, port_file)  # restarts with the same journal and PIN pad state
    try:
        with Terminal.open(port_file.read_text().strip(), journal=str(tmp_path / "d.db")) as term2:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                results = term2.recover(timeout=5)
                if results and results[0].final:
                    break
                time.sleep(0.5)
            assert [(r.order_id, r.outcome) for r in results] == [("KILL-1", Outcome.CANCELLED)]
    finally:
        p.terminate()
        assert p.wait(10) == 0
    host = Host.open(home / "host.db")
    try:
        assert host.order_status("KILL-1") == "CANCELLED"
        assert host.check_books() == []
    finally:
        host.close()
    from posterm.emulator.orders import OrderStore

    j = OrderStore(home / "terminals" / "T0000001" / "journal.db")
    try:
        assert j.unfinished() == [] and j.get("KILL-1").outcome is Outcome.CANCELLED
    finally:
        j.close()


def _try(fn):
    try:
        return fn()
    except PosError as exc:
        return exc


def test_a_terminal_the_host_does_not_know_is_told_so_not_left_unknown(tmp_path, caplog):
    # The demo data registers T0000001..T{len(demo.TERMINALS)} only.
    unknown = f"T{len(demo.TERMINALS) + 1:07d}"
    assert unknown not in demo.TERMINALS
    with caplog.at_level(logging.INFO, logger="posterm.emulator"):
        with EmulatedTerminal.start(home=tmp_path, terminal_id=unknown) as emu:
            with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
                deadline = time.monotonic() + 10        # the terminal logs on as it starts
                while term.status().host_online and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert term.status().host_online is False
                r = term.pay(100, "CNY", payment_code=CODE[1], timeout=30)
                assert (r.outcome, r.reason) == (Outcome.DECLINED, Reason.TERMINAL_UNKNOWN)
                st = term.status()
                assert st.host_online is False and st.unfinished == 0
            assert emu.host.order_status(r.order_id) is None            # the host never saw it
    refusals = [rec for rec in caplog.records if "refused" in rec.getMessage()]
    assert refusals and refusals[0].levelno == logging.ERROR
    assert "TERMINAL_UNKNOWN" in refusals[0].getMessage()
