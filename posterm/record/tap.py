"""`posterm tap`: sit between a cash register and a terminal, forward both ways, record both.

Two threads, one per direction, each a bounded read (4 KiB, 20 ms) from one port and a
write to the other: a chunk is forwarded as soon as it arrives, never re-framed, so the
tap adds no more than a read wake-up of latency and changes no byte.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from posterm.errors import Disconnected, TransportError
from posterm.record.format import Recorder

READ_SIZE = 4096
READ_TIMEOUT = 0.02


@dataclass
class Tap:
    """Forwards ``ecr`` <-> ``terminal`` and records into ``recorder``. ``start()``, then ``close()``."""

    ecr: Any
    terminal: Any
    recorder: Recorder | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"ecr_bytes": 0, "terminal_bytes": 0})
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.ecr, self.terminal, "ecr"), daemon=True, name="tap-ecr"),
            threading.Thread(target=self._pump, args=(self.terminal, self.ecr, "terminal"), daemon=True,
                             name="tap-terminal"),
        ]

    def start(self) -> "Tap":
        for t in self._threads:
            t.start()
        return self

    def _pump(self, src: Any, dst: Any, sender: str) -> None:
        try:
            while not self.stop.is_set():
                data = src.read(READ_SIZE, READ_TIMEOUT)
                if not data:
                    continue
                dst.write(data)  # forward first: recording never delays the line
                self.stats[f"{sender}_bytes"] += len(data)
                if self.recorder is not None:
                    self.recorder.data(sender, data)
        except Disconnected as exc:
            if not self.stop.is_set():
                self.error = exc
                self.stop.set()
        except TransportError as exc:
            self.error = exc
            self.stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a side disconnects (True) or ``timeout`` passes (False)."""
        return self.stop.wait(timeout)

    def close(self) -> None:
        """Stop both threads (bounded join), close the recorder. Ports stay the caller's."""
        self.stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(1.0)
        if self.recorder is not None:
            self.recorder.close()
