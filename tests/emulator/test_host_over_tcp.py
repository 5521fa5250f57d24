"""The terminal's TCP connection to `posterm host serve`: a host that restarts between two
requests is reconnected to, and a request is never processed twice."""

from __future__ import annotations

import threading
import time

import pytest

from firmware_protocol.native import frame as fr
from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Outcome, Reason
from firmware_protocol.native.tlv import encode as tlv_encode
from posterm.families.native.ecr import Terminal
from posterm.emulator import EmulatedTerminal
from posterm.errors import Disconnected, TransportError
from posterm.host import Host
from posterm.host.client import TcpHostClient
from posterm.host.server import serve

CODE_OK = "289900000000000001"


@pytest.fixture
def restartable_host(tmp_path):
    """``(start, stop)``: the host on one fixed loopback port, stopped and started like a
    `posterm host serve` process (a new Host on the same database, no sessions)."""
    box: dict = {}

    def start(port: int = 0):
        box["host"] = Host.open(tmp_path / "host.db")
        box["server"] = serve(box["host"], f"127.0.0.1:{port}")
        return box["server"].address

    def stop():
        box.pop("server").close()
        box.pop("host").close()

    yield start, stop
    if "server" in box:
        stop()


def test_first_payment_after_a_host_restart_is_approved(tmp_path, restartable_host):
    start, stop = restartable_host
    address = start()
    port = int(address.rsplit(":", 1)[1])
    with EmulatedTerminal.start(listen="tcp://127.0.0.1:0", host=address, home=tmp_path) as emu:
        with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
            assert term.pay(100, "CNY", payment_code=CODE_OK, timeout=30).approved
            stop()
            start(port)                                  # same port, a new process's worth of host
            r = term.pay(101, "CNY", payment_code=CODE_OK, timeout=30)
            assert (r.outcome, r.reason) == (Outcome.APPROVED, 0)
            assert term.status().host_online
        assert emu.error is None
    host = Host.open(tmp_path / "host.db")
    try:
        assert host.order_status(r.order_id) == "APPROVED" and host.check_books() == []
    finally:
        host.close()


# ------------------------------------------------------------------ the client against a scripted host


class ScriptedHost:
    """A loopback host that plays one script entry per connection: read one request frame,
    then ``"drop"`` (close without answering) or answer with the given message."""

    def __init__(self, script):
        from posterm.transport.tcp import TcpTransport

        self.script = list(script)
        self.received: list[bytes] = []
        self.listener = TcpTransport.listen("127.0.0.1", 0)
        self.address = self.listener.address
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for step in self.script:
            conn = None
            while conn is None:
                conn = self.listener.accept(5)
            framer, deadline = fr.Framer(), time.monotonic() + 5
            got = None
            while got is None and time.monotonic() < deadline:
                framer.feed(conn.read(4096, 0.1))
                item = framer.pop()
                got = item if isinstance(item, fr.LinkFrame) else None
            self.received.append(got.payload)
            if step != "drop":
                conn.write(fr.encode_frame(fr.FrameKind.DATA, got.seq, tlv_encode(step)))
                conn.read(4096, 0.5)     # let the client read before we close
            conn.close()

    def close(self):
        self.thread.join(5)
        self.listener.close()


AUTH = h.AuthRequest(terminal_id="T0000001", order_id="O-1", amount_minor=100, currency="CNY",
                     payment_code=CODE_OK)
APPROVED = h.AuthResponse(order_id="O-1", status=h.HostStatus.APPROVED, amount_minor=100, currency="CNY")


def test_a_request_lost_with_the_connection_is_sent_again_byte_for_byte():
    host = ScriptedHost(["drop", APPROVED])
    try:
        reply = TcpHostClient(host.address).request(AUTH, 5)
    finally:
        host.close()
    assert reply == APPROVED
    assert len(host.received) == 2 and host.received[0] == host.received[1]   # same KSN, same MAC


def test_a_second_copy_the_host_calls_a_replay_means_the_answer_was_lost():
    replay = h.HostError(code=2, reason=Reason.REPLAY_DETECTED, text="replayed request")
    host = ScriptedHost(["drop", replay])
    try:
        with pytest.raises(Disconnected, match="answer was lost"):
            TcpHostClient(host.address).request(AUTH, 5)      # never returned as a decline
    finally:
        host.close()


def test_a_pin_try_is_never_sent_twice():
    host = ScriptedHost(["drop"])
    pin = h.PinVerify(terminal_id="T0000001", order_id="O-1", pin_block=b"\x01" * 16, pin_ksn=b"\x02" * 12)
    try:
        with pytest.raises(Disconnected):
            TcpHostClient(host.address).request(pin, 5)
    finally:
        host.close()
    assert len(host.received) == 1


def test_no_host_at_all_fails_after_bounded_attempts(monkeypatch):
    # Bounded by count, not by a stopwatch: the attempts and the back-off between them.
    from posterm.host import client as client_mod
    from posterm.transport.tcp import TcpTransport

    with TcpTransport.listen("127.0.0.1", 0) as probe:
        address = probe.address
    attempts, pauses = [], []
    real_connect = TcpTransport.connect
    monkeypatch.setattr(TcpTransport, "connect",
                        classmethod(lambda cls, url, **kw: attempts.append(url) or real_connect(url, **kw)))
    monkeypatch.setattr(client_mod.time, "sleep", pauses.append)
    with pytest.raises(TransportError):
        TcpHostClient(address).request(AUTH, 30)
    assert len(attempts) == client_mod.CONNECT_ATTEMPTS
    assert sum(pauses) < 30 and len(pauses) == client_mod.CONNECT_ATTEMPTS - 1
