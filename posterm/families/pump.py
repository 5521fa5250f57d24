"""The one drive loop for every sans-IO link (:class:`posterm.families.interfaces.Link`).

A link does no I/O; something must read the port until the link's next deadline, hand it
the bytes (``receive_data``), let its timers fire (``tick``), write what it wants sent
(``data_to_send``) and take its events (``next_event``). That loop is here, once; the ECR
drivers, the emulator, replay and tap use it.

    pump = Pump(link, read=port.read_timeout, write=port.write)   # read(seconds) -> bytes
    answer = pump.run(deadline, on_event)     # on_event(ev) -> None to go on, a value to stop
    if answer is TIMED_OUT: ...

For a caller with its own select loop (the emulator): ``for ev in pump.feed(data, now)``
then ``pump.flush()``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from posterm.families.events import Event

__all__ = ["Pump", "TIMED_OUT", "DEFAULT_MAX_WAIT"]

DEFAULT_MAX_WAIT = 0.05   # seconds one read waits at most: the caller's own checks run this often


class _TimedOut:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TIMED_OUT"

    def __bool__(self) -> bool:
        return False


TIMED_OUT: Any = _TimedOut()   # what :meth:`Pump.run` returns when the deadline passes


class Pump:
    """Drives ``link`` over ``read(timeout) -> bytes`` and ``write(bytes)``, on ``clock``.

    ``read`` returns what arrived within ``timeout`` seconds (possibly nothing) and may
    raise the transport's errors, which pass through. ``write`` is given only non-empty data.
    """

    __slots__ = ("link", "_read", "_write", "clock", "max_wait")

    def __init__(self, link: Any, read: Callable[[float], bytes], write: Callable[[bytes], Any], *,
                 clock: Callable[[], float] = time.monotonic, max_wait: float = DEFAULT_MAX_WAIT) -> None:
        self.link = link
        self._read = read
        self._write = write
        self.clock = clock
        self.max_wait = max_wait

    def wait_time(self, now: float, deadline: float | None = None, *others: float | None) -> float:
        """How long the next read may wait: until the link's next timer, ``deadline`` or any of
        ``others`` (``None`` ignored), at most ``max_wait``; never negative."""
        wait = self.max_wait
        for d in (self.link.next_deadline(), deadline, *others):
            if d is not None:
                wait = min(wait, d - now)
        return max(0.0, wait)

    def feed(self, data: bytes, now: float) -> Iterator[Event]:
        """Give the link ``data`` read at ``now``, fire its timers, and yield its events.
        What the link wants sent is written before the first event and after the last."""
        self.link.receive_data(data, now)
        self.link.tick(now)
        self.flush()
        while (event := self.link.next_event()) is not None:
            yield event
        self.flush()

    def flush(self) -> None:
        """Write what the link has to send (ACKs, NAKs, retransmissions, queued frames)."""
        out = self.link.data_to_send()
        if out:
            self._write(out)

    def send(self, message: Any) -> None:
        """Queue ``message`` on the link and write its bytes now."""
        out = self.link.send(message, self.clock())
        if out:
            self._write(out)

    def step(self, deadline: float | None = None, *others: float | None) -> Iterator[Event]:
        """One turn: read until the next deadline (or ``max_wait``), feed, tick, write; yield the events."""
        data = self._read(self.wait_time(self.clock(), deadline, *others))
        yield from self.feed(data, self.clock())

    def run(self, deadline: float, on_event: Callable[[Event], Any], *,
            before_read: Callable[[float], Any] | None = None) -> Any:
        """Turn until ``on_event`` returns something other than ``None`` (returned) or the clock
        reaches ``deadline`` (:data:`TIMED_OUT` returned). ``before_read(now)`` runs at the top
        of each turn (to send an abort the caller asked for, or to check a stop flag); a
        non-``None`` value it returns ends the run too."""
        while True:
            now = self.clock()
            if now >= deadline:
                return TIMED_OUT
            if before_read is not None and (early := before_read(now)) is not None:
                return early
            for event in self.step(deadline):
                result = on_event(event)
                if result is not None:
                    return result
