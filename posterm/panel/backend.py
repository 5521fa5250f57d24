"""Where the panel's terminals are: in this process (:class:`LocalBackend`, over
:class:`~posterm.emulator.control.TerminalControl`) or in running ``posterm emulate --panel``
processes (:class:`RemoteBackend`, which speaks their HTTP API: ``posterm panel --fleet``).

A backend gives the app the same few calls either way: ``terminals()``, ``state(id)``,
``traffic(id, since)``, ``act(id, name, body)``, ``scenario(id)``, ``subscribe(fn)`` (``fn(id)``
is called, from any thread, when a terminal changed) and ``close()``. Unknown ids raise
:class:`KeyError`; bad input :class:`~posterm.emulator.control.ControlError`; a full queue
:class:`~posterm.emulator.control.ControlBusy`.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from posterm.emulator.control import ControlBusy, ControlError, TerminalControl
from posterm.errors import ConfigError

log = logging.getLogger("posterm.panel")

# action name (the API path after /terminals/{id}/) -> what it does with the JSON body
ACTIONS = ("present-code", "scan-qr", "pin", "phone/confirm", "phone/refuse", "do-nothing", "walk-away", "keys",
           "fault", "unplug", "replug", "restart", "customer", "sale")
MAX_BODY = 4096
REMOTE_TIMEOUT = 10.0
MAX_REMOTES = 16
MAX_SUBSCRIBERS = 8


def _num(body: dict, key: str, default: float = 0.0) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError(f"{key}: must be a number")
    return float(value)


def _str(body: dict, key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise ControlError(f"{key}: must be a string")
    return value


def perform(control: TerminalControl, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Do API action ``name`` with its JSON ``body`` on ``control``; the answer's JSON."""
    if not isinstance(body, dict):
        raise ControlError("the body must be a JSON object")
    after = _num(body, "after") if "after" in body else 0.0
    if name == "present-code":
        result = control.present_code(_str(body, "code"), after)
    elif name == "scan-qr":
        result = control.scan_qr(_str(body, "code", "289900000000000001"), after)
    elif name == "pin":
        if body.get("wrong") is True:
            result = control.wrong_pin(after)
        elif body.get("cancel") is True:
            result = control.cancel_pin(after)
        else:
            result = control.type_pin(_str(body, "digits", "147258"), after)
    elif name == "phone/confirm":
        result = control.confirm_on_phone(after)
    elif name == "phone/refuse":
        result = control.refuse_on_phone(after)
    elif name == "do-nothing":
        result = control.do_nothing()
    elif name == "walk-away":
        result = control.walk_away(after)
    elif name == "keys":
        result = control.press_keys(_str(body, "keys"))
    elif name == "fault":
        result = control.line_fault(_str(body, "fault", "corrupt"))
    elif name == "unplug":
        result = control.unplug(_num(body, "seconds"))
    elif name == "replug":
        result = control.replug()
    elif name == "restart":
        result = control.restart()
    elif name == "customer":
        mode = _str(body, "mode")
        if mode not in ("manual", "automatic"):
            raise ControlError("mode: must be manual or automatic")
        control.set_manual(mode == "manual")
        result = mode
    elif name == "sale":
        return {"ok": True, "order_id": control.sale(_str(body, "amount"), _str(body, "currency", "CNY"))}
    else:
        raise KeyError(name)
    return {"ok": result != "full", "result": result}


class _Subscribed:
    """A backend's panel apps, told the id of each terminal that changed (capped)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Callable[[str], None]] = []

    def subscribe(self, fn: Callable[[str], None]) -> Callable[[], None]:
        with self._lock:
            if len(self._subs) >= MAX_SUBSCRIBERS:
                raise ControlBusy("too many panel apps on these terminals")
            self._subs.append(fn)

        def remove() -> None:
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)
        return remove


class LocalBackend(_Subscribed):
    """The terminals of this process (``posterm emulate --panel``)."""

    def __init__(self, controls: list[TerminalControl]) -> None:
        super().__init__()
        self.controls = {c.id: c for c in controls}
        self._unhook: list[Callable[[], None]] = []
        for c in controls:
            self._unhook.append(c.add_listener(self._changed))

    def _changed(self, control: TerminalControl) -> None:
        with self._lock:
            subs = list(self._subs)
        for fn in subs:
            fn(control.id)

    def terminals(self) -> list[str]:
        return list(self.controls)

    def state(self, tid: str, traffic: bool = True) -> dict[str, Any]:
        return self.controls[tid].state(traffic=traffic)

    def traffic(self, tid: str, since: int = 0) -> list[dict[str, Any]]:
        return self.controls[tid].traffic(since)

    def act(self, tid: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return perform(self.controls[tid], name, body)

    def scenario(self, tid: str) -> str:
        return self.controls[tid].scenario_toml()

    def close(self) -> None:
        for fn in self._unhook:
            fn()


# ---------------------------------------------------------------------- remote


def parse_panel_url(text: str) -> tuple[str, int]:
    """(host, port) of a panel at ``http://127.0.0.1:PORT`` (or a file holding that URL, as
    ``posterm emulate --panel-file`` writes it). Loopback only. Raises ConfigError."""
    shown = repr(text if len(text) <= 60 else text[:60] + "...")
    raw = text.strip()
    if not raw.startswith("http://"):
        p = Path(raw)
        try:
            raw = p.read_text(encoding="utf-8").strip().splitlines()[0].strip() if p.is_file() else raw
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise ConfigError(f"--fleet {shown}: cannot read a panel URL from it ({exc})") from None
    try:
        url = urllib.parse.urlsplit(raw)
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "http" or not url.hostname or port is None:
        raise ConfigError(f"--fleet {shown}: expected http://127.0.0.1:PORT or a file holding it")
    from posterm.loopback import loopback_host

    host = loopback_host(url.hostname)
    if host is None:
        raise ConfigError(f"--fleet {shown}: panels are reached on loopback only (127.0.0.1, [::1], localhost)")
    return host, port


class _Remote:
    """One ``posterm emulate --panel`` process: JSON calls, and a reader of its event stream."""

    def __init__(self, host: str, port: int, on_state: Callable[["_Remote", dict[str, Any]], None]) -> None:
        self.host, self.port = host, port
        self.label = f"{host}:{port}"
        self._on_state = on_state
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._follow, name=f"panel-remote-{port}", daemon=True)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=REMOTE_TIMEOUT)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"content-type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(1 << 22)
        except OSError as exc:
            raise ControlBusy(f"panel {self.label} does not answer: {exc}") from None
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, data = self.request("GET", path)
        if status != 200:
            raise ControlBusy(f"panel {self.label}: {path}: HTTP {status}")
        return json.loads(data)

    def start(self) -> None:
        self._thread.start()

    def _follow(self) -> None:
        """Read the remote's SSE stream; reconnect (bounded back-off) until stopped."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                conn.request("GET", "/api/v1/events")
                resp = conn.getresponse()
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
                self.error, delay = None, 0.5
                event = None
                while not self._stop.is_set():
                    line = resp.readline(1 << 22)
                    if not line:
                        break
                    line = line.rstrip(b"\r\n")
                    if line.startswith(b"event:"):
                        event = line[6:].strip().decode()
                    elif line.startswith(b"data:") and event == "terminal":
                        self._on_state(self, json.loads(line[5:]))
                    elif not line:
                        event = None
                conn.close()
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


