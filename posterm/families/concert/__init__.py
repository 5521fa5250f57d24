"""The Ingenico Concert (Telium) protocol family: a sans-IO link, the ECR driver, the emulator's front.

The frames and messages are in :mod:`firmware_protocol.concert`; see PROTOCOL.md's Concert section.
"""

import secrets as _secrets

_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"   # no I or O: read aloud from a receipt


def new_private_id(prefix: str, width: int = 10) -> str:
    """An order id that fits Concert's 10-character private field: ``prefix`` then random
    base-34 characters (9 of them give 46 bits)."""
    return prefix + "".join(_secrets.choice(_ALPHABET) for _ in range(max(0, width - len(prefix))))

