"""An in-process pair of transports joined by a wire you can tamper with (tests, CI).

``a, b = VirtualTransport.pair(manipulator=fn)``: what ``a`` writes, ``b`` reads and
the reverse. ``manipulator(data, direction)`` (direction ``"a->b"`` or ``"b->a"``)
returns the bytes to deliver instead: changed, ``b""`` to drop them, or a list of
chunks (to duplicate or split). This is pymodbus's NullModem idea.

A pair can also be published under a name: ``VirtualTransport.pair(name="t1")`` and
then ``open_transport("virtual://t1")`` returns the ``a`` end (once).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from posterm.errors import Disconnected, PortBusy, PortNotFound
from posterm.transport.base import MAX_READ, Transport

Manipulator = Callable[[bytes, str], "bytes | Iterable[bytes] | None"]
MAX_BUFFERED = 1 << 20

_published: dict[str, "VirtualTransport"] = {}
_published_lock = threading.Lock()


class _Pipe:
    """One direction of the wire: a bounded byte buffer with a condition variable."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.cond = threading.Condition()
        self.closed = False


class VirtualTransport(Transport):
    def __init__(self, rx: _Pipe, tx: _Pipe, direction: str, manipulator: Manipulator | None, name: str) -> None:
        self._rx, self._tx = rx, tx
        self._direction = direction
        self._manipulator = manipulator
        self.description = f"virtual://{name} ({direction[0]})"
        self._closed = False

    @classmethod
    def pair(cls, manipulator: Manipulator | None = None, *, name: str | None = None
             ) -> tuple["VirtualTransport", "VirtualTransport"]:
        """Two connected ends. ``name`` publishes end ``a`` for ``virtual://name``."""
        ab, ba = _Pipe(), _Pipe()
        label = name or f"pair-{id(ab):x}"
        a = cls(ba, ab, "a->b", manipulator, label)
        b = cls(ab, ba, "b->a", manipulator, label)
        if name:
            with _published_lock:
                _published[name] = a
        return a, b

    @classmethod
    def connect(cls, url: str, **_settings: object) -> "VirtualTransport":
        """The published ``a`` end of ``virtual://NAME``. Raises PortNotFound / PortBusy."""
        name = url.split("://", 1)[-1]
        with _published_lock:
            if name not in _published:
                raise PortNotFound(f"{url}: no virtual port of that name")
            end = _published.pop(name)
        if end._closed:
            raise PortBusy(f"{url}: already closed")
        return end

    def read(self, max_bytes: int, timeout: float) -> bytes:
        pipe = self._rx
        deadline = time.monotonic() + max(0.0, timeout)
        with pipe.cond:
            while not pipe.buffer:
                if pipe.closed or self._closed:
                    raise Disconnected(f"{self.description}: the other end closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                pipe.cond.wait(remaining)
            n = max(1, min(max_bytes, MAX_READ))
            data = bytes(pipe.buffer[:n])
            del pipe.buffer[:n]
            return data

    def write(self, data: bytes) -> None:
        if self._closed:
            raise Disconnected(f"{self.description}: closed")
        chunks: Iterable[bytes] = [data]
        if self._manipulator is not None:
            out = self._manipulator(bytes(data), self._direction)
            chunks = [] if out is None else ([out] if isinstance(out, (bytes, bytearray)) else out)
        pipe = self._tx
        with pipe.cond:
            if pipe.closed:
                raise Disconnected(f"{self.description}: the other end closed")
            for chunk in chunks:
                if len(pipe.buffer) + len(chunk) > MAX_BUFFERED:
                    raise Disconnected(f"{self.description}: peer not reading ({MAX_BUFFERED} bytes queued)")
                pipe.buffer += chunk
            pipe.cond.notify_all()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pipe in (self._rx, self._tx):
            with pipe.cond:
                pipe.closed = True
                pipe.cond.notify_all()
