"""The Concert family's registration: Ingenico Concert (Telium), protocol E."""

from __future__ import annotations

from posterm.families import ProtocolFamily

FAMILY = ProtocolFamily(
    "concert", "Ingenico Concert (Telium), protocol E",
    driver="posterm.families.concert.ecr:ConcertTerminal",
    terminal_link="posterm.families.concert.front:ConcertFront",
    # USB (CDC-ACM) terminals: 8N1; native RS-232 Telium ports: 7E1 (--bytesize 7 --parity E)
    serial_defaults={"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1},
    # Concert has no query: the emulated terminal reverses what its ECR never acknowledged.
    ecr_can_query=False,
    recording="posterm.families.concert.record:RECORDING",
    decoder="posterm.families.concert.decode:decode",
)
