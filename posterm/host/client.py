"""A terminal's TCP connection to a host server (see :mod:`posterm.host.wire`; the server is :mod:`posterm.host.server`).

One request at a time: one DATA frame out, the DATA frame with the same sequence number
back (TCP orders and retransmits, so there is no ACK/NAK; see PROTOCOL.md, "Host link").

A host that restarts (``posterm host serve`` stopped and started) leaves the terminal
holding a connection the host has closed; the first write to it still succeeds and only
the read finds out. So, per request:

1. **Before sending**, a connection the host has closed (EOF waiting on it) is dropped and
   a new one opened, with a few bounded connect attempts inside the request's timeout (a
   restarting host may not be listening yet). Safe for every request: nothing was sent.
2. **If the line dies after sending**, the host may or may not have the request. Only a
   request the host handles idempotently is sent again, once, on a new connection, byte
   for byte (same KSN, same MAC): ``AuthRequest`` (stored answer per order id),
   ``HostQuery`` / ``ConfirmPoll`` (read only), ``HostCancel`` / ``ReversalAdvice``
   (a final trade answers its status again), ``HostRefund`` (per refund id),
   ``SettleRequest`` (per batch). Not ``LogonRequest`` / ``LogonConfirm`` (one-time nonces)
   nor ``PinVerify`` (each try counts against the customer's PIN tries): those raise.
   The host's KSN replay guard refuses the second copy if the first got there; that
   answer (``REPLAY_DETECTED``) means the real answer was lost, so it is raised as
   :class:`~posterm.errors.Disconnected`, never returned as if the host had declined.
"""

from __future__ import annotations

import logging
import threading
import time

from firmware_protocol.native import frame as fr
from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Reason
from firmware_protocol.native.tlv import encode as tlv_encode

from posterm.errors import Disconnected, PosTimeout, TransportError
from posterm.host.wire import read_message
from posterm.transport.fd import wait_ready

__all__ = ["TcpHostClient", "RESENDABLE"]

log = logging.getLogger("posterm.host.client")

# Requests the host answers the same way however often they arrive (see the module docstring).
RESENDABLE = (h.AuthRequest, h.HostQuery, h.ConfirmPoll, h.HostCancel, h.ReversalAdvice, h.HostRefund,
              h.SettleRequest)
CONNECT_ATTEMPTS = 3
CONNECT_BACKOFF = 0.1     # seconds before the 2nd attempt, doubled for each further one
CONNECT_TIMEOUT = 3.0


class TcpHostClient:
    """A terminal's connection to a host server: ``request(msg, timeout)`` like the in-process client."""

    def __init__(self, url: str) -> None:
        self.url = url if "://" in url else f"tcp://{url}"
        self._conn = None
        self._framer = fr.Framer()
        self._seq = 0
        self._lock = threading.Lock()

    def request(self, msg: h.HostMessage, timeout: float) -> h.HostMessage:
        """Send ``msg`` and wait for the answer (see :meth:`request_with_payload`)."""
        return self.request_with_payload(msg, timeout)[0]

    def request_with_payload(self, msg: h.HostMessage, timeout: float) -> tuple[h.HostMessage, bytes]:
        """Send ``msg`` and wait for the answer; returns it with its payload as received
        (what its MAC covers).

        Raises PosTimeout (the host is silent), Disconnected (the line died and the request
        could not be sent again, or its answer was lost), or TransportError (no host to
        connect to within the bounded attempts).
        """
        with self._lock:
            self._seq = (self._seq + 1) & 0xFF
            frame = fr.encode_frame(fr.FrameKind.DATA, self._seq, tlv_encode(msg))
            deadline = time.monotonic() + timeout
            try:
                return self._send_and_wait(frame, msg, deadline, timeout)
            except Disconnected as exc:
                self.close()
                if not isinstance(msg, RESENDABLE) or time.monotonic() >= deadline:
                    raise
                log.info("host connection lost around %s (%s): sending it again on a new connection",
                         type(msg).__name__, exc)
                first = exc
            try:
                reply, payload = self._send_and_wait(frame, msg, deadline, timeout)
            except Disconnected:
                self.close()
                raise
            if isinstance(reply, h.HostError) and reply.reason == Reason.REPLAY_DETECTED:
                raise Disconnected(f"host {self.url} had the first copy of {type(msg).__name__}; its answer was "
                                   "lost with the connection") from first
            return reply, payload

    def _send_and_wait(self, frame: bytes, msg: h.HostMessage, deadline: float,
                       timeout: float) -> tuple[h.HostMessage, bytes]:
        conn = self._live_connection(deadline)
        conn.write(frame)
        while True:
            got = read_message(conn, self._framer, deadline)
            if got is None:
                raise PosTimeout(f"host {self.url} did not answer {type(msg).__name__} in {timeout:g}s")
            seq, reply, payload = got
            if seq == self._seq:
                return reply, payload  # an older, late answer has another seq: skip it

    def _live_connection(self, deadline: float):
        """The open connection if the host has not closed it, else a new one (bounded attempts)."""
        if self._conn is not None and not self._still_open(self._conn):
            log.info("host %s closed the connection: reconnecting", self.url)
            self.close()
        if self._conn is not None:
            return self._conn
        from posterm.transport.tcp import TcpTransport

        delay = CONNECT_BACKOFF
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PosTimeout(f"no connection to host {self.url} in time")
            try:
                self._conn = TcpTransport.connect(self.url, timeout=min(CONNECT_TIMEOUT, remaining))
            except TransportError:
                if attempt == CONNECT_ATTEMPTS or deadline - time.monotonic() <= delay:
                    raise
                time.sleep(delay)  # a restarting host may not be listening yet
                delay *= 2
                continue
            self._framer = fr.Framer()
            return self._conn
        raise AssertionError("unreachable")

    def _still_open(self, conn) -> bool:
        """False when the host has closed ``conn`` (EOF or a reset is waiting on it). Bytes
        already waiting (a late answer) go to the framer, where their seq skips them."""
        for _ in range(16):  # bounded: a host streaming garbage cannot keep us here
            try:
                ready, _ = wait_ready((conn.fileno(),), (), 0)
                if not ready:
                    return True
                self._framer.feed(conn.read(4096, 0))
            except (Disconnected, OSError, ValueError):
                return False
        return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
