"""Loopback only, in one place: the address check every server and outgoing notification
makes, and uvicorn serving an ASGI app in a thread on a socket bound here.

posterm never serves a network and never calls out of the machine: the merchant gateway, the
control panel and the emulator listen on loopback, and webhooks and wallet notifications go
to loopback URLs. Each of those asks this module, so the rule and its wording are the same.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from posterm.errors import ConfigError

SAID = "127.0.0.1, [::1], localhost"


def loopback_host(name: str | None) -> str | None:
    """The address to bind or reach for ``name`` if it is loopback (``localhost`` is
    127.0.0.1; IPv6 may come in brackets), else None."""
    if not name:
        return None
    name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if name == "localhost":
        return "127.0.0.1"
    try:
        return name if ipaddress.ip_address(name).is_loopback else None
    except ValueError:
        return None


def loopback_url(url: str | None, schemes: tuple[str, ...] = ("http",)) -> bool:
    """Whether ``url`` has one of ``schemes``, a loopback host, a valid port if any and no
    user or password in it."""
    if not url:
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if parts.scheme not in schemes or parts.username or parts.password:
        return False
    return loopback_host(parts.hostname) is not None


def parse_listen(listen: str, option: str, what: str) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` (IPv6 in brackets; a leading ``http://`` and a
    trailing ``/`` allowed). Raises ConfigError naming ``option`` for a malformed address or
    one that is not loopback; ``what`` is the server, for the message."""
    shown = repr(listen if len(listen) <= 60 else listen[:60] + "...")
    text = listen.strip().removeprefix("http://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{option} {shown}: give HOST:PORT with PORT 0..65535")
    addr = loopback_host(host)
    if addr is None:
        raise ConfigError(f"{option} {shown}: {what} listens on loopback only ({SAID});"
                          " there is no option to expose it")
    return addr, int(port)


class UvicornThread:
    """uvicorn serving ``app`` in a daemon thread on a loopback socket bound here, so the
    address (port 0: a free one) is known before the first request; ``close()`` stops it
    within a bounded time. ``settings`` go to ``uvicorn.Config`` over safe defaults (no
    logging config, no access log, no lifespan, no server header, capped header size)."""

    def __init__(self, app: Any, listen: str, *, option: str, what: str, name: str, backlog: int = 64,
                 **settings: Any) -> None:
        import uvicorn

        host, port = parse_listen(listen, option, what)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without
        # it every answer (headers, then body) waits ~40 ms for the client's delayed ACK.
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(backlog)
        except OSError as exc:
            self._sock.close()
            raise ConfigError(f"{option} {listen}: {exc.strerror}") from exc
        bound = self._sock.getsockname()
        self.host, self.port = bound[0], bound[1]
        config = uvicorn.Config(app, **{"log_config": None, "access_log": False, "lifespan": "off",
                                        "server_header": False, "h11_max_incomplete_event_size": 16 * 1024,
                                        **settings})
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=name, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self, timeout: float) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a handler or stream that will not end
            self._server.force_exit = True
            self._thread.join(timeout)
        self._sock.close()
