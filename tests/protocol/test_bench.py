"""`python -m posterm.bench codec` stays runnable and its baseline stays byte-identical (no timing here)."""

from __future__ import annotations

import json

import pytest

from posterm.bench import codec
from posterm.bench.__main__ import main as bench_main


def test_codec_bench_emits_every_figure(capsys):
    assert bench_main(["codec", "--seconds", "0.01"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["metric"] for x in lines] == [
        "pay_request_frames", "pay_request_frames_baseline", "pay_request_ratio",
        "pay_result_frames", "pay_result_frames_baseline", "pay_result_ratio",
    ]
    for x in lines:
        assert x["bench"] == "codec" and isinstance(x["value"], (int, float)) and x["value"] > 0
        assert x["unit"] == ("x" if x["metric"].endswith("_ratio") else "frames/s")


def test_baseline_is_a_codec_of_the_same_bytes():
    codec._check_same_bytes()  # raises AssertionError on any difference
    bad = bytearray(codec.baseline_build_pay_request(7, codec._fields(codec.PAY_REQUEST)))
    bad[-1] ^= 1
    with pytest.raises(ValueError):
        codec.baseline_parse(bytes(bad))
