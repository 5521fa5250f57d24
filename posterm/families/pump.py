"""The one drive loop for every sans-IO link (:class:`posterm.families.interfaces.Link`).

A link does no I/O; something must read the port until the link's next deadline, hand it
the bytes (``receive_data``), let its timers fire (``tick``), write what it wants sent
(``data_to_send``) and take its events (``next_event``). That loop is here, once; the ECR
drivers, the emulator and replay use it.

    pump = Pump(link, read=lambda s: port.read(4096, s), write=port.write)
    answer = pump.run(deadline, on_event)     # on_event(ev) -> None to go on, a value to stop
    if answer is TIMED_OUT: ...

A caller with its own loop (the emulator's select, replay's stop flag) reads itself for
``pump.wait_time(now, ...)`` seconds and then ``for ev in pump.feed(data, now): ...``.

When bytes leave: :meth:`Pump.feed` writes what the link has to send (ACKs, NAKs) as soon
as the bytes are in, before the events are handled, so a slow handler (a journal write)
does not keep the peer waiting. ``feed(..., write=False)`` writes nothing: the caller ends
its turn with :meth:`Pump.flush` or :meth:`Pump.send` (a link's ``send`` returns every
pending byte), so the ACK of a request and the answer it allowed leave in one write.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from posterm.errors import LocalProtocolError
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
    raise the transport's errors, which pass through. ``write`` is given only non-empty
    data. Either may be ``None`` for a caller that does that side of the I/O itself
    (:meth:`run` needs ``read``; :meth:`flush`, :meth:`send` and a writing
    :meth:`feed` need ``write``).

    ``flooded``: a link raises :class:`LocalProtocolError` from ``receive_data`` or
    ``tick`` only when its event queue overflowed. The pump drains the queue every turn,
    so that means the peer sent more within one read than the queue holds: the line's
    fault, not the caller's. ``flooded(exc)`` returns what to raise instead (``from exc``);
    ``None`` lets the error through.
    """

    __slots__ = ("link", "_read", "_write", "clock", "max_wait", "_flooded")

    def __init__(self, link: Any, read: Callable[[float], bytes] | None = None,
                 write: Callable[[bytes], Any] | None = None, *, clock: Callable[[], float] = time.monotonic,
                 max_wait: float = DEFAULT_MAX_WAIT,
                 flooded: Callable[[LocalProtocolError], BaseException] | None = None) -> None:
        self.link = link
        self._read = read
        self._write = write
        self.clock = clock
        self.max_wait = max_wait
        self._flooded = flooded

    def wait_time(self, now: float, *deadlines: float | None) -> float:
        """How long the next read may wait: until the link's next timer or the earliest of
        ``deadlines`` (``None`` ignored), at most ``max_wait``; never negative."""
        wait = self.max_wait
        for d in (self.link.next_deadline(), *deadlines):
            if d is not None:
                wait = min(wait, d - now)
        return max(0.0, wait)

    def receive(self, data: bytes, now: float) -> None:
        """Give the link ``data`` read at ``now`` and fire its timers; writes and takes nothing."""
        try:
            self.link.receive_data(data, now)
            self.link.tick(now)
        except LocalProtocolError as exc:
            if self._flooded is None:
                raise
            raise self._flooded(exc) from exc

    def events(self) -> Iterator[Event]:
        """The link's events, until it has none."""
        while (event := self.link.next_event()) is not None:
            yield event

    def feed(self, data: bytes, now: float, *, write: bool = True) -> Iterator[Event]:
        """Give the link ``data`` read at ``now``, fire its timers, and yield its events.

        ``write``: what the link has to send is written before the first event and after
        the last. ``write=False``: nothing is written (the caller ends its turn with
        :meth:`flush` or :meth:`send`). A generator: nothing happens until it is iterated;
        events left untaken stay queued in the link."""
        self.receive(data, now)
        if write:
            self.flush()
        yield from self.events()
        if write:
            self.flush()

    def flush(self) -> None:
        """Write what the link has to send (ACKs, NAKs, retransmissions, queued frames)."""
        out = self.link.data_to_send()
        if out:
            self._write(out)

    def send(self, message: Any, now: float | None = None) -> None:
        """Queue ``message`` on the link (at ``now``, default the clock) and write what the
        link has to send now (its frame, and any ACK still pending). Raises what the
        link's ``send`` raises (nothing is written then)."""
        out = self.link.send(message, self.clock() if now is None else now)
        if out:
            self._write(out)

    def step(self, *deadlines: float | None) -> Iterator[Event]:
        """One turn for a caller with its own loop: read until the link's next timer, the
        earliest of ``deadlines`` or ``max_wait``, :meth:`feed` what came (writing at once),
        and yield the events. A plug-in family's replay player uses this."""
        data = self._read(self.wait_time(self.clock(), *deadlines))
        yield from self.feed(data, self.clock())

    def run(self, deadline: float, on_event: Callable[[Event], Any] | None = None, *,
            before_read: Callable[[float], Any] | None = None) -> Any:
        """Turn until ``on_event`` returns something other than ``None`` (returned) or the
        clock reaches ``deadline`` (:data:`TIMED_OUT` returned). A turn: read until the link's
        next timer, ``deadline`` or ``max_wait``; :meth:`feed` what came (writing at once);
        hand each event to ``on_event``.

        ``before_read(now)`` runs at the top of each turn, after the deadline check (to
        send an abort the caller asked for, or to see whether it is done); a non-``None``
        value it returns ends the run and is returned. ``on_event=None``: the events stay
        queued in the link for whoever takes them next (the line is only kept moving).
        Exceptions from ``read``, ``write``, the link and the callbacks pass through."""
        while True:
            now = self.clock()
            if now >= deadline:
                return TIMED_OUT
            if before_read is not None and (early := before_read(now)) is not None:
                return early
            data = self._read(self.wait_time(now, deadline))
            if on_event is None:
                self.receive(data, self.clock())
                self.flush()
                continue
            for event in self.feed(data, self.clock()):
                result = on_event(event)
                if result is not None:
                    return result
