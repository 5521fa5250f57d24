"""The posterm pieces the toy uses that are moving while issue 15 lands: one place to fix.

The ECR result types leave posterm/families/native/ecr.py for posterm/ecr/results.py, and
the firmware's ResultDelivery may move with the firmware's split. (A plug-in written
against a released posterm imports them from their one published place.)
"""

# ruff: noqa: F401
try:
    from posterm.ecr.results import PaymentResult, TerminalInfo
except ImportError:   # before the ECR split
    from posterm.families.native.ecr import PaymentResult, TerminalInfo

from posterm.emulator.firmware import ResultDelivery

try:
    from posterm.errors import SendQueueFull
except ImportError:   # before the runner rewrite: the native link's
    from posterm.families.native.link import SendQueueFull

try:
    from posterm.families.interfaces import Observed
except ImportError:   # until the record slice declares what a RecordObserver's feed returns
    from dataclasses import dataclass, field as _field
    from typing import Any as _Any

    @dataclass(frozen=True, slots=True)
    class Observed:   # type: ignore[no-redef]
        """What a record observer saw: one JSON-able record (the recorder adds ``t`` and
        ``wall``) and the absolute stream spans [start, end) to mask in the chunks."""

        record: dict[str, _Any]
        masks: list[tuple[int, int]] = _field(default_factory=list)
        new_session: bool = False

try:
    from posterm.families.interfaces import FamilyRecording, PcapInterface
except ImportError:   # until the record slice: the toy's record support is its observer alone
    FamilyRecording = PcapInterface = None   # type: ignore[assignment,misc]
