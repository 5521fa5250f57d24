"""The gateway over HTTP: a Starlette app, served by uvicorn on loopback only.

:func:`make_app` builds the ASGI app from the protocol modules named in
:data:`ROUTE_MODULES` (each ``posterm.host.gateway.<name>``, imported when present: a
module that does not exist yet is skipped). A protocol module gives

- ``ROUTES``: ``[(path, methods, handler), ...]`` with ``handler(gateway, request) ->
  Response`` (:class:`Request`, :class:`Response`: plain data, no HTTP library in them);
- ``refuse(request, why) -> Response``: its published answer when the HTTP layer refuses
  a request before the handler (``why``: ``too_large``, ``too_many_params``, ``busy``,
  ``internal``), so a client never sees a bare 413, 503 or a traceback;
- optionally ``NOTIFY``: ``notify(gateway, app, trade, url) -> bool`` for
  :class:`~posterm.host.gateway.notify.Notifier` (apps of kind ``<name>``).

Handlers are synchronous (the host's store is SQLite) and run in worker threads, at most
:attr:`Limits.max_concurrent` at once; one more is answered ``busy`` at once rather than
queued. Request bodies are read up to :attr:`Limits.max_body` and no further. uvicorn's
access log is off: an Alipay GET carries the buyer's payment code in its query string.

:class:`GatewayServer` runs uvicorn in a thread on a socket it binds itself (port 0
allowed: :attr:`GatewayServer.address` is known before the first request), refuses any
address that is not loopback, and stops within a bounded time.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from posterm import loopback

if TYPE_CHECKING:  # pragma: no cover
    from posterm.host.gateway.core import Gateway

log = logging.getLogger("posterm.host.gateway")

# The protocol modules, by name under posterm.host.gateway. WeChat Pay v2 lives in
# posterm.host.gateway.wechat: its ROUTES are served as soon as that module exists.
ROUTE_MODULES = ("alipay", "wechat")


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one request and the server may hold."""

    max_body: int = 64 * 1024          # bytes of a request body
    max_params: int = 64               # query plus form parameters
    max_concurrent: int = 32           # requests being handled at once
    max_connections: int = 256         # connections uvicorn holds (beyond: it answers 503)
    keep_alive_s: float = 5.0
    body_timeout_s: float = 10.0       # a request body not in by then is answered "busy" (a stalled peer)


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as a protocol handler sees it. ``query``: the raw query string."""

    method: str
    path: str
    query: bytes
    body: bytes
    content_type: str
    limits: Limits


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def protocol_modules() -> list:
    """The protocol modules of :data:`ROUTE_MODULES` that exist in this build."""
    out = []
    for name in ROUTE_MODULES:
        try:
            out.append(importlib.import_module(f"posterm.host.gateway.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"posterm.host.gateway.{name}":
                raise      # the module exists but something it imports does not: say so
    return out


class _TooLarge(Exception):
    pass


def make_app(gateway: "Gateway", limits: Limits = Limits(), modules: list | None = None):
    """The Starlette app serving every protocol module's routes over ``gateway``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import Response as StarletteResponse
    from starlette.routing import Route

    slots = asyncio.Semaphore(limits.max_concurrent)

    def endpoint(module, handler: Callable):
        async def run(request: StarletteRequest) -> StarletteResponse:
            stalled = False
            try:
                async with asyncio.timeout(limits.body_timeout_s):
                    body = await _read_body(request, limits.max_body)
            except _TooLarge:
                body = None
            except TimeoutError:
                body, stalled = None, True
            req = Request(request.method, request.url.path, request.scope.get("query_string", b""), body or b"",
                          request.headers.get("content-type", ""), limits)
            if stalled:
                log.warning("gateway %s: request body not in within %.0f s: refused", req.path, limits.body_timeout_s)
                return _out(module.refuse(req, "busy"))     # nothing was processed: the merchant retries
            if body is None:
                return _out(module.refuse(req, "too_large"))
            if slots.locked():
                return _out(module.refuse(req, "busy"))
            async with slots:
                try:
                    return _out(await run_in_threadpool(handler, gateway, req))
                except Exception as exc:  # the published error, never a traceback to the client
                    log.error("gateway %s: %s failed: %s", req.path, getattr(handler, "__name__", "handler"),
                              type(exc).__name__)
                    return _out(module.refuse(req, "internal"))
        return run

    def _out(resp: Response) -> StarletteResponse:
        return StarletteResponse(resp.body, status_code=resp.status, media_type=None,
                                 headers={"content-type": resp.content_type})

    routes = []
    for module in (protocol_modules() if modules is None else modules):
        for path, methods, handler in module.ROUTES:
            routes.append(Route(path, endpoint(module, handler), methods=list(methods)))
    return Starlette(routes=routes)


async def _read_body(request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > cap:
                raise _TooLarge
        except ValueError:
            raise _TooLarge from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------- the server

def parse_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", port) from "HOST:PORT" (IPv6 in brackets). Raises ConfigError for a
    malformed address or one that is not loopback (the gateway never serves a network)."""
    return loopback.parse_listen(listen, "gateway address", "the gateway")


class GatewayServer:
    """uvicorn serving :func:`make_app` in a thread (see the module docstring).

    ``notifier``: a :class:`~posterm.host.gateway.notify.Notifier` started and stopped
    with the server (None: no asynchronous notifications). ``modules``: the protocol
    modules served (default :func:`protocol_modules`).
    """

    def __init__(self, gateway: "Gateway", listen: str = "127.0.0.1:0", *, limits: Limits = Limits(),
                 notifier=None, modules: list | None = None) -> None:
        self._uvicorn = loopback.UvicornThread(
            make_app(gateway, limits, modules), listen, option="gateway address", what="the gateway",
            name="posterm-gateway", backlog=128, limit_concurrency=limits.max_connections,
            timeout_keep_alive=limits.keep_alive_s, date_header=True, timeout_graceful_shutdown=2)
        self.host, self.port = self._uvicorn.host, self._uvicorn.port
        self.gateway = gateway
        self._notifier = notifier
        if notifier is not None:
            notifier.start()

    @property
    def address(self) -> str:
        """``http://HOST:PORT`` of the gateway."""
        return self._uvicorn.url

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving (requests in flight get ``timeout`` seconds) and the notifier."""
        if self._notifier is not None:
            self._notifier.stop(timeout)
        self._uvicorn.close(timeout)

    def __enter__(self) -> "GatewayServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
