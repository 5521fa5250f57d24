"""The recording format (JSON Lines), the recorder and the recording transport.

One JSON object per line, in this order:

* ``{"type": "header", "format": "posterm-recording", "format_version": 1, ...}``:
  tool and protocol versions, which side recorded, port settings, start time
  (wall ``started_at`` ISO 8601 UTC and ``started_wall`` epoch seconds).
* ``{"type": "chunk", "t", "wall", "from", "n", "hex"}``: bytes as they crossed
  the transport (``from`` is ``"ecr"`` or ``"terminal"``; ``t`` is monotonic
  seconds since the header). Secret bytes are replaced by ``2A`` (``*``).
* ``{"type": "frame", "t", "wall", "from", "kind", "seq", "hex", "msg",
  "redacted", "retransmit"}``: one decoded frame per direction (a Framer per
  direction). ``msg`` is :func:`posterm.families.native.redact.message_fields` (secrets masked);
  ``redacted`` names the masked fields, so replay can substitute them.
* ``{"type": "event", "t", "wall", "from", "event", ...}``: link events seen on
  the line: ``ack``, ``nak``, ``retransmit`` (``cause`` nak/timeout),
  ``bad_frame``, ``garbage``, ``partial``.
* ``{"type": "identity", ...}``: the terminal's identity, once its HelloReply passed.

Secrets never reach the file: frame hex goes through :func:`redact_frame`; chunk
hex is held back until the framer has seen whole frames, then masked at the same
stream offsets; a frame that failed its CRC has its whole payload masked (when in
doubt, mask), and so does a partial frame still buffered at close.

The header's ``protocol`` names the protocol family on the line: ``posterm`` (also
when absent: recordings made before families existed) or ``concert`` (Ingenico
Concert; records as described in :mod:`posterm.families.concert.record`: frames have ``kind``
``request``/``answer`` and no ``seq``, control bytes are ``enq``/``ack``/``nak``/``eot``
events, the answer's ``report`` keeps only its last 4 characters).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from firmware_protocol import concert as cc
from firmware_protocol.native import frame as fr
from firmware_protocol.native import messages as m
from firmware_protocol.errors import ProtocolError
from firmware_protocol.native.tlv import decode

from posterm import __version__
from posterm.errors import ConfigError
from posterm.ecr.trace import MASK_BYTE
from posterm.families.native.redact import message_fields, redact_frame, redacted_spans
from posterm.safefs import private_dir, private_file

FORMAT = "posterm-recording"
FORMAT_VERSION = 1
SIDES = ("ecr", "terminal")
PROTOCOLS = ("posterm", "concert")
MAX_LINE = 1 << 20          # a record line is at most a frame's hex plus fields: far below this
MAX_HELD = 4 * fr.MAX_FRAME  # chunk bytes held back per direction while a frame is incomplete


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


# ------------------------------------------------------------------ per-direction observer


def _check_protocol(protocol: str | None) -> str:
    protocol = protocol or "posterm"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"recording supports the protocols {', '.join(PROTOCOLS)}, not {protocol!r}")
    return protocol


class _Direction:
    """Frames one direction's byte stream and masks secret bytes at their stream offsets."""

    def __init__(self, sender: str, protocol: str = "posterm") -> None:
        self.sender = sender
        self.concert = protocol == "concert"
        self.framer = cc.ConcertFramer() if self.concert else fr.Framer()
        self.last_frame: bytes | None = None               # Concert: the last frame since this side's EOT
        self.consumed = 0          # stream offset of the framer's buffer start
        self.flushed = 0           # stream offset up to which chunks were written
        self.held: list[tuple[float, float, bytes]] = []  # (t, wall, bytes) not yet written
        self.held_bytes = 0
        self.masks: list[tuple[int, int]] = []            # absolute [start, end) to mask
        self.last_data: tuple[int, bytes] | None = None   # (seq, crc) of the last DATA frame
        self.nak_since = False     # the peer NAKed since this side's last DATA frame

    @property
    def pending(self) -> int:
        """Bytes the framer holds (an incomplete frame)."""
        return self.framer.pending

    def mask_pending(self) -> None:
        """Mask what may be the payload of the incomplete frame the framer holds.

        Concert: only the terminal's answers can carry card data (requests have no such field)."""
        if self.concert:
            if self.sender == "terminal" and self.pending > 1:
                self.masks.append((self.consumed + 1, self.consumed + self.pending))
        else:
            self.masks.append((self.consumed + fr.HEADER_SIZE, self.consumed + self.pending))

    def mask_payload(self, start: int, raw: bytes) -> None:
        if len(raw) > fr.HEADER_SIZE:
            self.masks.append((start + fr.HEADER_SIZE, start + len(raw)))


