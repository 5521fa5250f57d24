"""The panel's HTTP API (/api/v1) with Starlette's TestClient; one test against the real
uvicorn server on loopback (server-sent events, the cash register, a payment by API calls)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
import threading

import httpx
import pytest
from starlette.testclient import TestClient

from posterm.errors import ConfigError
from posterm.families.native.ecr import Terminal
from posterm.panel.app import CLIENT_QUEUE, Hub, _Client, make_app
from posterm.panel.server import PanelServer, parse_listen

CODE3, CODE5 = "289900000000000003", "289900000000000005"
T = "/api/v1/terminals/T0000001"


@pytest.fixture
def client(controlled):
    term, control, backend = controlled
    with TestClient(make_app(backend), base_url="http://127.0.0.1") as c:
        c.term, c.control = term, control
        yield c


def pay_in_thread(port, journal, **kw):
    box = {}

    def run():
        with Terminal.open(port, journal=str(journal)) as t:
            box["r"] = t.pay(100, "CNY", timeout=60, **kw)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, box


def test_listing_state_and_demo_codes(client):
    r = client.get("/api/v1/terminals")
    assert r.status_code == 200 and r.json()["terminals"][0]["id"] == "T0000001"
    s = client.get(f"{T}/state").json()
    assert s["state"] == "IDLE" and s["display"]["text"] == "WELCOME" and s["customer"] == "manual"
    codes = client.get("/api/v1/demo-codes").json()["codes"]
    assert any(c["code"] == CODE3 and "PIN" in c["does"] for c in codes)
    assert client.get("/api/v1/fleet").json()["by_state"] == {"IDLE": 1}
    page = client.get("/")
    assert page.status_code == 200 and "/static/panel.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/panel.js").status_code == 200


def test_a_pin_payment_by_api_calls(client, tmp_path):
    th, box = pay_in_thread(client.term.port, tmp_path / "drv.db")
    client.control.wait_for_prompt("scan")
    r = client.post(f"{T}/present-code", json={"code": CODE3})
    assert r.json() == {"ok": True, "result": "now"}
    client.control.wait_for_prompt("pin")
    assert client.post(f"{T}/pin", json={"wrong": True}).json()["result"] == "now"
    client.control.wait_for(lambda s: s["prompt"] == "pin" and (s["host"]["answer"] or {}).get("reason") == "wrong_pin")
    assert client.post(f"{T}/pin", json={}).json()["ok"]
    th.join(60)
    assert box["r"].approved
    s = client.control.wait_for(lambda s: s["last_result"] is not None)
    assert s["last_result"]["outcome"] == "approved"
    state = client.get(f"{T}/state").json()
    assert any("APPROVED" in line for line in state["receipts"][-1]["lines"])
    assert [e for e in state["traffic"] if e["type"] == "frame"]
    text = json.dumps(state)
    assert CODE3 not in text and "147258" not in text and '"000000"' not in text   # (T0000001 has six zeros)
    toml = client.get(f"{T}/scenario.toml")
    assert toml.status_code == 200 and "attachment" in toml.headers["content-disposition"]
    assert 'expect = "approved"' in toml.text and 'digits = "000000"' in toml.text
    since = state["traffic_seq"] - 2
    assert [e["n"] for e in client.get(f"{T}/traffic", params={"since": since}).json()["traffic"]] == \
        [since + 1, since + 2]


def test_phone_refused_and_the_dynamic_qr_image(client, tmp_path):
    th, box = pay_in_thread(client.term.port, tmp_path / "drv.db", payment_code=CODE5)
    client.control.wait_for_prompt("phone")
    assert client.post(f"{T}/phone/refuse", json={}).json()["ok"]
    th.join(60)
    assert box["r"].outcome.name == "CANCELLED"
    assert client.get(f"{T}/qr.svg").status_code == 404           # no QR on screen
    th, box = pay_in_thread(client.term.port, tmp_path / "drv.db", dynamic_qr=True)
    s = client.control.wait_for_prompt("qr")
    svg = client.get(f"{T}/qr.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.content
    assert s["display"]["qr_data"]
    assert client.post(f"{T}/scan-qr", json={"code": "289900000000000001"}).json()["ok"]
    th.join(60)
    assert box["r"].approved


BAD_REQUESTS = [
    (f"{T}/present-code", {"code": "12ab"}, 400, "code"),
    (f"{T}/present-code", {}, 400, "code"),
    (f"{T}/pin", {"digits": "12"}, 400, "pin"),
    (f"{T}/keys", {"keys": "FIRE"}, 400, "keys"),
    (f"{T}/fault", {"fault": "melt"}, 400, "fault"),
    (f"{T}/unplug", {"seconds": "soon"}, 400, "seconds"),
    (f"{T}/customer", {"mode": "robot"}, 400, "mode"),
    (f"{T}/sale", {"amount": "1.234", "currency": "CNY"}, 400, "amount"),
    (f"{T}/explode", {}, 404, "explode"),
    ("/api/v1/terminals/T9/restart", {}, 404, "T9"),
]


def test_bad_requests_are_answered_in_json(client):
    """One terminal for every case (a terminal's start is most of such a test's time)."""
    for path, body, status, words in BAD_REQUESTS:
        r = client.post(path, json=body)
        assert r.status_code == status and r.json()["ok"] is False and words in r.json()["error"], (path, r.text)
    assert client.get(f"{T}/state").json()["line"]["restarts"] == 0


def test_requests_a_browser_could_forge_are_refused(client):
    assert client.post(f"{T}/restart", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert client.post(f"{T}/restart", json={}, headers={"origin": "http://evil.example"}).status_code == 403
    assert client.get("/api/v1/terminals", headers={"host": "evil.example:80"}).status_code == 421
    assert client.post(f"{T}/present-code", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 400
    assert client.post(f"{T}/present-code", content=b"{}" + b" " * 5000,
                       headers={"content-type": "application/json"}).status_code == 400
    assert client.get(f"{T}/state").json()["line"]["restarts"] == 0   # nothing of it acted


def test_a_slow_event_client_is_dropped_not_waited_for():
    class Backend:
        def terminals(self):
            return ["T1"]

        def state(self, tid, traffic=True):
            return {"id": tid, "state": "IDLE", "traffic_seq": 0}

        def traffic(self, tid, since=0):
            return []

    async def go():
        hub = Hub(Backend())
        slow, fast = _Client(None), _Client(None)
        hub.clients |= {slow, fast}
        for _ in range(CLIENT_QUEUE + 1):
            hub.broadcast(b"x")
            while not fast.queue.empty():
                fast.queue.get_nowait()
        return hub, slow, fast
    hub, slow, fast = asyncio.run(go())
    assert slow.dropped and not fast.dropped and hub.dropped == 1


def test_only_loopback_and_a_real_port():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("localhost:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    for bad in ("0.0.0.0:8080", "192.168.1.5:80", "example.com:80"):
        with pytest.raises(ConfigError, match="loopback only"):
            parse_listen(bad)
    for bad in ("127.0.0.1", "127.0.0.1:99999", "127.0.0.1:http"):
        with pytest.raises(ConfigError, match="PORT"):
            parse_listen(bad)


def test_the_real_server_streams_events_and_takes_a_sale(controlled):
    term, control, backend = controlled
    with PanelServer(backend, "127.0.0.1:0") as server:
        assert server.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.url, timeout=30) as http:
            with http.stream("GET", "/api/v1/events") as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                lines = events.iter_lines()
                frames = []

                def next_event(kind, predicate=lambda d: True):
                    event = None
                    for line in lines:   # the stream ends only if the server drops us: bounded by the test's own wait
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:") and event == kind:
                            data = json.loads(line[5:])
                            frames.extend(data.get("frames", []))
                            if predicate(data):
                                return data
                    raise AssertionError("the event stream ended")

                assert next_event("hello")["terminals"] == ["T0000001"]
                assert next_event("terminal")["state"] == "IDLE"
                r = http.post(f"{T}/sale", json={"amount": "3.00", "currency": "CNY"})
                assert r.status_code == 200
                order = r.json()["order_id"]
                s = next_event("terminal", lambda d: d["prompt"] == "scan")
                assert s["order"]["order_id"] == order and "3.00" in s["display"]["text"]
                assert http.post(f"{T}/present-code", json={"code": "289900000000000001"}).json()["ok"]
                s = next_event("terminal", lambda d: (d["register"]["result"] or {}).get("outcome") == "approved")
                assert s["last_result"]["outcome"] == "approved"
                assert {"PayRequest", "PayResult"} <= {(f.get("msg") or {}).get("type") for f in frames}


def test_the_fleet_view_counts_states_and_measures_flows_per_second():
    """Counts by state and outcome over every terminal; flows per second over the last
    FLOW_WINDOW seconds of summaries (a fake clock)."""
    from posterm.panel.app import FLOW_WINDOW

    states = {"T1": {"state": "IDLE", "payments": {"approved": 2}},
              "T2": {"state": "AWAITING_PIN", "payments": {"approved": 1, "declined": 1}, "line": {"unplugged": True}},
              "T3": {"state": "IDLE", "payments": {}, "error": "RuntimeError: boom"}}

    class Backend:
        def terminals(self):
            return list(states)

        def state(self, tid, traffic=True):
            return dict(states[tid], id=tid)

    now = [100.0]
    hub = Hub(Backend(), clock=lambda: now[0])
    f = hub.fleet()
    assert f == {"terminals": 3, "by_state": {"AWAITING_PIN": 1, "IDLE": 2}, "payments": {"approved": 3, "declined": 1},
                 "flows_per_second": 0.0, "unplugged": 1, "errors": 1}
    now[0] += 2.0
    states["T1"]["payments"] = {"approved": 6}                 # 4 more payments in 2 s
    assert hub.fleet()["flows_per_second"] == 2.0
    now[0] += 2.0
    assert hub.fleet()["flows_per_second"] == 1.0              # none in the next 2 s: 4 over 4 s
    now[0] += FLOW_WINDOW + 1                                  # the old samples fall out of the window
    hub.fleet()
    now[0] += 1.0
    assert hub.fleet()["flows_per_second"] == 0.0


def test_the_page_loads_nothing_from_elsewhere(client):
    """No CDN: the page, its script and style are package files, and name no other host."""
    from posterm.panel.app import STATIC

    page = client.get("/").text
    assets = sorted(set(re.findall(r'(?:src|href)="([^"]+)"', page)))
    assert assets == ["/static/panel.css", "/static/panel.js"]
    for path in assets:
        assert client.get(path).status_code == 200
    for f in STATIC.iterdir():
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", f.read_text(encoding="utf-8"), re.I), f.name
    assert "script-src 'self'" in client.get("/").headers["content-security-policy"]


def test_every_documented_api_path_is_served_and_every_action_documented():
    """docs/panel.md's API table against the app's routes and the backend's actions."""
    from posterm.panel.backend import ACTIONS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "panel.md").read_text(encoding="utf-8")
    table = [line for line in doc.splitlines() if line.startswith("| `GET /api/v1") or line.startswith("| `POST /api/v1")]
    documented_actions = set()
    gets = set()
    for line in table:
        for method, path in re.findall(r"`(GET|POST) (/api/v1/[^`? ]*)", line):
            path = path.replace("{id}", "T0000001")
            if method == "POST":
                documented_actions.add(path.removeprefix("/api/v1/terminals/T0000001/"))
            else:
                gets.add(path)
    documented_actions |= set(re.findall(r"`/((?:phone/)?[a-z-]+)`", " ".join(table)))
    assert documented_actions == set(ACTIONS), documented_actions ^ set(ACTIONS)
    assert "/api/v1/terminals/T0000001/state" in gets and "/api/v1/events" in gets
    from posterm.panel.app import make_app

    routes = {r.path for r in make_app(object()).starlette.routes if hasattr(r, "path")}
    for path in gets:
        assert path.replace("T0000001", "{tid}") in routes, path
