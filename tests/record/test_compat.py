"""What the recorder writes, `show` prints and `convert` makes is pinned byte for byte
(tests/record/compat/, written by the recorder before recording became family-agnostic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from posterm import __version__
from tests.record import compat

EXPECTED = Path(__file__).resolve().parent / "compat"


def _same_tool(text: str) -> str:
    """The expected text with the header's tool version made this one's (a release is no format change)."""
    return text.replace('"tool":"posterm 0.1.0"', f'"tool":"posterm {__version__}"').replace(
        ": posterm 0.1.0, protocol", f": posterm {__version__}, protocol")


@pytest.mark.parametrize("name", sorted(compat.SESSIONS))
def test_recordings_written_now_equal_the_pinned_ones(tmp_path, name):
    paths = compat.SESSIONS[name](tmp_path)
    expected = sorted(EXPECTED.glob(f"{name}-*.jsonl"))
    assert len(paths) == len(expected)   # the native session rotates into three files
    for got, want in zip(paths, expected):
        assert got.read_text() == _same_tool(want.read_text()), f"{got} differs from {want}"


@pytest.mark.parametrize("name", compat.VIEWED)
@pytest.mark.parametrize("flag", sorted(compat.SHOW_FLAGS))
def test_show_prints_the_pinned_timeline(name, flag):
    want = (EXPECTED / f"{name.replace('golden:', 'golden-')}.show-{flag}.txt").read_text()
    got = compat.show_output(compat.viewed_path(name, EXPECTED), compat.SHOW_FLAGS[flag])
    assert got.splitlines() == want.splitlines()


@pytest.mark.parametrize("name", compat.VIEWED)
def test_convert_writes_the_pinned_pcapng(name):
    want = (EXPECTED / f"{name.replace('golden:', 'golden-')}.pcapng").read_bytes()
    assert compat.pcapng_bytes(compat.viewed_path(name, EXPECTED)) == want
