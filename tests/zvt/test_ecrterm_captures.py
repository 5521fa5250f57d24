"""The emulated ZVT terminal still answers as it did to python-ecrterm, an ECR nobody here wrote.

fixtures/zvt/ecrterm/{tcp,serial}.jsonl are byte captures of ecrterm driving
``posterm emulate --protocol zvt`` (tools/interop/ecrterm_session.py; see the README there).
Each test replays the register's side of one capture, in order, against a fresh emulated
terminal on the same transport (TCP listener / pty): before each ECR write it waits, bounded,
until the terminal has said as much as it had said at that point to ecrterm (counted in ZVT
units: APDUs, and on serial ACK / NAK bytes). The terminal's units must then match the
captured ones one for one: same command (CLASS/INSTR and kind), same BMPs in the same order,
same result codes, amounts, currency, status bytes, texts; what legitimately varies (trace
and receipt numbers, dates, times, order ids inside receipt lines) by presence and type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import select
import socket
import time
import tty
from pathlib import Path
from typing import Any, Callable

import pytest

from firmware_protocol.zvt import IndividualTotals, decode
from firmware_protocol.zvt.framing import ACK, NAK, SerialFramer, TcpFramer, ZvtFrame
from posterm.emulator.runner import DEMO_OPERATOR_PASSWORD, EmulatedTerminal

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "zvt" / "ecrterm"
UNIT_TIMEOUT_S = 30.0          # one terminal answer; the slowest (PIN, host) takes well under a second
MAX_UNITS = 5_000              # a session is some 150 units

# BMPs compared by value; every other BMP by presence and type (their values vary by run:
# 0B trace, 0C time, 0D date, 87 receipt, 22 masked PAN, 2A VU, 8B card name).
EXACT_BMPS = {0x27, 0x04, 0x49, 0x19, 0x29, 0x06}
STEPS = ["registration", "status", "payment_eur", "payment", "reversal", "payment", "refund",
         "payment_pin", "decline", "display_text", "end_of_day", "log_off"]


@dataclasses.dataclass
class Capture:
    transport: str
    writes: list[tuple[int, bytes, str]]      # (terminal bytes seen before it, the ECR's bytes, step)
    terminal: bytes                            # everything the terminal sent, in order
    steps: list[str]
    results: dict[str, list[dict]]


def load(name: str) -> Capture:
    lines = [json.loads(line) for line in (CAPTURES / f"{name}.jsonl").read_text().splitlines()]
    header, records = lines[0], lines[1:]
    assert header["capture"] == "ecrterm-zvt" and header["version"] == 1
    terminal = bytearray()
    writes, steps, results = [], [], {}
    step = "-"
    for r in records:
        if "step" in r:
            step = r["step"]
            steps.append(step)
        elif "result" in r:
            results.setdefault(r["result"], []).append(r["ecrterm"])
        elif r["dir"] == "pt>ecr":
            terminal += bytes.fromhex(r["hex"])
        else:
            assert r["dir"] == "ecr>pt"
            writes.append((len(terminal), bytes.fromhex(r["hex"]), step))
    return Capture(header["transport"], writes, bytes(terminal), steps, results)


def units(framer, data: bytes) -> list:
    """Every complete unit in ``data`` (the framer keeps a partial one for the next call)."""
    framer.feed(data)
    out = []
    while (u := framer.pop()) is not None:
        assert isinstance(u, ZvtFrame) or u in (ACK, NAK), f"not a ZVT unit: {u!r}"
        out.append(u)
    return out


def new_framer(transport: str):
    return SerialFramer() if transport == "serial" else TcpFramer()


def _normal_text(text: str) -> str:
    # receipt lines carry the date, time, order id (Z + 16 hex) and refund id of the run
    return re.sub(r"\d", "9", re.sub(r"\bR?Z[0-9A-F]{16}(-[0-9a-f]+)?\b", "<id>", text))


def _value(bmp: int, v: Any) -> Any:
    if bmp in EXACT_BMPS:
        return v
    if bmp == 0x60:                         # individual totals: counts and totals exact, the receipt range by type
        t = IndividualTotals.decode(v)
        return ("totals", type(t.receipt_start).__name__, type(t.receipt_end).__name__, t.totals)
    return type(v).__name__


def shape(unit) -> Any:
    """What must stay the same of one terminal unit."""
    if not isinstance(unit, ZvtFrame):
        return "ACK" if unit == ACK else "NAK"
    msg = decode(unit.apdu)
    out: dict[str, Any] = {"control": bytes(msg.control).hex(), "kind": type(msg).__name__}
    for f in dataclasses.fields(msg):
        v = getattr(msg, f.name)
        if f.name == "fields":
            present = v.present()
            out["bmps"] = [f"{b:02X}" for b, _ in present]   # the order too: ecrterm's parse depends on it
            out.update({f"{b:02X}": _value(b, x) for b, x in present})
        elif f.name == "text":
            out["text"] = _normal_text(v)
        else:
            out[f.name] = v
    return out


# -- a fresh emulated terminal, and the register's side of a capture replayed to it ---------

def _pty_line(port: str):
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)

    def read(timeout: float) -> bytes:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 4096) if ready else b""

    return read, lambda data: os.write(fd, data), lambda: os.close(fd)


def _tcp_line(port: str):
    host, p = port.removeprefix("tcp://").rsplit(":", 1)
    sock = socket.create_connection((host, int(p)), timeout=UNIT_TIMEOUT_S)

    def read(timeout: float) -> bytes:
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            return b""
        data = sock.recv(4096)
        assert data, "the terminal closed the connection"
        return data

    return read, sock.sendall, sock.close


def replay(cap: Capture, read: Callable[[float], bytes], write: Callable[[bytes], None]) -> tuple[list, list]:
    """Send the register's bytes in order, each once the terminal has answered as far as it
    had in the capture; return (captured units, the terminal's units)."""
    expected_framer, live_framer = new_framer(cap.transport), new_framer(cap.transport)
    expected: list = []
    live: list = []
    seen = 0

    def wait_for(n: int, step: str) -> None:
        deadline = time.monotonic() + UNIT_TIMEOUT_S
        while len(live) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"{step}: the terminal sent {len(live)} units, ecrterm had {n} by now"
            live.extend(units(live_framer, read(left)))
            assert len(live) <= MAX_UNITS

    for offset, data, step in cap.writes:
        expected.extend(units(expected_framer, cap.terminal[seen:offset]))
        seen = offset
        wait_for(len(expected), step)
        write(data)
    expected.extend(units(expected_framer, cap.terminal[seen:]))
    wait_for(len(expected), "after the last write")
    assert expected_framer.pending == 0, "the capture ends inside a unit"
    return expected, live


@pytest.fixture
def terminal(tmp_path):
    """``start(transport)``: a fresh emulated ZVT terminal (what ``posterm emulate`` runs)."""
    with contextlib.ExitStack() as stack:
        started = []

        def start(transport: str):
            kw = {"listen": "tcp://127.0.0.1:0"} if transport == "tcp" else {}
            emu = stack.enter_context(EmulatedTerminal.start(home=tmp_path / "home", protocol="zvt", **kw))
            started.append(emu)
            return emu

        yield start
        for emu in started:
            assert emu.error is None


@pytest.mark.parametrize("name, line", [("tcp", _tcp_line), ("serial", _pty_line)])
def test_the_terminal_answers_the_replayed_register_as_it_answered_ecrterm(terminal, name, line):
    cap = load(name)
    emu = terminal(cap.transport)
    read, write, close = line(emu.port)
    try:
        expected, live = replay(cap, read, write)
    finally:
        close()
    assert len(live) == len(expected)
    for i, (want, got) in enumerate(zip(expected, live)):
        assert shape(got) == shape(want), f"unit {i}"


# -- what the captures themselves say ----------------------------------------------------

@pytest.mark.parametrize("name", ["tcp", "serial"])
def test_each_capture_is_the_documented_session_and_ecrterm_accepted_every_step(name):
    cap = load(name)
    assert cap.transport == name
    assert cap.steps == STEPS
    results = cap.results
    assert [r["returned"] for r in results["registration"]] == ["0"]
    assert results["registration"][0]["completion"]["fields"]["currency_code"] == "CurrencyCode.EUR"
    assert results["status_text"][0]["human_readable"] == "PT ready"
    assert [r["returned"] for r in results["payment"]] == ["True", "True"]
    assert [r["returned"] for r in results["payment_pin"]] == ["True"]
    # ecrterm's own ECR.payment (BMP 49 = 978): approved on the demo host's EUR accounts
    assert [r["returned"] for r in results["payment_eur"]] == ["True"]
    assert results["payment_eur"][0]["completion"]["class"] == "Completion"
    # ISO 8583 61 "exceeds withdrawal amount limit" as the binary byte 61 (0x3D)
    assert results["decline"][0]["completion"]["fields"] == {"result_code": "61"}
    for step in ("reversal", "refund", "end_of_day", "display_text", "log_off"):
        assert [r["returned"] for r in results[step]] == ["0"], step
    assert all("error" not in r for rs in results.values() for r in rs)


@pytest.mark.parametrize("name", ["tcp", "serial"])
def test_the_only_password_in_a_capture_is_the_emulators_demo_password(name):
    """The register's passwords (06 00, 05 01, 06 30, 06 31, 06 50) are in clear in the
    capture: they must be the emulator's built-in demo value, never a real one."""
    cap = load(name)
    framer = new_framer(cap.transport)
    passwords = set()
    for unit in units(framer, b"".join(data for _, data, _ in cap.writes)):
        if isinstance(unit, ZvtFrame):
            msg = decode(unit.apdu)
            if getattr(msg, "password", None) is not None:
                passwords.add(msg.password)
    assert passwords == {DEMO_OPERATOR_PASSWORD}
