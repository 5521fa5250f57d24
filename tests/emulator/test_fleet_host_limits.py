"""The host server a multi-process fleet's parent serves: none of the fleet's own host
connections is evicted while they are all still pending (not logged on) at once.

The regression: a 1,000-terminal fleet (4 processes x 16 host connections) had 40 pending
slots; at its start every connection is pending during the terminals' logons, so the server
evicted pending connections and dropped the requests sent on them unread, and a warm-up
payment came back CANCELLED. Here a fake host holds every request until all the fleet's
connections have one inside it (events, no sleeps), so every connection is pending at once.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from firmware_protocol.host import messages as h
from posterm.emulator.fleet import host_connections_share, server_limits
from posterm.host.client import TcpHostClient
from posterm.host.server import ServerLimits, serve


class _HoldingHost:
    """Answers every request with a HostError (so no connection is ever logged on), but only
    once ``expected`` requests are inside ``handle`` at once (or the server evicted one)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.inside = 0
        self.cond = threading.Condition()
        self.server = None

    def _all_in_or_evicted(self) -> bool:
        return self.inside >= self.expected or (self.server is not None and self.server.evictions > 0)

    def handle(self, msg, raw=None):
        with self.cond:
            self.inside += 1
            self.cond.notify_all()
            self.cond.wait_for(self._all_in_or_evicted, 20)
        return h.HostError(code=h.HostErrorCode.NOT_LOGGED_ON, text="held")


def _flood(limits: ServerLimits, connections: int) -> tuple[int, int, list]:
    """``connections`` clients each send one request at once; (evictions, requests that reached
    the host, what each client got: a reply or the exception)."""
    host = _HoldingHost(connections)
    with serve(host, limits=limits) as server:
        host.server = server

        def one(i: int):
            client = TcpHostClient(server.address)
            try:
                return client.request(h.HostQuery(terminal_id=f"T{i + 1:07d}", order_id=f"Q{i}"), 20.0)
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                return exc
            finally:
                client.close()

        with ThreadPoolExecutor(connections) as pool:
            got = list(pool.map(one, range(connections)))
        with host.cond:   # the evicted connection's waiter may be released with others still in
            host.cond.notify_all()
        return server.evictions, host.inside, got


@pytest.mark.parametrize("processes", [1, 4])
def test_every_fleet_connection_may_be_pending_at_once(processes):
    connections = min(1000, 16 * processes)     # ProcessFleet's default for 1,000 terminals at 4 processes
    assert sum(host_connections_share(connections, processes)) == connections
    evictions, reached, got = _flood(server_limits(connections), connections)
    assert evictions == 0
    assert reached == connections
    assert all(isinstance(r, h.HostError) and r.text == "held" for r in got)


def test_the_old_pending_cap_dropped_requests():
    # The limits the parent used before (8 per process + 8 pending for 4 processes): the same
    # flood evicts pending connections, and what was sent on them is dropped unread (their
    # clients send it again where they may). The flood above is a real test only while this holds.
    evictions, _, _ = _flood(ServerLimits(max_connections=256, max_pending=8 * 4 + 8), 64)
    assert evictions > 0
