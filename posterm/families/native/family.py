"""The native family's registration: posterm's own framed TLV protocol, named ``posterm``
on the command line and in recordings."""

from __future__ import annotations

from typing import Any

from posterm.families import ProtocolFamily


def terminal_link(operator_password: str = "", link_config: Any = None) -> Any:
    """The emulator's side of a native line: the link itself (the firmware speaks native
    messages, so there is nothing to translate). The operator types the password on the
    ECR side here, so ``operator_password`` is not used."""
    from posterm.families.native.link import Link, LinkConfig

    return Link(link_config or LinkConfig())


FAMILY = ProtocolFamily(
    "posterm", "posterm framed TLV protocol (default)",
    driver="posterm.families.native.ecr:Terminal",
    terminal_link="posterm.families.native.family:terminal_link",
    serial_defaults={"baudrate": 115200, "bytesize": 8, "parity": "N", "stopbits": 1},
    ecr_can_query=True,
    recording="posterm.families.native.record:RECORDING",   # made by the record slice (issue 15)
)
