"""``posterm host serve``: the host on a loopback TCP port, within bounded connections.

Each connection's requests go to ``host.handle`` (the service does not know they came
over TCP); the frames are :mod:`.wire`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from firmware_protocol.host import messages as h
from firmware_protocol.native import frame as fr
from firmware_protocol.native.tlv import encode as tlv_encode

from posterm.errors import Disconnected, RemoteProtocolError, TransportError
from posterm.host.wire import read_message

__all__ = ["HostServer", "ServerLimits", "serve"]

log = logging.getLogger("posterm.host.server")
MAX_CONNECTIONS = 256     # connections held at once
MAX_PENDING = 32          # ... of which not logged on yet
LOGON_DEADLINE = 10.0     # seconds from accept to an accepted logon
IDLE_TIMEOUT = 300.0      # seconds a logged-on connection may send nothing


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How many connections the host server holds, and for how long (seconds).

    A connection is *pending* from accept until the host accepts its logon; pending ones
    have their own, smaller cap and a short deadline, so silent or hostile connections
    can never fill the slots real terminals need. When a cap is reached the oldest
    pending connection (or, with none, the longest-idle logged-on one) is closed to admit
    the new one. A logged-on connection that sends no whole message for ``idle_timeout``
    is closed too (a half-open line, a terminal gone); its terminal reconnects on its next
    request (:class:`~posterm.host.client.TcpHostClient`).
    """

    max_connections: int = MAX_CONNECTIONS
    max_pending: int = MAX_PENDING
    logon_deadline: float = LOGON_DEADLINE
    idle_timeout: float = IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if not 1 <= self.max_pending <= self.max_connections:
            raise ValueError("ServerLimits: 1 <= max_pending <= max_connections")
        if not (self.logon_deadline > 0 and self.idle_timeout > 0):
            raise ValueError("ServerLimits: timeouts must be positive")


class _Conn:
    """One accepted connection, as the server tracks it."""

    __slots__ = ("accepted_at", "evicted", "last_message_at", "logged_on", "transport", "why")

    def __init__(self, transport, now: float) -> None:
        self.transport = transport
        self.accepted_at = self.last_message_at = now
        self.logged_on = False
        self.evicted = threading.Event()
        self.why = ""


