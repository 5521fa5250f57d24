"""Replay of toy recordings: the terminal's side to a live ECR, the ECR's side to a live
terminal. Messages are matched, not bytes: each side runs its own :class:`ToyLink`.

* The script: each ECR message (hello, pay) with the terminal's answers that followed it.
  A recorded payment code is masked: replay uses ``secrets["code"]``, else the host's test
  prefix ``2899`` + zeros + the recorded last 4 digits.
* As the terminal: a live hello gets the recorded info; a live pay the recorded result of
  the first unused recorded pay of the same amount and currency (else the next unused pay,
  its differences reported), with the live order id. A request not in the recording is
  answered declined and reported.
* As the ECR: the recorded requests (fresh order ids unless ``fresh_ids=False``); the
  answers are diffed against the recorded ones, field by field (``masks`` left out; the
  order id expected is the one sent).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from posterm.errors import ConfigError, Disconnected, LinkFailed
from posterm.families.events import MessageReceived, SendFailed
from posterm.families.pump import Pump
from posterm.record.replay import Divergence, EcrReplayResult, Exchange, Recorded

from . import wire as w
from .ecr import new_order_id
from .link import ToyConfig, ToyLink

TEST_PREFIX = "2899"
FROM_ECR = {"hello": w.Hello, "pay": w.Pay}
FROM_TERMINAL = {"info": w.Info, "result": w.Result}


def _rebuild(kind: str, fields: dict[str, Any], secrets: dict[str, str], line: int) -> Any:
    f = {k: v for k, v in fields.items() if k != "type"}
    if kind == "pay" and isinstance(f.get("code"), str) and "*" in f["code"]:
        last4 = f["code"][-4:]
        f["code"] = secrets.get("code") or TEST_PREFIX + "0" * (18 - len(TEST_PREFIX) - 4) + last4
    try:
        return (FROM_ECR.get(kind) or FROM_TERMINAL[kind]).parse(f)
    except (w.ToyFrameError, KeyError) as exc:
        raise ConfigError(f"line {line}: recorded toy {kind} does not rebuild ({exc})") from None


def build_script(recording: Any, secrets: dict[str, str] | None = None) -> list:
    """The recording's exchanges. Raises ConfigError naming the line of a message that does not rebuild."""
    script: list = []
    last_t = 0.0
    for n, rec in enumerate(recording.records, 2):
        if rec.get("type") != "frame" or rec.get("retransmit") or not isinstance(rec.get("msg"), dict):
            continue
        kind = rec.get("kind")
        if kind not in FROM_ECR and kind not in FROM_TERMINAL:
            continue
        item = Recorded(rec["t"], _rebuild(kind, rec["msg"], secrets or {}, n), dict(rec["msg"]), n)
        if kind in FROM_ECR:
            script.append(Exchange(item, gap=max(0.0, rec["t"] - last_t)))
        elif script:
            script[-1].answers.append(item)
        last_t = rec["t"]
    return script


def _diff(expected: dict[str, Any], got: dict[str, Any], masks: frozenset[str]) -> list[str]:
    return [f"{k}: recorded {expected.get(k, '<absent>')!r}, got {got.get(k, '<absent>')!r}"
            for k in sorted(set(expected) | set(got)) if k not in masks and expected.get(k) != got.get(k)]


def _fields(msg: Any) -> dict[str, Any]:
    out = {"type": msg.KIND, **msg.fields()}
    if "code" in out:
        out["code"] = "*" * 14 + out["code"][-4:]
    return out


def _delay(seconds: float, speed: float, fast: bool) -> float:
    return 0.0 if fast else max(0.0, seconds) / speed


