"""Recording and replay of posterm's own protocol (:mod:`firmware_protocol.native`).

What a recording of this family holds (the format is :mod:`posterm.record.format`):

* one ``frame`` record per link frame each way: ``kind`` ``DATA``/``ACK``/``NAK``, ``seq``,
  ``hex`` (:func:`~posterm.families.native.redact.redact_frame`: secret TLV values masked),
  and for DATA ``msg`` (:func:`~posterm.families.native.redact.message_fields`), ``redacted``
  (the masked fields), ``retransmit`` (the same seq and CRC as this side's last DATA frame)
  or ``msg: null`` and ``error`` when the payload does not decode (then masked whole);
* events: ``ack``/``nak`` (after their frame), ``retransmit`` (``cause`` nak when the peer
  NAKed since, else timeout), ``bad_frame`` (payload masked), ``garbage`` (masked: it may be
  a frame whose header was mangled);
* ``identity`` once the terminal's HelloReply passed; the ECR's Hello (not resent) opens a
  new ECR session;
* header fields ``protocol_version`` and ``link_version``.

Replay rebuilds each DATA frame's message (:func:`substitute` puts values back for the
redacted fields) and each side runs its own :class:`posterm.families.native.link.Link`.
"""

from __future__ import annotations

import dataclasses
import re
import secrets as _random
import struct
import time
from typing import Any, Callable

from firmware_protocol.errors import ProtocolError
from firmware_protocol.native import frame as fr
from firmware_protocol.native import messages as m
from firmware_protocol.native.tlv import Message, decode, message_types, split_items

from posterm.errors import ConfigError, Disconnected, LinkFailed
from posterm.families.interfaces import FamilyRecording, Observed, PcapInterface
from posterm.families.observer import FramedObserver, Side
from posterm.families.native.link import Link, LinkConfig, MessageReceived, SendFailed, UndecodableMessage
from posterm.families.pump import Pump
from posterm.ecr.trace import MASK_BYTE
from posterm.families.native.redact import message_fields, redact_frame, redacted_spans
from posterm.record.replay import (
    Divergence,
    EcrReplayResult,
    Exchange,
    Pacer,
    Recorded,
    ReplayPlayer,
    diff_fields,
    masked_values,
    pump_link,
)

# Fields that change on every run of the same session: never diffed.
DEFAULT_MASKS = frozenset({"session", "paid_at", "trade_no", "ksn", "settled_at", "batch_no", "kcv",
                           "counters_left"})
KEY_FIELDS = ("order_id", "refund_id")
# Demo values put back where a recording redacted a secret (override with secrets=).
DEMO_SECRETS = {"operator_password": "246810", "supervisor_password": "975310"}
_ITEM = struct.Struct(">BH")
_HELLO = m.Hello.TYPE.to_bytes(2, "big")


# ------------------------------------------------------------------ the observer


class _Side(Side):
    def __init__(self) -> None:
        super().__init__(fr.Framer())
        self.last_data: tuple[int, bytes] | None = None   # (seq, crc) of the last DATA frame


def _payload_mask(start: int, raw: bytes) -> tuple[tuple[int, int], ...]:
    return ((start + fr.HEADER_SIZE, start + len(raw)),) if len(raw) > fr.HEADER_SIZE else ()


def _masked_payload(raw: bytes) -> str:
    return (raw[: fr.HEADER_SIZE] + bytes([MASK_BYTE]) * (len(raw) - fr.HEADER_SIZE)).hex().upper()


