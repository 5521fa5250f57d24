"""Recording and replay of Ingenico Concert sessions (see :mod:`firmware_protocol.concert`).

What differs from posterm's own protocol:

* the line is ``ENQ / ACK / STX body ETX LRC / ACK / EOT``; control bytes are recorded
  as ``event`` records (``enq``, ``ack``, ``nak``, ``eot``), each ``STX..ETX LRC``
  frame as one ``frame`` record with ``kind`` ``"request"`` (ECR -> terminal) or
  ``"answer"`` (terminal -> ECR) and no ``seq``;
* ``msg`` holds the dataclass fields of :class:`ConcertRequest` / :class:`ConcertAnswer`
  (enums as their values, e.g. ``"txn_type": "0"``) plus ``type``;
* the only field that can hold card data is the long answer's 55-byte ``report``:
  everything but its last 4 characters is masked (:func:`posterm.ecr.trace.mask_code`)
  in frame hex, chunk hex and ``msg``, and ``redacted`` says ``["report"]``. Requests
  carry no secret. A frame from the terminal that does not decode (bad LRC, malformed),
  garbage from the terminal and a partial answer still buffered have their body masked.

Replay matches by message (transaction type, amount, currency), not bytes; each side runs
its own :class:`posterm.families.concert.link.ConcertLink`. :data:`RECORDING` is what the
family gives :mod:`posterm.record` (:class:`~posterm.families.interfaces.FamilyRecording`).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any, Callable

from firmware_protocol.concert import (
    ACK,
    ENQ,
    EOT,
    NAK,
    BadLrc,
    ConcertAnswer,
    ConcertFramer,
    ConcertGarbage,
    ConcertRequest,
    Status,
)
from firmware_protocol.errors import FieldError, ProtocolError

from posterm.errors import ConfigError, LinkFailed
from posterm.families.interfaces import FamilyRecording, Observed, PcapInterface
from posterm.families.observer import FramedObserver, Side
from posterm.ecr.trace import MASK_BYTE, mask_code
from posterm.record.replay import ReplayPlayer

PROTOCOL = "concert"
REPORT_OFFSET = 1 + 12           # STX, then pos_number(2) status(1) amount(8) mode(1)
CONTROL_EVENTS = {ENQ: "enq", ACK: "ack", NAK: "nak", EOT: "eot"}
# Fields of a Concert answer that change every run: never diffed (private is added when
# the terminal made it up rather than echoing the request's).
CONCERT_MASKS = frozenset({"report"})
KINDS = {"request": ConcertRequest, "answer": ConcertAnswer}
LINGER = 0.3   # seconds the replaying terminal stays on the line after its last EOT


# ------------------------------------------------------------------ fields and redaction


def concert_fields(msg: ConcertRequest | ConcertAnswer) -> dict[str, Any]:
    """The message's dataclass fields (enums as their values) and ``type``; the report masked."""
    out: dict[str, Any] = {"type": type(msg).__name__}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        if f.name == "report" and value:
            value = mask_code(value)
        out[f.name] = value
    return out


def report_span(answer: ConcertAnswer) -> tuple[int, int] | None:
    """[start, end) inside the answer's frame of the report bytes to mask, or None."""
    if not answer.report or len(answer.report) <= 4:
        return None
    return REPORT_OFFSET, REPORT_OFFSET + len(answer.report) - 4


def decode_frame(raw: bytes, sender: str) -> ConcertRequest | ConcertAnswer:
    """Decode one frame as the sender's message. Raises BadLrc / ConcertFrameError / FieldError."""
    return (ConcertRequest if sender == "ecr" else ConcertAnswer).decode(raw)


def bad_frame_reason(exc: Exception, sender: str) -> str:
    """Why a frame did not decode, without quoting field content from the terminal's side
    (the decoder's message may contain the report's bytes)."""
    if isinstance(exc, BadLrc):
        return "bad LRC"
    if sender == "terminal":
        return "malformed answer"
    return str(exc)


def message_from_fields(kind: str, fields: dict[str, Any]) -> ConcertRequest | ConcertAnswer:
    """Rebuild a recorded message from its ``msg``. Raises ConfigError if it does not validate."""
    cls = KINDS.get(kind)
    if cls is None:
        raise ConfigError(f"unknown Concert frame kind {kind!r} (request or answer)")
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in fields.items() if k in names})
    except (TypeError, ValueError, FieldError) as exc:
        raise ConfigError(f"recorded Concert {kind} does not validate: {exc}") from None


