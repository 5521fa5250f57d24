"""Shared read/write over a raw file descriptor or socket, with poll-based timeouts.

``poll``, not ``select``: ``select`` cannot take a descriptor numbered 1024 or more
(``ValueError: filedescriptor out of range``), and a fleet of a few hundred terminals in
one process has thousands (a pty, a wake-up pipe, a journal each)."""

from __future__ import annotations

import os
import select
import time

from posterm.errors import Disconnected
from posterm.transport.base import MAX_READ, Pacer, normalise


_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL
_OUT = select.POLLOUT | select.POLLHUP | select.POLLERR | select.POLLNVAL


def wait_ready(readers, writers=(), timeout: float | None = 0.0) -> tuple[set[int], set[int]]:
    """Like ``select.select(readers, writers, [], timeout)`` for any descriptor number: the
    sets of ``readers`` ready to read and ``writers`` ready to write (a hung-up or bad
    descriptor counts as ready, so the read or write that follows reports it). ``timeout``
    in seconds (None: wait for ever)."""
    poller = select.poll()
    masks: dict[int, int] = {}
    for fd in readers:
        masks[fd] = masks.get(fd, 0) | select.POLLIN | select.POLLPRI
    for fd in writers:
        masks[fd] = masks.get(fd, 0) | select.POLLOUT
    for fd, mask in masks.items():
        poller.register(fd, mask)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    r: set[int] = set()
    w: set[int] = set()
    for fd, ev in poller.poll(ms):
        if ev & _IN and fd in readers:
            r.add(fd)
        if ev & _OUT and fd in writers:
            w.add(fd)
    return r, w


def fd_read(fd: int, max_bytes: int, timeout: float, where: str) -> bytes:
    """Read what is ready on ``fd`` within ``timeout``; ``b""`` on timeout; EOF/EIO -> Disconnected."""
    try:
        ready, _ = wait_ready((fd,), (), max(0.0, timeout))
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
            _, ready = wait_ready((), (fd,), remaining)
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