class NativeObserver(FramedObserver):
    """A :class:`~posterm.families.interfaces.RecordObserver` of posterm's framed TLV protocol."""

    def new_side(self) -> _Side:
        return _Side()

    def header(self) -> dict[str, Any]:
        return {"protocol_version": m.PROTOCOL_VERSION, "link_version": fr.LINK_VERSION}

    def mask_pending(self, sender: str, offset: int) -> list[tuple[int, int]]:
        """The partial frame's payload (its header holds no secret)."""
        return [(offset + fr.HEADER_SIZE, offset + self._sides[sender].framer.pending)]

    def item(self, sender: str, d: _Side, other: _Side, item: Any, start: int) -> list[Observed]:
        if isinstance(item, fr.Garbage):
            d.consumed += len(item.data)
            # Garbage may be a frame whose header was mangled, secrets and all: mask it.
            return [Observed({"type": "event", "event": "garbage", "n": len(item.data)}, ((start, d.consumed),))]
        if isinstance(item, fr.BadFrame):
            # The framer resumes one byte after a CRC failure, after the frame otherwise.
            d.consumed += 1 if item.reason == "CRC mismatch" else len(item.raw)
            return [Observed({"type": "event", "event": "bad_frame", "seq": item.seq, "reason": item.reason,
                              "hex": _masked_payload(item.raw)}, _payload_mask(start, item.raw))]
        d.consumed += len(item.raw)
        return self._frame(sender, d, other, item, start)

    def _frame(self, sender: str, d: _Side, other: _Side, frame: fr.LinkFrame, start: int) -> list[Observed]:
        masked, names = redact_frame(frame.raw)
        masks = [(start + fr.HEADER_SIZE + s, start + fr.HEADER_SIZE + e) for s, e, _ in redacted_spans(frame.payload)]
        rec: dict[str, Any] = {"type": "frame", "kind": frame.kind.name, "seq": frame.seq, "hex": masked.hex().upper()}
        if frame.kind is not fr.FrameKind.DATA:
            if frame.kind is fr.FrameKind.NAK:
                d.nak_since = True
            return [Observed(rec, tuple(masks)),
                    Observed({"type": "event", "event": frame.kind.name.lower(), "seq": frame.seq})]
        key = (frame.seq, frame.raw[-2:])
        retransmit = d.last_data == key
        d.last_data = key
        new_session = sender == "ecr" and frame.payload[:2] == _HELLO and not retransmit
        identity = None
        try:
            msg = decode(frame.payload)
        except ProtocolError as exc:
            rec["msg"] = None
            rec["error"] = str(exc)
            masks += _payload_mask(start, frame.raw)
            rec["hex"] = _masked_payload(frame.raw)
            names = ["undecodable"]
        else:
            rec["msg"] = message_fields(msg)
            if isinstance(msg, m.HelloReply) and not retransmit:
                identity = {"terminal_id": msg.terminal_id, "merchant_id": msg.merchant_id,
                            "firmware_version": msg.firmware_version, "protocol_version": msg.protocol_version}
        if names:
            rec["redacted"] = names
        if retransmit:
            rec["retransmit"] = True
        out = [Observed(rec, tuple(masks), new_session=new_session)]
        if retransmit:
            out.append(Observed({"type": "event", "event": "retransmit", "seq": frame.seq,
                                          "cause": "nak" if other.nak_since else "timeout"}))
        other.nak_since = False
        if identity is not None:
            out.append(Observed({"type": "identity", **identity}))
        return out


# ------------------------------------------------------------------ the script


def substitute(payload: bytes, redacted: list[str], secrets: dict[str, str] | None = None) -> bytes:
    """Put values back into a payload whose secret fields were masked.

    Payment codes become the test prefix ``2899...`` + the recorded last 4 digits;
    other secrets come from ``secrets`` (then :data:`DEMO_SECRETS`). Raises
    :class:`ConfigError` when a value is needed and none is given.
    """
    secrets = {**DEMO_SECRETS, **(secrets or {})}
    type_code, items = split_items(payload)
    cls = message_types().get(type_code)
    if cls is None:
        raise ConfigError(f"unknown message type 0x{type_code:04X} in the recording")
    out = bytearray(payload[:2])
    for tag, _offset, value in items:
        spec = cls.BY_TAG.get(tag)
        if spec is not None and spec.secret:
            name = spec.name
            if name in secrets:
                value = secrets[name].encode()
            elif name == "payment_code":
                value = b"2899" + b"0" * max(0, len(value) - 8) + value[-4:]
            else:
                raise ConfigError(f"the recording redacted {cls.__name__}.{name}; give its value"
                                  f" (--secret {name}=...) to replay it")
        out += _ITEM.pack(tag, len(value)) + value
    return bytes(out)


