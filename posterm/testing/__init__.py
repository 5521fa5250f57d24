"""Helpers for testing code built on posterm (and posterm itself)."""

from posterm.testing.linkpair import LinkPair, LossyWire

__all__ = ["LinkPair", "LossyWire"]
