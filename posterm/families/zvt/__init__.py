"""ZVT, the German counter protocol: the family's sans-IO link (:mod:`.link`).

The wire contract is :mod:`firmware_protocol.zvt`. The family is not registered yet
(no ``family.py``): the ECR driver and the emulator's front come next.
"""

from posterm.families.zvt.link import (
    Refused, TimedOut, ZvtConfig, ZvtLink,
)

__all__ = ["Refused", "TimedOut", "ZvtConfig", "ZvtLink"]
