"""Host messages over TCP: the same frames as the ECR link, DATA frames only.

TCP already delivers in order and retransmits, so there is no ACK/NAK: the terminal
sends one request frame and waits (with a timeout) for one response frame with the
same sequence number. See PROTOCOL.md, "Host link".
"""

from __future__ import annotations

import logging
import threading
import time

from firmware_protocol import frame as fr
from firmware_protocol import host as h
from firmware_protocol.errors import ProtocolError
from firmware_protocol.tlv import decode as tlv_decode
from firmware_protocol.tlv import encode as tlv_encode

from posterm.errors import Disconnected, RemoteProtocolError, TransportError

log = logging.getLogger("posterm.host.wire")
MAX_CONNECTIONS = 256


def read_message(transport, framer: fr.Framer, deadline: float) -> tuple[int, h.HostMessage, bytes] | None:
    """The next whole host message from ``transport`` before ``deadline``, as (seq, message,
    payload bytes); None on timeout. MACs are checked over the payload as received, so a
    newer peer's optional items (skipped by the decoder) stay covered."""
    while True:
        item = framer.pop()
        if isinstance(item, fr.LinkFrame):
            if item.kind is not fr.FrameKind.DATA:
                continue
            try:
                msg = tlv_decode(item.payload)
            except ProtocolError as exc:
                raise RemoteProtocolError(f"undecodable host message: {exc}") from exc
            return item.seq, msg, item.payload
        if item is not None:
            continue  # garbage or a bad frame: TCP should not produce them; skip to the next start byte
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        framer.feed(transport.read(4096, min(remaining, 0.5)))


class HostServer:
    """Serves a :class:`~posterm.host.core.Host` on a loopback TCP port, one thread per terminal."""

    def __init__(self, host, listen: str = "127.0.0.1:0", *, allow_remote: bool = False) -> None:
        from posterm.transport.tcp import TcpTransport, parse_address

        addr, port = parse_address(listen)
        self.host = host
        self._listener = TcpTransport.listen(addr, port, allow_remote=allow_remote)
        self.address = f"tcp://{self._listener.host}:{self._listener.port}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set = set()
        self._accept = threading.Thread(target=self._accept_loop, name="host-accept", daemon=True)
        self._accept.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._listener.accept(timeout=0.2)
            except TransportError:
                return
            if conn is None:
                continue
            if len(self._conns) >= MAX_CONNECTIONS:
                conn.close()
                continue
            self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="host-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn) -> None:
        framer = fr.Framer()
        try:
            while not self._stop.is_set():
                got = read_message(conn, framer, time.monotonic() + 0.5)
                if got is None:
                    continue
                seq, msg, payload = got
                if not isinstance(msg, h.HostMessage):
                    log.warning("not a host message: %s", type(msg).__name__)
                    continue
                reply = self.host.handle(msg, raw=payload)
                if reply is not None:
                    conn.write(fr.encode_frame(fr.FrameKind.DATA, seq, tlv_encode(reply)))
        except (Disconnected, TransportError, RemoteProtocolError) as exc:
            log.info("terminal connection ended: %s", exc)
        finally:
            self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        """Stop accepting, close every connection, join the threads (bounded)."""
        self._stop.set()
        self._listener.close()
        for conn in list(self._conns):
            conn.close()
        self._accept.join(2)
        for t in self._threads:
            t.join(2)

    def __enter__(self) -> "HostServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(host, listen: str = "127.0.0.1:0", **kw) -> HostServer:
    """Start serving ``host``; returns the running :class:`HostServer` (``.address``, ``.close()``)."""
    return HostServer(host, listen, **kw)


def __getattr__(name: str):
    # The terminal's client lives in posterm.host.client (it reconnects to a restarted host).
    if name == "TcpHostClient":
        from posterm.host.client import TcpHostClient

        return TcpHostClient
    raise AttributeError(name)
