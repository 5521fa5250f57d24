"""The panel's server: uvicorn in a thread, on a socket bound here, loopback only."""

from __future__ import annotations

import socket
import threading
from typing import Any

from posterm.errors import ConfigError
from posterm.panel.addresses import loopback_host  # noqa: F401 - part of this module's interface

MAX_CONNECTIONS = 64


def parse_listen(listen: str, option: str = "--panel") -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` (IPv6 in brackets; ``http://`` allowed). Raises
    ConfigError naming ``option`` for a malformed address or one that is not loopback."""
    shown = repr(listen if len(listen) <= 60 else listen[:60] + "...")
    text = listen.strip().removeprefix("http://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{option} {shown}: give HOST:PORT with PORT 0..65535")
    addr = loopback_host(host)
    if addr is None:
        raise ConfigError(f"{option} {shown}: the panel listens on loopback only (127.0.0.1, [::1], localhost);"
                          " there is no option to expose it")
    return addr, int(port)


class PanelServer:
    """The panel app (:func:`posterm.panel.app.make_app` over ``backend``) served by uvicorn
    in a thread. ``url`` is known before the first request (port 0: a free one);
    ``close()`` stops it within a bounded time."""

    def __init__(self, backend: Any, listen: str = "127.0.0.1:0", *, option: str = "--panel") -> None:
        import uvicorn

        from posterm.panel.app import make_app

        host, port = parse_listen(listen, option)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(64)
        except OSError as exc:
            self._sock.close()
            raise ConfigError(f"{option} {listen}: {exc.strerror}") from exc
        bound = self._sock.getsockname()
        self.host, self.port = bound[0], bound[1]
        self.app = make_app(backend)
        self.backend = backend
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5,
                                h11_max_incomplete_event_size=16 * 1024, server_header=False,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="posterm-panel", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def hub(self):
        return self.app.hub

    def close(self, timeout: float = 3.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a stream that will not end
            self._server.force_exit = True
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "PanelServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
