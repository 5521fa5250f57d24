"""`python -m posterm.bench ledger`: what it prints, and how it refuses what it cannot do.

Figures are not asserted (no throughput in tests); counted facts are: one durable commit per
authorisation without group commit, at most one with it, every configuration present.
"""

from __future__ import annotations

import json

import pytest

from posterm.bench import ledger


def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_sqlite_section_prints_every_configuration_against_the_ceiling(capsys, tmp_path):
    assert ledger.main(["--seconds", "0.3", "--slices", "2", "--clients", "1,3", "--dir", str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    (ceiling,) = [r for r in rows if r["metric"] == "sqlite_durable_commits"]
    assert ceiling["value"] > 0
    auths = {(r["mode"], r["clients"]): r for r in rows if r["metric"] == "authorisations"}
    assert set(auths) == {(m, c) for m in ("group", "handoff", "single") for c in (1, 3)}
    for r in auths.values():
        assert r["n"] > 0 and r["books_balanced"] is True
        assert r["ratio_to_ceiling"] == pytest.approx(r["value"] / ceiling["value"], abs=0.01)
    per = {r["mode"]: r["value"] for r in rows if r["metric"] == "commits_per_auth"}
    assert per["single"] == 1.0             # one durable commit each, counted
    assert 0 < per["group"] <= 1.0 and 0 < per["handoff"] <= 1.0   # shared commits: never more than one each


def test_postgresql_without_its_store_is_one_error_line(capsys, monkeypatch):
    import posterm.host.store as store

    monkeypatch.delattr(store, "open_store", raising=False)
    assert ledger.main(["--db", "postgresql://127.0.0.1:1/none"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("posterm: error: PostgreSQL store not available")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--db", "mysql://x/y"], ["--clients", "0"], ["--clients", "a"],
                                  ["--seconds", "0"]])
def test_bad_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        ledger.main(argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_postgresql_unreachable_is_one_error_line(capsys):
    assert ledger.main(["--no-sqlite", "--db", "postgresql://posterm@127.0.0.1:1/none"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("posterm: error: ledger benchmark failed: PostgreSQL at postgresql://posterm@127.0.0.1:1/none")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_postgresql_section_runs_each_worker_count_against_its_ceiling(capsys, tmp_path):
    from tests import pgstore

    url = pgstore.admin_url()     # skips without POSTERM_TEST_PG (fails under CI=true)
    assert ledger.main(["--no-sqlite", "--seconds", "0.4", "--slices", "1", "--clients", "2", "--workers", "1,2",
                        "--db", url, "--dir", str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    (server,) = [r for r in rows if r["metric"] == "postgresql_server"]
    assert server["fsync"] in ("on", "off") and server["synchronous_commit"]   # what the figures were measured on
    ceilings = {r["measured_beside_workers"]: r for r in rows if r["metric"] == "postgresql_durable_commits"}
    auths = {r["workers"]: r for r in rows if r["metric"] == "authorisations"}
    assert set(ceilings) == set(auths) == {1, 2}
    for w, r in auths.items():
        assert r["store"] == "postgresql" and r["clients"] == 2
        assert r["n"] > 0 and r["books_balanced"] is True
        assert ceilings[w]["value"] > 0 and ceilings[w]["fsync"] == server["fsync"]
        assert r["ratio_to_ceiling"] == pytest.approx(r["value"] / ceilings[w]["value"], abs=0.01)
    assert auths[1]["ratio_to_1_worker"] == 1.0 and auths[1]["ceiling_ratio_to_1_worker"] == 1.0
    with pgstore._admin() as c:   # each worker count's database was dropped
        left = c.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                         ([r["database"] for r in auths.values()],)).fetchall()
    assert left == []
