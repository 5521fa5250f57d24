"""The recording format (JSON Lines), the recorder and the recording transport.

One JSON object per line, in this order:

* ``{"type": "header", "format": "posterm-recording", "format_version": 1, ...}``:
  tool and protocol versions, which side recorded, port settings, start time
  (wall ``started_at`` ISO 8601 UTC and ``started_wall`` epoch seconds).
* ``{"type": "chunk", "t", "wall", "from", "n", "hex"}``: bytes as they crossed
  the transport (``from`` is ``"ecr"`` or ``"terminal"``; ``t`` is monotonic
  seconds since the header). Secret bytes are replaced by ``2A`` (``*``).
* ``{"type": "frame", "t", "wall", "from", "kind", "hex", "msg", "redacted",
  "retransmit", ...}``: one decoded frame (the family's framer splits each direction).
  ``msg`` holds the message's fields, secrets masked; ``redacted`` names the masked
  fields, so replay can substitute them; ``retransmit`` marks a frame sent again.
* ``{"type": "event", "t", "wall", "from", "event", ...}``: link events seen on
  the line, e.g. ``ack``, ``nak``, ``retransmit`` (``cause`` nak/timeout),
  ``bad_frame``, ``garbage``, ``partial``.
* ``{"type": "identity", ...}``: the terminal's identity, once it told it.

Secrets never reach the file: the family's :class:`~posterm.families.interfaces.RecordObserver`
masks them in the frame records and says at which stream offsets they lie; chunk hex is
held back until the observer has seen whole frames, then masked at those offsets. A stalled
partial frame (held past :data:`MAX_HELD`, or still buffered at close) is masked where the
observer says it may hold one.

The header's ``protocol`` names the protocol family on the line (a
:class:`posterm.families.ProtocolFamily` with a ``recording``; absent: ``posterm``, the
recordings made before families existed). What frames and events a family records is
its own (``posterm.families.<name>.record``); this module names none.
"""

from __future__ import annotations

import json
import os
import pkgutil
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from posterm import __version__
from posterm.ecr.trace import MASK_BYTE  # "*": what a masked byte of a chunk is written as
from posterm.errors import ConfigError
from posterm.families import BUILTIN, ProtocolFamily, family, names
from posterm.families.interfaces import FamilyRecording, Observed, PcapInterface, RecordObserver
from posterm.safefs import private_dir, private_file

FORMAT = "posterm-recording"
FORMAT_VERSION = 1
SIDES = ("ecr", "terminal")
DEFAULT_PROTOCOL = "posterm"  # a header without ``protocol`` predates families: posterm's own protocol
MAX_LINE = 1 << 20          # a record line is at most a frame's hex plus fields: far below this
# Chunk bytes held back per direction while a frame is incomplete: four of the largest frame
# of posterm's own protocol (4106 bytes). A family whose frames are longer than this gets
# its stalled partial frames masked (RecordObserver.mask_pending) and written in pieces.
MAX_HELD = 4 * 4106


