"""Replay a recording: play the terminal to an ECR under test, or the ECR to a terminal.

Replay works on messages, not byte offsets: the recording's frames are turned back into
messages (redacted secrets substituted) by the recorded family
(:class:`~posterm.families.interfaces.FamilyRecording`), and each side runs that family's
own link, so sequence numbers and acknowledgements are right for the live peer whatever
happened on the recorded line (retransmissions are skipped).

This module holds what every family's replay shares: the script (:class:`Script` of
:class:`Exchange`), :class:`Divergence`, pacing, the terminal-side player's bookkeeping
(:class:`ReplayPlayer`), the diff helpers, and :func:`build_script`,
:func:`replay_terminal` and :func:`replay_ecr`, which hand a recording to its family.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from posterm.errors import ConfigError, Disconnected, LinkFailed
from posterm.families.pump import Pump
from posterm.record.format import DEFAULT_PROTOCOL, Recording, recording_support


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded message: when, the message itself (secrets substituted), its masked fields."""

    t: float
    message: Any
    fields: dict[str, Any]
    line: int = 0


@dataclass(slots=True)
class Exchange:
    """An ECR message and the terminal messages that followed it before the next ECR message."""

    request: Recorded
    answers: list[Recorded] = field(default_factory=list)
    gap: float = 0.0  # recorded idle time before the request


