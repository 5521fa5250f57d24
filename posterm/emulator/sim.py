"""Run the firmware against an ECR-side link on a fake clock: fast, deterministic tests.

    bench = SimBench(firmware, host=lambda msg, timeout: host.handle(msg))
    bench.ecr_send(PayRequest(...))
    result = bench.wait_for(PayResult, max_time=60)

The ECR is link ``a`` of a :class:`~posterm.testing.linkpair.LinkPair`, the
terminal link ``b``; the wire can lose, duplicate and corrupt frames. The host
is any callable ``(message, timeout) -> reply`` that raises a ``PosError`` on an
outage; it is called when the firmware asks, and its answer (or silence, after
the timeout) reaches the firmware ``host_latency`` later in fake time, so the
link keeps running while the host "thinks", as it does in the real runner.
"""

from __future__ import annotations

from typing import Any, Callable

from firmware_protocol.native.tlv import Message

from posterm.emulator.firmware import Firmware, WalletCall
from posterm.errors import PosError
from posterm.families.native.link import LinkConfig, MessageReceived, SendFailed
from posterm.testing.linkpair import LinkPair, LossyWire


class SimBench:
    """One firmware, one ECR link, one host, one fake clock."""

    def __init__(self, firmware: Firmware, host: Callable[[Any, float], Any],
                 wallet: Callable[[WalletCall], None] | None = None, *, host_latency: float = 0.01,
                 a_to_b: LossyWire | None = None, b_to_a: LossyWire | None = None,
                 link_config: LinkConfig | None = None) -> None:
        self.fw = firmware
        self.host = host
        self.wallet = wallet
        self.host_latency = host_latency
        self.pair = LinkPair(link_config, a_to_b, b_to_a)
        self._seen_a = 0
        self._seen_b = 0
        self._replies: list[tuple[float, int, Any, str]] = []
        self.received: list[Message] = []
        self.ecr_send_failed: list[Message] = []
        self.fw.start(self.now)

    @property
    def now(self) -> float:
        return self.pair.now

    def ecr_send(self, msg: Message) -> None:
        self.pair.send_a(msg)

    def step(self, dt: float = 0.005) -> None:
        self.pair.step(dt)
        now = self.now
        events_b = self.pair.events_b
        while self._seen_b < len(events_b):
            self.fw.on_link_event(events_b[self._seen_b], now)
            self._seen_b += 1
        due = [r for r in self._replies if r[0] <= now]
        self._replies = [r for r in self._replies if r[0] > now]
        for _, token, reply, err in sorted(due, key=lambda r: (r[0], r[1])):
            self.fw.on_host_reply(token, reply, now, err)
        self.fw.tick(now)
        self._pump()
        events_a = self.pair.events_a
        while self._seen_a < len(events_a):
            ev = events_a[self._seen_a]
            self._seen_a += 1
            if isinstance(ev, MessageReceived):
                self.received.append(ev.message)
            elif isinstance(ev, SendFailed):
                self.ecr_send_failed.append(ev.message)

    def _pump(self) -> None:
        now = self.now
        for call in self.fw.take_host_calls():
            try:
                reply, err, at = self.host(call.message, call.timeout), "", now + self.host_latency
            except PosError as exc:
                reply, err, at = None, type(exc).__name__, now + call.timeout
            self._replies.append((at, call.token, reply, err))
        for wcall in self.fw.take_wallet_calls():
            if self.wallet is not None:
                self.wallet(wcall)
        for msg in self.fw.take_ecr():
            self.pair.send_b(msg)

    def run(self, seconds: float, dt: float = 0.005) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step(dt)

    def wait_for(self, cls: type[Message], max_time: float = 120.0, dt: float = 0.005,
                 where: Callable[[Any], bool] | None = None, start: int | None = None) -> Any:
        """Step until the ECR has received a ``cls`` message (after index ``start``); return it.

        Raises ``AssertionError`` after ``max_time`` seconds of fake time.
        """
        begin = len(self.received) if start is None else start
        end = self.now + max_time
        while True:
            for msg in self.received[begin:]:
                if isinstance(msg, cls) and (where is None or where(msg)):
                    return msg
            if self.now >= end:
                raise AssertionError(f"no {cls.__name__} within {max_time} s; got "
                                     f"{[type(x).__name__ for x in self.received[begin:]]}")
            self.step(dt)

    def request(self, msg: Message, cls: type[Message], max_time: float = 120.0, dt: float = 0.005) -> Any:
        """Send ``msg`` from the ECR and return the first ``cls`` that comes back."""
        start = len(self.received)
        self.ecr_send(msg)
        return self.wait_for(cls, max_time, dt, start=start)

    def since(self, start: int) -> list[Message]:
        return self.received[start:]