class RecordingError(ConfigError):
    """A recording file is corrupt, truncated or not a recording. Names the file and line."""

    def __init__(self, path: str | Path, line: int, problem: str) -> None:
        super().__init__(f"{path}: line {line}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


class SessionPath(type(Path())):  # type: ignore[misc]
    """A path from :func:`recording_path`: it remembers its directory and prefix, so a
    :class:`RecordingTransport` given one starts a new file at each new ECR session
    (each Hello after the first), as ``posterm emulate --record DIR`` promises."""

    directory: Path
    prefix: str


def recording_path(directory: str | Path, prefix: str) -> SessionPath:
    """A new file name in ``directory`` for one session: ``PREFIX-YYYYmmddTHHMMSS-NNN.jsonl``.

    Creates the directory (0700 if missing; an existing one is the user's and left as it is)
    and the empty file, 0600. Never returns an existing file (a counter breaks ties); a
    symlink planted at the name is refused (:class:`~posterm.safefs.UnsafePath`). Given to :class:`RecordingTransport`, later ECR sessions
    go to further files of the same form.
    """
    d = private_dir(directory)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for n in range(1000):
        p = d / f"{prefix}-{stamp}-{n:03d}.jsonl"
        try:
            fd = private_file(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, parent=False)
        except FileExistsError:
            continue
        os.close(fd)
        sp = SessionPath(p)
        sp.directory, sp.prefix = d, prefix
        return sp
    raise ConfigError(f"{d}: more than 1000 recordings named {prefix}-{stamp}-*")


# ------------------------------------------------------------------ the families


def recording_support(protocol: str | None) -> FamilyRecording:
    """The :class:`FamilyRecording` of the family called ``protocol`` (``None``: posterm).

    Raises :class:`ConfigError` naming the known families when none is called that, or
    saying that the family cannot be recorded when it has no recording support.
    """
    name = DEFAULT_PROTOCOL if protocol is None else protocol
    if name not in BUILTIN and name not in (known := names()):   # entry points only when needed
        raise ConfigError(f"protocol {name!r} is not supported (known families: {', '.join(known)})")
    fam: ProtocolFamily = family(name)
    spec = getattr(fam, "recording", None)
    if not spec:
        if getattr(fam, "record_observer", None):
            return _observer_only(fam)
        raise ConfigError(f"protocol {name!r} cannot be recorded or replayed (its family has no recording support)")
    try:
        support = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"protocol {name!r}: its recording support {spec!r} does not load ({exc})") from None
    if not isinstance(support, FamilyRecording):
        raise ConfigError(f"protocol {name!r}: {spec!r} is not a FamilyRecording")
    return support


def _observer_only(fam: ProtocolFamily) -> FamilyRecording:
    """The recording support of a family that gives only a record observer (its
    ``record_observer``): it records, shows, converts and taps; replay says it cannot."""
    def cannot(*_: Any, **__: Any) -> Any:
        raise ConfigError(f"protocol {fam.name!r} records but cannot be replayed (its family gives no replay)")

    def observer() -> RecordObserver:
        try:
            return pkgutil.resolve_name(fam.record_observer)()   # type: ignore[attr-defined]
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"protocol {fam.name!r}: its record observer does not load ({exc})") from None

    return FamilyRecording(observer=observer, build_script=cannot, replay_terminal=cannot, replay_ecr=cannot,
                           pcap=PcapInterface(162, f"posterm-{fam.name}"))   # DLT_USER15: no link type of its own


