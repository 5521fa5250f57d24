"""ZVT bytes read by a decoder nobody here wrote: Wireshark's ZVT dissector (tshark).

Wireshark has dissected ZVT since 1.12 (epan/dissectors/packet-zvt.c, by Martin Kaiser);
Debian's tshark 4.0 has it. It reads bare APDUs (the TCP transport) and serial frames
(DLE STX ... DLE ETX CRC, ACK/NAK bytes), each packet in a pcapng of link type DLT_USER1
mapped to the ``zvt`` dissector. These tests put the shared captures of a real Feig
terminal, and every byte our driver and our emulated terminal exchange in a whole session
over TCP, through it: every APDU Wireshark knows must be read by it as we read it (its
control field, amount, currency, result code, trace number, terminal id), and none may be
malformed in its eyes.

Wireshark 4.0 does not know every command (Read card 06 C0, the pre-authorisation family
06 22/23/25 and the status enquiry 05 01 are shown without a control field) and stops at the first BMP it does not know;
where it is silent nothing is compared. .ci/run installs tshark (Debian's package); without
it these tests skip locally and fail in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from firmware_protocol.zvt import TcpFramer, decode
from firmware_protocol.zvt.framing import ZvtFrame
from firmware_protocol.zvt.apdu import Apdu, Nack
from posterm.emulator.runner import EmulatedTerminal
from posterm.record import pcapng

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "zvt"
DLT_USER1 = 148
PASSWORD = "246810"           # the emulated terminal's password (the demo operator password)
TSHARK = shutil.which("tshark")

if TSHARK is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have tshark (.ci/run installs Debian's package): the Wireshark cross-check "
                           "is one of ZVT's interoperability checks")
    pytest.skip("tshark is not installed (apt-get install tshark)", allow_module_level=True)


def _pcapng(packets: list[bytes], path: Path) -> Path:
    """One Enhanced Packet Block per APDU (or serial frame), link type DLT_USER1."""
    with open(path, "wb") as out:
        out.write(pcapng._block(pcapng.SHB, struct.pack("<IHHq", pcapng.BYTE_ORDER_MAGIC, 1, 0, -1)))
        out.write(pcapng._block(pcapng.IDB, struct.pack("<HHI", DLT_USER1, 0, 0)))
        for i, pkt in enumerate(packets):
            out.write(pcapng._block(pcapng.EPB, struct.pack("<IIIII", 0, 0, i, len(pkt), len(pkt)) + pcapng._pad(pkt)))
    return path


FIELDS = ("zvt.control_field", "zvt.ccrc", "zvt.aprc", "zvt.amount", "zvt.cc", "zvt.result_code",
          "zvt.trace_number", "zvt.terminal_id", "zvt.password", "zvt.reg.config_byte", "_ws.malformed",
          "_ws.expert.severity")


def _tshark(path: Path) -> list[dict[str, list[str]]]:
    """What Wireshark reads in each packet: field name -> its values (empty when absent)."""
    args = [TSHARK, "-r", str(path), "-o", f'uat:user_dlts:"User 1 (DLT={DLT_USER1})","zvt","0","","0",""',
            "-T", "json"]
    for f in FIELDS:
        args += ["-e", f]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return [pkt["_source"]["layers"] for pkt in json.loads(done.stdout)]


def _check(apdu_bytes: bytes, seen: dict[str, list[str]]) -> int:
    """Our reading of one APDU against Wireshark's; the number of values compared."""
    assert "_ws.malformed" not in seen, f"Wireshark finds {apdu_bytes.hex()} malformed: {seen}"
    apdu = Apdu.decode(apdu_bytes)
    compared = 0
    if apdu.cls in (0x80, 0x84):                    # an acknowledgement: CCRC / APRC
        assert seen["zvt.ccrc"] == [f"0x{apdu.cls:02x}"], seen
        assert seen["zvt.aprc"] == [f"0x{apdu.instr:02x}"], seen
        return 2
    if "zvt.control_field" not in seen:              # a command Wireshark 4.0 does not know
        return 0
    assert seen["zvt.control_field"] == [f"0x{apdu.cls:02x}{apdu.instr:02x}"], seen
    compared += 1
    msg = decode(apdu_bytes)
    assert not isinstance(msg, Nack)
    fields = getattr(msg, "fields", None)

    def same(name: str, ours, render) -> None:
        nonlocal compared
        if name in seen:
            assert ours is not None, f"Wireshark reads {name}={seen[name]} in {apdu_bytes.hex()}; we read none"
            assert seen[name] == [render(ours)], f"{name}: Wireshark {seen[name]}, we {ours!r} in {apdu_bytes.hex()}"
            compared += 1

    if fields is not None:
        same("zvt.amount", fields.amount, str)
        code = getattr(msg, "result_code", None)           # Abort 06 1E has it before its BMPs
        same("zvt.result_code", code if code is not None else fields.result_code, lambda v: f"0x{v:02x}")
        same("zvt.trace_number", getattr(fields, "trace", None), lambda v: f"{v:06d}")
        same("zvt.terminal_id", getattr(fields, "terminal_id", None), str)
    currency = getattr(msg, "currency", None)
    if currency is None and fields is not None:
        currency = fields.currency
    same("zvt.cc", currency, lambda v: f"0x{v:04d}")      # BCD: Wireshark shows the digits as hex
    if hasattr(msg, "config_byte"):
        same("zvt.reg.config_byte", msg.config_byte, lambda v: f"0x{v:02x}")
        same("zvt.password", msg.password, str)
    return compared


