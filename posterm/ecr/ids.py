"""Ids the ECR makes up: merchant order ids (and, through them, refund ids).

Stdlib only, so anything (the driver, replay, a test) may make an id without loading a driver.
A family whose wire has a narrower id field makes its own (Concert: 10 characters).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone


def new_order_id(prefix: str = "PT") -> str:
    """A fresh merchant order id: prefix, UTC time to the second, 12 random hex digits.

    48 random bits: a thousand ids in one second collide with odds of about 2e-9 (with 24
    bits it was 3%, and a collision would hand one customer's payment the outcome of
    another's, since the terminal answers a known order id with its stored outcome).
    """
    return f"{prefix}{datetime.now(timezone.utc):%Y%m%d%H%M%S}{secrets.token_hex(6).upper()}"
