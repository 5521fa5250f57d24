"""Port discovery: pyserial's comports() plus the stable /dev/serial/by-id names."""

from __future__ import annotations

import os
from dataclasses import dataclass, asdict

BY_ID_DIR = "/dev/serial/by-id"


@dataclass(frozen=True, slots=True)
class PortInfo:
    device: str
    by_id: str | None
    vid: int | None
    pid: int | None
    serial_number: str | None
    manufacturer: str | None
    product: str | None
    description: str
    hwid: str

    @property
    def vid_pid(self) -> str:
        return f"{self.vid:04X}:{self.pid:04X}" if self.vid is not None and self.pid is not None else ""

    def to_json(self) -> dict:
        return {**asdict(self), "vid_pid": self.vid_pid}


def _by_id_names(directory: str = BY_ID_DIR) -> dict[str, str]:
    names: dict[str, str] = {}
    try:
        entries = os.listdir(directory)
    except OSError:
        return names
    for entry in sorted(entries):
        path = os.path.join(directory, entry)
        names.setdefault(os.path.realpath(path), path)
    return names


def list_ports() -> list[PortInfo]:
    """Serial ports on this machine (USB, ACM, native). ptys are not listed (pyserial does not)."""
    from serial.tools import list_ports as lp

    by_id = _by_id_names()
    found = []
    for p in sorted(lp.comports(), key=lambda p: p.device):
        found.append(PortInfo(device=p.device, by_id=by_id.get(os.path.realpath(p.device)), vid=p.vid, pid=p.pid,
                              serial_number=p.serial_number, manufacturer=p.manufacturer, product=p.product,
                              description=p.description or "", hwid=p.hwid or ""))
    return found
