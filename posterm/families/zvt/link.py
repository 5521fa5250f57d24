"""The ZVT link, sans-IO: the transport (serial or TCP) and the master-rights rule.

No I/O and no clock reads: feed bytes with :meth:`ZvtLink.receive_data`, pass the time to
:meth:`ZvtLink.tick`, write what :meth:`ZvtLink.data_to_send` returns, take
:meth:`ZvtLink.next_event` (the shared events of :mod:`posterm.families.events`, plus
:class:`Refused` and :class:`TimedOut`). ``role`` is ``"ecr"`` (the cash register) or
``"pt"`` (the payment terminal); ``transport`` is ``"serial"`` or ``"tcp"``.

The transport (firmware_protocol/zvt/ZVT.md)::

    serial   10 02 APDU(DLE doubled) 10 03 CRC-lo CRC-hi  ->
                                                         <-  06 ACK / 15 NAK
             a NAKed frame, or one not ACKed within ack_timeout, goes again: 3 times in all
    tcp      bare APDUs; no ACK byte (TCP delivers or the connection fails)

One frame is on the serial line at a time. A good frame from the peer while ours waits
for its ACK byte counts as that ACK (the peer could only answer what it had; ZVT's strict
turn-taking makes the peer's next frame a reply). A command (on the PT's side) or a result
(04 0F, 06 0F, 06 1E, on the ECR's side) byte-identical to the last frame received, before
the peer has acknowledged anything of ours since, is the peer repeating it because our ACK
byte was lost: ACKed again, not delivered twice (see :meth:`ZvtLink._is_repeat`).

The application rule (master rights), both roles tracking the same dialog::

    ECR  command (06 01 ...)            ->                      T3: 80 00 00 within 5 s
                                        <-  80 00 00 | 84 xx    (84 xx: Refused, ECR master again)
         the PT holds control:          <-  04 FF intermediate status   (T4 renewed)
                                        <-  04 0F status information
                                        <-  06 D1 print line / 06 D3 text block
         each one acknowledged          ->  80 00 00    (the ECR role does this itself)
                                        <-  06 0F completion | 06 1E abort
                                        ->  80 00 00    (the ECR is master again)

Log off (06 02), display text (06 E0) and abort (06 B0) end at their 80 00 00. Read card
(06 C0) also ends at its status information (04 0F), as the EVerest ``zvt`` crate's
``ReadCard`` sequence reads it (zvt/src/sequences.rs). Abort (06 B0) is the one command the
ECR sends while the PT holds control: the PT acknowledges it and ends the dialog with 06 1E.

The timers, as the python ``ecrterm`` library has them (ecrterm/transmission/signals.py:
``TIMEOUT_T1 = 0.2``, ``TIMEOUT_T2 = 15``, ``TIMEOUT_T3 = 5``, ``TIMEOUT_T4 = 180`` s; its
Transmission waits T4 for each message while the PT is master) and as Portalum.Zvt waits
5000 ms for the acknowledgement (ZvtCommunication.SendCommandAsync): T1 0.2 s between the
bytes of a serial frame (a stalled partial frame is dropped); T2 15 s, here the limit for a
TCP APDU that stays incomplete; T3 5 s for 80 00 00 (either role; on serial ``frame_attempts``
times that, the peer's 80 00 00 frame may need its own repeats) and, on serial, for the
ACK byte; T4 180 s while the PT holds control, renewed by each intermediate status 04 FF
(the ECR role: it reports :class:`TimedOut` and is master again).

``confirm_results`` (the ECR role; the ECR driver sets it): a status information (04 0F, the
transaction's result) is *held*, not acknowledged: the caller decides with
:meth:`ZvtLink.accept` (80 00 00: "I have it, journaled") or :meth:`ZvtLink.refuse` (no
80 00 00: the terminal's T3 runs out and it reverses the transaction, as a ZVT terminal does
with a result its register never took). The acknowledgement is the register's receipt. A
held result the caller leaves undecided for T3 is refused by :meth:`ZvtLink.tick`.

Bounded: ``max_queue`` messages wait to be sent (:class:`SendQueueFull` beyond);
``max_queue`` commands of the ECR's wait for the PT's answer (the PT role; beyond, the
oldest is dropped unanswered and counted in ``stats["unanswered_dropped"]``: the ECR's T3
covers it);
``max_events`` events wait to be taken (diagnostic events are dropped and counted beyond,
others raise :class:`EventQueueFull`); ACK / NAK bytes and automatic 80 00 00 waiting to be
written are capped at :data:`OUT_CAP` bytes and ``max_queue`` frames (a peer that floods and
never reads gets no more answers; dropped ones are counted in ``stats["out_dropped"]``).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from firmware_protocol.errors import ProtocolError
from firmware_protocol.zvt import (
    ACK,
    NAK,
    Ack,
    Apdu,
    Command,
    Nack,
    SerialFramer,
    TcpFramer,
    ZvtBadFrame,
    ZvtFrame,
    ZvtGarbage,
    decode_apdu,
    encode_serial,
)

from posterm.errors import LocalProtocolError, SendQueueFull
from posterm.families.events import (
    DIAGNOSTIC,
    ControlTrace,
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

__all__ = ["ACK_ONLY", "CLOSING", "EventQueueFull", "MASTER_PHASE", "OUT_CAP", "Refused", "TimedOut", "ZvtConfig",
           "ZvtLink"]

OUT_CAP = 4096   # bytes of ACK / NAK / automatic 80 00 00 waiting to be written; beyond, dropped

INTERMEDIATE = (0x04, 0xFF)
MASTER_PHASE = frozenset({INTERMEDIATE, (0x04, 0x0F), (0x06, 0xD1), (0x06, 0xD3)})  # PT -> ECR, each ACKed
CLOSING = frozenset({(0x06, 0x0F), (0x06, 0x1E)})                                  # completion, abort
ABORT = (0x06, 0xB0)
ACK_ONLY = frozenset({(0x06, 0x02), (0x06, 0xE0), ABORT})     # log off, display text, abort: end at 80 00 00
_ENDS_AT = {(0x06, 0xC0): CLOSING | {(0x04, 0x0F)}}           # read card ends at its status information
_RESULTS = CLOSING | {(0x04, 0x0F)}                          # never sent twice in a row on purpose
_ACK = (0x80, 0x00)
_NACK_CLASS = 0x84
_UNKNOWN_COMMAND = 0x83


def _ends(command: Any) -> frozenset:
    return _ENDS_AT.get(_control(command), CLOSING)


def _control(message: Any) -> tuple[int, int] | None:
    return None if message is None else message.control


def _is_ack(ctl: tuple[int, int]) -> bool:
    return ctl == _ACK or ctl[0] == _NACK_CLASS


class EventQueueFull(LocalProtocolError):
    """``max_events`` events that matter were not taken with ``next_event()``: the caller
    does not drain the link. Diagnostic events are dropped and counted instead."""


@dataclass(frozen=True, slots=True)
class Refused(Event):
    """The peer answered our message with a negative acknowledgement ``84 xx``: it did not
    take it. ``error`` is ``xx`` (83: unknown command, 9C: repeat, ...)."""

    message: Any
    error: int
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class TimedOut(Event):
    """An application timer ran out. ``timer`` ``"T4"``: the terminal held control after
    ``command`` and sent neither an intermediate status nor its completion within T4; the
    ECR is master again (it may send an abort, or ask the status)."""

    timer: str
    command: Any


@dataclass(frozen=True, slots=True)
class ZvtConfig:
    """Timers (seconds) and bounds. The defaults are the ZVT ones (see the module)."""

    t1: float = 0.2            # serial: between the bytes of a frame
    t2: float = 15.0           # tcp: an APDU begun must be complete within this
    t3: float = 5.0            # 80 00 00 after a message (serial: times frame_attempts); the ACK byte
    t4: float = 180.0          # the PT holds control; renewed by each 04 FF
    frame_attempts: int = 3    # serial: a frame goes at most this many times (NAK or no ACK byte)
    max_queue: int = 32
    max_events: int = 4096
    trace_frames: bool = False
    # Serial: bytes per second the line carries (9600 baud 8N2 is 9600 / 11), or None (a pty).
    # The ACK byte's wait then also allows the frame's own time on the wire: a 16 KiB APDU
    # takes some 19 s at 9600 baud, and must not be repeated while it is still going out.
    line_rate: float | None = None

    def __post_init__(self) -> None:
        if self.line_rate is not None and not self.line_rate > 0:
            raise ValueError("ZvtConfig.line_rate must be positive (bytes per second) or None")
        for name in ("t1", "t2", "t3", "t4"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ZvtConfig.{name} must be positive")
        if not 1 <= self.frame_attempts <= 10:
            raise ValueError("ZvtConfig.frame_attempts must be 1..10")
        if self.max_queue < 1 or self.max_events < 16:
            raise ValueError("ZvtConfig queue bounds too small")


class _State(enum.Enum):
    IDLE = "ECR master"
    COMMAND = "command sent, not yet acknowledged"
    PT_MASTER = "PT master"


@dataclass(slots=True)
class _Awaiting:
    """Our message waiting for the peer's 80 00 00 (deadline None until it left the line)."""

    message: Any
    deadline: float | None


