"""Line faults between a link and its wire, seeded so a failing run can be repeated.

``--faults drop=0.01,corrupt=0.01,dup=0.005,delay=20ms,unplug_after=30s,seed=7``

- ``drop``: probability that a written or read chunk (usually one frame) vanishes;
- ``corrupt``: probability that one random bit of a chunk flips;
- ``dup``: probability that a written chunk is sent twice;
- ``delay``: added latency before each write (``ms`` or ``s``);
- ``unplug_after``: the cable is pulled this long after the port opened: every later
  read and write raises :class:`~posterm.errors.Disconnected`;
- ``seed``: the random seed (default 0).
Faults apply to both directions: writes as they leave, reads as they arrive.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, fields

from posterm.errors import ConfigError, Disconnected
from posterm.transport.base import Transport


def _duration(text: str) -> float:
    text = text.strip().lower()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    drop: float = 0.0
    corrupt: float = 0.0
    dup: float = 0.0
    delay: float = 0.0
    unplug_after: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt", "dup"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fault {name}={value}: a probability must be between 0 and 1")
        if self.delay < 0 or self.delay > 60:
            raise ConfigError(f"fault delay={self.delay}s: must be between 0 and 60 s")
        if self.unplug_after is not None and self.unplug_after < 0:
            raise ConfigError("fault unplug_after must not be negative")

    @classmethod
    def parse(cls, spec: str) -> "FaultSpec":
        """Parse ``"drop=0.01,delay=20ms,..."``. Raises :class:`ConfigError` naming the bad item."""
        known = {f.name for f in fields(cls)}
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                raise ConfigError(f"bad fault {item!r}: expected one of {', '.join(sorted(known))} as NAME=VALUE")
            try:
                if key in ("delay", "unplug_after"):
                    values[key] = _duration(raw)
                elif key == "seed":
                    values[key] = int(raw)
                else:
                    values[key] = float(raw)
            except ValueError:
                raise ConfigError(f"bad fault {item!r}: {raw!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        return bool(self.drop or self.corrupt or self.dup or self.delay or self.unplug_after is not None)


class FaultyTransport(Transport):
    """Wraps a transport and injects :class:`FaultSpec` faults. ``stats`` counts them."""

    def __init__(self, inner: Transport, spec: FaultSpec | str) -> None:
        self.inner = inner
        self.spec = FaultSpec.parse(spec) if isinstance(spec, str) else spec
        self.description = f"{inner.description} [faults]"
        self._rng = random.Random(self.spec.seed)
        self._lock = threading.Lock()
        self._opened = time.monotonic()
        self.stats = {"dropped": 0, "corrupted": 0, "duplicated": 0, "unplugged": 0}
        self._closed = False

    def _check_plug(self) -> None:
        if self.spec.unplug_after is not None and time.monotonic() - self._opened >= self.spec.unplug_after:
            if not self.stats["unplugged"]:
                self.stats["unplugged"] = 1
                self.inner.close()
            raise Disconnected(f"{self.inner.description}: cable unplugged (fault injection)")

    def _mangle(self, data: bytes) -> bytes | None:
        with self._lock:
            if self.spec.drop and self._rng.random() < self.spec.drop:
                self.stats["dropped"] += 1
                return None
            if self.spec.corrupt and data and self._rng.random() < self.spec.corrupt:
                self.stats["corrupted"] += 1
                buf = bytearray(data)
                buf[self._rng.randrange(len(buf))] ^= 1 << self._rng.randrange(8)
                return bytes(buf)
        return data

    def read(self, max_bytes: int, timeout: float) -> bytes:
        self._check_plug()
        data = self.inner.read(max_bytes, timeout)
        if not data:
            return data
        return self._mangle(data) or b""

    def write(self, data: bytes) -> None:
        self._check_plug()
        if self.spec.delay:
            time.sleep(self.spec.delay)
        out = self._mangle(data)
        if out is None:
            return
        self.inner.write(out)
        with self._lock:
            dup = self.spec.dup and self._rng.random() < self.spec.dup
            if dup:
                self.stats["duplicated"] += 1
        if dup:
            self.inner.write(out)

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        self._closed = True
        self.inner.close()
