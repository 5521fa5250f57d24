"""The control panel's ASGI app (Starlette): the page, its static files, the JSON API under
``/api/v1`` and live updates by server-sent events. docs/panel.md documents every path.

Live updates: a backend says which terminal changed (from the terminal's own thread); the
:class:`Hub` collects those, and at most every :data:`COALESCE` seconds sends each client the
changed terminals' states with their new traffic entries, plus a fleet summary (counts by
state, payments, flows per second). Each client has a queue of :data:`CLIENT_QUEUE`
messages; a client that lets it fill is dropped (its stream ends; a browser's EventSource
reconnects and starts again from full states). At most :data:`MAX_CLIENTS` streams.

Requests are refused unless their ``Host`` is a loopback name (DNS rebinding), and a
``POST`` must be ``application/json`` with at most 4 KiB of body and no foreign ``Origin``
(no other site's page can act on the terminals through your browser). The page, the
state and the events carry no secret: codes appear masked to their last four digits,
PINs never (the ``scenario.toml`` export is the one answer with the PIN digits typed, as
a scenario file must have them: it is served as a download, ``no-store``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from posterm.emulator.control import DEMO_CODES, ControlBusy, ControlError
from posterm.emulator.scenario import KEYS
from posterm.panel.backend import ACTIONS, MAX_BODY

log = logging.getLogger("posterm.panel")

API = "/api/v1"
STATIC = Path(__file__).parent / "static"
COALESCE = 0.2          # seconds: changes within this window go out as one message per terminal
CLIENT_QUEUE = 64       # messages waiting for one client; beyond that it is dropped
MAX_CLIENTS = 16
PING = 15.0             # seconds between keep-alive comments on an idle stream
FLEET_EVERY = 1.0       # seconds between fleet summaries (while someone watches)
FLOW_WINDOW = 10.0      # seconds over which flows per second are measured
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Client:
    def __init__(self, terminal: str | None) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self.terminal = terminal
        self.dropped = False


class Hub:
    """Fans terminal changes out to the event streams (see the module docstring)."""

    def __init__(self, backend: Any, clock: Any = time.monotonic) -> None:
        self.backend = backend
        self._clock = clock
        self.clients: set[_Client] = set()
        self.dropped = 0                     # clients dropped for being slow (for tests and logs)
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._armed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._unsubscribe = None
        self._sent_seq: dict[str, int] = {}
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self._last_fleet: dict[str, Any] | None = None

    # -- any thread
    def _changed(self, tid: str) -> None:
        with self._lock:
            self._dirty.add(tid)
            if self._armed or self._loop is None:
                return
            self._armed = True
        try:
            self._loop.call_soon_threadsafe(self._wake.set)   # type: ignore[union-attr]
        except RuntimeError:   # the loop closed
            pass

    # -- the event loop
    def ensure_started(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for tid in self.backend.terminals():
            self._sent_seq[tid] = self.backend.state(tid, traffic=False).get("traffic_seq", 0)
        self._unsubscribe = self.backend.subscribe(self._changed)
        self._tasks = [asyncio.ensure_future(self._run()), asyncio.ensure_future(self._fleet_ticker())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(COALESCE)   # a window to coalesce in: a rate bound, not a synchronisation
            self._wake.clear()
            with self._lock:
                dirty, self._dirty, self._armed = self._dirty, set(), False
            for tid in sorted(dirty):
                try:
                    msg = self.update(tid)
                except KeyError:
                    continue
                except Exception:  # noqa: BLE001 - one terminal's state (a remote's) must not end the stream
                    log.warning("panel: no update for %s", tid, exc_info=True)
                    continue
                self.broadcast(msg, tid)

    def update(self, tid: str) -> bytes:
        """The ``terminal`` message for ``tid``: its state and its traffic since the last one."""
        state = self.backend.state(tid, traffic=False)
        since = self._sent_seq.get(tid, 0)
        state["frames"] = self.backend.traffic(tid, since) if state.get("traffic_seq", 0) > since else []
        self._sent_seq[tid] = max(since, state.get("traffic_seq", 0))
        return _sse("terminal", state)

    def broadcast(self, msg: bytes, tid: str | None = None) -> None:
        for client in list(self.clients):
            if client.dropped or (tid is not None and client.terminal not in (None, tid)):
                continue
            try:
                client.queue.put_nowait(msg)
            except asyncio.QueueFull:
                client.dropped = True
                self.dropped += 1
                log.info("panel: a slow event client was dropped")

    def fleet(self) -> dict[str, Any]:
        states: collections.Counter[str] = collections.Counter()
        payments: collections.Counter[str] = collections.Counter()
        unplugged = errors = 0
        for tid in self.backend.terminals():
            try:
                s = self.backend.state(tid, traffic=False)
            except KeyError:
                continue
            states[s.get("state", "?")] += 1
            payments.update(s.get("payments") or {})
            unplugged += bool((s.get("line") or {}).get("unplugged"))
            errors += bool(s.get("error"))
        now, total = self._clock(), sum(payments.values())
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > FLOW_WINDOW:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        rate = (total - n0) / (now - t0) if now > t0 else 0.0
        return {"terminals": sum(states.values()), "by_state": dict(sorted(states.items())),
                "payments": dict(sorted(payments.items())), "flows_per_second": round(rate, 2),
                "unplugged": unplugged, "errors": errors}

    async def _fleet_ticker(self) -> None:
        while True:
            await asyncio.sleep(FLEET_EVERY)   # a summary's period (display only)
            if not self.clients:
                continue
            fleet = self.fleet()
            if fleet != self._last_fleet:
                self._last_fleet = fleet
                self.broadcast(_sse("fleet", fleet))


def make_app(backend: Any, *, trusted_hosts: set[str] | None = None):
    """The Starlette app over ``backend`` (:mod:`posterm.panel.backend`). ``trusted_hosts``:
    the ``Host`` names accepted (default the loopback ones)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    hub = Hub(backend)
    hosts = {h.lower() for h in (trusted_hosts or LOOPBACK_NAMES)}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"ok": False, "error": message}, status_code=status)

    def terminal_of(request: Request) -> str:
        tid = request.path_params["tid"]
        if tid not in backend.terminals():
            raise KeyError(tid)
        return tid

    async def guarded(request: Request, fn) -> Response:
        try:
            return await fn()
        except KeyError as exc:
            return error(404, f"no such terminal or action: {exc.args[0] if exc.args else ''}")
        except ControlBusy as exc:
            return error(429, str(exc))
        except ControlError as exc:
            return error(400, str(exc))

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def api_root(request: Request) -> Response:
        return JSONResponse({"version": 1, "terminals": f"{API}/terminals", "events": f"{API}/events",
                             "fleet": f"{API}/fleet", "demo_codes": f"{API}/demo-codes"})

    async def terminals(request: Request) -> Response:
        def build():
            out = []
            for tid in backend.terminals():
                s = backend.state(tid, traffic=False)
                out.append({"id": tid, "state": s.get("state"), "protocol": s.get("protocol"), "port": s.get("port"),
                            "state_url": f"{API}/terminals/{tid}/state"})
            return out
        return JSONResponse({"terminals": await run_in_threadpool(build)})

    async def demo_codes(request: Request) -> Response:
        return JSONResponse({"codes": list(DEMO_CODES), "keys": list(KEYS), "demo_pin_hint": "the demo PIN is 147258"})

    async def fleet(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(hub.fleet))

    async def state(request: Request) -> Response:
        async def go():
            tid = terminal_of(request)
            return JSONResponse(await run_in_threadpool(backend.state, tid))
        return await guarded(request, go)

    async def traffic(request: Request) -> Response:
        async def go():
            tid = terminal_of(request)
            try:
                since = int(request.query_params.get("since", "0"))
            except ValueError:
                raise ControlError("since: must be a whole number") from None
            return JSONResponse({"traffic": await run_in_threadpool(backend.traffic, tid, since)})
        return await guarded(request, go)

    async def qr_svg(request: Request) -> Response:
        async def go():
            tid = terminal_of(request)
            data = (backend.state(tid, traffic=False).get("display") or {}).get("qr_data")
            if not data:
                return error(404, "the terminal shows no QR code")
            import io

            import segno

            buf = io.BytesIO()
            segno.make(data, error="m").save(buf, kind="svg", scale=6, border=2, xmldecl=False, dark="#111")
            return Response(buf.getvalue(), media_type="image/svg+xml", headers={"cache-control": "no-store"})
        return await guarded(request, go)

    async def scenario(request: Request) -> Response:
        async def go():
            tid = terminal_of(request)
            text = await run_in_threadpool(backend.scenario, tid)
            return Response(text, media_type="application/toml; charset=utf-8", headers={
                "cache-control": "no-store", "content-disposition": f'attachment; filename="{tid}-session.toml"'})
        return await guarded(request, go)

    async def action(request: Request) -> Response:
        async def go():
            tid = terminal_of(request)
            name = request.path_params["action"]
            if name not in ACTIONS:
                raise KeyError(name)
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
                raise ControlError(f"the body is over {MAX_BODY} bytes")
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_BODY:
                    raise ControlError(f"the body is over {MAX_BODY} bytes")
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise ControlError("the body is not JSON") from None
            return JSONResponse(await run_in_threadpool(backend.act, tid, name, body))
        return await guarded(request, go)

    async def events(request: Request) -> Response:
        only = request.path_params.get("tid") or request.query_params.get("terminal")
        if only is not None and only not in backend.terminals():
            return error(404, f"no such terminal: {only}")
        if len(hub.clients) >= MAX_CLIENTS:
            return error(503, f"already {MAX_CLIENTS} event streams")
        hub.ensure_started()
        client = _Client(only)
        first = [_sse("hello", {"terminals": backend.terminals(), "api": API})]
        for tid in ([only] if only else backend.terminals()):
            first.append(_sse("terminal", await run_in_threadpool(backend.state, tid, only is not None)))
        first.append(_sse("fleet", await run_in_threadpool(hub.fleet)))
        hub.clients.add(client)

        async def stream():
            try:
                for msg in first:
                    yield msg
                while not client.dropped:
                    try:
                        msg = await asyncio.wait_for(client.queue.get(), PING)
                    except TimeoutError:
                        yield b": ping\n\n"
                        continue
                    if client.dropped:
                        break
                    yield msg
            finally:
                hub.clients.discard(client)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    routes = [
        Route("/", index),
        Route(API, api_root),
        Route(f"{API}/terminals", terminals),
        Route(f"{API}/demo-codes", demo_codes),
        Route(f"{API}/fleet", fleet),
        Route(f"{API}/events", events),
        Route(f"{API}/terminals/{{tid}}/state", state),
        Route(f"{API}/terminals/{{tid}}/traffic", traffic),
        Route(f"{API}/terminals/{{tid}}/qr.svg", qr_svg),
        Route(f"{API}/terminals/{{tid}}/scenario.toml", scenario),
        Route(f"{API}/terminals/{{tid}}/events", events),
        Route(f"{API}/terminals/{{tid}}/{{action:path}}", action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.hub = hub

    async def guard(scope, receive, send):
        """Loopback Host names only; a POST only as JSON and from no other origin."""
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if name.lower() not in hosts:
                await _plain(send, 421, b"this panel answers on loopback names only\n")
                return
            if scope["method"] == "POST":
                origin = headers.get("origin")
                ctype = headers.get("content-type", "").split(";")[0].strip().lower()
                if origin is not None and origin.rstrip("/") != f"http://{host}":
                    await _plain(send, 403, b"a request from another origin\n")
                    return
                if ctype != "application/json":
                    await _plain(send, 415, b"POST application/json\n")
                    return

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    message.setdefault("headers", [])
                    message["headers"] = list(message["headers"]) + [
                        (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                        (b"referrer-policy", b"no-referrer")]
                await send(message)
            await app(scope, receive, send_with_headers)
            return
        await app(scope, receive, send)

    guard.hub = hub            # type: ignore[attr-defined]
    guard.starlette = app      # type: ignore[attr-defined]
    return guard


async def _plain(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
