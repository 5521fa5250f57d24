"""The link layer, sans-IO (the h11 way): bytes and time in, events and bytes out.

    link = Link()
    wire = link.send(PayRequest(...), now=clock())   # write these bytes
    link.receive_data(chunk, now=clock())            # bytes read from the port
    link.tick(clock())                               # let timers fire
    while (ev := link.next_event()) is not None: ...
    port.write(link.data_to_send())                  # ACKs, NAKs, retransmissions

No I/O and no clock reads happen here, so the same code runs over serial, a
pty, TCP, in tests, in replay and under fault injection.

Rules (PROTOCOL.md, "Link"): stop-and-wait ARQ with one unacknowledged DATA
frame per direction; every good DATA frame is ACKed; a good header with a bad
CRC is NAKed; the sender retransmits on NAK or ACK timeout up to
``max_retries`` times, then reports :class:`SendFailed`; a DATA frame whose seq
and CRC equal one of the last ``DUP_WINDOW`` delivered ones is a
retransmission: ACKed, not delivered again; a partial frame that stalls for
``inter_byte_timeout`` is dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from firmware_protocol.native import frame as fr
from firmware_protocol.errors import ProtocolError
from firmware_protocol.native.tlv import Message, decode, encode

from posterm.errors import LocalProtocolError, SendQueueFull

DUP_WINDOW = 16
# Bytes of ACK/NAK the link holds for a peer that does not take them (data_to_send not
# called, or a flood of bad frames): past this, control frames are dropped and counted.
# Dropping one is safe: an unACKed DATA frame is retransmitted, a lost NAK becomes a timeout.
MAX_CONTROL_BACKLOG = 16 * 1024


class EventQueueFull(LocalProtocolError):
    """``max_events`` events that matter (messages, deliveries, failures) were not taken
    with ``next_event()``: the caller does not drain the link. Diagnostic events (garbage,
    rejected frames, duplicates, traces) never raise this: past the bound they are dropped
    and counted in ``stats["events_dropped"]``."""


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Link timers and bounds. Times in seconds."""

    ack_timeout: float = 0.5
    max_retries: int = 3
    inter_byte_timeout: float = 0.2
    max_queue: int = 32
    max_events: int = 4096
    trace_frames: bool = False
    # Bytes per second the line carries (baud / bits per byte), or None for unlimited (pty,
    # TCP). The ACK timer then also allows the time the frame and its ACK take on the wire,
    # so a 4 KiB frame at 9600 baud (4.3 s) is not retransmitted while it is still going out.
    line_rate: float | None = None

    def __post_init__(self) -> None:
        if not self.ack_timeout > 0 or not self.inter_byte_timeout > 0:
            raise ValueError("link timeouts must be positive")
        if self.line_rate is not None and not self.line_rate > 0:
            raise ValueError("line_rate must be positive (bytes per second) or None")
        if not 0 <= self.max_retries <= 20:
            raise ValueError("max_retries must be 0..20")
        if self.max_queue < 1 or self.max_events < 16:
            raise ValueError("queue bounds too small")


# The events are the families' shared ones (posterm.families.events); re-exported here.
from posterm.families.events import (  # noqa: E402
    DIAGNOSTIC as _DIAGNOSTIC,
    Delivered,
    DuplicateIgnored,
    Event,
    FrameRejected,
    FrameTrace,
    GarbageSkipped,
    MessageReceived,
    PartialDiscarded,
    Retransmitted,
    SendFailed,
    UndecodableMessage,
)

__all__ = ["Delivered", "DuplicateIgnored", "Event", "EventQueueFull", "FrameRejected", "FrameTrace", "GarbageSkipped",
           "Link", "LinkConfig", "MessageReceived", "PartialDiscarded", "Retransmitted", "SendFailed", "SendQueueFull",
           "UndecodableMessage"]

# ------------------------------------------------------------------ the link


@dataclass(slots=True)
class _Outstanding:
    message: Message
    seq: int
    frame: bytes
    deadline: float
    attempts: int = 1


