"""Loopback addresses for the panel (shared by the server and the backend, no import cycle)."""

from __future__ import annotations

import ipaddress


def loopback_host(name: str) -> str | None:
    """The address to bind for ``name`` if it is loopback (``localhost`` is 127.0.0.1), else None."""
    name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if name == "localhost":
        return "127.0.0.1"
    try:
        return name if ipaddress.ip_address(name).is_loopback else None
    except ValueError:
        return None
