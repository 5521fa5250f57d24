"""`posterm host app add|show|list` and `posterm host serve --gateway`."""

from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import threading

from click.testing import CliRunner

from posterm.cli import main
from posterm.host import Host

from tests.host.gateway.conftest import CODE


def run(db, *args):
    r = CliRunner().invoke(main, ["host", *args, "--db", str(db)])
    return r.exit_code, r.output


def _db(tmp_path):
    db = tmp_path / "host.db"
    Host.open(db).close()          # the demo merchant, as `serve` loads it
    return db


def test_app_add_show_list(tmp_path, app_public_pem):
    db = _db(tmp_path)
    pub = tmp_path / "app.pub"
    pub.write_text(app_public_pem)
    code, out = run(db, "app", "add", "2021000000000001", "--merchant", "M100000001", "--public-key", str(pub), "--json")
    assert code == 0, out
    assert json.loads(out) == {"app_id": "2021000000000001", "kind": "alipay", "merchant_id": "M100000001",
                               "terminal_id": "GW-2021000000000001"}
    code, out = run(db, "app", "show", "2021000000000001", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["gateway_public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in out
    # made once: the same key next time
    assert json.loads(run(db, "app", "show", "2021000000000001", "--json")[1]) == shown
    hsm = tmp_path / "hsm"
    assert stat.S_IMODE(os.stat(hsm).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(hsm / "gateway.keys").st_mode) == 0o600
    assert b"PRIVATE" not in (hsm / "gateway.keys").read_bytes()        # sealed, never in clear
    code, out = run(db, "app", "list", "--json")
    assert code == 0 and [a["app_id"] for a in json.loads(out)] == ["2021000000000001"]


def test_wechat_app_key_is_never_printed(tmp_path):
    db = _db(tmp_path)
    key = tmp_path / "wx.key"
    key.write_text("0123456789abcdef0123456789ABCDEF\n")
    code, out = run(db, "app", "add", "wx2421b1c4370ec43b", "--merchant", "M100000001", "--wechat-mch-id",
                    "10000100", "--wechat-key-file", str(key))
    assert code == 0, out
    for args in (("app", "show", "wx2421b1c4370ec43b", "--json"), ("app", "list", "--json"), ("app", "list")):
        code, out = run(db, *args)
        assert code == 0 and "0123456789abcdef" not in out
    assert b"0123456789abcdef" not in db.read_bytes()
    assert b"0123456789abcdef" not in (tmp_path / "hsm" / "gateway.keys").read_bytes()


def test_app_add_refusals(tmp_path, app_public_pem):
    db = _db(tmp_path)
    pub = tmp_path / "app.pub"
    pub.write_text(app_public_pem)
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    assert run(db, "app", "add", "A1", "--merchant", "M100000001")[0] == 2
    assert run(db, "app", "add", "bad:id", "--merchant", "M100000001", "--public-key", str(pub))[0] == 2
    code, out = run(db, "app", "add", "A1", "--merchant", "M999", "--public-key", str(pub))
    assert code == 1 and "unknown merchant" in out
    code, out = run(db, "app", "add", "A1", "--merchant", "M100000001", "--public-key", str(bad))
    assert code == 1 and "public key" in out
    assert run(db, "app", "add", "A1", "--merchant", "M100000001", "--wechat-mch-id", "1")[0] == 2
    code, out = run(db, "app", "show", "nope")
    assert code == 1 and "no app nope" in out


def _lines(p, n, timeout=30.0):
    """The first ``n`` lines ``p`` prints, waiting at most ``timeout`` for each."""
    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [q.put(p.stdout.readline()) for _ in range(n)], daemon=True).start()
    out = []
    for _ in range(n):
        line = q.get(timeout=timeout)
        assert line, "serve exited"
        out.append(line.strip())
    return out


def test_serve_gateway_loopback_only(tmp_path):
    code, out = run(tmp_path / "h.db", "serve", "--gateway", "0.0.0.0:0")
    assert code == 2 and "loopback only" in out
    assert run(tmp_path / "h.db", "serve", "--gateway", "nonsense")[0] == 2


def test_serve_gateway_answers_the_sdk(tmp_path, app_public_pem, app_private_pem, monkeypatch):
    from alipay import AliPay

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    db = tmp_path / "h.db"
    env = {**os.environ, "POSTERM_HOME": str(tmp_path / "home")}
    p = subprocess.Popen([sys.executable, "-m", "posterm", "host", "serve", "--db", str(db), "--gateway", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        tcp, gw = _lines(p, 2)
        assert tcp.startswith("tcp://127.0.0.1:") and gw.startswith("http://127.0.0.1:")
        pub = tmp_path / "app.pub"
        pub.write_text(app_public_pem)
        assert run(db, "app", "add", "2021000000000009", "--merchant", "M100000001", "--public-key", str(pub))[0] == 0
        gateway_pem = json.loads(run(db, "app", "show", "2021000000000009", "--json")[1])["gateway_public_key"]
        sdk = AliPay(appid="2021000000000009", app_private_key_string=app_private_pem,
                     alipay_public_key_string=gateway_pem, sign_type="RSA2")
        sdk._gateway = gw + "/gateway.do"
        r = sdk.api_alipay_trade_pay(out_trade_no="CLI-1", scene="bar_code", auth_code=CODE[1], subject="x",
                                     total_amount="1.00")
        assert r["code"] == "10000"
        code, out = run(db, "trades", "--terminal", "GW-2021000000000009", "--json")
        assert code == 0 and [t["order_id"] for t in json.loads(out)] == ["CLI-1"]
    finally:
        p.terminate()
        assert p.wait(15) == 0
