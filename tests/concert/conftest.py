"""Fixtures shared by the Concert tests."""

from __future__ import annotations

import pytest

from posterm.emulator.runner import EmulatedTerminal


@pytest.fixture
def emu(tmp_path):
    """An emulated Concert terminal on a pty with its own embedded host; it must not have died."""
    with EmulatedTerminal.start(home=tmp_path / "home", protocol="concert") as e:
        yield e
        assert e.error is None