# ------------------------------------------------------------------ the observer


class _Side(Side):
    def __init__(self) -> None:
        super().__init__(ConcertFramer())
        self.last_frame: bytes | None = None  # the last frame since this side's EOT


class ConcertObserver(FramedObserver):
    """A :class:`~posterm.families.interfaces.RecordObserver` of Concert: control bytes are
    events, ``STX..ETX LRC`` frames are ``request``/``answer`` records, the report masked.
    Only the terminal's bytes can carry card data: its garbage, bad frames and a partial
    answer are masked; the ECR's are written as they are."""

    def new_side(self) -> _Side:
        return _Side()

    def mask_pending(self, sender: str, offset: int) -> list[tuple[int, int]]:
        """All but the STX of a partial answer (the terminal's frames alone can hold card data)."""
        pending = self._sides[sender].framer.pending
        return [(offset + 1, offset + pending)] if sender == "terminal" and pending > 1 else []

    def item(self, sender: str, d: _Side, other: _Side, item: Any, start: int) -> list[Observed]:
        if isinstance(item, int):
            d.consumed += 1
            if item == NAK:
                d.nak_since = True
            elif item == EOT:
                d.last_frame = None          # this side's transmission is over
            return [Observed({"type": "event", "event": CONTROL_EVENTS.get(item, f"0x{item:02X}")})]
        if isinstance(item, ConcertGarbage):
            d.consumed += len(item.data)
            # from the terminal it may be an answer whose STX was lost, report and all
            masks = ((start, d.consumed),) if sender == "terminal" else ()
            return [Observed({"type": "event", "event": "garbage", "n": len(item.data)}, masks)]
        d.consumed += len(item)
        return self._frame(sender, d, other, bytes(item), start)

    def _frame(self, sender: str, d: _Side, other: _Side, raw: bytes, start: int) -> list[Observed]:
        try:
            msg = decode_frame(raw, sender)
        except (ProtocolError, ValueError) as exc:
            hexed, masks = raw, ()
            if sender == "terminal" and len(raw) > 3:   # when in doubt, mask (the body may hold a report)
                masks = ((start + 1, start + len(raw) - 2),)
                hexed = raw[:1] + bytes([MASK_BYTE]) * (len(raw) - 3) + raw[-2:]
            return [Observed({"type": "event", "event": "bad_frame", "reason": bad_frame_reason(exc, sender),
                                       "hex": hexed.hex().upper()}, masks)]
        masked, names, masks = raw, [], ()
        if isinstance(msg, ConcertAnswer) and (span := report_span(msg)) is not None:
            s, e = span
            masks = ((start + s, start + e),)
            masked = raw[:s] + bytes([MASK_BYTE]) * (e - s) + raw[e:]
            names = ["report"]
        rec: dict[str, Any] = {"type": "frame", "kind": "request" if isinstance(msg, ConcertRequest) else "answer",
                               "hex": masked.hex().upper(), "msg": concert_fields(msg)}
        if names:
            rec["redacted"] = names
        retransmit = d.last_frame == raw
        d.last_frame = raw
        if retransmit:
            rec["retransmit"] = True
        out = [Observed(rec, masks)]
        if retransmit:
            out.append(Observed({"type": "event", "event": "retransmit", "cause": "nak" if other.nak_since else "timeout"}))
        other.nak_since = False
        return out


# ------------------------------------------------------------------ the script


def build_concert_script(recording: Any, secrets: dict[str, str] | None = None) -> list:
    """The recording as exchanges (request + the answer(s) before the next request).
    ``secrets`` is not used: Concert requests carry none."""
    from posterm.record.replay import Exchange, Recorded

    script: list = []
    last_t = 0.0
    for n, rec in enumerate(recording.records, 2):
        if rec["type"] != "frame" or rec.get("retransmit") or not isinstance(rec.get("msg"), dict):
            continue
        if rec["kind"] not in KINDS:
            continue
        try:
            msg = message_from_fields(rec["kind"], rec["msg"])
        except ConfigError as exc:
            raise ConfigError(f"{recording.path}: line {n}: {exc}") from None
        item = Recorded(rec["t"], msg, dict(rec["msg"]), n)
        if rec["kind"] == "request":
            script.append(Exchange(item, gap=max(0.0, rec["t"] - last_t)))
        elif script:
            script[-1].answers.append(item)
        last_t = rec["t"]
    return script


