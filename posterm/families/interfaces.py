"""What a protocol family provides, declared (the python-can way: the shape is checked,
the implementation is the family's own).

A family lives in ``posterm/families/<name>/`` and registers one
:class:`posterm.families.ProtocolFamily` (its ``family.py``). Everything shared (the ECR
session and journal, the emulator's firmware, the host, record/replay, the CLI) talks to a
family only through these interfaces; none of it names a family.

``Framer``
    Splits one direction's byte stream into the family's items (frames, control bytes,
    garbage). ``feed(data)``; ``pop()`` until ``None``; ``pending`` bytes of a partial frame;
    ``discard_partial()`` on the inter-byte timeout. Never waits or allocates on a length
    the peer chose beyond the family's maximum frame.
``Link``
    The sans-IO link of one side: bytes and time in, :mod:`posterm.families.events` and
    bytes out. No I/O and no clock reads. Driven by :mod:`posterm.families.pump`.
``EcrDriver``
    The ECR side: your code's handle on a terminal (``posterm.Terminal`` for the native
    family). Opens a port, journals, pays, queries, cancels, refunds, settles, recovers.
``TerminalFront``
    The emulator's side of the line: a Link whose events carry the firmware's internal
    vocabulary (native messages), translating the family's wire to it and back.
``RecordObserver``
    Watches both directions of a line for a recording: frames each side, says what each
    frame is (a JSON-able record) and which byte spans hold secrets (masked). A family's
    :class:`FamilyRecording` makes one, and gives replay, ``show`` and pcapng their
    family-specific answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from posterm.families.events import Event


@runtime_checkable
class Framer(Protocol):
    @property
    def pending(self) -> int: ...
    def feed(self, data: bytes) -> None: ...
    def pop(self) -> Any | None: ...
    def discard_partial(self) -> bytes: ...


@runtime_checkable
class Link(Protocol):
    """A sans-IO link. ``now`` is the caller's monotonic clock, in seconds."""

    stats: dict[str, int]

    def send(self, message: Any, now: float | None = None) -> bytes: ...
    def receive_data(self, data: bytes, now: float | None = None) -> None: ...
    def tick(self, now: float) -> None: ...
    def next_event(self) -> Event | None: ...
    def data_to_send(self) -> bytes: ...
    def next_deadline(self) -> float | None: ...
    def reset(self) -> list: ...
    def start_session(self) -> None: ...
    @property
    def idle(self) -> bool: ...


@runtime_checkable
class TerminalFront(Link, Protocol):
    """The emulated terminal's side of the line. Events carry native messages (the
    firmware's vocabulary); ``send`` takes native messages and puts the family's wire out.
    A front may drop answers the firmware queued for an ECR session that ended."""

    def drop_queued(self, which: Any = None, *, in_flight: bool = False) -> list: ...
    def new_session(self) -> list: ...   # the firmware got a Hello: returns the stale answers dropped


@runtime_checkable
class EcrDriver(Protocol):
    """The ECR driver API the CLI and your code use (see posterm.Terminal for the contract)."""

    port_name: str

    def close(self) -> None: ...
    def hello(self, timeout: float = ...) -> Any: ...
    def status(self, timeout: float = ...) -> Any: ...
    def pay(self, amount_minor: int, currency: str, order_id: str | None = None, **kw: Any) -> Any: ...
    def query(self, order_id: str, timeout: float = ...) -> Any: ...
    def cancel(self, order_id: str, operator_password: str | None = None, **kw: Any) -> Any: ...
    def refund(self, order_id: str, amount_minor: int, refund_id: str, operator_password: str, **kw: Any) -> Any: ...
    def settle(self, operator_password: str, timeout: float = ..., on_progress: Any = None) -> Any: ...
    def load_key(self, key_block: str, operator_password: str, timeout: float = ...) -> Any: ...
    def key_status(self, timeout: float = ...) -> Any: ...
    def abort(self, order_id: str | None = None, timeout: float = ...) -> Any: ...
    def recover(self, timeout: float = ..., **kw: Any) -> list: ...
    @property
    def link_stats(self) -> dict[str, int]: ...


OBSERVED_TYPES = ("frame", "event", "identity")


