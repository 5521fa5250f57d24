"""The emulated terminal's firmware: the state machine and its parts, no I/O.

* :mod:`.machine`: :class:`Firmware` (inputs, outputs, the table dispatch, timers, queues),
* :mod:`.payment`, :mod:`.operator`, :mod:`.customer`: the table's actions, mixed into it,
* :mod:`.reconcile`: settling unfinished orders with the host (a collaborator),
* :mod:`.receipts`: receipt text; :mod:`.flow`: the operation in flight;
  :mod:`.values`: what crosses the firmware's edge.

The state table itself is :mod:`posterm.emulator.states`.
"""

from __future__ import annotations

from posterm.emulator.firmware.machine import Firmware
from posterm.emulator.firmware.values import (
    CAPABILITIES,
    FIRMWARE_VERSION,
    FirmwareConfig,
    HostCall,
    Identity,
    ResultDelivery,
    ScenarioResult,
    WalletCall,
)

__all__ = ["CAPABILITIES", "FIRMWARE_VERSION", "Firmware", "FirmwareConfig", "HostCall", "Identity",
           "ResultDelivery", "ScenarioResult", "WalletCall"]
