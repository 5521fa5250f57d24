"""The events every family's sans-IO link gives its caller: one type per meaning.

A link (:class:`posterm.families.interfaces.Link`) turns bytes and time into these.
Fields a family's line does not have are ``None`` (Concert frames carry no sequence
number: ``seq`` is ``None``). Frozen and slotted; compare by value.

===================== ==================================================================
event                 meaning
===================== ==================================================================
MessageReceived       a new message from the peer, already acknowledged on the line
UndecodableMessage    a well-framed message whose body does not decode (acknowledged;
                      the application answers it with an error)
Delivered             the peer acknowledged our message
Retransmitted         we sent our message again (``cause``: ``"nak"`` or ``"timeout"``)
SendFailed            the peer never took our message; the link gave up on it
FrameRejected         we refused a frame from the peer (bad checksum, version, layout)
DuplicateIgnored      a retransmission of a message already delivered, acknowledged again
GarbageSkipped        bytes between frames that are no frame
PartialDiscarded      a partial frame that stalled past the inter-byte timeout, dropped
FrameTrace            a frame in or out, for traces and recordings (when asked for)
ControlTrace          a control byte in or out (ENQ, ACK, NAK, EOT), for traces
ResultDelivery        from an emulator front: whether the ECR took an outcome (its ACK)
===================== ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ControlTrace", "Delivered", "DuplicateIgnored", "Event", "FrameRejected", "FrameTrace", "GarbageSkipped",
    "MessageReceived", "PartialDiscarded", "Retransmitted", "ResultDelivery", "SendFailed", "UndecodableMessage",
    "DIAGNOSTIC",
]


class Event:
    """Base of link events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A new message from the peer (already acknowledged)."""

    message: Any
    seq: int | None
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UndecodableMessage(Event):
    """A well-framed message whose payload is not a valid message (acknowledged: the
    link delivered it; the application should answer with an error)."""

    error: Exception
    seq: int | None
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Delivered(Event):
    """The peer acknowledged our message."""

    message: Any
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Retransmitted(Event):
    message: Any
    seq: int | None
    attempt: int
    cause: str  # "nak" or "timeout"


@dataclass(frozen=True, slots=True)
class SendFailed(Event):
    """The peer never took the message after ``attempts`` tries: the link gave up on it.
    ``cause`` says what was missing (``"no ACK"``, ``"no ACK to ENQ"``, ``"frame not ACKed"``)."""

    message: Any
    seq: int | None
    attempts: int
    cause: str = "no ACK"


@dataclass(frozen=True, slots=True)
class FrameRejected(Event):
    """A frame we refused (answered by NAK where the family has one)."""

    seq: int | None
    reason: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DuplicateIgnored(Event):
    seq: int | None


@dataclass(frozen=True, slots=True)
class GarbageSkipped(Event):
    data: bytes


@dataclass(frozen=True, slots=True)
class PartialDiscarded(Event):
    """A partial frame stalled past the inter-byte timeout and was dropped."""

    data: bytes


@dataclass(frozen=True, slots=True)
class FrameTrace(Event):
    """Every frame in or out, when the link is asked to trace (for traces and recordings).
    ``kind`` is the family's frame kind (an enum member or a short name)."""

    direction: str  # "in" or "out"
    kind: Any
    seq: int | None
    raw: bytes
    message: Any = None


@dataclass(frozen=True, slots=True)
class ControlTrace(Event):
    """A control byte seen or sent (ENQ, ACK, NAK, EOT...), for traces and recordings."""

    direction: str   # "in" | "out"
    byte: int


@dataclass(frozen=True, slots=True)
class ResultDelivery(Event):
    """From a terminal front that knows whether the ECR took an outcome (Concert: the ECR's
    ACK of the answer frame) to the emulator's firmware. ``delivered`` False: the ECR never
    acknowledged it; the firmware may reverse the order (FirmwareConfig.void_unfinished)."""

    order_id: str
    delivered: bool
    cause: str = ""


# Events that only describe the line: a link drops (and counts) these rather than raise on overflow.
DIAGNOSTIC = (GarbageSkipped, FrameRejected, DuplicateIgnored, PartialDiscarded, FrameTrace, ControlTrace, Retransmitted)
