"""python -m posterm.bench gateway [--seconds S] [--slices N] [--pool N]: Alipay trade.pay requests/s.

Each request is a signed ``alipay.trade.pay`` GET (a fresh out_trade_no, test code ...001,
0.01 CNY) to ``/gateway.do`` over one keep-alive HTTP connection on loopback: the gateway
parses it, checks its RSA2 signature, authorises it through the host (one durable write
transaction: limits, risk, capture, ledger) and signs its answer. The baseline is the same
HTTP stack (Starlette on uvicorn, same limits, same client, same requests) with a route
that answers a fixed pre-signed response of the same shape: what is left of the figure is
the gateway's own cost. The two run in alternating slices (``--slices``) so a shared
machine's swings slow both alike. Requests are signed before the clock starts (``--pool``
of them; a slice that runs out ends early), so the client's RSA signing is not counted.
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from posterm.bench import emit

APP_ID = "2021000000009999"
CODE = "289900000000000001"


def _signed_queries(key, n: int, prefix: str) -> list[str]:
    import base64
    import json

    from posterm.host.gateway.alipay import signing_string

    out = []
    ts = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    for i in range(n):
        biz = json.dumps({"out_trade_no": f"{prefix}{i}", "scene": "bar_code", "auth_code": CODE, "subject": "bench",
                          "total_amount": "0.01"}, separators=(",", ":"))
        params = {"app_id": APP_ID, "method": "alipay.trade.pay", "charset": "utf-8", "sign_type": "RSA2",
                  "timestamp": ts, "version": "1.0", "biz_content": biz}
        sig = key.sign(signing_string(params).encode(), padding.PKCS1v15(), hashes.SHA256())
        params["sign"] = base64.b64encode(sig).decode()
        out.append("/gateway.do?" + urllib.parse.urlencode(params))
    return out


class _Fixed:
    """A protocol module answering every /gateway.do with one fixed signed response."""

    def __init__(self, body: bytes) -> None:
        from posterm.host.gateway.http import Response

        answer = Response(200, body, "application/json; charset=utf-8")
        self.ROUTES = [("/gateway.do", ("GET", "POST"), lambda gateway, req: answer)]
        self.refuse = lambda req, why: answer


def _run(port: int, queries: list[str], start: int, seconds: float) -> tuple[int, float]:
    """Send queries[start:] for up to ``seconds``: (requests answered, seconds spent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n, t0 = 0, time.perf_counter()
    try:
        for q in queries[start:]:
            conn.request("GET", q)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or b'"code":"10000"' not in body:
                raise RuntimeError(f"unexpected answer: {resp.status} {body[:200]!r}")
            n += 1
            if time.perf_counter() - t0 >= seconds:
                break
    finally:
        conn.close()
    return n, time.perf_counter() - t0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench gateway")
    ap.add_argument("--seconds", type=float, default=4.0, help="time for each of the two, in all")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--pool", type=int, default=3000, help="requests signed in advance")
    args = ap.parse_args(argv)

    from posterm.host import Host
    from posterm.host.gateway import Gateway, apps
    from posterm.host.gateway.alipay import _respond
    from posterm.host.gateway.http import GatewayServer

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with tempfile.TemporaryDirectory() as d:
        host = Host.open(Path(d) / "host.db")
        try:
            gw = Gateway(host)
            apps.add(gw.ctx, gw.keys, APP_ID, "M100000001", public_key_pem=pem)
            queries = _signed_queries(key, args.pool, "B")
            sample = _respond(gw, "alipay.trade.pay", {
                "code": "10000", "msg": "Success", "trade_no": "2026111800000000000001", "out_trade_no": "B0",
                "buyer_logon_id": "dem***01", "buyer_user_id": "2088000000000001", "total_amount": "0.01",
                "receipt_amount": "0.01", "buyer_pay_amount": "0.01", "point_amount": "0.00",
                "invoice_amount": "0.01", "gmt_payment": "2026-11-18 15:46:40",
                "fund_bill_list": [{"fund_channel": "ALIPAYACCOUNT", "amount": "0.01"}]}, signed=True)
            real = GatewayServer(gw)
            fixed = GatewayServer(gw, modules=[_Fixed(sample.body)])
            try:
                per = args.seconds / max(1, args.slices)
                done = [0, 0]
                spent = [0.0, 0.0]
                used = 0
                for _ in range(max(1, args.slices)):
                    if used >= len(queries):
                        break
                    n, t = _run(real.port, queries, used, per)
                    used += n
                    done[0] += n
                    spent[0] += t
                    n, t = _run(fixed.port, queries, 0, per)
                    done[1] += n
                    spent[1] += t
            finally:
                real.close()
                fixed.close()
            commits = host.store.commits
            problems = host.check_books()
        finally:
            host.close()
    pay_rate = done[0] / spent[0] if spent[0] else 0.0
    base_rate = done[1] / spent[1] if spent[1] else 0.0
    emit("gateway", "alipay_trade_pay_per_s", pay_rate, "req/s", requests=done[0],
         baseline_fixed_response_per_s=round(base_rate, 1), baseline_requests=done[1],
         ratio=round(pay_rate / base_rate, 3) if base_rate else None, http="starlette+uvicorn",
         books_balance=not problems, store_commits=commits)
    return 0 if not problems else 1
