"""Overload and hostile ECRs: a burst of requests, a flood of false starts, a reader that
stops reading, a PIN the emulator does not know. Each ends with a good payment."""

from __future__ import annotations

import os
import socket
import tty

import pytest

from firmware_protocol.native import frame as fr
from firmware_protocol.native.messages import Outcome, Reason, StatusRequest
from firmware_protocol.native.tlv import encode
from posterm.families.native.ecr import Terminal
from posterm.emulator.runner import EmulatedTerminal
from posterm.errors import PosError

CODE_OK = "289900000000000001"
CODE_PIN = "289900000000000003"   # the host asks this code's account for its payment password


class RawEcr:
    """A misbehaving ECR: raw bytes onto the emulator's pty or TCP port, reading only on demand."""

    def __init__(self, port: str) -> None:
        if port.startswith("tcp://"):
            host, _, num = port[len("tcp://"):].rpartition(":")
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
            self.sock.settimeout(10)
            self.sock.connect((host, int(num)))
            self.fd = None
        else:
            self.sock = None
            self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
            tty.setraw(self.fd)

    def write(self, data: bytes) -> None:
        if self.sock is not None:
            self.sock.sendall(data)
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)


def frames(n: int, first_seq: int = 0) -> bytes:
    return b"".join(fr.encode_frame(fr.FrameKind.DATA, (first_seq + i) & 0xFF, encode(StatusRequest()))
                    for i in range(n))


@pytest.fixture(params=["pty", "tcp"])
def emu(request, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path))
    listen = "tcp://127.0.0.1:0" if request.param == "tcp" else None
    if listen:  # the terminal's side of the socket: a fixed small send buffer, so a stall shows soon
        from posterm.transport import tcp

        original = tcp.TcpTransport.__init__

        def small_sndbuf(self, sock, *a, **kw):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            original(self, sock, *a, **kw)
        monkeypatch.setattr(tcp.TcpTransport, "__init__", small_sndbuf)
    with EmulatedTerminal.start(home=tmp_path / "emu", listen=listen) as e:
        e.write_stall_timeout = 0.5
        yield e
        assert e.error is None, e.error


def good_payment(emu: EmulatedTerminal, tmp_path) -> None:
    with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
        r = term.pay(100, "CNY", payment_code=CODE_OK, timeout=30)
    assert r.approved
    assert emu.error is None


def test_a_burst_of_34_requests_is_overload_not_a_crash(emu, tmp_path):
    ecr = RawEcr(emu.port)
    try:
        ecr.write(frames(34))             # never reads the answers
        assert emu.wait_for_line_event("send_queue_full")
    finally:
        ecr.close()
    good_payment(emu, tmp_path)


def test_a_flood_of_false_starts_is_survived(emu, tmp_path):
    ecr = RawEcr(emu.port)
    try:
        # A plausible header (DATA, 4096 bytes), then 8 KiB of start bytes, then a real frame.
        head = bytes([fr.SOF, 1, 1, 0]) + (4096).to_bytes(2, "big") + (4096 ^ 0xFFFF).to_bytes(2, "big")
        ecr.write(head + b"\xa5" * 8192 + frames(1))
        ecr.write(frames(1, 1))          # still understood after the flood
    finally:
        ecr.close()
    good_payment(emu, tmp_path)


def test_an_ecr_that_stops_reading_is_dropped_and_the_next_one_served(emu, tmp_path):
    ecr = RawEcr(emu.port)
    try:
        for k in range(40):               # ~400 KiB of answers the ECR never reads
            ecr.write(frames(256, k))
            if emu.line_events["write_stall"] or emu.line_events["output_overflow"]:
                break
        assert emu.wait_for_line_event("write_stall") or emu.line_events["output_overflow"]
    except (BrokenPipeError, ConnectionResetError):
        pass                              # TCP: the terminal closed the stalled connection
    finally:
        ecr.close()
    good_payment(emu, tmp_path)


def test_the_default_pin_pad_types_the_demo_pin_once(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path))
    with EmulatedTerminal.start(home=tmp_path / "emu") as emu:
        account = emu.host.account_for_code(CODE_PIN)
        emu.host.set_password(account, "864213", old="147258")   # not the demo PIN any more
        with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
            r = term.pay(100, "CNY", payment_code=CODE_PIN, timeout=30)
        assert (r.outcome, r.reason) == (Outcome.CANCELLED, Reason.CUSTOMER_CANCELLED)
        assert emu.host.security(account)["pin_locked"] is False
        assert emu.host.account(account).get("pin_tries", 1) <= 1


def test_a_dying_host_thread_stops_the_terminal_loudly(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path))
    with EmulatedTerminal.start(home=tmp_path / "emu") as emu:
        def broken(*_a, **_kw):
            raise RuntimeError("bug in the host link")
        monkeypatch.setattr(emu.hostlink, "request", broken)
        with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term, pytest.raises(PosError):
            term.pay(100, "CNY", payment_code=CODE_OK, timeout=3)
        emu._line.join(10)                     # the line thread follows the host thread down
        assert not emu._line.is_alive() and not emu._worker.is_alive()
        assert emu.error is not None
    assert any("host thread stopped" in r.getMessage() for r in caplog.records)
