"""`python -m posterm.bench scale`: a fleet paying against `posterm host serve --workers` while
workers are killed -9, and the check that nothing was lost or doubled.

A small real run (20 terminals, 2 workers, 2 kills, SQLite) must come out consistent with
every kill's replacement seen; the checking function is fed doctored results (a double, a
loss, a charge the driver does not know, an unresolved payment, unbalanced books) and must
name each. No figure is asserted (no throughput in tests).
"""

from __future__ import annotations

import json

from posterm.bench import scale
from posterm.bench.scale import DriverPayment, HostTrade, check


def _rows(out: str) -> dict[str, dict]:
    return {r["metric"]: r for r in (json.loads(line) for line in out.splitlines() if line.strip())}


def test_twenty_terminals_two_workers_two_kills_stay_consistent(capsys, tmp_path):
    code = scale.main(["--terminals", "20", "--workers", "2", "--kills", "2", "--kill-every", "1",
                       "--seconds", "2", "--drivers", "10", "--processes", "2", "--dir", str(tmp_path)])
    out = capsys.readouterr()
    rows = _rows(out.out)
    assert code == 0, out.err
    verdict = rows["consistent"]
    assert verdict["value"] is True
    assert verdict["lost"] == verdict["doubled"] == verdict["phantom"] == verdict["unresolved"] == 0
    assert verdict["books"] == 0
    # every terminal paid (its warm-up at least), and what the drivers hold approved the host charged once
    assert verdict["payments"] >= 20 and verdict["approved"] == verdict["charged"] > 0
    assert rows["kills"]["value"] == 2 and rows["kills"]["restarts"] == 2
    assert rows["unknown_resolved"]["value"] >= rows["unknown_resolved"]["resolved_at_once"] >= 0
    for metric in ("flows_per_s", "flow_median", "flow_p99"):
        assert metric in rows


def _paid(order: str, outcome: str = "approved", final: bool = True, amount: int = 1) -> DriverPayment:
    return DriverPayment(order, "T0000001", amount, outcome, final)


def _trade(order: str, status: str = "APPROVED", amount: int = 1) -> HostTrade:
    return HostTrade("M100000001", order, amount, status)


def test_check_passes_a_clean_run():
    v = check([_paid("A"), _paid("B", "declined"), _paid("C", "cancelled")],
              [_trade("A"), _trade("C", "CANCELLED")], [])
    assert v.consistent and v.approved == 1 and v.charged == 1


def test_check_finds_a_double():
    v = check([_paid("A")], [_trade("A"), _trade("A")], [])
    assert not v.consistent
    assert v.doubled == ["M100000001/A: 2 charged trades"] and v.lost   # and not "exactly one" either


def test_check_finds_an_approval_the_host_never_charged_or_charged_otherwise():
    assert check([_paid("A")], [], []).lost
    assert check([_paid("A")], [_trade("A", "DECLINED")], []).lost
    assert check([_paid("A", amount=1)], [_trade("A", amount=2)], []).lost


def test_check_finds_a_charge_the_driver_does_not_hold_approved():
    assert check([_paid("A", "declined")], [_trade("A")], []).phantom
    assert check([], [_trade("Z")], []).phantom


def test_check_finds_what_stayed_unresolved_and_unbalanced_books():
    assert check([_paid("A", "unknown", final=False)], [], []).unresolved
    assert check([_paid("A", None, final=False)], [], []).unresolved
    v = check([_paid("A")], [_trade("A")], ["account demo-001 balance 5 != ledger 6"])
    assert not v.consistent and v.books


def test_bad_options_are_usage_errors(capsys):
    import pytest

    for argv in (["--workers", "1"], ["--terminals", "0"], ["--kill-every", "0"]):
        with pytest.raises(SystemExit) as exc:
            scale.main(argv)
        assert exc.value.code == 2
