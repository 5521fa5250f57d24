"""`posterm host` given bad values: a one-line usage error and exit 2, never a traceback;
and `posterm host terminal key` (named by `posterm keys load --help`)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from posterm.cli import main
from posterm.crypto.pinpad import SecureModule
from posterm.host import Host


def run(db, *args):
    r = CliRunner().invoke(main, ["host", *args, "--db", str(db)])
    return r.exit_code, r.output, r.exception


@pytest.mark.parametrize("args", [
    ("account", "add", "x", "--name", "X", "--balance", "1e30"),
    ("account", "add", "x", "--name", "X", "--per-tx-limit", "99999999999999999999"),
    ("account", "add", "x", "--name", "X", "--currency", "ZZZ"),
    ("account", "add", "x", "--name", "X", "--tz", "Mars/Base"),
    ("account", "add", "x", "--name", "X", "--home-region", "!!"),
    ("account", "set-limits", "demo-001", "--daily-limit", "1e20"),
    ("trades", "--date", "yesterday"),
    ("trades", "--date", "2026-13-01"),
    ("bill", "demo-001", "--month", "13"),
    ("terminal", "key", "T0000001", "--algorithm", "RSA"),
])
def test_bad_values_are_usage_errors(tmp_path, args):
    Host.open(tmp_path / "host.db").close()             # the demo data: demo-001, T0000001
    code, out, exc = run(tmp_path / "host.db", *args)
    assert code == 2, out
    assert not isinstance(exc, Exception) or isinstance(exc, SystemExit)
    assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("posterm: error:")


def test_library_refuses_amounts_the_wire_cannot_carry(tmp_path):
    from posterm.host import HostRefused

    with Host.open(tmp_path / "host.db") as h:
        with pytest.raises(HostRefused):
            h.add_account("big", "Big", balance_minor=10 ** 30)
        with pytest.raises(HostRefused):
            h.set_limits("demo-001", daily_limit=10 ** 30)


def test_terminal_key_issues_a_new_loadable_block_each_time(tmp_path):
    db = tmp_path / "host.db"
    Host.open(db).close()
    code, out, _ = run(db, "terminal", "key", "T0000001", "--json")
    assert code == 0, out
    first = json.loads(out)
    code, out, _ = run(db, "terminal", "key", "T0000001", "--json")
    second = json.loads(out)
    assert (first["key_version"], second["key_version"]) == ("01", "02")
    assert first["initial_ksn"][:16] != second["initial_ksn"][:16]        # a new key id each time
    with Host.open(db, demo=False) as h:
        sm = SecureModule()
        sm.inject_kbpk(h.hsm.kbpk_for_injection("T0000001"))
        st = sm.load_key_block(second["key_block"])
        assert st.ksn.hex().upper() == second["initial_ksn"] and st.kcv.hex().upper().startswith(second["kcv"])
    code, out, _ = run(db, "terminal", "key", "T9999999")
    assert code == 1 and "unknown terminal" in out


def test_keys_load_help_names_a_command_that_exists():
    r = CliRunner().invoke(main, ["keys", "load", "--help"])
    assert "posterm host terminal key" in r.output
    assert CliRunner().invoke(main, ["host", "terminal", "key", "--help"]).exit_code == 0
