"""The control panel: a web page (and the same controls as JSON over HTTP) for emulated
terminals. docs/panel.md says what it shows and every API path.

* :mod:`.backend`: where the terminals are (this process, or ``posterm emulate --panel``
  processes reached over HTTP),
* :mod:`.app`: the Starlette app (page, static files, ``/api/v1``, server-sent events),
* :mod:`.server`: uvicorn in a thread on loopback,
* ``static/``: the page, its script and style, served from the package (no CDN).

Built on :mod:`posterm.emulator.control` (the live-control layer).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalBackend", "PanelServer", "RemoteBackend", "make_app"]


def __getattr__(name: str) -> Any:   # lazy: importing posterm.panel must not need starlette
    if name in ("LocalBackend", "RemoteBackend"):
        from posterm.panel import backend
        return getattr(backend, name)
    if name == "PanelServer":
        from posterm.panel.server import PanelServer
        return PanelServer
    if name == "make_app":
        from posterm.panel.app import make_app
        return make_app
    raise AttributeError(name)
