"""pytest plugin (entry point ``pytest11``, loaded automatically once posterm is installed):
an emulated terminal per test.

    from posterm import Terminal

    def test_checkout(posterm_terminal):
        with Terminal.open(posterm_terminal.port) as term:
            assert term.pay(1234, "CNY", payment_code="289900000000000001").approved
        assert posterm_terminal.receipts()

The fixture starts a terminal on a fresh pty with an embedded host whose state lives in
the test's own temporary directory, and points ``$POSTERM_HOME`` there and ``$POSTERM_PORT``
at the pty for the test, so the driver's journal is per test too and ``Terminal.open()``
needs no argument. Nothing is shared between tests or pytest-xdist workers.
Confirmation polling is shortened (0.2 s x 10) to keep tests fast.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def posterm_terminal(tmp_path, monkeypatch):
    """An emulated terminal (:class:`posterm.emulator.EmulatedTerminal`): ``.port`` (the pty
    path), ``.set_scenario(path_or_Scenario)``, ``.receipts()``, ``.journal_orders()``,
    ``.journal`` (the terminal journal), ``.host`` (the embedded host: ``order_status``,
    wallet actions, ``check_books``). Closed after the test; fails the test if the
    emulator itself crashed."""
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal

    home = tmp_path / "posterm"
    monkeypatch.setenv("POSTERM_HOME", str(home))
    term = EmulatedTerminal.start(home=home, config=FirmwareConfig(poll_interval=0.2, poll_attempts=10))
    monkeypatch.setenv("POSTERM_PORT", term.port)
    try:
        yield term
    finally:
        term.close()
    if term.error is not None:
        pytest.fail(f"the emulated terminal crashed: {type(term.error).__name__}: {term.error}")
