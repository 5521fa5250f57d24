"""The toy link, sans-IO: frames and acks, one message in flight each way (see :mod:`.wire`).

Bytes and time in, :mod:`posterm.families.events` and bytes out (the Link interface of
:mod:`posterm.families.interfaces`); :class:`posterm.families.pump.Pump` drives it.

* ``send(msg, now)`` queues a message; the first queued goes out at once, as a frame with
  the next sequence number, and is sent again each ``ack_timeout`` until acked, at most
  ``send_attempts`` times (then :class:`SendFailed`). Its ack gives :class:`Delivered`.
* A good data frame from the peer gives :class:`MessageReceived`. It is acked at once,
  unless the link was made with ``confirm=True`` (the ECR side): then it is *held* until
  the caller calls :meth:`ToyLink.accept` ("I have it, recorded"); until then a resent
  copy is neither acked nor delivered again. A frame already taken (same session and
  sequence number) is acked again and gives :class:`DuplicateIgnored`.
* A line that fails (checksum, JSON, kind, field, wrong direction) gives
  :class:`FrameRejected` and no answer; an overlong line :class:`GarbageSkipped`.

Everything is bounded: one frame buffered, :data:`QUEUE_CAP` messages queued, the bytes
waiting for the caller to write capped at :data:`OUT_CAP` (acks beyond it are dropped).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

from posterm.errors import LocalProtocolError
from posterm.families.events import (
    Delivered,
    DuplicateIgnored,
    FrameRejected,
    GarbageSkipped,
    MessageReceived,
    Retransmitted,
    SendFailed,
)

from . import wire as w

QUEUE_CAP = 16
OUT_CAP = 8192
EVENT_CAP = 256


from posterm.errors import SendQueueFull  # noqa: E402 - the emulator catches posterm's own


@dataclass(frozen=True, slots=True)
class ToyConfig:
    ack_timeout: float = 1.0
    send_attempts: int = 3

    def __post_init__(self) -> None:
        if not self.ack_timeout > 0 or not 1 <= self.send_attempts <= 10:
            raise ValueError("ToyConfig: ack_timeout > 0, send_attempts 1..10")


@dataclass(slots=True)
class _InFlight:
    message: Any
    seq: int
    raw: bytes
    attempts: int
    deadline: float


class ToyLink:
    """One end of a toy line. ``role``: ``"ecr"`` or ``"terminal"``."""

    def __init__(self, role: str = "ecr", config: ToyConfig | None = None, *, confirm: bool = False,
                 session: int | None = None) -> None:
        if role not in ("ecr", "terminal"):
            raise LocalProtocolError(f"role must be 'ecr' or 'terminal', not {role!r}")
        self.role = role
        self.config = config or ToyConfig()
        self.confirm = confirm
        self.session = secrets.randbelow(65536) if session is None else session
        self._sends = w.FROM_ECR if role == "ecr" else w.FROM_TERMINAL
        self._takes = w.FROM_TERMINAL if role == "ecr" else w.FROM_ECR
        self._framer = w.Framer()
        self._queue: deque = deque()
        self._flight: _InFlight | None = None
        self._next_seq = 0
        self._taken: tuple[int, int] | None = None   # (session, seq) of the last frame taken
        self._held: w.Frame | None = None
        self._out = bytearray()
        self._events: deque = deque()
        self._now = 0.0
        self.stats = {"sent": 0, "received": 0, "retransmitted": 0, "failed": 0, "duplicates": 0,
                      "rejected": 0, "garbage_bytes": 0, "out_dropped": 0, "events_dropped": 0}

    # -- the Link surface ----------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self._flight is None and not self._queue and self._held is None

    def send(self, message: Any, now: float | None = None) -> bytes:
        """Queue ``message``; returns the bytes to write now. Raises LocalProtocolError for a
        message this side does not send, SendQueueFull past QUEUE_CAP."""
        if not isinstance(message, self._sends):
            raise LocalProtocolError(f"the {self.role} side does not send {type(message).__name__}")
        self._clock(now)
        if len(self._queue) >= QUEUE_CAP:
            raise SendQueueFull(f"{QUEUE_CAP} messages already wait for the line")
        self._queue.append(message)
        self._pump()
        return self.data_to_send()

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        self._clock(now)
        self._framer.feed(data)
        while (item := self._framer.pop()) is not None:
            if isinstance(item, w.Garbage):
                self.stats["garbage_bytes"] += len(item.data)
                self._emit(GarbageSkipped(item.data))
                continue
            try:
                frame = w.decode(item)
            except w.ToyFrameError as exc:
                self.stats["rejected"] += 1
                self._emit(FrameRejected(None, str(exc), item))
                continue
            self._on_frame(frame)
        self._pump()

    def tick(self, now: float) -> None:
        self._clock(now)
        f = self._flight
        if f is not None and now >= f.deadline:
            if f.attempts < self.config.send_attempts:
                f.attempts += 1
                f.deadline = now + self.config.ack_timeout
                self.stats["retransmitted"] += 1
                self._put(f.raw)
                self._emit(Retransmitted(f.message, f.seq, f.attempts, "timeout"))
            else:
                self.stats["failed"] += 1
                self._flight = None
                self._emit(SendFailed(f.message, f.seq, f.attempts, "no ACK"))
        self._pump()

    def accept(self, now: float | None = None) -> None:
        """Ack the held frame (``confirm=True``): the caller has it safe. No-op if none is held."""
        self._clock(now)
        if self._held is not None:
            held, self._held = self._held, None
            self._taken = (held.session, held.seq)
            self._ack(held)

    def reset_held(self) -> None:
        """Drop the held frame unacked (``confirm=True``): its sender will give up on it."""
        self._held = None

    def next_event(self) -> Any | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_deadline(self) -> float | None:
        return self._flight.deadline if self._flight is not None else None

    def reset(self) -> list:
        """Forget the line (a new connection); returns the messages never delivered."""
        pending = ([self._flight.message] if self._flight else []) + list(self._queue)
        self._flight = None
        self._queue.clear()
        self._held = None
        self._taken = None
        self._framer.discard_partial()
        self._out.clear()
        return pending

    def start_session(self) -> None:
        """A new ECR session (its hello): nothing to forget, sessions are in every frame."""

    # -- internals --------------------------------------------------------------------

    def _clock(self, now: float | None) -> None:
        if now is not None:
            self._now = now

    def _emit(self, event: Any) -> None:
        if len(self._events) >= EVENT_CAP:
            self.stats["events_dropped"] += 1   # a caller that never drains: bounded, counted
            return
        self._events.append(event)

    def _put(self, raw: bytes, droppable: bool = False) -> None:
        if droppable and len(self._out) >= OUT_CAP:
            self.stats["out_dropped"] += 1
            return
        self._out += raw

    def _ack(self, frame: w.Frame) -> None:
        self._put(w.encode(w.Ack(), frame.session, frame.seq), droppable=True)

    def _pump(self) -> None:
        if self._flight is None and self._queue:
            msg = self._queue.popleft()
            seq = self._next_seq
            self._next_seq = (seq + 1) % 256
            raw = w.encode(msg, self.session, seq)
            self._flight = _InFlight(msg, seq, raw, 1, self._now + self.config.ack_timeout)
            self._put(raw)

    def _on_frame(self, frame: w.Frame) -> None:
        if isinstance(frame.message, w.Ack):
            f = self._flight
            if f is not None and frame.session == self.session and frame.seq == f.seq:
                self._flight = None
                self.stats["sent"] += 1
                self._emit(Delivered(f.message, f.seq))
            return
        if not isinstance(frame.message, self._takes):
            self.stats["rejected"] += 1
            self._emit(FrameRejected(frame.seq, f"{frame.kind} is not sent to the {self.role}", frame.raw))
            return
        key = (frame.session, frame.seq)
        if self._held is not None and (self._held.session, self._held.seq) == key:
            return                                  # the caller has not decided yet: no answer
        if key == self._taken:
            self.stats["duplicates"] += 1
            self._emit(DuplicateIgnored(frame.seq))
            self._ack(frame)
            return
        self.stats["received"] += 1
        self._emit(MessageReceived(frame.message, frame.seq, frame.raw))
        if self.confirm:
            self._held = frame
        else:
            self._taken = key
            self._ack(frame)
