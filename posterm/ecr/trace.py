"""What every family's traces and recordings share: how a secret is masked, how bytes are shown.

A family's own redaction (which fields of its frames are secret) lives with the family
(e.g. ``posterm/families/native/redact.py``) and builds on these. Stdlib only.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

#: What replaces each byte of a secret in a masked frame (same length, so a hex dump keeps
#: its layout and a recording can mark where a value was removed).
MASK_BYTE = ord("*")


def mask_code(code: str) -> str:
    """A payment code with only its last 4 characters left: ``289900000000000001`` ->
    ``**************0001``."""
    return "*" * max(0, len(code) - 4) + code[-4:]


def jsonable(value: Any) -> Any:
    """``value`` as JSON-friendly data: an enum becomes its name, bytes upper-case hex, a
    tuple a list, a dataclass a dict of its fields (recursively); anything else as it is."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes):
        return value.hex().upper()
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def hexdump(data: bytes, width: int = 16) -> str:
    """Spaced upper-case hex, ``width`` bytes per line."""
    lines = []
    for i in range(0, len(data), width):
        chunk = data[i : i + width]
        lines.append(" ".join(f"{b:02X}" for b in chunk))
    return "\n".join(lines)
