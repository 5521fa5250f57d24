"""The panel's server: uvicorn in a thread, on a socket bound here, loopback only."""

from __future__ import annotations

from typing import Any

from posterm import loopback
from posterm.loopback import loopback_host  # noqa: F401 - part of this module's interface

MAX_CONNECTIONS = 64


def parse_listen(listen: str, option: str = "--panel") -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` (IPv6 in brackets; ``http://`` allowed). Raises
    ConfigError naming ``option`` for a malformed address or one that is not loopback."""
    return loopback.parse_listen(listen, option, "the panel")


class PanelServer:
    """The panel app (:func:`posterm.panel.app.make_app` over ``backend``) served by uvicorn
    in a thread. ``url`` is known before the first request (port 0: a free one);
    ``close()`` stops it within a bounded time."""

    def __init__(self, backend: Any, listen: str = "127.0.0.1:0", *, option: str = "--panel") -> None:
        from posterm.panel.app import make_app

        self.app = make_app(backend)
        self.backend = backend
        self._uvicorn = loopback.UvicornThread(
            self.app, listen, option=option, what="the panel", name="posterm-panel",
            limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5, timeout_graceful_shutdown=1)
        self.host, self.port = self._uvicorn.host, self._uvicorn.port

    @property
    def url(self) -> str:
        return self._uvicorn.url

    @property
    def hub(self):
        return self.app.hub

    def close(self, timeout: float = 3.0) -> None:
        self._uvicorn.close(timeout)

    def __enter__(self) -> "PanelServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
