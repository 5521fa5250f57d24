"""Two native :class:`~posterm.families.native.link.Link` ends joined by a lossy virtual wire, on a fake clock (for tests).

The wire works per frame (what one ``data_to_send()`` holds is split into its
frames) and can drop, duplicate, corrupt (flip one bit) and reorder them, from a
seeded random source, so a failing case replays exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from firmware_protocol.native import frame as fr
from firmware_protocol.native.tlv import Message

from posterm.families.native.link import Delivered, Event, Link, LinkConfig, MessageReceived, SendFailed


@dataclass
class LossyWire:
    """One direction of the wire. Probabilities per frame; ``latency`` in seconds;
    ``jitter`` adds up to that much random delay, which reorders frames."""

    drop: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    latency: float = 0.001
    jitter: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    _in_flight: list[tuple[float, int, bytes]] = field(default_factory=list)
    _counter: int = 0

    def put(self, data: bytes, now: float) -> None:
        framer = fr.Framer()
        framer.feed(data)
        while (item := framer.pop()) is not None:
            raw = item.raw if isinstance(item, (fr.LinkFrame, fr.BadFrame)) else item.data
            copies = 0 if self.rng.random() < self.drop else 1
            if copies and self.rng.random() < self.dup:
                copies = 2
            for _ in range(copies):
                chunk = raw
                if self.rng.random() < self.corrupt:
                    b = bytearray(chunk)
                    bit = self.rng.randrange(len(b) * 8)
                    b[bit // 8] ^= 1 << (bit % 8)
                    chunk = bytes(b)
                at = now + self.latency + self.rng.random() * self.jitter
                self._counter += 1
                self._in_flight.append((at, self._counter, chunk))
        if framer.pending:  # a partial frame written on purpose (tests): pass it through
            self._counter += 1
            self._in_flight.append((now + self.latency, self._counter, framer.clear()))

    def take(self, now: float) -> bytes:
        due = sorted(x for x in self._in_flight if x[0] <= now)
        self._in_flight = [x for x in self._in_flight if x[0] > now]
        return b"".join(chunk for _, _, chunk in due)

    @property
    def busy(self) -> bool:
        return bool(self._in_flight)


class LinkPair:
    """Two links, ``a`` and ``b``, wired together. Drive it with :meth:`step` or :meth:`run`."""

    def __init__(self, config: LinkConfig | None = None, a_to_b: LossyWire | None = None,
                 b_to_a: LossyWire | None = None) -> None:
        self.a = Link(config)
        self.b = Link(config)
        self.a_to_b = a_to_b or LossyWire()
        self.b_to_a = b_to_a or LossyWire()
        self.now = 0.0
        self.events_a: list[Event] = []
        self.events_b: list[Event] = []

    def send_a(self, message: Message) -> None:
        self.a_to_b.put(self.a.send(message, self.now), self.now)

    def send_b(self, message: Message) -> None:
        self.b_to_a.put(self.b.send(message, self.now), self.now)

    def step(self, dt: float = 0.001) -> None:
        self.now += dt
        self.b.receive_data(self.a_to_b.take(self.now), self.now)
        self.a.receive_data(self.b_to_a.take(self.now), self.now)
        self.a.tick(self.now)
        self.b.tick(self.now)
        self.a_to_b.put(self.a.data_to_send(), self.now)
        self.b_to_a.put(self.b.data_to_send(), self.now)
        while (ev := self.a.next_event()) is not None:
            self.events_a.append(ev)
        while (ev := self.b.next_event()) is not None:
            self.events_b.append(ev)

    def run(self, max_time: float = 60.0, dt: float = 0.001) -> None:
        """Step until both links are idle and the wire is empty, or ``max_time`` passes."""
        end = self.now + max_time
        while self.now < end:
            self.step(dt)
            if self.a.idle and self.b.idle and not self.a_to_b.busy and not self.b_to_a.busy:
                return

    def received_by(self, side: str) -> list[Message]:
        events = self.events_b if side == "b" else self.events_a
        return [e.message for e in events if isinstance(e, MessageReceived)]

    def outcomes_of(self, side: str) -> tuple[list[Message], list[Message]]:
        """(delivered, failed) messages sent by ``side``."""
        events = self.events_a if side == "a" else self.events_b
        return ([e.message for e in events if isinstance(e, Delivered)],
                [e.message for e in events if isinstance(e, SendFailed)])