class HostServer:
    """Serves a :class:`~posterm.host.service.Host` on a loopback TCP port, one thread per connection,
    within :class:`ServerLimits`."""

    def __init__(self, host, listen: str = "127.0.0.1:0", *, allow_remote: bool = False,
                 limits: ServerLimits | None = None, listener=None) -> None:
        from posterm.transport.tcp import TcpTransport, parse_address

        self.host = host
        self.limits = limits or ServerLimits()
        if listener is None:   # else a listening socket shared with other host processes (workers)
            addr, port = parse_address(listen)
            listener = TcpTransport.listen(addr, port, allow_remote=allow_remote)
        self._listener = listener
        self.address = f"tcp://{self._listener.host}:{self._listener.port}"
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)   # a connection closed or timed out
        self._conns: dict[_Conn, threading.Thread] = {}
        self.evictions = 0           # connections closed to make room (for tests and `serve` logs)
        self.timeouts = 0            # connections closed by the logon deadline or the idle timeout
        self.rejected = 0            # frames skipped: they decode to no host message
        self.errors = 0              # connections ended by an unexpected error (a bug: see the log)
        self._accept = threading.Thread(target=self._accept_loop, name="host-accept", daemon=True)
        self._accept.start()

    def connections(self) -> tuple[int, int]:
        """(connections held, of which pending: not logged on)."""
        with self._lock:
            live = [c for c in self._conns if not c.evicted.is_set()]
            return len(live), sum(1 for c in live if not c.logged_on)

    def wait_until(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked whenever a connection ends; its last value."""
        end = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._listener.accept(timeout=0.2)
            except TransportError:
                return
            if conn is None:
                continue
            rec = _Conn(conn, time.monotonic())
            t = threading.Thread(target=self._serve, args=(rec,), name="host-conn", daemon=True)
            with self._lock:
                self._make_room()
                self._conns[rec] = t
            t.start()

    def _make_room(self) -> None:
        """Under the lock, before a new (pending) connection is admitted: evict to stay within the caps."""
        live = [c for c in self._conns if not c.evicted.is_set()]
        pending = sorted((c for c in live if not c.logged_on), key=lambda c: c.accepted_at)
        victim = None
        if len(pending) >= self.limits.max_pending:
            victim = pending[0]
        elif len(live) >= self.limits.max_connections:
            victim = pending[0] if pending else min(live, key=lambda c: c.last_message_at)
        if victim is not None:
            victim.why = "evicted to make room"
            victim.evicted.set()
            _wake(victim.transport)   # its own thread sees EOF at once and closes it
            self.evictions += 1

    def _serve(self, rec: _Conn) -> None:
        framer = fr.Framer()
        conn = rec.transport
        limits = self.limits
        tick = min(0.25, limits.logon_deadline / 4, limits.idle_timeout / 4)
        try:
            while not self._stop.is_set() and not rec.evicted.is_set():
                now = time.monotonic()
                if not rec.logged_on and now - rec.accepted_at >= limits.logon_deadline:
                    rec.why = "no logon in time"
                    break
                if rec.logged_on and now - rec.last_message_at >= limits.idle_timeout:
                    rec.why = "idle"
                    break
                try:
                    got = read_message(conn, framer, now + tick)
                except RemoteProtocolError as exc:
                    # A frame that decodes to no host message: skipped, like garbage. It does not
                    # count as activity, so a peer sending only that meets the logon deadline.
                    with self._lock:
                        self.rejected += 1
                    log.debug("skipped: %s", exc)
                    continue
                if got is None:
                    continue
                rec.last_message_at = time.monotonic()
                seq, msg, payload = got
                if not isinstance(msg, h.HostMessage):
                    log.warning("not a host message: %s", type(msg).__name__)
                    continue
                reply = self.host.handle(msg, raw=payload)
                if not rec.logged_on and self._admits(msg, reply):
                    rec.logged_on = True
                if reply is not None:
                    conn.write(fr.encode_frame(fr.FrameKind.DATA, seq, tlv_encode(reply)))
            if rec.why:
                log.info("terminal connection closed: %s", rec.why)
                if rec.why != "evicted to make room":
                    with self._lock:
                        self.timeouts += 1
        except (Disconnected, TransportError) as exc:
            log.info("terminal connection ended: %s", exc)
        except Exception:  # a bug, not the peer's doing: this connection ends, the server serves on
            with self._lock:
                self.errors += 1
            log.exception("host connection failed")
        finally:
            # Out of the table first, then closed: a connection in the table always has its
            # own descriptor open, so _wake never touches a number the system re-used.
            with self._changed:
                self._conns.pop(rec, None)
            conn.close()
            with self._changed:
                self._changed.notify_all()

    def _admits(self, msg: h.HostMessage, reply: h.HostMessage | None) -> bool:
        """Whether this exchange makes the connection a logged-on terminal's: an accepted
        logon, or a request the host served for a terminal already logged on (it reconnected)."""
        if isinstance(reply, h.LogonResult):
            return reply.accepted
        if reply is None or isinstance(reply, (h.HostError, h.LogonChallenge)):
            return False
        has_session = getattr(self.host, "has_session", None)
        return bool(has_session and has_session(getattr(msg, "terminal_id", "") or ""))

    def close(self) -> None:
        """Stop accepting, close every connection, join the threads (bounded)."""
        self._stop.set()
        self._listener.close()
        with self._lock:
            held = list(self._conns.items())
            for rec, _ in held:
                rec.evicted.set()
                _wake(rec.transport)
        self._accept.join(2)
        for _, t in held:
            t.join(2)

    def __enter__(self) -> HostServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wake(transport) -> None:
    """Shut ``transport``'s socket down (not close it) so the thread reading it sees EOF now.
    Called under the server lock for a connection still in its table (so still open)."""
    import socket

    try:
        sock = socket.socket(fileno=transport.fileno())
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()   # the descriptor stays the transport's to close


def serve(host, listen: str = "127.0.0.1:0", **kw) -> HostServer:
    """Start serving ``host``; returns the running :class:`HostServer` (``.address``, ``.close()``)."""
    return HostServer(host, listen, **kw)