class _Direction:
    """One direction's chunks not yet written, and where in its stream secrets lie."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.flushed = 0           # stream offset up to which chunks were written
        self.held: list[tuple[float, float, bytes]] = []  # (t, wall, bytes) not yet written
        self.held_bytes = 0
        self.masks: list[tuple[int, int]] = []            # absolute [start, end) to mask


class Recorder:
    """Writes one recording. Thread-safe; ``close()`` flushes and closes the file.

    ``target`` is a path (created 0600; a symlink there is refused with
    :class:`~posterm.safefs.UnsafePath`) or an open text stream. ``port`` is a
    dict of port settings for the header; ``side`` says whose transport was wrapped;
    ``protocol`` names the family on the line (its :class:`FamilyRecording` frames,
    decodes and masks). Raises ConfigError for a bad side or a family that cannot be recorded.
    """

    def __init__(self, target: str | Path | TextIO, *, side: str = "ecr", port: dict[str, Any] | None = None,
                 terminal: dict[str, Any] | None = None, clock=time.monotonic, wall=time.time,
                 protocol: str = DEFAULT_PROTOCOL) -> None:
        if side not in SIDES and side != "tap":
            raise ConfigError(f"side must be 'ecr', 'terminal' or 'tap', not {side!r}")
        self.protocol = protocol or DEFAULT_PROTOCOL
        self._observer: RecordObserver = recording_support(self.protocol).observer()
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._dirs = {sender: _Direction(sender) for sender in SIDES}
        self._closed = False
        self._side, self._port, self._terminal = side, port or {}, terminal
        self._identity: dict[str, Any] | None = None
        self.frames = 0
        self.session_frames = 0
        self.paths: list[Path] = []
        self._rotating = isinstance(target, SessionPath)
        self._session_dir = target if isinstance(target, SessionPath) else None
        if isinstance(target, (str, Path)):
            self._open_file(Path(target))
        else:
            self.path, self._fh, self._owns = None, target, False
            self._begin()

    def _open_file(self, path: Path) -> None:
        self.path = path
        self.paths.append(path)
        fd = private_file(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, parent=False)  # no planted link
        self._fh = os.fdopen(fd, "w", encoding="utf-8")
        self._owns = True
        # A recorder shared across reconnects (open_recorded) has no single closer:
        # everything is flushed as it goes, and the file closes when the recorder goes.
        weakref.finalize(self, self._fh.close)
        self._begin()

    def _begin(self) -> None:
        self._t0 = self._clock()
        self.session_frames = 0
        start = self._wall()
        self._write({"type": "header", "format": FORMAT, "format_version": FORMAT_VERSION,
                     "tool": f"posterm {__version__}", "protocol": self.protocol, **self._observer.header(),
                     "side": self._side, "port": self._port,
                     "terminal": self._identity or self._terminal, "started_wall": round(start, 6),
                     "started_at": datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="milliseconds")})

    def _rotate(self, sender: str) -> None:
        """A new ECR session began (``sender``'s frame): finish this file, continue in a new one.

        The other direction's held chunks end this file; ``sender``'s (the new session's
        first frame among them) begin the next."""
        sp = self._session_dir
        assert sp is not None
        for d in self._dirs.values():
            if d.sender != sender:
                self._flush_chunks(d)
        self._fh.flush()
        self._fh.close()
        self._open_file(recording_path(sp.directory, sp.prefix))

    # -- writing --------------------------------------------------------------

    def _write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")

    def _stamp(self) -> tuple[float, float]:
        return round(self._clock() - self._t0, 6), round(self._wall(), 6)

    def data(self, sender: str, data: bytes) -> None:
        """Record bytes sent by ``sender`` (``"ecr"`` or ``"terminal"``)."""
        if not data or self._closed:
            return
        t, wall = self._stamp()
        with self._lock:
            d = self._dirs[sender]
            offset = d.flushed + d.held_bytes          # where these bytes start in the sender's stream
            d.held.append((t, wall, bytes(data)))
            d.held_bytes += len(data)
            for seen in self._observer.feed(sender, bytes(data), offset):
                self._observed(d, seen, t, wall)
            pending = self._observer.pending(sender)
            if not pending or d.held_bytes > MAX_HELD:
                if pending:
                    # A frame stalls this long: mask what may be its payload and move on.
                    self._mask_pending(d, pending)
                self._flush_chunks(d)
            self._fh.flush()

    def _mask_pending(self, d: _Direction, pending: int) -> None:
        d.masks.extend(self._observer.mask_pending(d.sender, d.flushed + d.held_bytes - pending))

    def _observed(self, d: _Direction, seen: Observed, t: float, wall: float) -> None:
        """Write one record the observer saw (``t``, ``wall``: when its bytes came)."""
        d.masks.extend((int(s), int(e)) for s, e in seen.masks)
        kind = seen.record["type"]
        fields = {k: v for k, v in seen.record.items() if k not in ("type", "t", "wall", "from")}
        if kind == "identity":
            self._identity = fields
            self._write({"type": "identity", "t": t, "wall": wall, **fields})
            return
        stamp = t
        if seen.new_session and self._rotating and self.session_frames:
            self._rotate(d.sender)
            stamp = round(self._clock() - self._t0, 6)   # the new file's clock
        if kind == "frame":
            self.frames += 1
            self.session_frames += 1
        self._write({"type": kind, "t": stamp, "wall": wall, "from": d.sender, **fields})

    def _flush_chunks(self, d: _Direction) -> None:
        for t, wall, data in d.held:
            begin = d.flushed
            end = begin + len(data)
            buf = bytearray(data)
            for s, e in d.masks:
                lo, hi = max(s, begin), min(e, end)
                if lo < hi:
                    buf[lo - begin : hi - begin] = bytes([MASK_BYTE]) * (hi - lo)
            self._write({"type": "chunk", "t": t, "wall": wall, "from": d.sender, "n": len(data),
                         "hex": bytes(buf).hex().upper()})
            d.flushed = end
        d.held.clear()
        d.held_bytes = 0
        d.masks = [(s, e) for s, e in d.masks if e > d.flushed]

    def event(self, sender: str, event: str, **fields: Any) -> None:
        """Record a link event the caller saw itself (e.g. ``timeout`` from a link)."""
        if self._closed:
            return
        t, wall = self._stamp()
        with self._lock:
            self._write({"type": "event", "t": t, "wall": wall, "from": sender, "event": event, **fields})
            self._fh.flush()

    def flush(self) -> None:
        """Write every held chunk now (a partial frame's payload masked) and flush the file."""
        with self._lock:
            if not self._closed:
                self._flush_all()

    def close(self) -> None:
        """Flush held chunks (a stalled partial frame's payload masked) and close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._flush_all()
            if self._owns:
                self._fh.close()

    def _flush_all(self) -> None:
        for d in self._dirs.values():
            pending = self._observer.pending(d.sender)
            if pending:
                self._mask_pending(d, pending)
                t, wall = self._stamp()
                self._write({"type": "event", "t": t, "wall": wall, "from": d.sender, "event": "partial",
                             "n": pending})
            self._flush_chunks(d)
        self._fh.flush()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ the transport wrapper


class RecordingTransport:
    """Wraps any transport and records every chunk both ways.

    ``side`` says whose transport this is: ``"ecr"`` (writes are the ECR's bytes,
    reads the terminal's) or ``"terminal"`` (the reverse). ``path_or_recorder`` is
    a file path (a new :class:`Recorder`, closed with this transport) or a Recorder.
    ``protocol``: the family on the line for a new Recorder (a given Recorder keeps its own).
    ``read``/``write``/``close``/``description``/``fileno`` pass through.
    """

    def __init__(self, inner: Any, path_or_recorder: str | Path | Recorder, side: str = "ecr",
                 port: dict[str, Any] | None = None, protocol: str = DEFAULT_PROTOCOL) -> None:
        """A shared Recorder (e.g. one per driver session across reconnects) is only
        flushed by :meth:`close`; its owner closes it. Raises ConfigError for a bad side or protocol."""
        if side not in SIDES:
            raise ConfigError(f"side must be 'ecr' or 'terminal', not {side!r}")
        recording_support(protocol or DEFAULT_PROTOCOL)   # a family that cannot be recorded fails before anything is wrapped
        self.inner = inner
        self.side = side
        self._peer = "terminal" if side == "ecr" else "ecr"
        if isinstance(path_or_recorder, Recorder):
            self.recorder, self._owns = path_or_recorder, False
        else:
            desc = getattr(inner, "description", "")
            self.recorder = Recorder(path_or_recorder, side=side, port={"description": desc, **(port or {})},
                                     protocol=protocol)
            self._owns = True

    @property
    def description(self) -> str:
        return getattr(self.inner, "description", "")

    @property
    def closed(self) -> bool:
        return bool(getattr(self.inner, "closed", False))

    def read(self, max_bytes: int, timeout: float) -> bytes:
        data = self.inner.read(max_bytes, timeout)
        if data:
            self.recorder.data(self._peer, data)
        return data

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        if data:
            self.recorder.data(self.side, data)

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if self._owns:
                self.recorder.close()
            else:
                self.recorder.flush()

    def __enter__(self) -> "RecordingTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # e.g. PtyTransport.path, FaultyTransport.stats
        return getattr(self.inner, name)


# ------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class Recording:
    """A parsed recording: the header and the records after it (dicts, file order)."""

    path: str
    header: dict[str, Any]
    records: tuple[dict[str, Any], ...]

    def frames(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "frame"]

    @property
    def protocol(self) -> str:
        """The family on the recorded line (the header's ``protocol``)."""
        return self.header.get("protocol", DEFAULT_PROTOCOL)

    @property
    def support(self) -> FamilyRecording:
        """The family's recording support (the reader checked that it has one)."""
        return recording_support(self.protocol)


# Fields every record of a type has, whatever the family; FamilyRecording.record_fields adds its own.
_REQUIRED: dict[str, tuple[str, ...]] = {"chunk": ("t", "from", "hex"), "frame": ("t", "from", "kind", "hex"),
                                         "event": ("t", "event"), "identity": ()}


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)``; the first is the header.

    Raises :class:`RecordingError` naming the line for anything unreadable:
    not JSON, a truncated last line, an unknown record type, a missing field,
    bad hex, or no header.
    """
    p = Path(path)
    try:
        fh = p.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise RecordingError(p, 0, f"cannot open: {exc.strerror or exc}") from None
    with fh:
        n = 0
        required = _REQUIRED
        for n, line in enumerate(iter(lambda: fh.readline(MAX_LINE + 1), ""), 1):
            if len(line) > MAX_LINE:
                raise RecordingError(p, n, f"line longer than {MAX_LINE} characters")
            if not line.endswith("\n"):
                raise RecordingError(p, n, "truncated: the last line is incomplete (no newline)")
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RecordingError(p, n, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict) or "type" not in rec:
                raise RecordingError(p, n, "not a recording record (no 'type')")
            if n == 1:
                if rec.get("type") != "header" or rec.get("format") != FORMAT:
                    raise RecordingError(p, n, "not a posterm recording (no header)")
                if rec.get("format_version") != FORMAT_VERSION:
                    raise RecordingError(p, n, f"format version {rec.get('format_version')!r} is not supported"
                                               f" (this posterm reads {FORMAT_VERSION})")
                try:
                    support = recording_support(rec.get("protocol", DEFAULT_PROTOCOL))
                except ConfigError as exc:
                    raise RecordingError(p, n, str(exc)) from None
                required = {**_REQUIRED, **support.record_fields}
                yield n, rec
                continue
            kind = rec["type"]
            if kind not in required:
                raise RecordingError(p, n, f"unknown record type {kind!r}")
            missing = [f for f in required[kind] if f not in rec]
            if missing:
                raise RecordingError(p, n, f"{kind} record without {', '.join(missing)}")
            if "hex" in rec:
                try:
                    bytes.fromhex(rec["hex"])
                except (ValueError, TypeError):
                    raise RecordingError(p, n, "field 'hex' is not hexadecimal") from None
            if "t" in rec and not isinstance(rec["t"], (int, float)):
                raise RecordingError(p, n, "field 't' is not a number")
            if "from" in rec and rec["from"] not in SIDES:
                raise RecordingError(p, n, f"field 'from' must be ecr or terminal, not {rec['from']!r}")
            yield n, rec
        if n == 0:
            raise RecordingError(p, 1, "empty file: no header")


def load(path: str | Path) -> Recording:
    """Read a whole recording. Raises :class:`RecordingError` (names the line)."""
    it = iter_records(path)
    _, header = next(it)
    return Recording(str(path), header, tuple(rec for _, rec in it))


def open_recorded(opener: Callable[..., Any], path: str | Path, url: str, settings: dict[str, Any],
                  protocol: str = DEFAULT_PROTOCOL) -> Callable[..., Any]:
    """Wrap a transport opener so every transport it opens (the first one and any
    reconnection) records, as the ECR, into one recording at ``path``.
    ``protocol``: the family on the line. Raises ConfigError if it cannot be recorded."""
    recorder = Recorder(path, side="ecr", port={"url": url, **{k: v for k, v in settings.items()
                                                             if isinstance(v, (int, float, str, bool))}},
                        protocol=protocol)

    def open_and_record(u: str, **kw: Any) -> RecordingTransport:
        return RecordingTransport(opener(u, **kw), recorder, side="ecr")

    return open_and_record