@dataclass(frozen=True, slots=True)
class Observed:
    """One record a :class:`RecordObserver` saw on the line, in the order it is to be written.

    ``record`` is the record: ``type`` (``"frame"``, ``"event"`` or ``"identity"``) and its
    fields. The recorder writes ``type``, ``t``, ``wall``, then (but for ``identity``)
    ``from`` (the sender: the recorder's, whatever the record says), then the record's other
    fields in their order. Each ``frame`` counts as a recorded frame. ``masks`` are
    ``[start, end)`` offsets in the sender's byte stream that may hold a secret: the recorder
    writes those bytes as ``2A`` in its chunk records. ``new_session``: this frame opens a
    new ECR session (a recorder that writes one file per session starts the next file
    before it). An ``identity``'s fields (the terminal's id, merchant, firmware) are also
    the next file's header ``terminal``.
    """

    record: dict[str, Any]
    masks: Sequence[tuple[int, int]] = ()
    new_session: bool = False

    def __post_init__(self) -> None:
        kind = self.record.get("type") if isinstance(self.record, dict) else None
        if kind not in OBSERVED_TYPES:   # anything else would make a file the reader refuses
            raise ValueError(f"an observed record is a dict whose type is frame, event or identity, not {kind!r}")


@runtime_checkable
class RecordObserver(Protocol):
    """One recording's view of the line (both directions). Made by the family per recording.

    ``feed(sender, data, offset)`` takes the next bytes ``sender`` (``"ecr"`` or
    ``"terminal"``) put on the line, ``offset`` being where they start in that sender's
    stream (the recorder counts; an observer may count itself), and returns what they
    completed, a list of :class:`Observed`: frames (secrets masked in ``hex`` and ``msg``,
    ``redacted`` naming the fields), link events, the terminal's identity.
    ``pending(sender)`` is how many bytes of a partial frame it holds;
    ``mask_pending(sender, offset)`` the spans of that partial frame (it begins at
    ``offset``) that may hold a secret, for when a frame stalls and the bytes must be
    written anyway. ``header()``: the family's fields of the file header (e.g. protocol
    versions), written after ``protocol``.
    """

    def header(self) -> dict[str, Any]: ...
    def feed(self, sender: str, data: bytes, offset: int) -> list[Observed]: ...
    def pending(self, sender: str) -> int: ...
    def mask_pending(self, sender: str, offset: int) -> list[tuple[int, int]]: ...


@dataclass(frozen=True, slots=True)
class PcapInterface:
    """How a family's frames appear in a pcapng capture: the link type (``DLT_USER0`` is
    147, ``DLT_USER1`` 148, ...; one per family, so each can have its own dissector), the
    interface name and an optional description."""

    linktype: int
    name: str
    description: str | None = None


@dataclass(frozen=True)
class FamilyRecording:
    """What a family gives recording, ``show``, ``convert``, ``tap`` and ``replay``: its
    :class:`posterm.families.ProtocolFamily` ``recording`` names one (``"module:attr"``).

    ``observer()`` makes a :class:`RecordObserver` for a new recording.
    ``build_script(recording, secrets)`` turns a :class:`posterm.record.Recording` into its
    exchanges (a list of :class:`posterm.record.replay.Exchange`; ``secrets`` substitute
    redacted fields); ``replay_terminal(transport, script, *, speed, fast, loop, masks,
    report)`` makes a player of the terminal's side (``run()``, ``stop``, ``done``,
    ``divergences``, ``answered``, ``used``: see :class:`posterm.record.replay.ReplayPlayer`);
    ``replay_ecr(transport, script, *, speed, fast, step, loops, masks, wait_for, min_wait,
    fresh_ids)`` plays the ECR's side and returns an
    :class:`posterm.record.replay.EcrReplayResult`. ``default_masks``: message fields that
    change every run, never diffed. ``record_fields``: required fields per record type
    where the family's differ from the format's (e.g. ``frame`` with ``seq``).
    ``show_label(header)``: how ``posterm show`` names the protocol of a recording;
    ``quiet_events`` and ``quiet_frames`` (frame kinds) are listed only with ``--acks``;
    ``hidden_frames`` are never listed (an event says the same). ``pcap``: see
    :class:`PcapInterface`.
    """

    observer: Callable[[], RecordObserver]
    build_script: Callable[..., list]
    replay_terminal: Callable[..., Any]
    replay_ecr: Callable[..., Any]
    pcap: PcapInterface
    default_masks: frozenset[str] = frozenset()
    record_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    show_label: Callable[[Mapping[str, Any]], str] = lambda header: str(header.get("protocol"))
    quiet_events: frozenset[str] = frozenset()
    quiet_frames: frozenset[str] = frozenset()
    hidden_frames: frozenset[str] = frozenset()