class RemoteBackend(_Subscribed):
    """Terminals of running ``posterm emulate --panel`` processes, through their HTTP API
    (``posterm panel --fleet URL...``). States come from each one's event stream (cached
    here with their last :data:`~posterm.emulator.control.MAX_TRAFFIC` traffic entries);
    actions are forwarded as they are. A terminal id two processes both have is shown as
    ``ID@HOST:PORT`` for the second."""

    def __init__(self, urls: list[str]) -> None:
        from posterm.emulator.control import MAX_TRAFFIC

        if not 1 <= len(urls) <= MAX_REMOTES:
            raise ConfigError(f"--fleet: 1 to {MAX_REMOTES} panels")
        super().__init__()
        self._where: dict[str, tuple[_Remote, str]] = {}     # shown id -> (remote, its own id)
        self._names: dict[tuple[int, str], str] = {}
        self._states: dict[str, dict[str, Any]] = {}
        self._traffic: dict[str, collections.deque] = {}
        self._max_traffic = MAX_TRAFFIC
        self.remotes = [_Remote(*parse_panel_url(u), self._remote_state) for u in urls]
        for r in self.remotes:
            for tid in r.get_json("/api/v1/terminals")["terminals"]:
                self._name(r, tid["id"] if isinstance(tid, dict) else tid)
        for r in self.remotes:
            r.start()

    def _name(self, remote: _Remote, tid: str) -> str:
        key = (id(remote), tid)
        with self._lock:
            if key not in self._names:
                shown = tid if tid not in self._where else f"{tid}@{remote.label}"
                self._names[key] = shown
                self._where[shown] = (remote, tid)
                self._traffic[shown] = collections.deque(maxlen=self._max_traffic)
            return self._names[key]

    def _remote_state(self, remote: _Remote, state: dict[str, Any]) -> None:
        shown = self._name(remote, str(state.get("id")))
        frames = state.pop("traffic", None) or state.pop("frames", None) or []
        with self._lock:
            log_ = self._traffic[shown]
            last = log_[-1]["n"] if log_ else 0
            log_.extend(f for f in frames if isinstance(f, dict) and f.get("n", 0) > last)
            self._states[shown] = dict(state, id=shown)
            subs = list(self._subs)
        for fn in subs:
            fn(shown)

    def terminals(self) -> list[str]:
        with self._lock:
            return list(self._where)

    def state(self, tid: str, traffic: bool = True) -> dict[str, Any]:
        with self._lock:
            remote, own = self._where[tid]
            cached = self._states.get(tid)
        if cached is None:
            cached = remote.get_json(f"/api/v1/terminals/{urllib.parse.quote(own)}/state")
            self._remote_state(remote, cached)
            with self._lock:
                cached = self._states[tid]
        out = dict(cached)
        if traffic:
            with self._lock:
                out["traffic"] = list(self._traffic[tid])
        return out

    def traffic(self, tid: str, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._traffic[tid] if e["n"] > since]

    def act(self, tid: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        remote, own = self._where[tid]
        status, data = remote.request("POST", f"/api/v1/terminals/{urllib.parse.quote(own)}/{name}", body)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = {"error": data[:200].decode("utf-8", "replace")}
        if status == 400:
            raise ControlError(str(answer.get("error", "bad request")))
        if status == 404:
            raise KeyError(tid)
        if status != 200:
            raise ControlBusy(str(answer.get("error", f"HTTP {status}")))
        return answer

    def scenario(self, tid: str) -> str:
        remote, own = self._where[tid]
        status, data = remote.request("GET", f"/api/v1/terminals/{urllib.parse.quote(own)}/scenario.toml")
        if status != 200:
            raise ControlBusy(f"panel {remote.label}: HTTP {status}")
        return data.decode("utf-8")

    def close(self) -> None:
        for r in self.remotes:
            r.close()

