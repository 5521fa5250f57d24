"""The Concert link, sans-IO: ENQ / ACK / NAK / EOT in both directions.

No I/O and no clock reads inside: feed bytes with :meth:`ConcertLink.receive_data`,
pass the time to :meth:`tick`, write what :meth:`data_to_send` returns, read
:meth:`next_event`. Both ends use it; ``role`` says which messages it decodes
(``"ecr"`` receives answers, ``"terminal"`` receives requests).

A transmission (either direction)::

    sender                         receiver
    ENQ  ------------------------>
         <------------------------  ACK        (within enq_timeout; else ENQ again, enq_attempts in all)
    STX body ETX LRC ------------>
         <------------------------  ACK / NAK  (within ack_timeout, 3 s; NAK or silence: frame again,
                                                send_attempts in all)
    EOT  ------------------------>             (the line is free again)

A frame whose ACK was lost arrives twice: it is ACKed again and delivered once.
Both sides sending ENQ at once: the ECR gives way (ACKs the terminal's ENQ and
tries again afterwards). Nothing is buffered beyond one frame (512 bytes), and what
waits to be written is capped too (:data:`OUT_CAP`): a peer that floods ENQs and
never reads gets a bounded answer, the ACKs beyond the cap are dropped.

``confirm_frames=True`` (the ECR driver): a good frame is *held*, not ACKed; the
caller decides with :meth:`ConcertLink.accept` (ACK: "I have it, recorded") or
:meth:`ConcertLink.refuse` (NAK, and NAK again for the same frame re-sent, so the
sender gives up with the answer undelivered). An undecided frame is refused by
:meth:`tick` after ``frame_timeout``. The ACK is the ECR's receipt: the driver
journals an answer before it lets the ACK go.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

from firmware_protocol.concert import (
    ACK,
    ENQ,
    EOT,
    NAK,
    ConcertAnswer,
    ConcertFrameError,
    ConcertFramer,
    ConcertGarbage,
    ConcertRequest,
)
from firmware_protocol.errors import FieldError

from posterm.errors import LocalProtocolError


@dataclass(frozen=True, slots=True)
class ConcertConfig:
    """Timers (seconds) and retry limits; the defaults are those of Telium terminals."""

    enq_timeout: float = 2.0     # ENQ sent, no ACK: send ENQ again
    enq_attempts: int = 3
    ack_timeout: float = 3.0     # frame sent, no ACK/NAK: the receiver checks the LRC within 3 s
    send_attempts: int = 3       # a frame is sent at most this many times (NAK or silence)
    frame_timeout: float = 3.0   # ENQ ACKed, the frame must be in within this
    eot_timeout: float = 4.0     # frame ACKed, no EOT: free after this (> ack_timeout, so a frame
                                 # re-sent because our ACK was lost is still recognised as a duplicate)
    nak_limit: int = 3           # bad frames NAKed in one transmission before giving up on it

    def __post_init__(self) -> None:
        for name in ("enq_timeout", "ack_timeout", "frame_timeout", "eot_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ConcertConfig.{name} must be positive")
        for name in ("enq_attempts", "send_attempts", "nak_limit"):
            if not 1 <= getattr(self, name) <= 10:
                raise ValueError(f"ConcertConfig.{name} must be 1..10")


# The events are the families' shared ones (posterm.families.events): Concert frames carry
# no sequence number, so ``seq`` is None.
from posterm.families.events import (  # noqa: E402
    ControlTrace,
    Delivered,
    FrameRejected,
    GarbageSkipped,
    MessageReceived,
    SendFailed,
)

__all__ = ["ConcertConfig", "ConcertLink", "ControlTrace", "Delivered", "FrameRejected", "GarbageSkipped",
           "MessageReceived", "SendFailed", "OUT_CAP"]

OUT_CAP = 2048   # bytes waiting for the caller to write; control bytes beyond it are dropped


class _State(enum.Enum):
    IDLE = "idle"
    SENDING_ENQ = "sent ENQ"
    SENDING_FRAME = "sent frame"
    RECEIVING = "ACKed ENQ"
    RECEIVED = "ACKed frame"
    HOLDING = "frame held for the caller's decision"


class ConcertLink:
    """One end of a Concert line. ``role``: ``"ecr"`` or ``"terminal"``."""

    def __init__(self, role: str = "ecr", config: ConcertConfig | None = None, *,
                 confirm_frames: bool = False) -> None:
        if role not in ("ecr", "terminal"):
            raise LocalProtocolError(f"role must be 'ecr' or 'terminal', not {role!r}")
        self.role = role
        self.config = config or ConcertConfig()
        self._decode = ConcertAnswer.decode if role == "ecr" else ConcertRequest.decode
        self._framer = ConcertFramer()
        self._queue: deque = deque()
        self._out = bytearray()
        self._events: deque = deque()
        self._state = _State.IDLE
        self._deadline: float | None = None
        self._attempts = 0
        self._naks = 0
        self._current: tuple[Any, bytes] | None = None
        self._now = 0.0
        self.confirm_frames = confirm_frames
        self._held: bytes | None = None        # the frame awaiting accept() / refuse()
        self._refused: bytes | None = None     # a frame refused in this transmission (NAKed if re-sent)
        self.stats = {"sent": 0, "received": 0, "retransmitted": 0, "naks_sent": 0, "failed": 0,
                      "duplicates": 0, "garbage_bytes": 0, "refused": 0, "out_dropped": 0}

    # -- the sans-IO surface (same shape as posterm.families.native.link.Link) -------------------

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def idle(self) -> bool:
        return self._state is _State.IDLE and not self._queue

    def send(self, message: ConcertRequest | ConcertAnswer, now: float | None = None) -> bytes:
        """Queue ``message``; returns the bytes to write now (ENQ when the line is free)."""
        self.enqueue(message, now)
        return self.data_to_send()

    def enqueue(self, message: ConcertRequest | ConcertAnswer, now: float | None = None) -> None:
        """Queue ``message`` without taking the bytes to write (they wait in :meth:`data_to_send`)."""
        expected = ConcertRequest if self.role == "ecr" else ConcertAnswer
        if not isinstance(message, expected):
            raise LocalProtocolError(f"the {self.role} side sends {expected.__name__}, not {type(message).__name__}")
        self._clock(now)
        self._queue.append((message, message.encode()))
        self._pump()

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        self._clock(now)
        self._framer.feed(data)
        while (item := self._framer.pop()) is not None:
            if isinstance(item, int):
                self._emit(ControlTrace("in", item))
                self._on_control(item)
            elif isinstance(item, ConcertGarbage):
                self.stats["garbage_bytes"] += len(item.data)
                self._emit(GarbageSkipped(item.data))
            else:
                self._on_frame(item)
        self._pump()

    def tick(self, now: float) -> None:
        self._clock(now)
        if self._deadline is None or now < self._deadline:
            return
        st, cfg = self._state, self.config
        if st is _State.SENDING_ENQ:
            if self._attempts < cfg.enq_attempts:
                self._attempts += 1
                self.stats["retransmitted"] += 1
                self._put(ENQ)
                self._deadline = now + cfg.enq_timeout
            else:
                self._fail("no ACK to ENQ")
        elif st is _State.SENDING_FRAME:
            if self._attempts < cfg.send_attempts:
                self._resend_frame()
            else:
                self._put(EOT)
                self._fail("frame not ACKed")
        elif st is _State.HOLDING:
            self.refuse(now)   # nobody decided: the sender must not count it as delivered
        elif st in (_State.RECEIVING, _State.RECEIVED):
            dropped = self._framer.discard_partial()
            if dropped:
                self._emit(GarbageSkipped(dropped))
            self._to_idle()
        self._pump()

    def accept(self, now: float | None = None) -> None:
        """ACK the held frame (``confirm_frames``): the caller has it safe. No-op if none is held."""
        self._clock(now)
        if self._state is not _State.HOLDING:
            return
        self._held = None
        self._put(ACK)
        self.stats["received"] += 1
        self._state = _State.RECEIVED
        self._deadline = self._now + self.config.eot_timeout

    def refuse(self, now: float | None = None) -> None:
        """NAK the held frame (``confirm_frames``); the same frame re-sent is NAKed at once,
        so the sender gives up after its attempts with the message undelivered."""
        self._clock(now)
        if self._state is not _State.HOLDING:
            return
        self._refused, self._held = self._held, None
        self.stats["refused"] += 1
        self._nak()

    def next_event(self) -> Any | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_deadline(self) -> float | None:
        return self._deadline

    def reset(self) -> list:
        """Forget the line (a new connection); returns the messages not yet delivered."""
        pending = [msg for msg, _ in ([self._current] if self._current else [])] + [m for m, _ in self._queue]
        self._queue.clear()
        self._current = None
        self._framer.discard_partial()
        self._out.clear()
        self._to_idle()
        return pending

    def drop_queued(self, which: Any = None, *, in_flight: bool = False) -> list:
        """Drop the messages queued behind the one being transmitted (all, or those for which
        ``which(message)`` is true) and return them. ``in_flight``: also give up the one being
        transmitted (ENQ or frame sent, not yet ACKed; the line goes back to idle, no EOT:
        the peer that would take it is gone). Nothing is reported as failed."""
        dropped = []
        if in_flight and self._current is not None and self._state in (_State.SENDING_ENQ, _State.SENDING_FRAME):
            dropped.append(self._current[0])
            self._current = None
            self._to_idle()
        keep: deque = deque()
        for item in self._queue:
            if which is None or which(item[0]):
                dropped.append(item[0])
            else:
                keep.append(item)
        self._queue = keep
        return dropped

    def start_session(self) -> None:
        """Concert has no sessions (kept for the shape of posterm.families.native.link.Link)."""

    # -- internals ---------------------------------------------------------------------

    def _clock(self, now: float | None) -> None:
        if now is not None:
            self._now = now

    def _emit(self, event: Any) -> None:
        self._events.append(event)

    def _put(self, byte: int) -> None:
        if len(self._out) >= OUT_CAP and byte in (ACK, NAK):
            self.stats["out_dropped"] += 1      # a flood the peer does not read: answer it no further
            return
        self._out.append(byte)
        self._emit(ControlTrace("out", byte))

    def _to_idle(self) -> None:
        self._state = _State.IDLE
        self._deadline = None
        self._attempts = 0
        self._naks = 0
        self._held = None
        self._refused = None

    def _pump(self) -> None:
        if self._state is _State.IDLE and self._queue:
            self._current = self._queue.popleft()
            self._state = _State.SENDING_ENQ
            self._attempts = 1
            self._put(ENQ)
            self._deadline = self._now + self.config.enq_timeout

    def _fail(self, cause: str) -> None:
        msg = self._current[0] if self._current else None
        self.stats["failed"] += 1
        self._emit(SendFailed(msg, None, self._attempts, cause))
        self._current = None
        self._to_idle()

    def _resend_frame(self) -> None:
        assert self._current is not None
        self._attempts += 1
        self.stats["retransmitted"] += 1
        self._out += self._current[1]
        self._deadline = self._now + self.config.ack_timeout

    def _on_control(self, byte: int) -> None:
        st, cfg = self._state, self.config
        if byte == ENQ:
            if st is _State.SENDING_ENQ and self.role == "ecr" and self._current is not None:
                self._queue.appendleft(self._current)   # give way; try again afterwards
                self._current = None
                st = _State.IDLE
            if st is _State.HOLDING:
                self.refuse()          # the sender started over: what it sent was not taken
                st = self._state
            if st in (_State.IDLE, _State.RECEIVING, _State.RECEIVED):
                self._framer.discard_partial()
                self._put(ACK)
                self._state = _State.RECEIVING
                self._naks = 0
                self._deadline = self._now + cfg.frame_timeout
        elif byte == ACK:
            if st is _State.SENDING_ENQ and self._current is not None:
                self._state = _State.SENDING_FRAME
                self._attempts = 0
                self._resend_frame()
                self.stats["retransmitted"] -= 1   # the first send is not a retransmission
            elif st is _State.SENDING_FRAME and self._current is not None:
                self._put(EOT)
                self.stats["sent"] += 1
                self._emit(Delivered(self._current[0]))
                self._current = None
                self._to_idle()
        elif byte == NAK:
            if st is _State.SENDING_FRAME:
                if self._attempts < cfg.send_attempts:
                    self._resend_frame()
                else:
                    self._put(EOT)
                    self._fail("frame not ACKed")
            elif st is _State.SENDING_ENQ:   # not ready: counts as an unanswered ENQ
                self._deadline = self._now
        elif byte == EOT:
            if st is _State.HOLDING:
                self.refuse()          # the sender gave up before we decided: not taken
                st = self._state
            if st in (_State.RECEIVING, _State.RECEIVED):
                self._framer.discard_partial()
                self._to_idle()

    def _nak(self) -> None:
        self._naks += 1
        self.stats["naks_sent"] += 1
        self._put(NAK)
        if self._naks >= self.config.nak_limit:
            self._to_idle()
        else:
            self._state = _State.RECEIVING
            self._deadline = self._now + self.config.frame_timeout

    def _on_frame(self, raw: bytes) -> None:
        st = self._state
        if st not in (_State.RECEIVING, _State.RECEIVED):
            self.stats["garbage_bytes"] += len(raw)
            self._emit(GarbageSkipped(raw))
            return
        if st is _State.RECEIVING and raw == self._refused:
            self._emit(FrameRejected(None, "refused by the receiver", raw))
            self._nak()
            return
        try:
            message = self._decode(raw)
        except (ConcertFrameError, FieldError) as exc:
            self._emit(FrameRejected(None, str(exc), raw))
            self._nak()
            return
        if self.confirm_frames and st is _State.RECEIVING:
            self._held = raw
            self._state = _State.HOLDING
            self._emit(MessageReceived(message, None, raw))
            self._deadline = self._now + self.config.frame_timeout
            return
        self._put(ACK)
        if st is _State.RECEIVED:
            self.stats["duplicates"] += 1     # our ACK was lost: ACKed again, not delivered twice
        else:
            self.stats["received"] += 1
            self._emit(MessageReceived(message, None, raw))
            self._state = _State.RECEIVED
        self._deadline = self._now + self.config.eot_timeout
