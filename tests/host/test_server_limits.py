"""`posterm host serve` keeps no connection it should not: silent ones cannot fill its slots.

No sleeps: the tests wait on events (a socket's EOF, a counter), with a generous bound.
"""

from __future__ import annotations

import socket

import pytest

from firmware_protocol.host import messages as h
from posterm.host.client import TcpHostClient
from posterm.host.server import ServerLimits, serve

from .conftest import CODE, terminal


def _silent(address: str, n: int) -> list[socket.socket]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return [socket.create_connection((host, int(port)), timeout=5) for _ in range(n)]


def _closed_by_server(sock: socket.socket, bound: float = 10.0) -> bool:
    """Wait (at most ``bound`` s) for the server to close ``sock``: True on EOF or reset."""
    sock.settimeout(bound)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("store_kind", ["sqlite"])   # the store does not matter here: SQLite only, to keep the PostgreSQL run short
def test_silent_connections_do_not_lock_out_a_real_terminal(host):
    # The default caps, with a logon deadline long enough that no test run reaches it:
    # only the caps and the eviction can let the real terminal in.
    with serve(host, limits=ServerLimits(max_connections=16, max_pending=4, logon_deadline=600)) as server:
        socks = _silent(server.address, 300)          # more than the old cap of 256
        try:
            link = terminal(host, client=TcpHostClient(server.address))
            r = link.request(h.AuthRequest(terminal_id="T0000001", order_id="AFTER-FLOOD", amount_minor=100,
                                           currency="CNY", payment_code=CODE[1]), 10.0)
            assert r.status is h.HostStatus.APPROVED
            held, pending = server.connections()
            assert held <= 16 and pending <= 4         # the caps held under the flood
            assert server.evictions >= 300 - 4
            assert _closed_by_server(socks[0])        # the evicted ones were closed, not just forgotten
        finally:
            for s in socks:
                s.close()
            link.client.close()


@pytest.mark.parametrize("store_kind", ["sqlite"])   # the store does not matter here: SQLite only, to keep the PostgreSQL run short
def test_a_connection_that_does_not_log_on_is_closed_at_the_deadline(host):
    with serve(host, limits=ServerLimits(logon_deadline=0.2)) as server:
        (s,) = _silent(server.address, 1)
        s.sendall(b"\xA5\x01")                         # a partial frame is not a logon either
        assert _closed_by_server(s)
        assert server.wait_until(lambda: server.connections() == (0, 0), 10)
        assert server.timeouts == 1


@pytest.mark.parametrize("store_kind", ["sqlite"])   # the store does not matter here: SQLite only, to keep the PostgreSQL run short
def test_an_idle_logged_on_connection_is_closed_and_the_terminal_reconnects(host):
    with serve(host, limits=ServerLimits(idle_timeout=1.0)) as server:
        client = TcpHostClient(server.address)
        link = terminal(host, client=client)
        assert server.connections() == (1, 0)          # logged on: out of the pending cap
        assert server.wait_until(lambda: server.timeouts == 1, 10)   # silent for longer than idle_timeout
        assert server.wait_until(lambda: server.connections() == (0, 0), 10)
        r = link.request(h.AuthRequest(terminal_id="T0000001", order_id="AFTER-IDLE", amount_minor=100,
                                       currency="CNY", payment_code=CODE[1]), 10.0)
        assert r.status is h.HostStatus.APPROVED        # a new connection, no new logon needed
        assert server.connections() == (1, 0)           # the host's session admitted it
        client.close()


def test_limits_are_checked():
    with pytest.raises(ValueError):
        ServerLimits(max_connections=4, max_pending=8)
    with pytest.raises(ValueError):
        ServerLimits(idle_timeout=0)
