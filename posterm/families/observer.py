"""A base for a family's :class:`~posterm.families.interfaces.RecordObserver` over one
:class:`~posterm.families.interfaces.Framer` per direction (what every family's observer is).

A subclass says what one side remembers (:meth:`new_side`) and what one framed item is
(:meth:`item`: records to write, and it must move ``side.consumed`` past the item's bytes);
the two sides, ``pending`` and the framer loop are here.
"""

from __future__ import annotations

from typing import Any

from posterm.families.interfaces import Observed

__all__ = ["FramedObserver", "Side"]


class Side:
    """One direction's framer and what the observer remembers of it. Families add fields."""

    def __init__(self, framer: Any) -> None:
        self.framer = framer
        self.consumed = 0          # stream offset of the framer's buffer start
        self.nak_since = False     # the peer NAKed since this side's last frame


class FramedObserver:
    def __init__(self) -> None:
        self._sides = {"ecr": self.new_side(), "terminal": self.new_side()}

    def new_side(self) -> Side:
        raise NotImplementedError

    def item(self, sender: str, side: Side, other: Side, item: Any, start: int) -> list[Observed]:
        """What one item the framer popped (at stream offset ``start``) is."""
        raise NotImplementedError

    def header(self) -> dict[str, Any]:
        return {}

    def pending(self, sender: str) -> int:
        return self._sides[sender].framer.pending

    def feed(self, sender: str, data: bytes, offset: int) -> list[Observed]:
        side = self._sides[sender]
        other = self._sides["terminal" if sender == "ecr" else "ecr"]
        side.framer.feed(data)
        out: list[Observed] = []
        while (item := side.framer.pop()) is not None:
            out += self.item(sender, side, other, item, side.consumed)
        return out