def _key(msg: ConcertRequest) -> tuple:
    return (msg.txn_type, msg.amount_minor, msg.currency_numeric)


def _echoed(answer_fields: dict[str, Any], request_fields: dict[str, Any]) -> bool:
    """Did the recorded answer's private field echo the recorded request's?"""
    return bool(request_fields.get("private")) and answer_fields.get("private") == request_fields.get("private")


def _fields_diff(expected: dict[str, Any], got: dict[str, Any], masks: frozenset[str]) -> list[str]:
    out = []
    for key in sorted(set(expected) | set(got)):
        if key in masks:
            continue
        a, b = expected.get(key, "<absent>"), got.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: recorded {a!r}, got {b!r}")
    return out


def _brief(fields: dict[str, Any]) -> str:
    return (f"(txn_type={fields.get('txn_type')}, amount_minor={fields.get('amount_minor')},"
            f" currency_numeric={fields.get('currency_numeric')})")


# ------------------------------------------------------------------ the terminal side


class ConcertReplayTerminal(ReplayPlayer):
    """Plays the terminal's side of a Concert ``script`` to a live ECR on ``transport``.

    Each request is matched to the first unanswered recorded one with the same transaction
    type, amount and currency (else the next unanswered one of the same type, the differences
    reported); the recorded answer goes back after the recorded delay, its private field
    taken from the live request when the recorded answer echoed the recorded request's.
    A request not in the recording is answered "not processed" (status 9) and reported.
    """

    def __init__(self, transport: Any, script: list, *, speed: float = 1.0, fast: bool = False,
                 loop: bool = False, masks: frozenset[str] = frozenset(), report: Callable[[str], None] | None = None,
                 config: Any = None) -> None:
        from posterm.families.concert.link import ConcertLink

        # the ECR makes up its order ids: the private field is masked
        super().__init__(transport, script, speed=speed, fast=fast, loop=loop, masks=frozenset(masks) | {"private"},
                         report=report)
        self.link = ConcertLink("terminal", config)

    def _match(self, req: ConcertRequest) -> int | None:
        for i, ex in enumerate(self.script):
            if not self.used[i] and _key(ex.request.message) == _key(req):
                return i
        for i, ex in enumerate(self.script):
            if not self.used[i] and ex.request.message.txn_type == req.txn_type:
                return i
        return None

    def on_request(self, req: ConcertRequest, now: float) -> None:
        fields = concert_fields(req)
        i = self._take(lambda: self._match(req))
        if i is None:
            self._diverge(self.answered, f"the ECR sent {fields['type']} {_brief(fields)}: not in the recording")
            self.link.enqueue(ConcertAnswer(Status.NOT_PROCESSED, req.amount_minor, req.currency_numeric,
                                            req.pos_number, req.mode, "" if req.answer_flag.value == "1" else None,
                                            req.private), now)
            return
        ex = self.script[i]
        self._use(i, f"ECR skipped {sum(not u for u in self.used[:i])} recorded request",
                  lambda e: _brief(e.request.fields))
        for line in _fields_diff(ex.request.fields, fields, self.masks):
            self._diverge(i, f"{fields['type']} {line}")
        for ans in ex.answers:
            msg = ans.message
            if _echoed(ans.fields, ex.request.fields):
                msg = dataclasses.replace(msg, private=req.private)
            self._due.append((now + self.pacer.delay(ans.t - ex.request.t), msg))

    def run(self, until_done: bool = True, timeout: float = 3600.0) -> list:
        """Serve until the script is played (``until_done``), ``stop`` is set or ``timeout``.

        Once played, it serves :data:`LINGER` seconds more before returning: the last thing
        on the line is our EOT, and a port closed at once could take it with it.
        Returns the divergences. Raises :class:`Disconnected`, :class:`LinkFailed`.
        """
        from posterm.families.concert.link import MessageReceived, SendFailed

        def handle(ev: Any, now: float) -> None:
            if isinstance(ev, MessageReceived):
                self.on_request(ev.message, now)
            elif isinstance(ev, SendFailed):
                raise LinkFailed(f"the ECR did not take the answer ({ev.cause})")

        def after(pump: Any, now: float) -> None:
            while self._due and self._due[0][0] <= now:
                self.link.enqueue(self._due.pop(0)[1], now)   # the link sends it once the line is free
            pump.flush()   # our ACK and the answer's ENQ in one write

        return self._serve(until_done, timeout, LINGER, lambda: self._due[0][0] if self._due else None, handle, after)