def message_of(rec: dict[str, Any], secrets: dict[str, str] | None = None) -> Message | None:
    """The message of a recorded DATA frame (None if it was undecodable)."""
    raw = bytes.fromhex(rec["hex"])
    if rec.get("msg") is None or len(raw) < fr.HEADER_SIZE + fr.CRC_SIZE:
        return None
    payload = raw[fr.HEADER_SIZE:-fr.CRC_SIZE]
    if rec.get("redacted"):
        payload = substitute(payload, rec["redacted"], secrets)
    try:
        return decode(payload)
    except ProtocolError as exc:
        raise ConfigError(f"recorded {rec['msg'].get('type')} does not decode: {exc}") from None


def build_script(recording: Any, secrets: dict[str, str] | None = None) -> list[Exchange]:
    """The recording as exchanges (ECR message + terminal answers). Retransmissions skipped."""
    script: list[Exchange] = []
    last_t = 0.0
    for n, rec in enumerate(recording.records, 2):
        if rec["type"] != "frame" or rec["kind"] != "DATA" or rec.get("retransmit"):
            continue
        msg = message_of(rec, secrets)
        if msg is None:
            continue
        item = Recorded(rec["t"], msg, rec["msg"], n)
        if rec["from"] == "ecr":
            script.append(Exchange(item, gap=max(0.0, rec["t"] - last_t)))
        elif script:
            script[-1].answers.append(item)
        last_t = rec["t"]
    return script


def _key(fields: dict[str, Any]) -> tuple:
    return (fields["type"],) + tuple(fields.get(k) for k in KEY_FIELDS)


def _remap(msg: Message, mapping: dict[str, str]) -> Message:
    """The recorded answer with recorded order/refund ids replaced by the live ECR's."""
    changes: dict[str, Any] = {k: mapping[getattr(msg, k)] for k in KEY_FIELDS
                               if hasattr(msg, k) and getattr(msg, k) in mapping}
    if isinstance(msg, m.Print) and mapping:
        lines = []
        for line in msg.lines:
            for old, new in mapping.items():
                line = line.replace(old, new)
            lines.append(line[:64])
        changes["lines"] = tuple(lines)
    return dataclasses.replace(msg, **changes) if changes else msg


