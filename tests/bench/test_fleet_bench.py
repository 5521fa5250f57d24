"""`python -m posterm.bench fleet`: every figure for every size, with its ratio to the first
size's (how it grows with the work). Tiny fleets; figures are not asserted, their presence is."""

from __future__ import annotations

import json
import stat

from posterm.bench import fleet

METRICS = {"flows_per_s", "flow_p99", "flow_median", "rss_per_terminal", "idle_rss_per_terminal"}


def test_every_size_prints_every_figure_with_its_ratio_to_the_first(capsys, tmp_path):
    assert fleet.main(["--sizes", "2,3", "--seconds", "0.3", "--drivers", "2", "--dir", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    by = {(r["metric"], r.get("terminals")): r for r in rows}
    for metric in METRICS:
        assert by[(metric, 2)]["ratio_to_first"] == 1.0
        r = by[(metric, 3)]
        assert r["value"] > 0
        assert r["ratio_to_first"] == round(r["value"] / by[(metric, 2)]["value"], 3) or \
            abs(r["ratio_to_first"] - r["value"] / by[(metric, 2)]["value"]) < 0.01
    assert by[("flows_per_s", 3)]["n"] > 0


def test_the_fleet_log_is_a_private_file_not_a_pipe(tmp_path):
    proc, ports = fleet._start_fleet(tmp_path, 1, None)
    try:
        assert len(ports) == 1
        log = tmp_path / "fleet.stderr"
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert proc.stderr is None
    finally:
        fleet._stop(proc)
