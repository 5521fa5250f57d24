"""`python -m posterm.bench zvt` stays runnable and its figures measure what they say (no timing here)."""

from __future__ import annotations

import json

from posterm.bench import zvt
from posterm.bench.__main__ import main as bench_main


def test_zvt_bench_emits_every_figure_with_its_ratio(capsys):
    assert bench_main(["zvt", "--seconds", "0.01", "--slices", "1"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    names = [name for name, _, _ in zvt.FIGURES]
    assert [r["metric"] for r in rows] == [m for n in names for m in (n, f"{n}_ratio")] + ["native_frame_round_trip"]
    for r in rows:
        assert r["bench"] == "zvt" and isinstance(r["value"], (int, float)) and r["value"] > 0
        assert r["unit"] == ("x" if r["metric"].endswith("_ratio") else "frames/s")


def test_the_figures_do_what_they_say():
    zvt.check()   # raises AssertionError if a figure's round trip is wrong
    assert zvt._STATUS_APDU[:2] == b"\x04\x0f" and zvt.STATUS_INFORMATION.pan == "559883EEEEEE8074"