class ReplayTerminal(ReplayPlayer):
    """Plays the terminal's side of ``script`` to a live ECR on ``transport``.

    Each ECR message is matched to the next unanswered recorded one of the same
    type (same order/refund id preferred; a new order id is mapped onto the
    recorded one); the recorded answers go back with the recorded delays.
    ``divergences`` lists where the ECR did something else.
    """

    def __init__(self, transport: Any, script: list[Exchange], *, speed: float = 1.0, fast: bool = False,
                 loop: bool = False, masks: frozenset[str] = DEFAULT_MASKS,
                 report: Callable[[str], None] | None = None, link_config: LinkConfig | None = None) -> None:
        super().__init__(transport, script, speed=speed, fast=fast, loop=loop,
                         masks=masks | {"order_id", "refund_id"}, report=report)
        self.link = Link(link_config or LinkConfig())
        self.pos = 0
        self._by_key: dict[tuple, list[int]] = {}
        for i, ex in enumerate(script):
            self._by_key.setdefault(_key(ex.request.fields), []).append(i)
        self.mapping: dict[str, str] = {}

    def _match(self, fields: dict[str, Any]) -> int | None:
        same_type = None
        while self.pos < len(self.script) and self.used[self.pos]:
            self.pos += 1  # everything before pos is used: start there (keeps replay O(n))
        for i in self._by_key.get(_key(fields), ()):
            if not self.used[i]:
                return i
        for i in range(self.pos, len(self.script)):
            if not self.used[i] and self.script[i].request.fields["type"] == fields["type"]:
                same_type = i
                break
        return same_type

    def on_message(self, msg: Message, now: float) -> None:
        if isinstance(msg, m.Hello):
            self.link.start_session()
        fields = message_fields(msg)
        i = self._match(fields)
        if i is None:
            if self.loop and self.used_count:
                self.used = [False] * len(self.script)
                self.pos = self.used_count = 0
                i = self._match(fields)
        if i is None:
            self._diverge(self.answered, f"the ECR sent {fields['type']} {_brief(fields)}: not in the recording")
            self.t.write(self.link.send(m.Error(code=m.ErrorCode.UNEXPECTED, text="not in the recording"), now))
            return
        ex = self.script[i]
        skipped = [j for j in range(self.pos, i) if not self.used[j]]
        if skipped:
            self._diverge(i, f"the ECR skipped {len(skipped)} recorded message(s) before {fields['type']},"
                             f" first {self.script[skipped[0]].request.fields['type']}")
        for k in KEY_FIELDS:
            live, recd = fields.get(k), ex.request.fields.get(k)
            if live is not None and recd is not None and live != recd:
                self.mapping[recd] = live
        for line in diff_fields(ex.request.fields, fields, self.masks):
            self._diverge(i, f"{fields['type']} {line}")
        self.used[i] = True
        self.used_count += 1
        self.answered += 1
        for ans in ex.answers:
            due = now + self.pacer.delay(ans.t - ex.request.t)
            self._due.append((due, _remap(ans.message, self.mapping)))

    def run(self, until_done: bool = True, timeout: float = 3600.0) -> list[Divergence]:
        """Serve until the script is played (``until_done``), ``stop`` is set or ``timeout``.

        Returns the divergences. Raises :class:`Disconnected` if the port goes away.
        """
        end = time.monotonic() + timeout
        pump = Pump(self.link, write=self.t.write, max_wait=0.02)
        while not self.stop.is_set() and time.monotonic() < end:
            if until_done and not self.loop and self.done:
                break
            # An answer due wakes the read only when the line is free; else the ACK we wait for does.
            due = self._due[0][0] if self._due and self.link.idle else None
            try:
                data = self.t.read(4096, pump.wait_time(time.monotonic(), due))
            except Disconnected:
                if self.stop.is_set():
                    break
                raise
            now = time.monotonic()
            for ev in pump.feed(data, now, write=False):
                if isinstance(ev, MessageReceived):
                    self.on_message(ev.message, now)
                elif isinstance(ev, UndecodableMessage):
                    self._diverge(self.answered, f"the ECR sent an undecodable message: {ev.error}")
                elif isinstance(ev, SendFailed):
                    raise LinkFailed(f"the ECR did not acknowledge {type(ev.message).__name__}")
            # One answer in flight at a time (the link's queue is bounded); the ACK of what
            # just came in and the next answer leave in one write.
            if self._due and self._due[0][0] <= now and self.link.idle:
                pump.send(self._due.pop(0)[1], now)   # writes every pending byte (ACKs too)
            pump.flush()
        return self.divergences


def _brief(fields: dict[str, Any]) -> str:
    keys = [f"{k}={fields[k]}" for k in KEY_FIELDS if k in fields]
    return "(" + ", ".join(keys) + ")" if keys else ""


