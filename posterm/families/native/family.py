"""The native family's registration: posterm's own framed TLV protocol, named ``posterm``
on the command line and in recordings."""

from __future__ import annotations

from posterm.families import ProtocolFamily

FAMILY = ProtocolFamily(
    "posterm", "posterm framed TLV protocol (default)",
    driver="posterm.families.native.ecr:Terminal",
    # The firmware speaks native messages: the front is the link plus what a new ECR session means.
    terminal_link="posterm.families.native.front:NativeFront",
    serial_defaults={"baudrate": 115200, "bytesize": 8, "parity": "N", "stopbits": 1},
    ecr_can_query=True,
    recording="posterm.families.native.record:RECORDING",
    decoder="posterm.families.native.decode:decode",
)