class Script(list):
    """A recording's exchanges (a list of :class:`Exchange`) and the family that speaks them
    (``protocol``), so :func:`replay_ecr` and :func:`replay_terminal` know whose link to run."""

    def __init__(self, exchanges: Any = (), protocol: str = DEFAULT_PROTOCOL) -> None:
        super().__init__(exchanges)
        self.protocol = protocol


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where the live peer did not do what the recording did."""

    index: int
    what: str

    def __str__(self) -> str:
        return f"#{self.index}: {self.what}"


def build_script(recording: Recording, secrets: dict[str, str] | None = None) -> Script:
    """The recording as exchanges (ECR message + terminal answers), by its family.
    Retransmissions are skipped; ``secrets`` give values for redacted fields the family
    cannot make up. Raises ConfigError when a recorded message does not rebuild."""
    return Script(recording.support.build_script(recording, secrets), recording.protocol)


def _support(script: list) -> Any:
    return recording_support(getattr(script, "protocol", DEFAULT_PROTOCOL))


def replay_terminal(transport: Any, script: list, **kw: Any) -> "ReplayPlayer":
    """The family's player of the terminal's side of ``script`` (from :func:`build_script`)
    on ``transport``: ``speed``, ``fast``, ``loop``, ``masks``, ``report`` as
    :class:`ReplayPlayer`. ``run()`` serves until done and returns the divergences."""
    return _support(script).replay_terminal(transport, script, **kw)


def replay_ecr(transport: Any, script: list, *, masks: frozenset[str] | None = None, **kw: Any) -> "EcrReplayResult":
    """Send the ECR's recorded messages in ``script`` to a live terminal and diff what it
    answers, with the family's link (``speed``, ``fast``, ``step``, ``loops``, ``wait_for``,
    ``min_wait``, ``fresh_ids``; ``masks`` default: the family's). Returns an
    :class:`EcrReplayResult`; raises :class:`LinkFailed` when the terminal does not take a
    message, :class:`~posterm.errors.Disconnected`."""
    support = _support(script)
    return support.replay_ecr(transport, script, masks=support.default_masks if masks is None else masks, **kw)


_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?(\.\d+)?( ?UTC|Z|[+-]\d{2}:?\d{2})?")


def masked_values(fields_list: list[dict[str, Any]], masks: frozenset[str]) -> dict[str, str]:
    """Values of masked fields (e.g. a trade number) seen in these messages, so the same
    value inside other text (a receipt line) is masked too: value -> ``<field>``."""
    out = {}
    for fields in fields_list:
        for k, v in fields.items():
            if k in masks and isinstance(v, (str, int)) and len(str(v)) >= 6:
                out[str(v)] = f"<{k}>"
    return out


def _normalise(value: Any, known: dict[str, str]) -> Any:
    if isinstance(value, str):
        for raw, name in known.items():
            value = value.replace(raw, name)
        return _TIME.sub("<time>", value)
    if isinstance(value, list):
        return [_normalise(v, known) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v, known) for k, v in value.items()}
    return value


def diff_fields(expected: dict[str, Any], got: dict[str, Any], masks: frozenset[str],
                known: tuple[dict[str, str], dict[str, str]] = ({}, {})) -> list[str]:
    """Readable differences between two ``message_fields`` dicts, masked fields left out.

    ``known``: masked values of the recorded and of the live side (:func:`masked_values`),
    replaced inside text on each side; date-times inside text never count either.
    """
    if expected.get("type") != got.get("type"):
        return [f"recorded {_short(expected)}, got {_short(got)}"]
    out = []
    for key in sorted(set(expected) | set(got)):
        if key in masks:
            continue
        a, b = expected.get(key, "<absent>"), got.get(key, "<absent>")
        # Normalise only what differs as it stands: the common case (equal) stays cheap.
        if a != b and _normalise(a, known[0]) != _normalise(b, known[1]):
            out.append(f"{key}: recorded {a!r}, got {b!r}")
    return out


def _short(fields: dict[str, Any]) -> str:
    body = ", ".join(f"{k}={v}" for k, v in fields.items() if k != "type")
    return f"{fields.get('type')}({body[:120]}{'...' if len(body) > 120 else ''})"


class Pacer:
    """Recorded gaps scaled by ``speed``; none with ``fast`` or ``step`` (``prompt`` then)."""

    def __init__(self, speed: float, fast: bool, step: bool, prompt: Callable[[str], None] | None) -> None:
        if not fast and not speed > 0:
            raise ConfigError("--speed must be positive")
        self.speed, self.fast, self.step, self.prompt = speed, fast, step, prompt

    def delay(self, seconds: float) -> float:
        return 0.0 if self.fast or self.step else max(0.0, seconds) / self.speed


# ------------------------------------------------------------------ the terminal side


class ReplayPlayer:
    """What the terminal-side players share: the script, pacing, masks, the record of what
    was used and where the ECR diverged. A subclass sets ``link`` and answers requests."""

    link: Any

    def __init__(self, transport: Any, script: list, *, speed: float, fast: bool, loop: bool,
                 masks: frozenset[str], report: Callable[[str], None] | None) -> None:
        self.t = transport
        self.script = script
        self.pacer = Pacer(speed, fast, False, None)
        self.loop = loop
        self.masks = frozenset(masks)
        self.report = report or (lambda s: None)
        self.used = [False] * len(script)
        self.used_count = 0
        self.divergences: list[Divergence] = []
        self.answered = 0
        self._due: list[tuple[float, Any]] = []
        self.stop = threading.Event()

    @property
    def done(self) -> bool:
        return self.used_count == len(self.script) and not self._due and self.link.idle

    def _diverge(self, index: int, what: str) -> None:
        d = Divergence(index, what)
        self.divergences.append(d)
        self.report(f"diverged: {d}")

    def _serve(self, until_done: bool, timeout: float, linger: float, due: Callable[[], float | None],
               handle: Callable[[Any, float], None], after: Callable[[Any, float], None]) -> list[Divergence]:
        """The players' serve loop: read (waiting no longer than the link's timers and the
        next answer ``due()``), ``handle`` each link event, then ``after(pump, now)``; until
        the script is played (``until_done``), ``stop`` is set or ``timeout``; once played,
        ``linger`` seconds more (the ECR's last frame gets its acknowledgement). A peer that
        leaves after the script was played, or once stopped, ends the loop; before, it raises
        Disconnected."""
        end = time.monotonic() + timeout
        pump = Pump(self.link, write=self.t.write, max_wait=0.02)
        linger_until: float | None = None
        while not self.stop.is_set() and time.monotonic() < end:
            if until_done and not self.loop and self.done:
                if linger_until is None:
                    linger_until = time.monotonic() + linger
                elif time.monotonic() >= linger_until:
                    break
            else:
                linger_until = None
            try:
                data = self.t.read(4096, pump.wait_time(time.monotonic(), due()))
            except Disconnected:
                if self.stop.is_set() or linger_until is not None:
                    break
                raise
            now = time.monotonic()
            for ev in pump.feed(data, now, write=False):
                handle(ev, now)
            after(pump, now)
        return self.divergences

    def _take(self, match: Callable[[], int | None]) -> int | None:
        """The script index ``match`` finds among the unused exchanges; with ``loop``, once
        more from the top of the script when it was used up (or none is found)."""
        i = match()
        if i is None and self.loop and self.used_count:
            self.used = [False] * len(self.script)
            self.used_count = 0
            i = match()
        return i

    def _use(self, i: int, skipped_what: str, brief: Callable[[Any], str]) -> None:
        """Exchange ``i`` answers the request: a divergence if recorded ones before it were
        skipped (``skipped_what``: "the ECR skipped ... recorded request(s)"; ``brief`` names
        the first one skipped), then it counts as used and answered."""
        skipped = [j for j in range(i) if not self.used[j]]
        if skipped:
            self._diverge(i, f"the {skipped_what}(s) before this one, first {brief(self.script[skipped[0]])}")
        self.used[i] = True
        self.used_count += 1
        self.answered += 1


# ------------------------------------------------------------------ the ECR side


@dataclass(frozen=True, slots=True)
class EcrReplayResult:
    exchanges: int
    frames: int
    diffs: list[Divergence]

    @property
    def ok(self) -> bool:
        return not self.diffs


def pump_link(link: Any, transport: Any, deadline: float, want: int, got: list, received: type, failed: type,
              describe: Callable[[Any], str]) -> None:
    """Drive a sans-IO ``link`` over ``transport`` until ``want`` messages are in ``got`` and the
    line is idle, or until ``deadline``. A ``failed`` event raises LinkFailed(``describe(event)``)."""
    def on_event(ev: Any) -> None:
        if isinstance(ev, received):
            got.append(ev.message)
        elif isinstance(ev, failed):
            raise LinkFailed(describe(ev))

    pump = Pump(link, lambda wait: transport.read(4096, wait), transport.write, max_wait=0.02)
    pump.run(deadline, on_event, before_read=lambda now: True if len(got) >= want and link.idle else None)


def stdin_step(prompt: str) -> None:
    """``--step``: show what comes next on stderr and wait for Enter."""
    sys.stderr.write(f"next: {prompt}  [Enter]")
    sys.stderr.flush()
    sys.stdin.readline()
