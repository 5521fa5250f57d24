"""The toy family's registration: the entry point ``posterm.protocols: toy = toyfam.family:FAMILY``."""

from __future__ import annotations

from posterm.families import ProtocolFamily

# Every part named by its import path under the package's own name (``toyfam`` when posterm
# loads it through the entry point).
_PKG = __name__.rsplit(".", 1)[0]

FAMILY = ProtocolFamily(
    "toy", "a toy line protocol (tests/plugin/toyfam): one JSON frame per line",
    driver=f"{_PKG}.ecr:ToyTerminal",
    terminal_link=f"{_PKG}.front:ToyFront",
    serial_defaults={"baudrate": 19200, "bytesize": 8, "parity": "N", "stopbits": 1},
    ecr_can_query=False,
    recording=f"{_PKG}.record:RECORDING",             # record, show, convert, tap and replay
    record_observer=f"{_PKG}.record:ToyRecordObserver",
)