class ToyReplayTerminal:
    """Plays the terminal's side of ``script`` to a live ECR on ``transport``."""

    def __init__(self, transport: Any, script: list, *, speed: float = 1.0, fast: bool = False, loop: bool = False,
                 masks: frozenset[str] = frozenset(), report: Callable[[str], None] | None = None,
                 config: ToyConfig | None = None) -> None:
        if not fast and not speed > 0:
            raise ConfigError("--speed must be positive")
        self.t = transport
        self.script = script
        self.speed, self.fast, self.loop = speed, fast, loop
        self.masks = frozenset(masks) | {"id"}   # the live ECR makes up its order ids
        self.report = report or (lambda s: None)
        self.link = ToyLink("terminal", config)
        self.used = [False] * len(script)
        self.divergences: list[Divergence] = []
        self.answered = 0
        self._due: list[tuple[float, Any]] = []
        self.stop = threading.Event()

    @property
    def done(self) -> bool:
        return all(self.used) and not self._due and self.link.idle

    def _diverge(self, index: int, what: str) -> None:
        d = Divergence(index, what)
        self.divergences.append(d)
        self.report(f"diverged: {d}")

    def _match(self, req: Any) -> int | None:
        same = [i for i, ex in enumerate(self.script) if not self.used[i] and type(ex.request.message) is type(req)]
        if isinstance(req, w.Pay):
            exact = [i for i in same if (self.script[i].request.message.amount_minor,
                                         self.script[i].request.message.currency) == (req.amount_minor, req.currency)]
            same = exact or same
        return same[0] if same else None

    def on_request(self, req: Any, now: float) -> None:
        i = self._match(req)
        if i is None and self.loop and any(self.used):
            self.used = [False] * len(self.script)
            i = self._match(req)
        fields = _fields(req)
        if i is None:
            self._diverge(self.answered, f"the ECR sent {req.KIND} {fields}: not in the recording")
            if isinstance(req, w.Pay):
                self.link.send(w.Result(req.order_id, "declined", req.amount_minor, req.currency), now)
            return
        ex = self.script[i]
        for line in _diff(ex.request.fields, fields, self.masks | {"code"}):
            self._diverge(i, f"{req.KIND} {line}")
        self.used[i] = True
        self.answered += 1
        for ans in ex.answers:
            msg = ans.message
            if isinstance(msg, w.Result) and isinstance(req, w.Pay):
                msg = w.Result(req.order_id, msg.outcome, msg.amount_minor, msg.currency, msg.reason, msg.code_last4)
            self._due.append((now + _delay(ans.t - ex.request.t, self.speed, self.fast), msg))

    def run(self, until_done: bool = True, timeout: float = 3600.0) -> list:
        """Serve until the script is played (``until_done``), ``stop`` is set or ``timeout``.
        Returns the divergences. Raises Disconnected, LinkFailed."""
        pump = Pump(self.link, lambda s: self.t.read(4096, s), self.t.write)
        end = time.monotonic() + timeout
        while not self.stop.is_set() and time.monotonic() < end:
            if until_done and not self.loop and self.done:
                break
            try:
                events = list(pump.step(min(end, self._due[0][0]) if self._due else end))
            except Disconnected:
                if self.stop.is_set() or self.done:
                    break
                raise
            now = time.monotonic()
            for ev in events:
                if isinstance(ev, MessageReceived):
                    self.on_request(ev.message, now)
                elif isinstance(ev, SendFailed):
                    raise LinkFailed(f"the ECR did not take the {type(ev.message).KIND} (no ack)")
            while self._due and self._due[0][0] <= now:
                pump.send(self._due.pop(0)[1])
        return self.divergences


def replay_toy_ecr(transport: Any, script: list, *, speed: float = 1.0, fast: bool = False, step: bool = False,
                   loops: int = 1, masks: frozenset[str] = frozenset(), wait_for: Callable[[str], None] | None = None,
                   min_wait: float = 3.0, fresh_ids: bool = True, config: ToyConfig | None = None) -> EcrReplayResult:
    """Send the recorded requests to a live terminal and diff its answers. Raises LinkFailed, Disconnected."""
    link = ToyLink("ecr", config)
    pump = Pump(link, lambda s: transport.read(4096, s), transport.write)
    diffs: list[Divergence] = []
    index = frames = 0
    for _ in range(max(1, loops)):
        for ex in script:
            index += 1
            req = ex.request.message
            if step and wait_for is not None:
                wait_for(f"#{index} {req.KIND}")
            elif (pause := _delay(ex.gap, speed, fast or step)) > 0:
                time.sleep(pause)   # the recorded pace between requests, as asked
            if isinstance(req, w.Pay) and fresh_ids:
                req = w.Pay(new_order_id(), req.amount_minor, req.currency, req.payment_code)
            pump.send(req)
            frames += 1
            got: list = []
            span = (ex.answers[-1].t - ex.request.t) if ex.answers else 0.0

            def on_event(ev: Any) -> Any:
                if isinstance(ev, MessageReceived):
                    got.append(ev.message)
                elif isinstance(ev, SendFailed):
                    raise LinkFailed(f"the terminal did not take the {req.KIND} (no ack)")
                return True if len(got) >= len(ex.answers) and link.idle else None

            pump.run(time.monotonic() + max(min_wait, span * 1.5 + 2.0), on_event)
            frames += len(got)
            for j, exp in enumerate(ex.answers):
                if j >= len(got):
                    diffs.append(Divergence(index, f"after {req.KIND}: recorded {exp.fields['type']}, got nothing"))
                    break
                expected = dict(exp.fields)
                if "id" in expected and isinstance(req, w.Pay):
                    expected["id"] = req.order_id
                for line in _diff(expected, _fields(got[j]), frozenset(masks)):
                    diffs.append(Divergence(index, f"{exp.fields['type']} answer {j + 1}: {line}"))
            for extra in got[len(ex.answers):]:
                diffs.append(Divergence(index, f"after {req.KIND}: unrecorded {extra.KIND}"))
    return EcrReplayResult(index, frames, diffs)
