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
    frame is (a JSON-able record) and which byte spans hold secrets (masked).
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, runtime_checkable

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


@runtime_checkable
class RecordObserver(Protocol):
    """One recording's view of the line (both directions). Made by the family per recording.

    ``feed(sender, data, offset)`` takes bytes ``sender`` (``"ecr"`` or ``"terminal"``) put
    on the line, ``offset`` being where they start in that sender's stream, and returns
    what it saw: a list of :class:`Observed`. ``pending(sender)`` is how many bytes of a
    partial frame it holds; ``mask_pending(sender, offset)`` the spans of that partial frame
    that may hold a secret (when a frame stalls and the bytes must be written anyway).
    """

    def header(self) -> dict[str, Any]: ...
    def feed(self, sender: str, data: bytes, offset: int) -> Iterable[Any]: ...
    def pending(self, sender: str) -> int: ...
    def mask_pending(self, sender: str, offset: int) -> list[tuple[int, int]]: ...
