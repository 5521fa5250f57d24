"""`posterm host app settle`, in process through click's CliRunner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from posterm.cli import main
from posterm.host import Host
from posterm.host.gateway import Gateway, apps

from tests.host.gateway.conftest import ALIPAY_APP_ID, CODE, MERCHANT


def run(db, *args):
    r = CliRunner().invoke(main, ["host", "app", *args, "--db", str(db)])
    return r.exit_code, r.stdout, r.stderr


def _trading_db(tmp_path, app_public_pem):
    """A host database with an Alipay app that took a payment, a refund and a cancel."""
    db = tmp_path / "host.db"
    with Host.open(db) as host:
        gw = Gateway(host)
        app = apps.add(gw.ctx, gw.keys, ALIPAY_APP_ID, MERCHANT, public_key_pem=app_public_pem)
        assert gw.pay(app, "c-1", CODE[1], 1234, "CNY").status == "SUCCESS"
        assert gw.pay(app, "c-2", CODE[1], 2000, "CNY").status == "SUCCESS"
        assert gw.refund(app, "c-2", "r-1", 550).status == "SUCCESS"
        assert gw.pay(app, "c-3", CODE[1], 300, "CNY").status == "SUCCESS"
        assert gw.cancel(app, "c-3").action == "refund"
    return db


def test_settle_json_then_a_new_empty_batch(tmp_path, app_public_pem):
    db = _trading_db(tmp_path, app_public_pem)
    code, out, err = run(db, "settle", ALIPAY_APP_ID, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got.pop("settled_at")
    assert got == {"app_id": ALIPAY_APP_ID, "terminal_id": "GW-" + ALIPAY_APP_ID, "batch_no": 1, "agrees": True,
                   "repeated": False,
                   "totals": [{"currency": "CNY", "approved_count": 2, "approved_minor": 3234, "refunded_count": 1,
                               "refunded_minor": 550, "cancelled_count": 1, "net_minor": 2684}]}
    code, out, _ = run(db, "settle", ALIPAY_APP_ID, "--json")
    assert code == 0 and json.loads(out)["batch_no"] == 2 and json.loads(out)["totals"] == []
    code, out, _ = run(db, "settle", ALIPAY_APP_ID, "--batch", "1", "--json")
    again = json.loads(out)
    assert code == 0 and again["repeated"] and again["totals"][0]["approved_minor"] == 3234


def test_settle_text(tmp_path, app_public_pem):
    db = _trading_db(tmp_path, app_public_pem)
    code, out, err = run(db, "settle", ALIPAY_APP_ID)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"batch 1 of app {ALIPAY_APP_ID} (terminal GW-{ALIPAY_APP_ID}) settled ")
    assert lines[0].endswith("host totals, agree")
    assert lines[1] == "CNY  approved 2 32.34  refunded 1 5.50  cancelled 1  net 26.84"
    code, out, _ = run(db, "settle", ALIPAY_APP_ID)
    assert code == 0 and out.splitlines()[1] == "nothing to settle" and "batch 2 " in out


def test_bad_app_id_is_one_line_exit_2(tmp_path, app_public_pem):
    db = _trading_db(tmp_path, app_public_pem)
    for bad in ("no-such-app", "bad!id", "x" * 30):
        code, out, err = run(db, "settle", bad)
        assert code == 2, (bad, out, err)
        assert out == "" and err.count("\n") == 1 and err.startswith("posterm: error: "), err
    code, out, err = run(db, "settle", "no-such-app", "--json")
    assert code == 2 and json.loads(out) == {"error": "no app no-such-app"}
    code, out, err = run(db, "settle", ALIPAY_APP_ID, "--batch", "5")
    assert code == 0
    code, out, err = run(db, "settle", ALIPAY_APP_ID, "--batch", "3")
    assert code == 2 and err.startswith("posterm: error: --batch: must follow the last settled batch, 5")
    for bad in ("0", "x", "4294967296"):
        code, _, err = run(db, "settle", ALIPAY_APP_ID, "--batch", bad)
        assert code == 2 and err.count("\n") == 1, err
