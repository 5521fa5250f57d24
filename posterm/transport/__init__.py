"""Transports: one interface (:class:`Transport`), backends behind a lazy registry.

=================  ===========================================================
URL                backend
=================  ===========================================================
``/dev/ttyUSB0``   ``serial``: any device path or pyserial URL (``socket://``,
``rfc2217://``     ``rfc2217://``, ``loop://``); settings default to 115200 8N1
``tcp://H:P``      ``tcp``: our TCP client (servers: :meth:`TcpTransport.listen`)
``pty://``         ``pty``: a new pseudo-terminal (emulators; see ``.path``)
``virtual://N``    ``virtual``: an in-process pair published as ``N``
``NAME://...``     a backend another package registers in the ``posterm.transports``
                   entry-point group (a class with ``connect(url, **settings)``)
=================  ===========================================================

Backends are imported only when used (the python-can way), so ``import posterm``
never needs pyserial's optional parts. ``POSTERM_PORT`` and ``POSTERM_BAUD`` set the
default port and baud rate.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import Any

from posterm.errors import LocalProtocolError
from posterm.transport.base import Pacer, Transport, bits_per_byte
from posterm.transport.ports import PortInfo, list_ports

__all__ = ["Transport", "Pacer", "open_transport", "default_port", "default_baud", "list_ports", "PortInfo",
           "backend", "BACKENDS", "bits_per_byte", "PtyTransport", "TcpTransport", "VirtualTransport",
           "SerialTransport", "FaultyTransport", "FaultSpec"]

BACKENDS: dict[str, str] = {
    "serial": "posterm.transport.serial_port:SerialTransport",
    "pty": "posterm.transport.pty_port:PtyTransport",
    "tcp": "posterm.transport.tcp:TcpTransport",
    "virtual": "posterm.transport.virtual:VirtualTransport",
}
ENTRY_POINT_GROUP = "posterm.transports"
_OURS = {"tcp": "tcp", "pty": "pty", "virtual": "virtual"}
SERIAL_SETTINGS = ("baudrate", "bytesize", "parity", "stopbits", "rtscts", "xonxoff", "exclusive", "pace",
                   "write_timeout")


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def backend(name: str) -> Any:
    """The transport class registered as ``name`` (ours first, then entry points)."""
    if name in BACKENDS:
        return _load(BACKENDS[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise LocalProtocolError(f"no transport backend {name!r} (known: {', '.join(sorted(BACKENDS))})")


def _backend_for(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _OURS:
        return _OURS[scheme]
    if scheme and scheme not in ("socket", "rfc2217", "loop", "hwgrep", "alt", "spy", "cp2110"):
        if any(ep.name == scheme for ep in entry_points(group=ENTRY_POINT_GROUP)):
            return scheme
    return "serial"


def default_port() -> str | None:
    """``$POSTERM_PORT``, or None."""
    return os.environ.get("POSTERM_PORT") or None


def default_baud() -> int:
    """``$POSTERM_BAUD``, or 115200."""
    raw = os.environ.get("POSTERM_BAUD")
    if not raw:
        return 115200
    try:
        return int(raw)
    except ValueError:
        raise LocalProtocolError(f"POSTERM_BAUD={raw!r} is not a whole number") from None


def open_transport(url: str, **settings: Any) -> Transport:
    """Open ``url`` with the backend its form names; ``settings`` override the defaults.

    Raises :class:`~posterm.errors.PortNotFound`, :class:`~posterm.errors.PortBusy`,
    :class:`~posterm.errors.PortPermission` or another :class:`~posterm.errors.TransportError`
    when it cannot be opened, :class:`LocalProtocolError` for a bad URL or setting.
    """
    if not url:
        raise LocalProtocolError("no port given (use --port or set POSTERM_PORT)")
    settings = {k: v for k, v in settings.items() if v is not None}
    settings.setdefault("baudrate", default_baud())
    cls = backend(_backend_for(url))
    try:
        return cls.connect(url, **settings)
    except ValueError as exc:  # urllib and pyserial's URL parsers: "Invalid IPv6 URL", a bad port, ...
        if isinstance(exc, LocalProtocolError):
            raise
        raise LocalProtocolError(f"bad port {url!r}: {exc}") from exc


def __getattr__(name: str) -> Any:
    lazy = {"PtyTransport": "pty", "TcpTransport": "tcp", "VirtualTransport": "virtual", "SerialTransport": "serial"}
    if name in lazy:
        return backend(lazy[name])
    if name in ("FaultyTransport", "FaultSpec"):
        from posterm.transport import faults
        return getattr(faults, name)
    raise AttributeError(name)
