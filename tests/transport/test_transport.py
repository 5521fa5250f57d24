"""posterm.transport: every backend moves bytes, reports a lost line as one typed error
within a second, and refuses bad settings with a clear error."""

from __future__ import annotations

import errno
import os
import time

import pytest

import posterm.transport as tr
from posterm.errors import (ConfigError, Disconnected, LocalProtocolError, PortBusy, PortNotFound, PortPermission,
                            TransportError)
from posterm.transport.base import open_error
from posterm.transport.faults import FaultSpec, FaultyTransport


def read_exactly(t, n, timeout=2.0):
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += t.read(n - len(out), 0.2)
    return out


@pytest.fixture
def pty_pair():
    master, path = tr.PtyTransport.create()
    ecr = tr.open_transport(path)
    yield master, ecr, path
    ecr.close()
    master.close()


def test_pty_moves_bytes_both_ways(pty_pair):
    master, ecr, _ = pty_pair
    ecr.write(b"\xa5\x01hello\x00\xff")
    assert read_exactly(master, 9) == b"\xa5\x01hello\x00\xff"  # raw: no echo, no CR/LF translation
    master.write(bytes(range(256)))
    assert read_exactly(ecr, 256) == bytes(range(256))


def test_read_returns_partial_data_and_empty_on_timeout(pty_pair):
    master, ecr, _ = pty_pair
    assert ecr.read(100, 0.05) == b""
    master.write(b"abc")
    assert read_exactly(ecr, 3) == b"abc"


@pytest.mark.parametrize("op", ["read", "write"])
def test_pty_closed_is_disconnected_within_a_second(pty_pair, op):
    master, ecr, _ = pty_pair
    master.close()
    # No wall clock: a read that waited out its (long) timeout would return b"" and not raise,
    # so raising at all proves the hang-up was seen at once, however loaded the machine.
    with pytest.raises(Disconnected):
        if op == "read":
            ecr.read(10, 30.0)
        else:
            for _ in range(3):  # a write may be buffered once before the error shows
                ecr.write(b"x")


def test_emulator_side_survives_ecr_reopening(pty_pair):
    master, ecr, path = pty_pair
    ecr.close()
    again = tr.open_transport(path)
    again.write(b"ping")
    assert read_exactly(master, 4) == b"ping"
    again.close()


def test_exclusive_open_refuses_a_second_user(pty_pair):
    _, _, path = pty_pair
    with pytest.raises(PortBusy, match="in use"):
        tr.open_transport(path)
    shared = tr.open_transport(path, exclusive=False)  # advisory: a plain open still works
    shared.close()


def test_missing_port_is_port_not_found():
    with pytest.raises(PortNotFound, match="posterm ports"):
        tr.open_transport("/dev/ttyUSB-does-not-exist")


def test_open_errors_are_classified():
    assert isinstance(open_error(OSError(errno.EACCES, "Permission denied"), "/dev/ttyS0"), PortPermission)
    assert isinstance(open_error(OSError(errno.EBUSY, "busy"), "/dev/ttyS0"), PortBusy)
    assert isinstance(open_error(OSError(errno.ENOENT, "No such file"), "/dev/ttyS0"), PortNotFound)
    assert type(open_error(OSError(errno.EINVAL, "weird"), "/dev/ttyS0")) is TransportError


@pytest.mark.parametrize("settings, match", [
    ({"parity": "X"}, "parity"), ({"bytesize": 9}, "byte size"), ({"stopbits": 3}, "stop bits")])
def test_bad_serial_settings_are_refused(pty_pair, settings, match):
    _, _, path = pty_pair
    with pytest.raises(LocalProtocolError, match=match):
        tr.open_transport(path, exclusive=False, **settings)


def test_serial_settings_reach_pyserial():
    t = tr.open_transport("loop://", exclusive=False, baudrate=9600, bytesize=7, parity="E", stopbits=2)
    assert t.description.endswith("9600 7E2")
    assert (t._port.baudrate, t._port.bytesize, t._port.parity, t._port.stopbits) == (9600, 7, "E", 2)
    t.close()


def test_seven_bits_with_parity_on_a_pty_are_carried_in_software(pty_pair):
    # Linux refuses PARENB on a pty reopened after a first close (EINVAL, measured), so 7E1
    # on a pty puts the parity bit on top of 7 data bits: the same ten bit times as on a cable.
    master, _, path = pty_pair
    t = tr.open_transport(path, exclusive=False, baudrate=9600, bytesize=7, parity="E")
    try:
        assert t.description.endswith("9600 7E1")
        t.write(b"\x02A\x03")          # STX: one bit set -> parity bit; 'A' (2 bits) and ETX (2 bits) even
        assert read_exactly(master, 3) == b"\x82A\x03"
        master.write(b"\x82\xc1\x03")    # \xc1: 'A' with a wrong parity bit -> NUL, as a UART delivers it
        assert read_exactly(t, 3) == b"\x02\x00\x03"
    finally:
        t.close()


def test_soft_parity_tables():
    from posterm.transport.parity import SoftParity, parse_line_format

    even, odd = SoftParity("E"), SoftParity("O")
    for b in range(128):
        e, o = even.encode(bytes([b]))[0], odd.encode(bytes([b]))[0]
        assert bin(e).count("1") % 2 == 0 and bin(o).count("1") % 2 == 1
        assert even.decode(bytes([e])) == bytes([b]) and odd.decode(bytes([o])) == bytes([b])
        assert e ^ o == 0x80
    assert parse_line_format("7e1") == (7, "E", 1.0)
    with pytest.raises(ValueError):
        parse_line_format("8E1")