class Recorder:
    """Writes one recording. Thread-safe; ``close()`` flushes and closes the file.

    ``target`` is a path (created 0600; a symlink there is refused with
    :class:`~posterm.safefs.UnsafePath`) or an open text stream. ``port`` is a
    dict of port settings for the header; ``side`` says whose transport was wrapped;
    ``protocol`` is the family on the line (``posterm`` or ``concert``).
    """

    def __init__(self, target: str | Path | TextIO, *, side: str = "ecr", port: dict[str, Any] | None = None,
                 terminal: dict[str, Any] | None = None, clock=time.monotonic, wall=time.time,
                 protocol: str = "posterm") -> None:
        if side not in SIDES and side != "tap":
            raise ConfigError(f"side must be 'ecr', 'terminal' or 'tap', not {side!r}")
        self.protocol = _check_protocol(protocol)
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._dirs = {"ecr": _Direction("ecr", self.protocol), "terminal": _Direction("terminal", self.protocol)}
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
        versions = {} if self.protocol == "concert" else {"protocol_version": m.PROTOCOL_VERSION,
                                                           "link_version": fr.LINK_VERSION}
        self._write({"type": "header", "format": FORMAT, "format_version": FORMAT_VERSION,
                     "tool": f"posterm {__version__}", "protocol": self.protocol, **versions,
                     "side": self._side, "port": self._port,
                     "terminal": self._identity or self._terminal, "started_wall": round(start, 6),
                     "started_at": datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="milliseconds")})

    def _rotate(self) -> None:
        """A new ECR session began: finish this file, continue in a new one."""
        sp = self._session_dir
        assert sp is not None
        for d in self._dirs.values():
            if d.sender != "ecr":
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
            d.held.append((t, wall, bytes(data)))
            d.held_bytes += len(data)
            if d.concert:
                d.framer.feed(data)
                self._drain_concert(d, list(iter(d.framer.pop, None)), t, wall)
            else:
                d.framer.feed(data)
                self._drain(d, t, wall)
            if not d.pending or d.held_bytes > MAX_HELD:
                if d.pending:
                    # A frame stalls this long: mask what may be its payload and move on.
                    d.mask_pending()
                self._flush_chunks(d)
            self._fh.flush()

    def _drain(self, d: _Direction, t: float, wall: float) -> None:
        while (item := d.framer.pop()) is not None:
            start = d.consumed
            base = {"t": t, "wall": wall, "from": d.sender}
            if isinstance(item, fr.Garbage):
                d.consumed += len(item.data)
                # Garbage may be a frame whose header was mangled, secrets and all: mask it.
                d.masks.append((start, d.consumed))
                self._write({"type": "event", **base, "event": "garbage", "n": len(item.data)})
            elif isinstance(item, fr.BadFrame):
                # The framer resumes one byte after a CRC failure, after the frame otherwise.
                d.consumed += 1 if item.reason == "CRC mismatch" else len(item.raw)
                d.mask_payload(start, item.raw)
                masked = item.raw[: fr.HEADER_SIZE] + bytes([MASK_BYTE]) * (len(item.raw) - fr.HEADER_SIZE)
                self._write({"type": "event", **base, "event": "bad_frame", "seq": item.seq,
                             "reason": item.reason, "hex": masked.hex().upper()})
            else:
                d.consumed += len(item.raw)
                self._frame(d, item, start, base)

    def _frame(self, d: _Direction, frame: fr.LinkFrame, start: int, base: dict[str, Any]) -> None:
        if (self._rotating and d.sender == "ecr" and self.session_frames and frame.kind is fr.FrameKind.DATA
                and frame.payload[:2] == m.Hello.TYPE.to_bytes(2, "big") and d.last_data != (frame.seq, frame.raw[-2:])):
            self._rotate()
            base = {**base, "t": round(self._clock() - self._t0, 6)}
        self.frames += 1
        self.session_frames += 1
        masked, names = redact_frame(frame.raw)
        for s, e, _ in redacted_spans(frame.payload):
            d.masks.append((start + fr.HEADER_SIZE + s, start + fr.HEADER_SIZE + e))
        rec: dict[str, Any] = {"type": "frame", **base, "kind": frame.kind.name, "seq": frame.seq,
                               "hex": masked.hex().upper()}
        other = self._dirs["terminal" if d.sender == "ecr" else "ecr"]
        if frame.kind is fr.FrameKind.DATA:
            key = (frame.seq, frame.raw[-2:])
            retransmit = d.last_data == key
            d.last_data = key
            try:
                msg = decode(frame.payload)
            except ProtocolError as exc:
                rec["msg"] = None
                rec["error"] = str(exc)
                d.mask_payload(start, frame.raw)
                rec["hex"] = (frame.raw[: fr.HEADER_SIZE] + bytes([MASK_BYTE]) * (len(frame.raw) - fr.HEADER_SIZE)).hex().upper()
                names = ["undecodable"]
            else:
                rec["msg"] = message_fields(msg)
                if isinstance(msg, m.HelloReply):
                    self._identity = {"terminal_id": msg.terminal_id, "merchant_id": msg.merchant_id,
                                      "firmware_version": msg.firmware_version,
                                      "protocol_version": msg.protocol_version}
            if names:
                rec["redacted"] = names
            if retransmit:
                rec["retransmit"] = True
            self._write(rec)
            if retransmit:
                cause = "nak" if other.nak_since else "timeout"
                self._write({"type": "event", **base, "event": "retransmit", "seq": frame.seq, "cause": cause})
            other.nak_since = False
            if isinstance(rec.get("msg"), dict) and rec["msg"]["type"] == "HelloReply" and not retransmit:
                self._write({"type": "identity", "t": base["t"], "wall": base["wall"], **self._identity})
        else:
            self._write(rec)
            event = frame.kind.name.lower()
            if frame.kind is fr.FrameKind.NAK:
                d.nak_since = True
            self._write({"type": "event", **base, "event": event, "seq": frame.seq})

    # -- Concert -------------------------------------------------------------

    def _drain_concert(self, d: _Direction, items: list, t: float, wall: float) -> None:
        from posterm.families.concert.record import CONTROL_EVENTS

        other = self._dirs["terminal" if d.sender == "ecr" else "ecr"]
        for item in items:
            start = d.consumed
            base = {"t": t, "wall": wall, "from": d.sender}
            if isinstance(item, int):
                d.consumed += 1
                if item == cc.NAK:
                    d.nak_since = True
                elif item == cc.EOT:
                    d.last_frame = None          # this side's transmission is over
                self._write({"type": "event", **base, "event": CONTROL_EVENTS.get(item, f"0x{item:02X}")})
            elif isinstance(item, cc.ConcertGarbage):
                d.consumed += len(item.data)
                if d.sender == "terminal":       # may be an answer whose STX was lost, report and all
                    d.masks.append((start, d.consumed))
                self._write({"type": "event", **base, "event": "garbage", "n": len(item.data)})
            else:
                d.consumed += len(item)
                self._concert_frame(d, other, bytes(item), start, base)

    def _concert_frame(self, d: _Direction, other: _Direction, raw: bytes, start: int, base: dict[str, Any]) -> None:
        from posterm.families.concert.record import bad_frame_reason, concert_fields, decode_frame, report_span

        try:
            msg = decode_frame(raw, d.sender)
        except (ProtocolError, ValueError) as exc:
            hexed = raw
            if d.sender == "terminal" and len(raw) > 3:   # when in doubt, mask (the body may hold a report)
                d.masks.append((start + 1, start + len(raw) - 2))
                hexed = raw[:1] + bytes([MASK_BYTE]) * (len(raw) - 3) + raw[-2:]
            self._write({"type": "event", **base, "event": "bad_frame", "reason": bad_frame_reason(exc, d.sender),
                         "hex": hexed.hex().upper()})
            return
        self.frames += 1
        self.session_frames += 1
        masked, names = raw, []
        if isinstance(msg, cc.ConcertAnswer) and (span := report_span(msg)) is not None:
            s, e = span
            d.masks.append((start + s, start + e))
            masked = raw[:s] + bytes([MASK_BYTE]) * (e - s) + raw[e:]
            names = ["report"]
        rec: dict[str, Any] = {"type": "frame", **base, "kind": "request" if isinstance(msg, cc.ConcertRequest)
                               else "answer", "hex": masked.hex().upper(), "msg": concert_fields(msg)}
        if names:
            rec["redacted"] = names
        retransmit = d.last_frame == raw
        d.last_frame = raw
        if retransmit:
            rec["retransmit"] = True
        self._write(rec)
        if retransmit:
            self._write({"type": "event", **base, "event": "retransmit",
                         "cause": "nak" if other.nak_since else "timeout"})
        other.nak_since = False

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
            if d.pending:
                d.mask_pending()
                t, wall = self._stamp()
                self._write({"type": "event", "t": t, "wall": wall, "from": d.sender, "event": "partial",
                             "n": d.pending})
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
    ``protocol``: the family on the line for a new Recorder (``posterm`` or ``concert``;
    a given Recorder keeps its own).
    ``read``/``write``/``close``/``description``/``fileno`` pass through.
    """

    def __init__(self, inner: Any, path_or_recorder: str | Path | Recorder, side: str = "ecr",
                 port: dict[str, Any] | None = None, protocol: str = "posterm") -> None:
        """A shared Recorder (e.g. one per driver session across reconnects) is only
        flushed by :meth:`close`; its owner closes it. Raises ConfigError for a bad side or protocol."""
        if side not in SIDES:
            raise ConfigError(f"side must be 'ecr' or 'terminal', not {side!r}")
        protocol = _check_protocol(protocol)
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


_REQUIRED = {"chunk": ("t", "from", "hex"), "frame": ("t", "from", "kind", "seq", "hex"),
             "event": ("t", "event"), "identity": ()}
_REQUIRED_CONCERT = {**_REQUIRED, "frame": ("t", "from", "kind", "hex")}  # Concert frames have no sequence number


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
                if rec.get("protocol", "posterm") not in PROTOCOLS:
                    raise RecordingError(p, n, f"protocol {rec.get('protocol')!r} is not supported"
                                               f" (this posterm reads {', '.join(PROTOCOLS)})")
                if rec.get("protocol") == "concert":
                    required = _REQUIRED_CONCERT
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
                  protocol: str = "posterm") -> Callable[..., Any]:
    """Wrap a transport opener so every transport it opens (the first one and any
    reconnection) records, as the ECR, into one recording at ``path``.
    ``protocol``: the family on the line (``posterm`` or ``concert``)."""
    recorder = Recorder(path, side="ecr", port={"url": url, **{k: v for k, v in settings.items()
                                                             if isinstance(v, (int, float, str, bool))}},
                        protocol=protocol)

    def open_and_record(u: str, **kw: Any) -> RecordingTransport:
        return RecordingTransport(opener(u, **kw), recorder, side="ecr")

    return open_and_record