def test_the_real_terminals_captures_read_alike(tmp_path):
    blobs = sorted(FIXTURES.glob("*.blob"))
    assert len(blobs) == 15
    packets = [b.read_bytes() for b in blobs]
    seen = _tshark(_pcapng(packets, tmp_path / "captures.pcapng"))
    assert len(seen) == len(packets)
    compared = sum(_check(p, s) for p, s in zip(packets, seen))
    # Wireshark knows 10 of the 15 commands; amounts, currencies, result codes, trace numbers
    # and the terminal id of the status information come on top.
    assert compared >= 30, compared


class _Tap:
    """A loopback TCP relay between the driver and the emulated terminal that keeps every
    byte each way (bounded: a session of this test is a few KiB)."""

    CAP = 1 << 20

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10)
        self.port = self.server.getsockname()[1]
        self.sent = {"ecr": bytearray(), "pt": bytearray()}
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        try:
            ecr, _ = self.server.accept()
        except OSError:
            return
        pt = socket.create_connection(self.target, timeout=10)
        for src, dst, who in ((ecr, pt, "ecr"), (pt, ecr, "pt")):
            t = threading.Thread(target=self._pipe, args=(src, dst, who), daemon=True)
            t.start()
            self.threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket, who: str) -> None:
        src.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = src.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if len(self.sent[who]) + len(data) <= self.CAP:
                self.sent[who] += data
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        for t in [self.acceptor, *self.threads]:
            t.join(timeout=5)


def _apdus(data: bytes) -> list[bytes]:
    framer = TcpFramer()
    framer.feed(bytes(data))
    out = []
    while (item := framer.pop()) is not None:
        assert isinstance(item, ZvtFrame), item
        out.append(item.apdu)
    return out


def test_a_whole_session_over_tcp_reads_alike(tmp_path):
    from firmware_protocol.native.messages import Outcome
    from posterm.families.zvt.ecr import ZvtTerminal

    with EmulatedTerminal.start(home=tmp_path / "home", protocol="zvt", listen="tcp://127.0.0.1:0") as emu:
        host, port = emu.port.removeprefix("tcp://").rsplit(":", 1)
        tap = _Tap((host, int(port)))
        try:
            term = ZvtTerminal.open(f"tcp://127.0.0.1:{tap.port}", journal=str(tmp_path / "j.db"),
                                    password=PASSWORD, currency="CNY")
            try:
                term.hello()
                paid = term.pay(1250, "CNY")
                assert paid.outcome is Outcome.APPROVED
                assert term.pay(500_001, "CNY").outcome is Outcome.DECLINED
                term.status()
                assert term.cancel(paid.order_id, PASSWORD).outcome is Outcome.CANCELLED
                again = term.pay(2000, "CNY")
                assert term.refund(again.order_id, 500, "R1", PASSWORD).outcome is Outcome.APPROVED
                assert term.settle(PASSWORD).outcome is Outcome.APPROVED
            finally:
                term.close()
        finally:
            tap.close()
    packets = _apdus(tap.sent["ecr"]) + _apdus(tap.sent["pt"])
    assert len(packets) > 30
    seen = _tshark(_pcapng(packets, tmp_path / "session.pcapng"))
    assert len(seen) == len(packets)
    controls = {s["zvt.control_field"][0] for s in seen if "zvt.control_field" in s}
    # registration, authorisation, intermediate status, status information, print line, completion,
    # abort (the decline), reversal, refund, end of day: all read by Wireshark (it has no name for
    # the status enquiry 05 01)
    assert {"0x0600", "0x0601", "0x04ff", "0x040f", "0x06d1", "0x060f", "0x061e", "0x0630", "0x0631",
            "0x0650"} <= controls, controls
    assert sum(_check(p, s) for p, s in zip(packets, seen)) >= len(packets)