# ------------------------------------------------------------------ the ECR side


def _fresh_private(old: str) -> str:
    """A new private field shaped like ``old``: its first character, then random ones (same length)."""
    from posterm.families.concert import new_private_id

    return new_private_id(old[:1], len(old))


def replay_concert_ecr(transport: Any, script: list, *, speed: float = 1.0, fast: bool = False,
                       step: bool = False, loops: int = 1, masks: frozenset[str] = CONCERT_MASKS,
                       wait_for: Callable[[str], None] | None = None, min_wait: float = 3.0,
                       config: Any = None, fresh_ids: bool = True) -> Any:
    """Send the recorded Concert requests to a live terminal and diff its answers.

    With ``fresh_ids`` (default) each recorded private field (the order id) is replaced by a
    new one of the same shape, consistently (a refund names the fresh id of its payment),
    so a replay makes new payments. The answer's private field is expected to be the live
    request's when the recorded answer echoed the request's, and is not diffed when the
    terminal made it up; ``masks`` (default: ``report``) are never diffed. Returns an
    :class:`~posterm.record.replay.EcrReplayResult`; raises :class:`LinkFailed` when the
    terminal does not take a request, :class:`Disconnected`.
    """
    from posterm.families.concert.link import ConcertLink, MessageReceived, SendFailed
    from posterm.record.replay import Divergence, EcrReplayResult, Pacer

    pacer = Pacer(speed, fast, step, wait_for)
    link = ConcertLink("ecr", config)
    diffs: list = []
    frames = 0
    index = 0
    mapping: dict[str, str] = {}

    def pump(deadline: float, want: int, got: list) -> None:
        from posterm.record.replay import pump_link

        pump_link(link, transport, deadline, want, got, MessageReceived, SendFailed,
                  lambda ev: f"the terminal did not take the request ({ev.cause})")

    for _ in range(max(1, loops)):
        mapping.clear()  # each pass makes new payments
        for ex in script:
            index += 1
            rf = ex.request.fields
            if step and wait_for is not None:
                wait_for(f"#{index} {rf['type']} {_brief(rf)}")
            elif (pause := pacer.delay(ex.gap)) > 0:
                time.sleep(pause)
            request = ex.request.message
            if fresh_ids and request.private:
                if request.private not in mapping:
                    mapping[request.private] = _fresh_private(request.private)
                request = dataclasses.replace(request, private=mapping[request.private])
            now = time.monotonic()
            link.enqueue(request, now)
            transport.write(link.data_to_send())
            frames += 1
            got: list = []
            span = (ex.answers[-1].t - ex.request.t) if ex.answers else 0.0
            pump(now + max(min_wait, span * 1.5 + 2.0), len(ex.answers), got)
            frames += len(got)
            for j, exp in enumerate(ex.answers):
                if j >= len(got):
                    diffs.append(Divergence(index, f"after {rf['type']} {_brief(rf)}: recorded"
                                                   f" {exp.fields['type']}, got nothing"))
                    break
                expected, here = dict(exp.fields), frozenset(masks)
                if _echoed(exp.fields, rf):
                    expected["private"] = request.private
                else:
                    here |= {"private"}
                for line in _fields_diff(expected, concert_fields(got[j]), here):
                    diffs.append(Divergence(index, f"{exp.fields['type']} answer {j + 1}: {line}"))
            for extra in got[len(ex.answers):]:
                diffs.append(Divergence(index, f"after {rf['type']}: unrecorded {type(extra).__name__}"
                                               f" {_brief(concert_fields(extra))}"))
    return EcrReplayResult(index, frames, diffs)


RECORDING = FamilyRecording(
    observer=ConcertObserver, build_script=build_concert_script, replay_terminal=ConcertReplayTerminal,
    replay_ecr=replay_concert_ecr,
    # DLT_USER1: a capture says which protocol it holds, each can have its own dissector
    pcap=PcapInterface(148, "posterm-concert", "Ingenico Concert (protocol E): STX body ETX LRC frames"),
    default_masks=CONCERT_MASKS,
    show_label=lambda header: PROTOCOL,
    quiet_events=frozenset({"ack", "enq", "eot"}))


__all__ = ["CONCERT_MASKS", "RECORDING", "CONTROL_EVENTS", "ConcertReplayTerminal", "build_concert_script", "concert_fields",
           "decode_frame", "message_from_fields", "replay_concert_ecr", "report_span"]
