from __future__ import annotations

import pytest

from posterm.emulator.control import TerminalControl
from posterm.emulator.firmware import FirmwareConfig
from posterm.emulator.runner import EmulatedTerminal
from posterm.panel.backend import LocalBackend


@pytest.fixture
def controlled(tmp_path):
    """One emulated terminal (manual customer) and its LocalBackend."""
    term = EmulatedTerminal.start(home=tmp_path / "home", config=FirmwareConfig(poll_interval=0.2, poll_attempts=50))
    control = TerminalControl(term)
    backend = LocalBackend([control])
    yield term, control, backend
    backend.close()
    control.close()
    term.close()
    assert term.error is None
