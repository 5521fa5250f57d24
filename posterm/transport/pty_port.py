"""Pseudo-terminals: the emulator's side of a port an ECR opens like a serial device.

:meth:`PtyTransport.create` makes a pty pair, puts the slave in raw mode (so the
line discipline neither echoes nor translates bytes before the ECR opens it), and
returns a transport on the master side plus the slave's path for the ECR.

The emulator keeps its own handle on the slave open, as hardware keeps its UART:
an ECR that closes and reopens the port (every ``posterm`` command does) does not
hang the terminal up. Closing the transport closes the master, and the ECR's next
read fails with EIO, which its transport reports as ``Disconnected``.
Baud rate means nothing on a pty (PITFALLS.md); ``pace=True`` simulates it.
"""

from __future__ import annotations

import os
import termios
import tty

from posterm.errors import Disconnected, TransportError
from posterm.transport.base import Pacer, Transport, bits_per_byte
from posterm.transport.fd import fd_read, fd_write, fd_write_some


def _line_settings(fd: int, baudrate: int, stopbits: float) -> None:
    """The slave's termios say the line's speed and stop bits (what an ECR that opens the port
    without setting its own sees; the bytes move at memory speed whatever they say). A speed
    termios has no constant for stays as it was; parity stays off (a pty refuses it)."""
    attrs = termios.tcgetattr(fd)
    speed = getattr(termios, f"B{baudrate}", None)
    if speed is not None:
        attrs[4] = attrs[5] = speed
    attrs[2] = attrs[2] | termios.CSTOPB if stopbits >= 2 else attrs[2] & ~termios.CSTOPB
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class PtyTransport(Transport):
    """The master side of a pty pair. Create with :meth:`create`."""

    def __init__(self, master_fd: int, slave_fd: int | None, slave_path: str, *, pace: bool = False,
                 baudrate: int = 115200, bits: float = 10.0, link: str | None = None) -> None:
        self._master = master_fd
        self._slave = slave_fd
        self.path = slave_path
        self.link = link
        self.description = f"pty {link or slave_path}"
        self._closed = False
        self._pacer = Pacer(baudrate, bits) if pace else None

    @classmethod
    def create(cls, *, pace: bool = False, baudrate: int = 115200, bytesize: int = 8, parity: str = "N",
               stopbits: float = 1, link: str | None = None, **_ignored: object) -> tuple["PtyTransport", str]:
        """Make a pty pair. Returns ``(transport, path)``; give ``path`` (or ``link``) to the ECR.

        ``link``: also make a symlink at this path (a stable name such as
        ``/tmp/posterm-term1``), replaced if it exists. Raises :class:`TransportError`.
        """
        try:
            master, slave = os.openpty()
            tty.setraw(slave)
            _line_settings(slave, baudrate, stopbits)
            path = os.ttyname(slave)
            os.set_blocking(master, False)
        except (OSError, termios.error) as exc:
            raise TransportError(f"could not create a pseudo-terminal: {exc}") from exc
        if link:
            try:
                if os.path.islink(link):
                    os.unlink(link)
                os.symlink(path, link)
            except OSError as exc:
                os.close(master)
                os.close(slave)
                raise TransportError(f"could not link {link} -> {path}: {exc}") from exc
        transport = cls(master, slave, path, pace=pace, baudrate=baudrate,
                        bits=bits_per_byte(bytesize, parity, stopbits), link=link)
        return transport, link or path

    @classmethod
    def connect(cls, url: str, **settings: object) -> "PtyTransport":
        """``pty://`` creates a new pty (its path is ``.path``): for emulators and replay."""
        transport, _path = cls.create(**settings)  # type: ignore[arg-type]
        return transport

    def read(self, max_bytes: int, timeout: float) -> bytes:
        if self._closed:
            raise Disconnected(f"{self.description}: closed")
        return fd_read(self._master, max_bytes, timeout, self.description)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise Disconnected(f"{self.description}: closed")
        fd_write(self._master, data, self.description, self._pacer)

    def write_some(self, data: bytes) -> int:
        """Write without blocking (the emulator's loop must never wait for an ECR); returns
        the bytes written, 0 while the pty's buffer is full. Raises Disconnected."""
        if self._closed:
            raise Disconnected(f"{self.description}: closed")
        if self._pacer is not None:  # a paced line is slow on purpose: blocking is the point
            fd_write(self._master, data, self.description, self._pacer)
            return len(data)
        return fd_write_some(self._master, data, self.description)

    def discard_output(self) -> None:
        """Drop what was written but not yet read by the ECR (a reader that stalled), so
        the next ECR to open the port does not read a stale backlog first."""
        if self._slave is not None and not self._closed:
            try:
                termios.tcflush(self._slave, termios.TCIFLUSH)
            except (termios.error, OSError):
                pass

    def fileno(self) -> int:
        return self._master

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self.link and os.path.islink(self.link):
            try:
                os.unlink(self.link)
            except OSError:
                pass
