"""The toy family's record observer (RecordObserver of posterm.families.interfaces).

Frames each direction with the toy framer and says what it saw, as recording records:

* each data frame: ``{"type": "frame", "from", "kind", "seq", "hex", "msg", ["redacted"],
  ["retransmit"]}``; ``msg`` is the frame's JSON fields plus ``type`` (the kind);
* an ack: ``{"type": "event", "event": "ack", "seq"}``; a frame sent again (byte for byte):
  the frame marked ``retransmit`` and an event ``retransmit`` (cause ``timeout``: the toy
  has no NAK); a line that is no frame: ``bad_frame`` (its reason), an overlong one
  ``garbage``.

Secrets: the payment code of a ``pay`` keeps its last 4 digits, the rest is masked (``*``)
in ``hex`` and ``msg``, and those stream offsets are returned as masks so the recorder masks
the chunks too. A line from the ECR that does not decode, garbage from it and its partial
frame are masked whole (they may hold a code).
"""

from __future__ import annotations

from typing import Any

from . import wire as w
from posterm.families.interfaces import FamilyRecording, Observed, PcapInterface

MASK_BYTE = 0x2A
KEEP = 4   # digits of a payment code kept (the last ones, as on a receipt)


def _masked_code(code: str) -> str:
    return "*" * (len(code) - KEEP) + code[-KEEP:]


class _Side:
    def __init__(self) -> None:
        self.framer = w.Framer()
        self.consumed = 0            # stream offset of the framer's buffer start
        self.last_raw: bytes | None = None


class ToyRecordObserver:
    """One recording's view of a toy line, both directions."""

    def __init__(self, **kw: Any) -> None:
        self._sides = {"ecr": _Side(), "terminal": _Side()}

    def header(self) -> dict[str, Any]:
        return {"wire": "toy lines v1"}

    def pending(self, sender: str) -> int:
        return self._sides[sender].framer.pending

    def mask_pending(self, sender: str, offset: int) -> list[tuple[int, int]]:
        side = self._sides[sender]
        if sender != "ecr" or not side.framer.pending:
            return []   # the terminal's frames carry no secret
        return [(side.consumed, side.consumed + side.framer.pending)]

    def feed(self, sender: str, data: bytes, offset: int) -> list:
        side = self._sides[sender]
        side.framer.feed(data)
        out = []
        while (item := side.framer.pop()) is not None:
            start = side.consumed
            raw = item.data if isinstance(item, w.Garbage) else item
            side.consumed += len(raw)
            whole = [(start, start + len(raw))] if sender == "ecr" else []
            if isinstance(item, w.Garbage):
                out.append(Observed({"type": "event", "from": sender, "event": "garbage", "n": len(raw)}, whole))
                continue
            try:
                frame = w.decode(raw)
            except w.ToyFrameError as exc:
                hexed = (bytes([MASK_BYTE]) * len(raw) if sender == "ecr" else raw).hex().upper()
                out.append(Observed({"type": "event", "from": sender, "event": "bad_frame", "reason": str(exc),
                                     "hex": hexed}, whole))
                continue
            out += self._frame(sender, side, frame, start)
        return out

    def _frame(self, sender: str, side: _Side, frame: w.Frame, start: int) -> list:
        if isinstance(frame.message, w.Ack):
            return [Observed({"type": "event", "from": sender, "event": "ack", "seq": frame.seq}, [])]
        msg = {"type": frame.kind, **frame.message.fields()}
        masked = bytearray(frame.raw)
        masks, names = [], []
        for s, e in w.secret_spans(frame):
            masked[s : e - KEEP] = bytes([MASK_BYTE]) * (e - KEEP - s)
            masks.append((start + s, start + e - KEEP))
        for key in w.SECRET_FIELDS.get(frame.kind, ()):
            if msg.get(key) is not None:
                msg[key] = _masked_code(msg[key])
                names.append(key)
        rec: dict[str, Any] = {"type": "frame", "from": sender, "kind": frame.kind, "seq": frame.seq,
                               "hex": bytes(masked).hex().upper(), "msg": msg}
        if names:
            rec["redacted"] = names
        again = side.last_raw == frame.raw
        side.last_raw = frame.raw
        if again:
            rec["retransmit"] = True
        # an ECR's hello opens a session (a recorder keeping one file per session starts the next)
        out = [Observed(rec, masks, new_session=isinstance(frame.message, w.Hello) and not again)]
        if again:
            out.append(Observed({"type": "event", "from": sender, "event": "retransmit", "seq": frame.seq,
                                 "cause": "timeout"}, []))
        elif isinstance(frame.message, w.Info):
            out.append(Observed({"type": "identity", "terminal_id": frame.message.terminal_id,
                                 "merchant_id": frame.message.merchant_id,
                                 "firmware_version": frame.message.firmware_version}, []))
        return out


def _recording() -> object | None:
    """What the toy gives posterm's recording, show, convert, tap and replay."""
    if FamilyRecording is None:
        return None
    from . import replay

    return FamilyRecording(
        observer=ToyRecordObserver, build_script=replay.build_script, replay_terminal=replay.ToyReplayTerminal,
        replay_ecr=replay.replay_toy_ecr, pcap=PcapInterface(149, "posterm-toy", "toy lines: JSON|CRC16"),
        quiet_events=frozenset({"ack"}), show_label=lambda header: "toy")


RECORDING = _recording()
