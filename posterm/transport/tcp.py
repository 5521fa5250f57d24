"""TCP: connect to a terminal (or emulator) on ``tcp://HOST:PORT``, or listen for one.

Listeners bind to loopback unless told otherwise: a payment terminal's line is not
something to expose to a network by accident. (``socket://`` goes through pyserial's
URL handler instead, see :mod:`posterm.transport.serial_port`; ``tcp://`` is ours and
reports a closed peer on the first read rather than the second write.)
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

from posterm.errors import Disconnected, LocalProtocolError, TransportError
from posterm.transport.base import Pacer, Transport, bits_per_byte, normalise, open_error
from posterm.transport.fd import fd_read, fd_write, fd_write_some

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def parse_address(url: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``tcp://HOST:PORT``, ``HOST:PORT`` or ``PORT`` -> ``(host, port)``. Raises LocalProtocolError."""
    text = url if "://" in url else f"tcp://{url if ':' in url else f'{default_host}:{url}'}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError as exc:
        raise LocalProtocolError(f"bad address {url!r}: {exc}") from None
    if port is None:
        raise LocalProtocolError(f"bad address {url!r}: expected HOST:PORT")
    return parts.hostname or default_host, port


class TcpTransport(Transport):
    """One TCP connection. :meth:`connect` for the ECR side, :meth:`listen` for a server."""

    def __init__(self, sock: socket.socket, description: str, *, pace: bool = False, baudrate: int = 115200,
                 bits: float = 10.0) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._sock = sock
        self.description = description
        self._closed = False
        self._pacer = Pacer(baudrate, bits) if pace else None

    @classmethod
    def connect(cls, url: str, *, timeout: float = 5.0, pace: bool = False, baudrate: int = 115200,
                bytesize: int = 8, parity: str = "N", stopbits: float = 1, **_ignored: object) -> "TcpTransport":
        """Connect to ``tcp://HOST:PORT``. Raises :class:`PortNotFound` if nobody listens."""
        host, port = parse_address(url)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise open_error(exc, url) from exc
        return cls(sock, f"tcp://{host}:{port}", pace=pace, baudrate=baudrate,
                   bits=bits_per_byte(bytesize, parity, stopbits))

    @staticmethod
    def listen(host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False, **settings: object) -> "TcpListener":
        """Listen on ``host:port`` (loopback by default; ``port=0`` picks a free one)."""
        return TcpListener(host, port, allow_remote=allow_remote, settings=settings)

    def read(self, max_bytes: int, timeout: float) -> bytes:
        if self._closed:
            raise Disconnected(f"{self.description}: closed")
        return fd_read(self._sock.fileno(), max_bytes, timeout, self.description)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise Disconnected(f"{self.description}: closed")
        fd_write(self._sock.fileno(), data, self.description, self._pacer)

    def write_some(self, data: bytes) -> int:
        """Write without blocking; returns the bytes the socket took (0 when its buffer is
        full). Raises Disconnected."""
        if self._closed:
            raise Disconnected(f"{self.description}: closed")
        if self._pacer is not None:
            fd_write(self._sock.fileno(), data, self.description, self._pacer)
            return len(data)
        return fd_write_some(self._sock.fileno(), data, self.description)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class TcpListener:
    """A listening socket that hands out :class:`TcpTransport` connections."""

    def __init__(self, host: str, port: int, *, allow_remote: bool = False, settings: dict | None = None) -> None:
        if host not in LOOPBACK and not allow_remote:
            raise LocalProtocolError(f"refusing to listen on {host}: loopback only unless allow_remote=True")
        self._settings = dict(settings or {})
        try:
            self._sock = socket.create_server((host, port), reuse_port=False)
        except OSError as exc:
            raise TransportError(f"could not listen on {host}:{port}: {exc}") from exc
        self.host, self.port = self._sock.getsockname()[:2]
        self.address = f"tcp://{self.host}:{self.port}"
        self._closed = threading.Event()

    @classmethod
    def adopt(cls, fd: int, *, allow_remote: bool = False) -> "TcpListener":
        """A listener over the listening socket ``fd`` this process inherited (several
        processes accepting on one socket: ``posterm host serve --workers``)."""
        self = cls.__new__(cls)
        self._settings = {}
        self._sock = socket.socket(fileno=fd)
        self.host, self.port = self._sock.getsockname()[:2]
        if self.host not in LOOPBACK and not allow_remote:
            self._sock.detach()
            raise LocalProtocolError(f"refusing to listen on {self.host}: loopback only unless allow_remote=True")
        self.address = f"tcp://{self.host}:{self.port}"
        self._closed = threading.Event()
        return self

    def accept(self, timeout: float) -> TcpTransport | None:
        """Wait up to ``timeout`` s for a connection; ``None`` if none came."""
        if self._closed.is_set():
            raise Disconnected(f"{self.address}: listener closed")
        try:
            self._sock.settimeout(timeout)  # inside the try: close() from another thread may win the race
            conn, peer = self._sock.accept()
        except socket.timeout:
            return None
        except OSError as exc:
            if self._closed.is_set():
                raise Disconnected(f"{self.address}: listener closed") from exc
            raise normalise(exc, self.address) from exc
        bits = bits_per_byte(int(self._settings.get("bytesize", 8)), str(self._settings.get("parity", "N")),
                             float(self._settings.get("stopbits", 1)))
        return TcpTransport(conn, f"tcp://{peer[0]}:{peer[1]}", pace=bool(self._settings.get("pace")),
                            baudrate=int(self._settings.get("baudrate", 115200)), bits=bits)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._sock.close()

    def __enter__(self) -> "TcpListener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