def replay_ecr(transport: Any, script: list[Exchange], *, speed: float = 1.0, fast: bool = False,
               step: bool = False, loops: int = 1, masks: frozenset[str] = DEFAULT_MASKS,
               wait_for: Callable[[str], None] | None = None, min_wait: float = 3.0,
               link_config: LinkConfig | None = None, fresh_ids: bool = True) -> EcrReplayResult:
    """Send the ECR's recorded messages to a live terminal and diff what it answers.

    With ``fresh_ids`` (the default) every recorded order and refund id is replaced by
    a new one (consistently, answers compared through the same mapping), so a replay
    makes new payments instead of reading back the stored outcome of the recorded ones.
    For each recorded request: pause its recorded gap (scaled; none with ``fast`` or
    ``step``, where ``wait_for`` is called instead), send it, and collect as many
    terminal messages as were recorded (waiting up to the recorded time x1.5 + 2 s,
    at least ``min_wait``). Returns an :class:`EcrReplayResult`; raises
    :class:`LinkFailed` when the terminal does not ACK, :class:`Disconnected`.
    """
    pacer = Pacer(speed, fast, step, wait_for)
    link = Link(link_config or LinkConfig())
    mapping: dict[str, str] = {}
    diffs: list[Divergence] = []
    frames = 0
    index = 0

    def pump(deadline: float, want: int, got: list[Message]) -> None:
        pump_link(link, transport, deadline, want, got, MessageReceived, SendFailed,
                  lambda ev: f"the terminal did not acknowledge {type(ev.message).__name__}")

    for _ in range(max(1, loops)):
        mapping.clear()  # each pass makes new payments
        for ex in script:
            index += 1
            if step and wait_for is not None:
                wait_for(f"#{index} {ex.request.fields['type']} {_brief(ex.request.fields)}")
            elif (pause := pacer.delay(ex.gap)) > 0:
                time.sleep(pause)
            request = ex.request.message
            if fresh_ids:
                for k in KEY_FIELDS:
                    old = getattr(request, k, None)
                    if old is not None and old not in mapping:
                        mapping[old] = _fresh_id(old)
                request = _remap(request, mapping)
            if isinstance(request, m.Hello):
                # A new session number: the recorded one would be a duplicate to a terminal that heard it.
                request = dataclasses.replace(request, session=_random.randbits(32))
            now = time.monotonic()
            transport.write(link.send(request, now))
            frames += 1
            got: list[Message] = []
            span = (ex.answers[-1].t - ex.request.t) if ex.answers else 0.0
            pump(now + max(min_wait, span * 1.5 + 2.0), len(ex.answers), got)
            frames += len(got)
            lives = [message_fields(g) for g in got]
            # Only this exchange's ids: the whole mapping would make a long replay quadratic.
            ids = (ex.request.fields.get(k) for k in KEY_FIELDS)
            local = _with_prefixes({old: mapping[old] for old in ids if old in mapping})
            # Recorded ids become the live ones first, then masked values become <field> on both sides.
            known = ({**local, **masked_values([a.fields for a in ex.answers], masks)}, masked_values(lives, masks))
            for j, exp in enumerate(ex.answers):
                if j >= len(got):
                    diffs.append(Divergence(index, f"after {ex.request.fields['type']}: recorded"
                                                   f" {exp.fields['type']}, got nothing"))
                    break
                live = lives[j]
                for line in diff_fields(exp.fields, live, masks, known):
                    diffs.append(Divergence(index, f"{exp.fields['type']} answer {j + 1}: {line}"))
            for extra in got[len(ex.answers):]:
                diffs.append(Divergence(index, f"after {ex.request.fields['type']}: unrecorded"
                                               f" {type(extra).__name__}"))
    return EcrReplayResult(index, frames, diffs)


def _with_prefixes(mapping: dict[str, str]) -> dict[str, str]:
    """The id mapping plus its truncations (a receipt line may show only the first characters)."""
    out = dict(mapping)
    for old, new in mapping.items():
        for k in range(len(old) - 1, 11, -1):
            out.setdefault(old[:k], new[:k])
    return out


def _fresh_id(old: str) -> str:
    """A new id shaped like ``old``: its letter prefix, then UTC time and random hex."""
    from posterm.ecr.ids import new_order_id

    prefix = re.match(r"[A-Za-z]*", old).group(0)[:8] or "RP"  # type: ignore[union-attr]
    return new_order_id(prefix)


RECORDING = FamilyRecording(
    observer=NativeObserver, build_script=build_script, replay_terminal=ReplayTerminal, replay_ecr=replay_ecr,
    pcap=PcapInterface(147, "posterm-serial"),          # DLT_USER0
    default_masks=DEFAULT_MASKS,
    record_fields={"frame": ("t", "from", "kind", "seq", "hex")},
    show_label=lambda header: str(header.get("protocol_version")),
    quiet_events=frozenset({"ack"}), quiet_frames=frozenset({"ACK"}), hidden_frames=frozenset({"NAK"}))
