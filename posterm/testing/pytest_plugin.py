"""pytest plugin (entry point ``pytest11``): an emulated terminal per test.

    def test_checkout(posterm_terminal):
        from posterm.driver import Terminal
        with Terminal.open(posterm_terminal.port) as term:
            assert term.pay(1234, "CNY", payment_code="289900000000000001").approved
        assert posterm_terminal.receipts()

The fixture starts a terminal on a fresh pty with an embedded host whose state lives in
the test's own temporary directory, so it works under pytest-xdist (no shared files).
Confirmation polling is shortened (0.2 s x 10) to keep tests fast.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def posterm_terminal(tmp_path):
    """An emulated terminal: ``.port`` (pty path), ``.set_scenario(path)``, ``.receipts()``,
    ``.journal_orders()``, ``.host`` (the embedded host: trades, wallet actions)."""
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal

    term = EmulatedTerminal.start(home=tmp_path / "posterm", config=FirmwareConfig(poll_interval=0.2,
                                                                                 poll_attempts=10))
    try:
        yield term
    finally:
        term.close()