class Link:
    """One end of a framed, acknowledged link. Not thread-safe: one owner drives it."""

    def __init__(self, config: LinkConfig | None = None) -> None:
        self.config = config or LinkConfig()
        self._framer = fr.Framer()
        self._events: deque[Event] = deque()
        self._out = bytearray()
        self._queue: deque[Message] = deque()
        self._outstanding: _Outstanding | None = None
        self._next_seq = 0
        # (seq, crc) of the last DUP_WINDOW delivered DATA frames: a retransmission is
        # byte-identical, so a repeat of one of these is a duplicate even when a
        # late copy arrives after newer frames.
        self._recent_rx: deque[tuple[int, bytes]] = deque(maxlen=DUP_WINDOW)
        self._now = 0.0
        self._last_rx_progress = 0.0
        self.stats = {"frames_in": 0, "frames_out": 0, "retransmits": 0, "naks_sent": 0,
                      "garbage_bytes": 0, "duplicates": 0, "send_failed": 0,
                      "events_dropped": 0, "control_dropped": 0}

    # -- public API ---------------------------------------------------------

    @property
    def idle(self) -> bool:
        """True when nothing is waiting for an ACK and nothing is queued."""
        return self._outstanding is None and not self._queue

    def send(self, message: Message, now: float | None = None) -> bytes:
        """Queue ``message`` and return the bytes to write now (empty if another
        message still waits for its ACK; it goes out when that one is ACKed).

        Raises :class:`LocalProtocolError` for a message that cannot be encoded, and
        its subclass :class:`SendQueueFull` when ``max_queue`` messages already wait.
        """
        self._clock(now)
        if not isinstance(message, Message):
            raise LocalProtocolError(f"send() takes a Message, not {type(message).__name__}")
        try:
            encode(message)  # fail here, in the caller's frame, not later in a tick
        except ProtocolError as exc:
            raise LocalProtocolError(f"cannot send {type(message).__name__}: {exc}") from exc
        if len(self._queue) >= self.config.max_queue:
            raise SendQueueFull(f"send queue full ({self.config.max_queue} messages)")
        self._queue.append(message)
        self._pump()
        return self.data_to_send()

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Feed bytes read from the wire. Produces events and outbound ACK/NAK bytes.

        Consecutive garbage comes out as one :class:`GarbageSkipped` (a run of false
        starts is one event, not one per byte). Raises :class:`EventQueueFull` only when
        the caller left ``max_events`` messages untaken.
        """
        self._clock(now)
        if data:
            self._framer.feed(data)
            self._last_rx_progress = self._now
        junk = bytearray()
        while True:
            item = self._framer.pop()
            if isinstance(item, fr.Garbage):
                self.stats["garbage_bytes"] += len(item.data)
                junk += item.data
                continue
            if junk:
                self._emit(GarbageSkipped(bytes(junk)))
                junk.clear()
            if item is None:
                break
            if isinstance(item, fr.BadFrame):
                self._emit(FrameRejected(item.seq, item.reason, item.raw))
                self._write(fr.FrameKind.NAK, item.seq)
                self.stats["naks_sent"] += 1
            else:
                self._on_frame(item)
        if self._framer.pending > fr.MAX_FRAME:  # cannot happen: the framer drains to < MAX_FRAME
            raise AssertionError("framer buffer over its bound")

    def tick(self, now: float) -> None:
        """Advance time: fire the ACK timer and the inter-byte timer."""
        self._clock(now)
        out = self._outstanding
        if out is not None and self._now >= out.deadline:
            self._retransmit("timeout")
        if self._framer.pending and self._now - self._last_rx_progress >= self.config.inter_byte_timeout:
            self._emit(PartialDiscarded(self._framer.discard_partial()))
            self.receive_data(b"", now)  # a whole frame behind a false start comes out now

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when there is none."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Take the bytes the link wants written (ACKs, NAKs, retransmissions, queued frames)."""
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work to do, so an I/O loop knows how long it may block."""
        deadlines = []
        if self._outstanding is not None:
            deadlines.append(self._outstanding.deadline)
        if self._framer.pending:
            deadlines.append(self._last_rx_progress + self.config.inter_byte_timeout)
        return min(deadlines) if deadlines else None

    def reset(self) -> list[Message]:
        """Forget all link state (after the port was reopened). Returns the messages
        that were outstanding or queued and will not be sent."""
        dropped = ([self._outstanding.message] if self._outstanding else []) + list(self._queue)
        self._outstanding = None
        self._queue.clear()
        self._framer.clear()
        self._recent_rx.clear()
        self._out.clear()
        return dropped

    def drop_queued(self, which=None, *, in_flight: bool = False) -> list[Message]:
        """Drop the messages queued behind the one in flight (all, or those for which
        ``which(message)`` is true) and return them: answers meant for a peer that has gone,
        or ones the peer can ask for again, to make room. ``in_flight``: also stop
        retransmitting the one waiting for its ACK (the peer that would ACK it is gone)."""
        dropped = []
        if in_flight and self._outstanding is not None:
            dropped.append(self._outstanding.message)
            self._outstanding = None
        dropped += [msg for msg in self._queue if which is None or which(msg)]
        if dropped:
            self._queue = deque(msg for msg in self._queue if not (which is None or which(msg)))
        return dropped

    def start_session(self) -> None:
        """The peer began a new session (it sent a Hello after reopening the port).

        Its sequence numbers start again, so a frame byte-identical to one of the last
        session is new, not a duplicate: forget the receive window, except the frame just
        delivered (the Hello), whose retransmission must still be suppressed.
        """
        last = self._recent_rx[-1] if self._recent_rx else None
        self._recent_rx.clear()
        if last is not None:
            self._recent_rx.append(last)

    # -- internals ------------------------------------------------------------

    def _clock(self, now: float | None) -> None:
        if now is not None:
            self._now = now

    def _emit(self, event: Event) -> None:
        if len(self._events) >= self.config.max_events:
            if isinstance(event, _DIAGNOSTIC):
                self.stats["events_dropped"] += 1
                return
            raise EventQueueFull(f"{len(self._events)} events not collected: call next_event()")
        self._events.append(event)

    def _write(self, kind: fr.FrameKind, seq: int, payload: bytes = b"", message: Message | None = None) -> bytes:
        if kind is not fr.FrameKind.DATA and len(self._out) >= MAX_CONTROL_BACKLOG:
            self.stats["control_dropped"] += 1
            return b""
        raw = fr.encode_frame(kind, seq, payload)
        self._out += raw
        self.stats["frames_out"] += 1
        if self.config.trace_frames:
            self._emit(FrameTrace("out", kind, seq, raw, message))
        return raw

    def _pump(self) -> None:
        if self._outstanding is not None or not self._queue:
            return
        message = self._queue.popleft()
        seq = self._next_seq
        self._next_seq = (seq + 1) & 0xFF
        raw = self._write(fr.FrameKind.DATA, seq, encode(message), message)
        self._outstanding = _Outstanding(message, seq, raw, self._now + self._ack_wait(len(raw)))

    def _ack_wait(self, frame_len: int) -> float:
        """How long to wait for the ACK of a frame of ``frame_len`` bytes sent now."""
        rate = self.config.line_rate
        if rate is None:
            return self.config.ack_timeout
        return self.config.ack_timeout + (frame_len + fr.HEADER_SIZE + fr.CRC_SIZE) / rate

    def _retransmit(self, cause: str) -> None:
        out = self._outstanding
        assert out is not None
        if out.attempts > self.config.max_retries:
            self._outstanding = None
            self.stats["send_failed"] += 1
            self._emit(SendFailed(out.message, out.seq, out.attempts))
            self._pump()
            return
        out.attempts += 1
        out.deadline = self._now + self._ack_wait(len(out.frame))
        self._out += out.frame
        self.stats["frames_out"] += 1
        self.stats["retransmits"] += 1
        if self.config.trace_frames:
            self._emit(FrameTrace("out", fr.FrameKind.DATA, out.seq, out.frame, out.message))
        self._emit(Retransmitted(out.message, out.seq, out.attempts - 1, cause))

    def _on_frame(self, frame: fr.LinkFrame) -> None:
        self.stats["frames_in"] += 1
        kind = frame.kind
        if kind is fr.FrameKind.DATA:
            self._write(fr.FrameKind.ACK, frame.seq)
            key = (frame.seq, frame.raw[-2:])
            if key in self._recent_rx:
                self.stats["duplicates"] += 1
                if self.config.trace_frames:
                    self._emit(FrameTrace("in", kind, frame.seq, frame.raw, None))
                self._emit(DuplicateIgnored(frame.seq))
                return
            self._recent_rx.append(key)
            try:
                message = decode(frame.payload)
            except ProtocolError as exc:
                if self.config.trace_frames:
                    self._emit(FrameTrace("in", kind, frame.seq, frame.raw, None))
                self._emit(UndecodableMessage(exc, frame.seq, frame.raw))
                return
            if self.config.trace_frames:
                self._emit(FrameTrace("in", kind, frame.seq, frame.raw, message))
            self._emit(MessageReceived(message, frame.seq, frame.raw))
            return
        if self.config.trace_frames:
            self._emit(FrameTrace("in", kind, frame.seq, frame.raw, None))
        out = self._outstanding
        if kind is fr.FrameKind.ACK:
            if out is not None and frame.seq == out.seq:
                self._outstanding = None
                self._emit(Delivered(out.message, out.seq))
                self._pump()
            # An ACK for anything else is stale (a duplicate ACK of an earlier frame): ignore.
        elif kind is fr.FrameKind.NAK:
            # The NAK's seq came from a corrupted header; our one frame in flight is
            # the only thing it can be about, and a needless resend is harmless.
            if out is not None:
                self._retransmit("nak")
