"""`posterm emulate --panel` and `posterm panel --fleet` as processes: the page and API of a
running emulator, and one panel gathering two emulator processes (actions forwarded)."""

from __future__ import annotations

import os
import signal
import json
import subprocess
import sys

import httpx

from posterm.families.native.ecr import Terminal


def _posterm(*args, home):
    env = {**os.environ, "POSTERM_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-c", "from posterm.cli import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def wait_state(http, tid, predicate):
    """The state of ``tid`` once ``predicate`` holds, from the panel's event stream (the first
    message is the state now, then each change; the client's timeout bounds the wait)."""
    with http.stream("GET", f"/api/v1/terminals/{tid}/events") as events:
        event = None
        for line in events.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "terminal":
                state = json.loads(line[5:])
                if predicate(state):
                    return state
    raise AssertionError(f"{tid}: the event stream ended")


def test_emulate_panel_and_a_fleet_panel_over_two_processes(tmp_path):
    a = _posterm("emulate", "--panel", "127.0.0.1:0", "--panel-file", str(tmp_path / "a.url"), home=tmp_path / "a")
    b = _posterm("emulate", "--terminal-id", "T0000002", "--panel", "127.0.0.1:0", "--panel-file",
                 str(tmp_path / "b.url"), "--customer", "automatic", home=tmp_path / "b")
    procs = [a, b]
    try:
        port_a, port_b = a.stdout.readline().strip(), b.stdout.readline().strip()   # ready: the panel is up
        assert "control panel at http://127.0.0.1:" in a.stderr.readline()
        url_a = (tmp_path / "a.url").read_text().strip()
        assert oct((tmp_path / "a.url").stat().st_mode & 0o777) == "0o600"
        with httpx.Client(base_url=url_a, timeout=30) as http:
            s = http.get("/api/v1/terminals/T0000001/state").json()
            assert s["customer"] == "manual" and s["port"] == port_a
            assert "posterm control panel" in http.get("/").text
        fleet = _posterm("panel", "--fleet", str(tmp_path / "a.url"), "--fleet", str(tmp_path / "b.url"),
                         home=tmp_path / "p")
        procs.append(fleet)
        url = fleet.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=30) as http:
            ids = [t["id"] for t in http.get("/api/v1/terminals").json()["terminals"]]
            assert ids == ["T0000001", "T0000002"]
            with Terminal.open(port_b, journal=str(tmp_path / "drv.db")) as t:   # b's customer is automatic
                assert t.pay(100, "CNY", timeout=60).approved
            s = wait_state(http, "T0000002", lambda s: s.get("last_result") is not None)
            assert s["last_result"]["outcome"] == "approved"
            r = http.post("/api/v1/terminals/T0000001/unplug", json={})     # forwarded to process a
            assert r.status_code == 200 and r.json()["ok"]
            s = wait_state(http, "T0000001", lambda s: s["line"]["unplugged"])
            assert s["line"]["unplugged"]
            assert http.post("/api/v1/terminals/T0000001/present-code", json={"code": "1"}).status_code == 400
            fleet_view = http.get("/api/v1/fleet").json()
            assert fleet_view["terminals"] == 2 and fleet_view["payments"] == {"approved": 1}
    finally:
        codes = [_stop(p) for p in reversed(procs)]
    assert codes == [0] * len(procs), [p.stderr.read()[-2000:] for p in procs]
