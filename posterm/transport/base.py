"""The one interface every transport implements, and the error normalisation they share.

A transport moves bytes; it knows nothing of frames. ``read(max_bytes, timeout)``
returns what has arrived (possibly part of a frame), ``b""`` when the timeout passed
with nothing, and raises :class:`~posterm.errors.Disconnected` when the other end is
gone. pyserial reports one pulled cable as ``OSError(EIO)``, ``SerialException`` or
``termios.error`` depending on the call (see PITFALLS.md); :func:`normalise` folds
them all into ``Disconnected`` so callers handle one type.
"""

from __future__ import annotations

import abc
import errno
import threading
import time
from typing import Any

from posterm.errors import Disconnected, LocalProtocolError, PortBusy, PortNotFound, PortPermission, TransportError

MAX_READ = 65536


def bits_per_byte(bytesize: int = 8, parity: str = "N", stopbits: float = 1) -> float:
    """Bits one byte takes on the line: start bit + data + parity + stop bits (10 at 8N1)."""
    return 1 + bytesize + (0 if parity.upper() == "N" else 1) + stopbits


class Pacer:
    """Holds writes back to the line rate, so a pty or TCP link takes as long as a cable.

    A UART sends ``bits_per_byte / baudrate`` seconds a byte; we sleep until the bytes
    would have left the wire before handing them over, and carry the line's busy time
    across writes so back-to-back writes queue as they would on a real UART.
    """

    def __init__(self, baudrate: int, bits: float = 10.0) -> None:
        if baudrate <= 0:
            raise LocalProtocolError(f"baud rate must be positive, not {baudrate}")
        self.byte_time = bits / baudrate
        self._free_at = 0.0
        self._lock = threading.Lock()

    def wait(self, nbytes: int) -> float:
        """Sleep until ``nbytes`` written now would have been sent; return the seconds slept."""
        with self._lock:
            now = time.monotonic()
            done = max(now, self._free_at) + nbytes * self.byte_time
            self._free_at = done
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)
            return delay
        return 0.0


class Transport(abc.ABC):
    """A byte pipe to a terminal (or, on the emulator's side, to an ECR).

    Implementations must be safe for one reader thread and one writer thread at once.
    """

    description: str = ""

    @abc.abstractmethod
    def read(self, max_bytes: int, timeout: float) -> bytes:
        """Return up to ``max_bytes`` that have arrived, waiting at most ``timeout`` seconds.

        Returns ``b""`` on timeout. Raises :class:`Disconnected` when the peer is gone.
        """

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of ``data``. Raises :class:`Disconnected` when the peer is gone."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the port. Idempotent."""

    def fileno(self) -> int:
        """A file descriptor ready for ``select`` when data arrives, where there is one."""
        raise OSError(errno.ENOTSUP, f"{self.description}: no file descriptor")

    @property
    def closed(self) -> bool:
        return getattr(self, "_closed", False)

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


_GONE_ERRNOS = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EPIPE, errno.ECONNRESET, errno.EBADF,
                errno.ECONNABORTED, errno.ESHUTDOWN, errno.ENOTCONN}


def normalise(exc: BaseException, where: str) -> TransportError:
    """Turn whatever pyserial, termios or the OS raised for a lost line into one typed error."""
    text = str(exc) or type(exc).__name__
    return Disconnected(f"{where}: the line went away ({text})")


def open_error(exc: BaseException, port: str) -> TransportError:
    """Classify a failure to open ``port``: missing, busy, no permission, or other."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOENT, errno.ENXIO, errno.ENODEV) or "No such file" in text:
        return PortNotFound(f"{port}: no such port (is it plugged in? `posterm ports` lists what is there)")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return PortPermission(f"{port}: permission denied (join the port's group, e.g. dialout; "
                              f"`posterm doctor --port {port}` says which)")
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in text:
        return PortBusy(f"{port}: in use by another process (close it, or `fuser {port}` to find it)")
    if code == errno.ECONNREFUSED or "refused" in text:
        return PortNotFound(f"{port}: connection refused (is the terminal or emulator listening?)")
    return TransportError(f"{port}: could not open ({text})")
