"""The ZVT family's registration: the German counter protocol (ZVT-Kassenschnittstelle)."""

from __future__ import annotations

from posterm.families import ProtocolFamily

FAMILY = ProtocolFamily(
    "zvt", "ZVT (ZVT-Kassenschnittstelle), serial and TCP",
    driver="posterm.families.zvt.ecr:ZvtTerminal",
    terminal_link="posterm.families.zvt.front:ZvtFront",
    # ZVT's usual line: 9600 baud, 8N2 (115200 is common too: --baudrate)
    serial_defaults={"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 2},
    # ZVT has no query by order id: the emulated terminal reverses what its ECR never acknowledged.
    ecr_can_query=False,
    decoder="posterm.families.zvt.decode:decode",
)
