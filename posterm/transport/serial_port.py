"""Serial ports through pyserial: device paths and every pyserial URL.

``/dev/ttyUSB0``, ``/dev/ttyACM0``, ``/dev/serial/by-id/...``, a pty slave path,
``socket://HOST:PORT``, ``rfc2217://HOST:PORT`` and ``loop://`` all go through
:func:`serial.serial_for_url`; we only choose settings and normalise errors.
This is the only module (with :mod:`posterm.transport.ports`) that imports ``serial``.
"""

from __future__ import annotations

import termios
import threading
from typing import Any

import serial

from posterm.errors import Disconnected, LocalProtocolError, TransportError
from posterm.transport.parity import SoftParity, is_pty
from posterm.transport.base import MAX_READ, Pacer, Transport, bits_per_byte, normalise, open_error

DEFAULTS: dict[str, Any] = {"baudrate": 115200, "bytesize": 8, "parity": "N", "stopbits": 1,
                            "rtscts": False, "xonxoff": False, "exclusive": True}
_BYTESIZES = {5: serial.FIVEBITS, 6: serial.SIXBITS, 7: serial.SEVENBITS, 8: serial.EIGHTBITS}
_STOPBITS = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2: serial.STOPBITS_TWO}
_LINE_ERRORS = (serial.SerialException, OSError, termios.error)


def _refuse_spy(url: str) -> None:
    if url.lower().startswith("spy://"):
        # spy:// prints every byte in clear (PITFALLS.md: it printed a PIN). Use --trace instead.
        raise LocalProtocolError("spy:// logs traffic in clear, secrets included; use --trace (masked) instead")


class SerialTransport(Transport):
    """A pyserial port. Settings default to 115200 8N1, exclusive, no flow control."""

    def __init__(self, url: str, *, baudrate: int = 115200, bytesize: int = 8, parity: str = "N",
                 stopbits: float = 1, rtscts: bool = False, xonxoff: bool = False, exclusive: bool = True,
                 pace: bool = False, write_timeout: float = 5.0) -> None:
        _refuse_spy(url)
        if bytesize not in _BYTESIZES:
            raise LocalProtocolError(f"byte size must be 5-8, not {bytesize}")
        if stopbits not in _STOPBITS:
            raise LocalProtocolError(f"stop bits must be 1, 1.5 or 2, not {stopbits}")
        parity = str(parity).upper()[:1]
        if parity not in "NEOMS" or not parity:
            raise LocalProtocolError(f"parity must be N, E, O, M or S, not {parity!r}")
        self.url = url
        self.settings = {"baudrate": baudrate, "bytesize": bytesize, "parity": parity, "stopbits": stopbits,
                         "rtscts": rtscts, "xonxoff": xonxoff, "exclusive": exclusive}
        self.description = f"{url} {baudrate} {bytesize}{parity}{stopbits:g}"
        self._closed = False
        self._read_lock = threading.Lock()
        self._pacer = Pacer(baudrate, bits_per_byte(bytesize, parity, stopbits)) if pace else None
        self._soft_parity = None
        if bytesize == 7 and parity in "EO" and "://" not in url and is_pty(url):
            # A pty refuses parity (EINVAL); 7E1/7O1 is carried exactly as 8N1 with the
            # parity bit on top (posterm.transport.parity).
            self._soft_parity = SoftParity(parity)
            bytesize, parity = 8, "N"
        try:
            port = serial.serial_for_url(url, do_not_open=True)
            port.baudrate = baudrate
            port.bytesize = _BYTESIZES[bytesize]
            port.parity = parity
            port.stopbits = _STOPBITS[stopbits]
            port.rtscts = rtscts
            port.xonxoff = xonxoff
            rfc2217 = url.lower().startswith("rfc2217://")
            if not rfc2217:
                port.write_timeout = write_timeout
            # else: pyserial's rfc2217 refuses write_timeout at open (PITFALLS.md); its writes are
            # socket sendall()s, bounded below by the socket's own timeout instead.
            if exclusive and "://" not in url:
                port.exclusive = True  # an advisory flock: a second exclusive open fails (PITFALLS.md)
            port.timeout = 0
            port.open()
            if rfc2217 and getattr(port, "_socket", None) is not None:
                port._socket.settimeout(write_timeout)  # a write that cannot go out in time fails, typed
        except NotImplementedError as exc:  # a pyserial URL handler that lacks a setting
            raise LocalProtocolError(f"{url}: this kind of port does not support a setting asked for ({exc})") from exc
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            if isinstance(exc, termios.error):  # not an OSError: make it one, with errno
                exc = OSError(*exc.args) if len(exc.args) == 2 else OSError(str(exc))
            raise open_error(exc, url) from exc
        self._port = port
        self._write_timeout = write_timeout
        self._timeout: float | None = 0

    @classmethod
    def connect(cls, url: str, **settings: Any) -> "SerialTransport":
        """Open ``url`` with ``settings``; the registry's entry point. Raises TransportError."""
        return cls(url, **settings)

    def _set_timeout(self, timeout: float) -> None:
        if timeout != self._timeout:
            self._port.timeout = timeout
            self._timeout = timeout

    def read(self, max_bytes: int, timeout: float) -> bytes:
        if self._closed:
            raise Disconnected(f"{self.url}: port is closed")
        max_bytes = max(1, min(max_bytes, MAX_READ))
        with self._read_lock:
            try:
                # pyserial's read(n) waits for all n bytes or the timeout; wait for one, then
                # take whatever else is already buffered so latency stays at one byte's worth.
                self._set_timeout(max(0.0, timeout))
                data = self._port.read(1)
                if not data:
                    return b""
                waiting = self._port.in_waiting
                if waiting and max_bytes > 1:
                    self._set_timeout(0)
                    data += self._port.read(min(waiting, max_bytes - 1))
                return self._soft_parity.decode(data) if self._soft_parity is not None else data
            except serial.SerialTimeoutException as exc:
                raise TransportError(f"{self.url}: {exc}") from exc
            except _LINE_ERRORS as exc:
                raise normalise(exc, self.url) from exc

    def write(self, data: bytes) -> None:
        if self._closed:
            raise Disconnected(f"{self.url}: port is closed")
        if self._pacer is not None:
            self._pacer.wait(len(data))
        if self._soft_parity is not None:
            data = self._soft_parity.encode(data)
        try:
            self._port.write(data)
        except serial.SerialTimeoutException as exc:
            raise TransportError(f"{self.url}: write timed out after {self._write_timeout}s "
                                 "(flow control holding the line? check --rtscts/--xonxoff)") from exc
        except _LINE_ERRORS as exc:
            raise normalise(exc, self.url) from exc

    def fileno(self) -> int:
        return self._port.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._port.close()
        except _LINE_ERRORS:
            pass  # closing a port whose cable is gone: nothing left to release

