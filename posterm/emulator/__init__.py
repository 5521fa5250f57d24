"""The emulated payment terminal: firmware in Python behind a pty or TCP port.

    from posterm.emulator import EmulatedTerminal
    with EmulatedTerminal.start() as term:      # a pty, an embedded host under $POSTERM_HOME
        print(term.port)                        # give this to the ECR (posterm.Terminal.open)
        term.set_scenario("scenario.toml")
        ...
        term.receipts(); term.journal_orders()

Pieces: :mod:`.states` (the one state table), :mod:`.firmware` (the state
machine, no I/O), :mod:`.peripherals`, :mod:`.scenario`, :mod:`.journal`,
:mod:`.runner` (threads wiring transport + link + firmware + host).
"""

from __future__ import annotations

from typing import Any

__all__ = ["EmulatedTerminal", "Fleet", "Identity", "FirmwareConfig", "load_scenario", "parse_scenario"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not start threads or need the host
    if name in ("EmulatedTerminal", "Fleet"):
        from posterm.emulator import runner
        return getattr(runner, name)
    if name in ("Identity", "FirmwareConfig"):
        from posterm.emulator import firmware
        return getattr(firmware, name)
    if name in ("load_scenario", "parse_scenario"):
        from posterm.emulator import scenario
        return getattr(scenario, name)
    raise AttributeError(name)
