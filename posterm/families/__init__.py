"""Protocol families: what the driver and the emulator speak on the line.

=============  ==================================================================
name           family
=============  ==================================================================
``posterm``    posterm's own framed TLV protocol (firmware_protocol/PROTOCOL.md)
``concert``    Ingenico Concert ("protocole E") of Telium terminals: ENQ/ACK/EOT,
               STX fixed-width ASCII ETX LRC (PROTOCOL.md, Concert section)
``NAME``       a family another package registers in the ``posterm.families``
               entry-point group (a :class:`ProtocolFamily`)
=============  ==================================================================

A family gives the driver class the ECR side opens (``open(url, **kw)`` returning an
object with the :class:`posterm.families.native.ecr.Terminal` API), a factory for the emulator's
terminal-side link (the shape of :class:`posterm.families.native.link.Link`, carrying posterm
messages to the firmware) and its default serial settings. Families load lazily,
like transports, so ZVT or another one can be added without touching callers.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from posterm.errors import ConfigError

ENTRY_POINT_GROUP = "posterm.families"


@dataclass(frozen=True)
class ProtocolFamily:
    name: str
    description: str
    driver: str                     # "module:Class" of the ECR side
    terminal_link: str              # "module:callable(operator_password=...) -> link" for the emulator
    serial_defaults: dict[str, Any] = field(default_factory=dict)
    # The ECR can ask what became of an order (posterm: Query). Without that, the emulated
    # terminal reverses an order whose outcome the ECR never learnt (FirmwareConfig.void_unfinished).
    ecr_can_query: bool = True

    def driver_class(self) -> Any:
        return _load(self.driver)

    def make_terminal_link(self, **kw: Any) -> Any:
        factory: Callable[..., Any] = _load(self.terminal_link)
        return factory(**kw)


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


FAMILIES: dict[str, ProtocolFamily] = {
    "posterm": ProtocolFamily(
        "posterm", "posterm framed TLV protocol (default)", "posterm.families.native.ecr:Terminal",
        "posterm.families.native.front:NativeFront", {"baudrate": 115200, "bytesize": 8, "parity": "N", "stopbits": 1}),
    "concert": ProtocolFamily(
        "concert", "Ingenico Concert (Telium), protocol E", "posterm.families.concert.ecr:ConcertTerminal",
        "posterm.families.concert.front:ConcertFront",
        # USB (CDC-ACM) terminals: 8N1; native RS-232 Telium ports: 7E1 (--bytesize 7 --parity E)
        {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}, ecr_can_query=False),
}

POSTERM = FAMILIES["posterm"]
CONCERT = FAMILIES["concert"]


def _posterm_link(operator_password: str = "", link_config: Any = None) -> Any:
    from posterm.families.native.link import Link, LinkConfig

    return Link(link_config or LinkConfig())


def names() -> list[str]:
    """Every family available: ours, then entry points."""
    found = list(FAMILIES)
    found += [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in FAMILIES]
    return found


def family(name: str | None = None) -> ProtocolFamily:
    """The family called ``name`` (default ``$POSTERM_PROTOCOL`` or ``posterm``). Raises ConfigError."""
    name = (name or os.environ.get("POSTERM_PROTOCOL") or "posterm").lower()
    if name in FAMILIES:
        return FAMILIES[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            fam = ep.load()
            if not isinstance(fam, ProtocolFamily):
                raise ConfigError(f"entry point {name!r} in {ENTRY_POINT_GROUP} is not a ProtocolFamily")
            return fam
    raise ConfigError(f"no protocol family {name!r} (known: {', '.join(names())})")
