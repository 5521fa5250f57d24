"""Shared read/write over a raw file descriptor or socket, with select-based timeouts."""

from __future__ import annotations

import os
import select
import time

from posterm.errors import Disconnected
from posterm.transport.base import MAX_READ, Pacer, normalise


def fd_read(fd: int, max_bytes: int, timeout: float, where: str) -> bytes:
    """Read what is ready on ``fd`` within ``timeout``; ``b""`` on timeout; EOF/EIO -> Disconnected."""
    try:
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return b""
        data = os.read(fd, max(1, min(max_bytes, MAX_READ)))
    except (OSError, ValueError) as exc:
        raise normalise(exc, where) from exc
    if not data:
        raise Disconnected(f"{where}: the other end closed")
    return data


def fd_write(fd: int, data: bytes, where: str, pacer: Pacer | None = None, timeout: float = 5.0) -> None:
    """Write all of ``data`` within ``timeout`` seconds (a stuck reader must not hang us)."""
    if pacer is not None:
        pacer.wait(len(data))
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    try:
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Disconnected(f"{where}: write stalled for {timeout}s (nobody reading?)")
            _, ready, _ = select.select([], [fd], [], remaining)
            if ready:
                sent = os.write(fd, view)
                view = view[sent:]
    except (OSError, ValueError) as exc:
        raise normalise(exc, where) from exc


def fd_write_some(fd: int, data: bytes, where: str) -> int:
    """Write what ``fd`` takes now, without blocking; returns how many bytes went out
    (0 when the reader's buffer is full). EIO/EPIPE/a reset -> Disconnected."""
    if not data:
        return 0
    try:
        return os.write(fd, data)
    except (BlockingIOError, InterruptedError):
        return 0
    except (OSError, ValueError) as exc:
        raise normalise(exc, where) from exc
