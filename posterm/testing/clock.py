"""A fake clock for sans-IO code and the driver: time moves only when told to.

``clock()`` returns the current time; ``clock.sleep(s)`` (what ``Terminal(sleep=...)``
takes) and ``clock.advance(s)`` move it on at once, so timing-sensitive tests run
the same on a loaded machine as on a quiet one.
"""

from __future__ import annotations


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    sleep = advance
