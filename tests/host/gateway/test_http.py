"""The gateway's HTTP layer: caps, refusals in the protocol's words, loopback only, and the
benchmark's tiny run. Never a 500 or a traceback."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse

import pytest

from posterm.errors import ConfigError
from posterm.host.gateway.http import GatewayServer, Limits, Response, parse_listen


def get(server, path, *, method="GET", body=None, headers=None):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def error_response(text):
    doc = json.loads(text)
    assert "sign" not in doc
    return doc["error_response"]


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "10.0.0.1:80", "example.com:80", "127.0.0.1", "127.0.0.1:x",
                                    "127.0.0.1:70000"])
def test_only_loopback(listen):
    with pytest.raises(ConfigError):
        parse_listen(listen)


def test_loopback_forms():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert parse_listen("localhost:1") == ("127.0.0.1", 1)


def test_body_too_large_is_the_published_error(server):
    status, text = get(server, "/gateway.do", method="POST", body=b"a=" + b"x" * (70 * 1024),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    e = error_response(text)
    assert e["code"] == "40002" and e["sub_code"] == "isv.invalid-parameter"


def test_too_many_parameters(server):
    q = urllib.parse.urlencode({f"p{i}": "1" for i in range(100)})
    status, text = get(server, "/gateway.do?" + q)
    e = error_response(text)
    assert status == 200 and e["code"] == "40002"


@pytest.mark.parametrize("path", [
    "/gateway.do", "/gateway.do?method=", "/gateway.do?method=alipay.nothing", "/gateway.do?%ff%fe=1",
    "/gateway.do?method=alipay.trade.pay&method=alipay.trade.pay", "/gateway.do?method=%00%01",
    "/gateway.do?method=alipay.trade.pay&app_id=1&sign=x&sign_type=RSA2&timestamp=bad&version=1.0",
    "/gateway.do?method=alipay.trade.pay&app_id=1&sign=x&sign_type=RSA2&timestamp=2026-01-01+00:00:00&version=1.0",
    "/gateway.do?method=alipay.trade.pay&app_id=1&sign=x&sign_type=RSA2&timestamp=2026-01-01+00:00:00&version=1.0"
    "&charset=gbk",
])
def test_garbage_is_answered_never_500(server, alipay_app, path):
    status, text = get(server, path)
    assert status == 200
    doc = json.loads(text)
    (key,) = [k for k in doc if k.endswith("_response")]
    assert doc[key]["code"] in ("40001", "40002")


def test_bad_signature_with_a_registered_app(server, alipay_app):
    q = urllib.parse.urlencode({"method": "alipay.trade.query", "app_id": alipay_app.app_id, "sign": "AAAA",
                                "sign_type": "RSA2", "timestamp": "2026-01-01 00:00:00", "version": "1.0",
                                "biz_content": "{}"})
    doc = json.loads(get(server, "/gateway.do?" + q)[1])
    assert doc["alipay_trade_query_response"]["sub_code"] == "isv.invalid-signature" and "sign" not in doc
    q = q.replace("RSA2", "RSA")
    doc = json.loads(get(server, "/gateway.do?" + q)[1])
    assert doc["alipay_trade_query_response"]["sub_code"] == "isv.invalid-signature-type"


def test_multipart_post_refused(server):
    status, text = get(server, "/gateway.do", method="POST", body=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    assert status == 200 and json.loads(text)["error_response"]["code"] == "40002"


def test_unknown_path_is_404(server):
    assert get(server, "/nothing")[0] == 404


class _Slow:
    """A protocol module whose handler waits until released: to fill the server."""

    def __init__(self):
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.ROUTES = [("/slow", ("GET", "POST"), self.handle), ("/boom", ("GET",), self.boom)]

    def handle(self, gateway, req):
        self.entered.release()
        self.release.wait(30)
        return Response(200, b"done")

    def boom(self, gateway, req):
        raise RuntimeError("a bug")

    @staticmethod
    def refuse(req, why):
        return Response(200, why.encode())


def test_concurrency_cap_answers_busy_and_a_handler_bug_is_refused(gateway):
    slow = _Slow()
    srv = GatewayServer(gateway, limits=Limits(max_concurrent=2), modules=[slow])
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(get(srv, "/slow"))) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(2):
            assert slow.entered.acquire(timeout=30)
        assert get(srv, "/slow") == (200, "busy")
        slow.release.set()
        for t in threads:
            t.join(30)
        assert results == [(200, "done")] * 2
        assert get(srv, "/boom") == (200, "internal")
    finally:
        slow.release.set()
        srv.close()


def test_a_stalled_body_is_answered_busy_and_the_server_goes_on(gateway):
    """A peer that sends its headers and half its body, then nothing: answered "busy" once
    body_timeout_s has passed (nothing was processed), and the server still answers others."""
    import socket

    slow = _Slow()
    slow.release.set()
    srv = GatewayServer(gateway, limits=Limits(body_timeout_s=0.5), modules=[slow])
    try:
        with socket.create_connection((srv.host, srv.port), timeout=30) as sock:
            sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"busy"):
                chunk = sock.recv(4096)      # bounded by the socket's 30 s timeout
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"busy"), answer
        assert get(srv, "/slow") == (200, "done")
    finally:
        srv.close()


def test_benchmark_runs(capsys):
    from posterm.bench import gateway as bench

    assert bench.main(["--seconds", "0.2", "--slices", "1", "--pool", "5"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["bench"] == "gateway" and row["requests"] >= 1 and row["baseline_requests"] >= 1
    assert row["books_balance"] and row["ratio"] > 0