def test_posterm_baud_sets_the_default(monkeypatch, pty_pair):
    _, _, path = pty_pair
    monkeypatch.setenv("POSTERM_BAUD", "9600")
    t = tr.open_transport(path, exclusive=False)
    assert t._port.baudrate == 9600
    t.close()
    monkeypatch.setenv("POSTERM_BAUD", "fast")
    with pytest.raises(LocalProtocolError, match="POSTERM_BAUD"):
        tr.open_transport(path, exclusive=False)


def test_spy_url_is_refused_because_it_logs_secrets():
    with pytest.raises(LocalProtocolError, match="clear"):
        tr.open_transport("spy://loop://")


def test_loop_url():
    t = tr.open_transport("loop://")
    t.write(b"echo")
    assert read_exactly(t, 4) == b"echo"
    t.close()


def test_tcp_connect_listen_and_peer_close():
    with tr.TcpTransport.listen() as listener:
        assert listener.host == "127.0.0.1"
        client = tr.open_transport(listener.address)
        server = listener.accept(timeout=2)
        client.write(b"abc")
        assert read_exactly(server, 3) == b"abc"
        client.close()
        with pytest.raises(Disconnected):
            server.read(10, 1.0)
        server.close()


def test_socket_url_peer_close_is_disconnected():
    with tr.TcpTransport.listen() as listener:
        client = tr.open_transport(f"socket://127.0.0.1:{listener.port}")
        server = listener.accept(timeout=2)
        server.close()
        with pytest.raises(Disconnected):
            for _ in range(3):
                client.read(10, 1.0)
        client.close()


def test_listener_is_loopback_only_unless_asked():
    with pytest.raises(LocalProtocolError, match="loopback"):
        tr.TcpTransport.listen("0.0.0.0")


def test_refused_connection_is_port_not_found():
    with tr.TcpTransport.listen() as listener:
        port = listener.port
    with pytest.raises(PortNotFound, match="refused"):
        tr.open_transport(f"tcp://127.0.0.1:{port}")


def test_virtual_pair_with_manipulator_and_name():
    seen = []

    def manipulate(data, direction):
        seen.append(direction)
        return [] if data == b"drop" else [data, data] if data == b"dup" else data

    a, b = tr.VirtualTransport.pair(manipulate, name="test-virtual")
    assert tr.open_transport("virtual://test-virtual") is a
    a.write(b"drop")
    a.write(b"dup")
    b.write(b"back")
    assert read_exactly(b, 6) == b"dupdup"
    assert read_exactly(a, 4) == b"back"
    assert seen == ["a->b", "a->b", "b->a"]
    b.close()
    with pytest.raises(Disconnected):
        a.read(1, 0.5)
    with pytest.raises(PortNotFound):
        tr.open_transport("virtual://nobody")


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(LocalProtocolError, match="no transport backend"):
        tr.backend("carrier-pigeon")
    assert tr.backend("serial").__name__ == "SerialTransport"


def test_fault_spec_parsing():
    spec = FaultSpec.parse("drop=0.01,corrupt=0.02,dup=0.005,delay=20ms,unplug_after=30s,seed=7")
    assert spec == FaultSpec(0.01, 0.02, 0.005, 0.02, 30.0, 7)
    for bad, match in (("drop", "NAME=VALUE"), ("loss=0.1", "expected one of"), ("drop=lots", "not a number"),
                       ("drop=2", "between 0 and 1")):
        with pytest.raises(ConfigError, match=match):
            FaultSpec.parse(bad)


def test_faults_are_seeded_and_counted():
    def run():
        a, b = tr.VirtualTransport.pair()
        faulty = FaultyTransport(a, "drop=0.2,corrupt=0.2,dup=0.1,seed=42")
        for i in range(200):
            faulty.write(bytes([i]) * 8)
        got = read_exactly(b, 100_000, timeout=0.3)
        return got, dict(faulty.stats)

    first, second = run(), run()
    assert first == second
    got, stats = first
    assert stats["dropped"] > 10 and stats["corrupted"] > 10 and stats["duplicated"] > 5
    assert len(got) == 8 * (200 - stats["dropped"] + stats["duplicated"])


def test_unplug_after():
    a, b = tr.VirtualTransport.pair()
    faulty = FaultyTransport(a, FaultSpec(unplug_after=0.0))
    with pytest.raises(Disconnected, match="unplugged"):
        faulty.write(b"x")
    with pytest.raises(Disconnected):
        b.read(1, 0.5)  # the other end sees the cable go too


def test_pacer_holds_writes_to_the_line_rate():
    pacer = tr.Pacer(115200, tr.bits_per_byte(8, "N", 1))
    assert tr.bits_per_byte(7, "E", 1) == 10 and tr.bits_per_byte(8, "N", 2) == 11
    slept = pacer.wait(1152) + pacer.wait(1152)  # the second waits behind the first
    assert slept >= 2 * 1152 * 10 / 115200 * 0.95


def test_list_ports_and_by_id(tmp_path, monkeypatch):
    from posterm.transport import ports

    target = tmp_path / "ttyUSB7"
    target.write_text("")
    (tmp_path / "by-id").mkdir()
    os.symlink(target, tmp_path / "by-id" / "usb-Acme_POS_1234-if00-port0")
    assert ports._by_id_names(str(tmp_path / "by-id")) == {
        str(target): str(tmp_path / "by-id" / "usb-Acme_POS_1234-if00-port0")}
    assert all(isinstance(p, tr.PortInfo) for p in tr.list_ports())