@dataclass(slots=True)
class _Frame:
    """A frame on (or for) the serial line. ``app``: an application message (its 80 00 00
    follows); otherwise a response, ``message`` None for the ECR's automatic 80 00 00."""

    message: Any
    raw: bytes
    app: bool
    attempts: int = 0
    deadline: float | None = None


class ZvtLink:
    """One end of a ZVT line. ``role``: ``"ecr"`` or ``"pt"``; ``transport``: ``"serial"`` or
    ``"tcp"``. Not thread-safe: one owner drives it (:class:`posterm.families.pump.Pump`)."""

    def __init__(self, role: str = "ecr", transport: str = "serial", config: ZvtConfig | None = None, *,
                 confirm_results: bool = False) -> None:
        if role not in ("ecr", "pt"):
            raise LocalProtocolError(f"role must be 'ecr' or 'pt', not {role!r}")
        if transport not in ("serial", "tcp"):
            raise LocalProtocolError(f"transport must be 'serial' or 'tcp', not {transport!r}")
        self.role = role
        self.transport = transport
        self.config = config or ZvtConfig()
        self._serial = transport == "serial"
        # Waiting for 80 00 00: on serial the peer's 80 00 00 frame may itself need its
        # repeats (a lost ACK byte or a NAK each cost it one ACK timeout).
        self._t3 = self.config.t3 * (self.config.frame_attempts if self._serial else 1)
        self._framer = SerialFramer() if self._serial else TcpFramer()
        self._events: deque[Event] = deque()
        self._out = bytearray()
        self._now = 0.0
        self._last_bytes_at = 0.0
        # the application layer
        self._state = _State.IDLE
        self._command: Any = None           # the ECR's command of the dialog in progress
        self._queue: deque = deque()        # application messages waiting for their turn
        self._awaiting: _Awaiting | None = None
        # PT: the ECR's commands received, not yet answered (oldest first; bounded by max_queue)
        self._unanswered: deque = deque()
        # ECR, confirm_results: the status information held for accept() / refuse(), and until when
        self.confirm_results = confirm_results and role == "ecr"
        self._held: Any = None
        self._held_until: float | None = None
        self._t4: float | None = None
        # the serial line
        self._responses: deque[_Frame] = deque()
        self._app_frames: deque[_Frame] = deque()
        self._inflight: _Frame | None = None
        self._last_rx: bytes | None = None
        self._last_rx_at = 0.0
        self._peer_acked = True
        self.stats = {"frames_in": 0, "frames_out": 0, "retransmits": 0, "naks_sent": 0, "garbage_bytes": 0,
                      "duplicates": 0, "send_failed": 0, "refused": 0, "acks_sent": 0, "implied_acks": 0,
                      "stray_acks": 0, "unsolicited": 0, "t4_expired": 0, "events_dropped": 0, "out_dropped": 0,
                      "unanswered_dropped": 0, "results_refused": 0}

    # -- the sans-IO surface (posterm.families.interfaces.Link) -----------------------------

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def master(self) -> str:
        """Who holds control: ``"ecr"`` or ``"pt"`` (the PT from the command's 80 00 00 to its
        completion or abort)."""
        return "pt" if self._state is _State.PT_MASTER else "ecr"

    @property
    def command(self) -> Any:
        """The ECR's command of the dialog in progress, or None."""
        return self._command

    @property
    def idle(self) -> bool:
        """The ECR is master, nothing is queued, on the line or waiting for 80 00 00."""
        return (self._state is _State.IDLE and not self._queue and self._awaiting is None
                and self._inflight is None and not self._responses and not self._app_frames
                and not self._unanswered and self._held is None)

    @property
    def held(self) -> Any:
        """``confirm_results``: the status information waiting for :meth:`accept` or
        :meth:`refuse`, or None."""
        return self._held

    def accept(self, now: float | None = None) -> None:
        """Acknowledge (80 00 00) the held status information: the caller has it safe. No-op
        when none is held."""
        self._clock(now)
        if self._held is None:
            return
        self._held = self._held_until = None
        self._respond(None, Ack().encode())
        self._pump()

    def refuse(self, now: float | None = None) -> None:
        """Never acknowledge the held status information: the terminal's T3 runs out, it takes
        the result as undelivered (a ZVT terminal then reverses the transaction) and ends the
        dialog with 06 1E. No-op when none is held."""
        self._clock(now)
        if self._held is None:
            return
        self._held = self._held_until = None
        self.stats["results_refused"] += 1

    def drop_queued(self, which: Any = None, *, in_flight: bool = False) -> list:
        """Drop our application messages waiting for their turn (all, or those for which
        ``which(message)`` is true) and return them. ``in_flight``: also give up the one on the
        line or waiting for its 80 00 00 (the peer that would take it is gone). Nothing is
        reported as failed; the link's own acknowledgements are never dropped. The ECR is
        master again when its dialog's command is dropped before the PT took it."""
        dropped: list = []
        if in_flight:
            aw = self._awaiting
            if aw is not None and (which is None or which(aw.message)):
                dropped.append(aw.message)
                self._awaiting = None
                fr = self._inflight
                if fr is not None and fr.app and fr.message is aw.message:
                    self._inflight = None
                if self.role == "ecr" and aw.message is self._command and self._state is _State.COMMAND:
                    self._to_ecr_master()
        keep_frames: deque[_Frame] = deque()
        for fr in self._app_frames:
            if fr.message in dropped:
                continue      # the serial frame of a message dropped above, not yet on the line
            keep_frames.append(fr)
        self._app_frames = keep_frames
        keep: deque = deque()
        for item in self._queue:
            if which is None or which(item[0]):
                dropped.append(item[0])
            else:
                keep.append(item)
        self._queue = keep
        self._line()
        return dropped

    def send(self, message: Command | Apdu, now: float | None = None) -> bytes:
        """Queue ``message`` and return the bytes to write now (possibly none: it goes when its
        turn comes, after the previous message's 80 00 00).

        The ECR role sends commands (an abort also while the PT holds control); it never
        sends 80 00 00 itself. The PT role answers a command with :class:`Ack` or
        :class:`Nack`, and while it holds control sends 04 FF, 04 0F, 06 D1, 06 D3, then
        06 0F or 06 1E. Raises :class:`LocalProtocolError` for a message out of turn or that
        does not encode, :class:`SendQueueFull` when ``max_queue`` messages wait.
        """
        self._clock(now)
        if not isinstance(message, (Command, Apdu)):
            raise LocalProtocolError(f"send() takes a ZVT command or Apdu, not {type(message).__name__}")
        try:
            apdu = message.encode()
        except ProtocolError as exc:
            raise LocalProtocolError(f"cannot send {type(message).__name__}: {exc}") from exc
        ctl = message.control
        closes = False
        if self.role == "ecr":
            self._check_ecr_send(ctl)
        elif _is_ack(ctl):
            self._pt_answer(message, apdu, ctl)
            return self.data_to_send()
        else:
            closes = self._check_pt_send(ctl)
        if len(self._queue) >= self.config.max_queue:
            raise SendQueueFull(f"{len(self._queue)} ZVT messages already wait to be sent")
        self._queue.append((message, apdu))
        if closes:
            self._to_ecr_master()   # nothing more may follow it; its 80 00 00 is still awaited
        self._pump()
        return self.data_to_send()

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Bytes read from the line. Raises :class:`EventQueueFull` only when the caller
        leaves ``max_events`` events untaken."""
        self._clock(now)
        if data:
            self._last_bytes_at = self._now
            self._framer.feed(data)
        while (item := self._framer.pop()) is not None:
            if isinstance(item, int):
                self._emit(ControlTrace("in", item))
                self._on_control(item)
            elif isinstance(item, ZvtGarbage):
                self.stats["garbage_bytes"] += len(item.data)
                self._emit(GarbageSkipped(item.data))
            elif isinstance(item, ZvtBadFrame):
                self._emit(FrameRejected(None, item.reason, item.raw))
                if self._serial:
                    self.stats["naks_sent"] += 1
                    self._put(NAK)
            elif isinstance(item, ZvtFrame):
                self._on_frame(item)
        self._pump()

    def tick(self, now: float) -> None:
        """Let the timers fire: T1 / T2 (a stalled partial frame), the ACK byte, T3, T4."""
        self._clock(now)
        cfg = self.config
        if self._framer.pending and now - self._last_bytes_at >= (cfg.t1 if self._serial else cfg.t2):
            dropped = self._framer.discard_partial()
            if dropped:
                self._emit(PartialDiscarded(dropped))
        fr = self._inflight
        if fr is not None and fr.deadline is not None and now >= fr.deadline:
            self._repeat_or_fail("timeout")
        if self._held is not None and self._held_until is not None and now >= self._held_until:
            self.refuse(now)     # nobody decided: the terminal must not count it as delivered
        aw = self._awaiting
        if aw is not None and aw.deadline is not None and now >= aw.deadline:
            self._awaiting = None
            self._fail(aw.message, 1, "no 80 00 00 within T3")
            if self.role == "ecr" and aw.message is self._command:
                self._to_ecr_master()
        if self._t4 is not None and now >= self._t4 and self._state is _State.PT_MASTER:
            self.stats["t4_expired"] += 1
            command = self._command
            self._to_ecr_master()
            self._emit(TimedOut("T4", command))
        self._pump()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_deadline(self) -> float | None:
        cfg = self.config
        times = [self._t4 if self._state is _State.PT_MASTER else None]
        if self._framer.pending:
            times.append(self._last_bytes_at + (cfg.t1 if self._serial else cfg.t2))
        if self._inflight is not None:
            times.append(self._inflight.deadline)
        if self._awaiting is not None:
            times.append(self._awaiting.deadline)
        times.append(self._held_until)
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def reset(self) -> list:
        """Forget the line (a new connection); returns our messages the peer never
        acknowledged (queued, on the line, or waiting for 80 00 00). The ECR is master."""
        pending: list = []
        if self._awaiting is not None:
            pending.append(self._awaiting.message)
        for fr in ([self._inflight] if self._inflight else []) + list(self._responses) + list(self._app_frames):
            if fr.message is not None and not fr.app and fr.message not in pending:
                pending.append(fr.message)
        pending += [m for m, _ in self._queue]
        self._queue.clear()
        self._awaiting = None
        self._unanswered.clear()
        self._held = self._held_until = None
        self._responses.clear()
        self._app_frames.clear()
        self._inflight = None
        self._last_rx = None
        self._peer_acked = True
        self._framer.discard_partial()
        self._out.clear()
        self._to_ecr_master()
        return pending

    def start_session(self) -> None:
        """ZVT has no sessions (kept for the shape of the Link protocol)."""

    # -- sending: the application rule ------------------------------------------------------

    def _check_ecr_send(self, ctl: tuple[int, int]) -> None:
        if _is_ack(ctl):
            raise LocalProtocolError("the ECR role acknowledges the terminal's messages itself")
        if ctl in MASTER_PHASE or ctl in CLOSING:
            raise LocalProtocolError(f"{ctl[0]:02X} {ctl[1]:02X} is sent by the terminal, not the ECR")

    def _check_pt_send(self, ctl: tuple[int, int]) -> bool:
        """Raises if the PT may not send ``ctl`` now; returns whether it ends the dialog."""
        if ctl not in MASTER_PHASE and ctl not in CLOSING:
            raise LocalProtocolError(f"the terminal does not send {ctl[0]:02X} {ctl[1]:02X} (a command of the ECR's)")
        self._expire_unanswered()
        if any(_control(c) != ABORT for c, _ in self._unanswered):
            raise LocalProtocolError("acknowledge the ECR's command first (80 00 00 or 84 xx)")
        if self._state is not _State.PT_MASTER:
            raise LocalProtocolError(f"the terminal sends {ctl[0]:02X} {ctl[1]:02X} only while it holds control")
        return ctl in _ends(self._command)

    def _pt_answer(self, message: Any, apdu: bytes, ctl: tuple[int, int]) -> None:
        """The PT's 80 00 00 / 84 xx to the ECR's command: out at once, ahead of the queue."""
        self._expire_unanswered()
        if not self._unanswered:
            raise LocalProtocolError("there is no command of the ECR's to acknowledge")
        if self._serial and len(self._responses) >= self.config.max_queue:
            raise SendQueueFull(f"{len(self._responses)} ZVT acknowledgements already wait for the line")
        command, _ = self._unanswered.popleft()     # answers go in the order the commands came
        cctl = _control(command)
        if self._state is _State.PT_MASTER:
            pass       # an abort, or a command out of turn: the dialog goes on until 06 0F / 06 1E
        elif ctl == _ACK and cctl not in ACK_ONLY:
            self._state = _State.PT_MASTER
            self._command = command
        else:
            self._to_ecr_master()
        self._respond(message, apdu, from_app=True)

    def _pump(self) -> None:
        """Release queued application messages whose turn it is, then feed the serial line."""
        while self._queue and self._awaiting is None:
            message, apdu = self._queue[0]
            ctl = message.control
            if self.role == "ecr" and ctl != ABORT and self._state is not _State.IDLE:
                break                           # a command waits until the ECR is master again
            self._queue.popleft()
            if self.role == "ecr":
                if ctl != ABORT or self._state is _State.IDLE:
                    self._state = _State.COMMAND
                    self._command = message
            self._awaiting = _Awaiting(message, None)
            self._transmit(_Frame(message, apdu, app=True))
        self._line()

    def _respond(self, message: Any, apdu: bytes, *, from_app: bool = False) -> None:
        """An acknowledgement (the link's own, or the PT application's: ``from_app``): out before
        any application message. The link's own are dropped past the bounds."""
        if not from_app and (len(self._out) >= OUT_CAP or len(self._responses) >= self.config.max_queue):
            self.stats["out_dropped"] += 1   # a peer that floods and never reads: answer it no further
            return
        self.stats["acks_sent"] += 1
        if self._serial:
            self._responses.append(_Frame(message, encode_serial(apdu), app=False))
            self._line()
            return
        frame = _Frame(message, apdu, app=False)
        self._write(frame)
        self._delivered(frame)

    def _transmit(self, frame: _Frame) -> None:
        """Put ``frame`` (its ``raw`` the APDU) out: serial, behind the frame on the line."""
        if self._serial:
            frame.raw = encode_serial(frame.raw)
            self._app_frames.append(frame)
            return
        self._write(frame)
        self._delivered(frame)          # TCP: the connection carries it or fails

    def _write(self, frame: _Frame) -> None:
        self._out += frame.raw
        self.stats["frames_out"] += 1
        if self.config.trace_frames:
            self._emit(FrameTrace("out", "frame" if self._serial else "apdu", None, frame.raw, frame.message))

    def _line(self) -> None:
        """Serial: put the next frame on the line when none waits for its ACK byte."""
        if not self._serial or self._inflight is not None:
            return
        queue = self._responses or self._app_frames
        if not queue:
            return
        frame = queue.popleft()
        frame.attempts = 1
        frame.deadline = self._ack_deadline(frame)
        self._inflight = frame
        self._write(frame)

    def _ack_deadline(self, frame: _Frame) -> float:
        rate = self.config.line_rate
        return self._now + self.config.t3 + (len(frame.raw) / rate if rate else 0.0)

    def _repeat_or_fail(self, cause: str) -> None:
        frame = self._inflight
        assert frame is not None
        if frame.attempts < self.config.frame_attempts:
            frame.attempts += 1
            frame.deadline = self._ack_deadline(frame)
            self.stats["retransmits"] += 1
            self._write(frame)
            self._emit(Retransmitted(frame.message, None, frame.attempts, cause))
            return
        self._inflight = None
        if frame.app:
            if self._awaiting is not None and self._awaiting.message is frame.message:
                self._awaiting = None
            if self.role == "ecr" and frame.message is self._command:
                self._to_ecr_master()
        if frame.message is not None:
            self._fail(frame.message, frame.attempts, "frame not ACKed")
        else:
            self.stats["send_failed"] += 1
        self._line()

    def _delivered(self, frame: _Frame) -> None:
        """The frame reached the peer (its ACK byte, or TCP)."""
        if frame.app:
            if self._awaiting is not None and self._awaiting.message is frame.message:
                self._awaiting.deadline = self._now + self._t3
        elif frame.message is not None:
            self._emit(Delivered(frame.message))

    def _fail(self, message: Any, attempts: int, cause: str) -> None:
        self.stats["send_failed"] += 1
        self._emit(SendFailed(message, None, attempts, cause))

    def _to_ecr_master(self) -> None:
        self._state = _State.IDLE
        self._command = None
        self._t4 = None

    # -- receiving -----------------------------------------------------------------------

    def _on_control(self, byte: int) -> None:
        frame = self._inflight
        if frame is None:
            self.stats["stray_acks"] += 1
            return
        if byte == ACK:
            self._inflight = None
            self._peer_acked = True
            self._delivered(frame)
            self._line()
        elif byte == NAK:
            self._repeat_or_fail("nak")

    def _on_frame(self, frame: ZvtFrame) -> None:
        self.stats["frames_in"] += 1
        if self.config.trace_frames:
            self._emit(FrameTrace("in", "frame" if self._serial else "apdu", None, frame.raw))
        if self._serial:
            self._put(ACK)
            if self._is_repeat(frame):
                self.stats["duplicates"] += 1
                self._emit(DuplicateIgnored(None))
                return
            if self._inflight is not None:
                # The peer answered: it had our frame, whatever became of its ACK byte.
                self.stats["implied_acks"] += 1
                inflight, self._inflight = self._inflight, None
                self._delivered(inflight)
            self._last_rx, self._last_rx_at, self._peer_acked = frame.raw, self._now, False
        try:
            apdu = Apdu.decode(frame.apdu)
        except ProtocolError as exc:   # the framer checked the length; kept for a closed dispatch
            self._emit(FrameRejected(None, str(exc), frame.raw))
            return
        try:
            message, error = decode_apdu(apdu), None
        except ProtocolError as exc:
            message, error = None, exc
        if self.role == "ecr":
            self._ecr_in(apdu, message, error, frame.raw)
        else:
            self._pt_in(apdu, message, error, frame.raw)
        self._line()

    def _is_repeat(self, frame: ZvtFrame) -> bool:
        """Serial: the peer sending again a frame we took because our ACK byte was lost.

        Byte-identical to the last frame received, within the peer's repeat window, with
        nothing of ours acknowledged since. Checked only where two identical frames in a row
        are never meant: the PT checks the ECR's commands (a repeated payment must not be
        paid twice); the ECR checks results (04 0F, 06 0F, 06 1E), not print lines or
        intermediate statuses (a receipt's empty lines and a repeated "please wait" are
        identical on purpose). Acknowledgements are never checked: a repeated 80 00 00 finds
        nothing waiting and is ignored."""
        ctl = (frame.apdu[0], frame.apdu[1]) if len(frame.apdu) >= 2 else None
        if ctl is None or _is_ack(ctl) or (self.role == "ecr" and ctl not in _RESULTS):
            return False
        return (frame.raw == self._last_rx and not self._peer_acked
                and self._now - self._last_rx_at <= self.config.t3 * self.config.frame_attempts)

    def _report(self, message: Any, error: Exception | None, raw: bytes) -> None:
        self._emit(MessageReceived(message, None, raw) if error is None else UndecodableMessage(error, None, raw))

    def _on_ack(self, ctl: tuple[int, int], raw: bytes) -> Any:
        """The peer's 80 00 00 / 84 xx for our message waiting for it; returns that message."""
        aw = self._awaiting
        if aw is None:
            self.stats["stray_acks"] += 1
            return None
        self._awaiting = None
        if ctl == _ACK:
            self._emit(Delivered(aw.message))
        else:
            self.stats["refused"] += 1
            self._emit(Refused(aw.message, ctl[1], raw))
        return aw.message

    def _ecr_in(self, apdu: Apdu, message: Any, error: Exception | None, raw: bytes) -> None:
        ctl = apdu.control
        if _is_ack(ctl):
            sent = self._on_ack(ctl, raw)
            if sent is None:
                return
            sctl = _control(sent)
            if sctl == ABORT and sent is not self._command:
                return                          # the PT ends the dialog with 06 1E
            if ctl == _ACK and sctl not in ACK_ONLY:
                self._state = _State.PT_MASTER
                self._t4 = self._now + self.config.t4
            else:
                self._to_ecr_master()
            return
        if ctl in MASTER_PHASE or ctl in CLOSING:
            aw = self._awaiting
            if aw is not None and (self._state is _State.COMMAND or ctl in CLOSING):
                # The PT went on without its 80 00 00 (some do): it took the command.
                self.stats["implied_acks"] += 1
                self._awaiting = None
                self._emit(Delivered(aw.message))
                if self._state is _State.COMMAND:
                    self._state = _State.PT_MASTER
            if self._held is not None:
                # The PT went on past the result we held (its T3 ran out): it is not ours to take now.
                self.refuse()
            if self.confirm_results and ctl == (0x04, 0x0F) and error is None:
                self._held, self._held_until = message, self._now + self.config.t3
            else:
                self._respond(None, Ack().encode())    # the ECR must acknowledge each one (ZVT)
            self._report(message, error, raw)
            if self._state is not _State.PT_MASTER:
                self.stats["unsolicited"] += 1
                return
            if ctl == INTERMEDIATE:
                self._t4 = self._now + self.config.t4
            if ctl in _ends(self._command):
                self._to_ecr_master()
            return
        # Not something a terminal sends: answered as a terminal answers what it does not know.
        self._respond(None, Nack(_UNKNOWN_COMMAND).encode())
        self._report(message, error, raw)

    def _pt_in(self, apdu: Apdu, message: Any, error: Exception | None, raw: bytes) -> None:
        ctl = apdu.control
        if _is_ack(ctl):
            self._on_ack(ctl, raw)
            return
        command = message if message is not None else apdu
        if self._state is not _State.PT_MASTER or ctl == ABORT:
            if self._state is _State.IDLE:
                self._state = _State.COMMAND
        else:
            self.stats["unsolicited"] += 1      # a command while the PT holds control: the app refuses it
        if len(self._unanswered) >= self.config.max_queue:
            self._unanswered.popleft()          # an ECR that floods commands: the oldest goes unanswered
            self.stats["unanswered_dropped"] += 1
        self._unanswered.append((command, self._now))
        self._report(message, error, raw)

    def _expire_unanswered(self) -> None:
        """PT: a command left unanswered past the ECR's T3, with a newer one behind it, is one
        the ECR stopped waiting for (it sent the next): answering it now would answer the newer."""
        while len(self._unanswered) > 1 and self._now - self._unanswered[0][1] >= self.config.t3:
            self._unanswered.popleft()
            self.stats["unanswered_dropped"] += 1

    # -- output and events ---------------------------------------------------------------

    def _clock(self, now: float | None) -> None:
        if now is not None:
            self._now = now

    def _put(self, byte: int) -> None:
        if len(self._out) >= OUT_CAP:
            self.stats["out_dropped"] += 1
            return
        self._out.append(byte)
        self._emit(ControlTrace("out", byte))

    def _emit(self, event: Event) -> None:
        if len(self._events) >= self.config.max_events:
            if isinstance(event, DIAGNOSTIC):
                self.stats["events_dropped"] += 1
                return
            raise EventQueueFull(f"{len(self._events)} ZVT link events not taken: call next_event()")
        self._events.append(event)
