"""Demo data: merchant M100000001, terminals T0000001..T0000064, and the test payment codes.

Like test card numbers, the codes 289900000000000001..008 pick an outcome without any
setup, stay valid forever and can be reused (see docs/host.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from posterm.host.core import Host

DEMO_MERCHANT = "M100000001"
DEMO_PASSWORD = "147258"
TERMINALS = [f"T{n:07d}" for n in range(1, 65)]
REGION = "CN-SH"

# code suffix -> (account id, name, balance, behaviour, confirm, frozen)
TEST_ACCOUNTS = {
    "01": ("demo-001", "Demo Customer One", 1_000_000, "test", "pin", False),
    "02": ("demo-002", "Demo Customer Two", 500, "test", "pin", False),
    "03": ("demo-003", "Demo Customer Three", 1_000_000, "always_pin", "pin", False),
    "04": ("demo-004", "Demo Customer Four", 1_000_000, "phone", "phone", False),
    "05": ("demo-005", "Demo Customer Five", 1_000_000, "phone_never", "phone", False),
    "06": ("demo-006", "Demo Customer Six", 1_000_000, "outage", "pin", False),
    "07": ("demo-007", "Demo Customer Seven", 1_000_000, "risk_reject", "pin", False),
    "08": ("demo-008", "Demo Customer Eight", 1_000_000, "test", "pin", True),
}


def test_code(suffix: str) -> str:
    return "2899000000000000" + suffix


def load_demo(host: "Host") -> None:
    """Load the demo merchant, terminals, accounts and test codes into an empty host."""
    from posterm.host.core import code_hash

    host.add_merchant(DEMO_MERCHANT, "posterm demo shop")
    for tid in TERMINALS:
        host.register_terminal(tid, DEMO_MERCHANT, REGION)
    for suffix, (acct, name, balance, behaviour, confirm, frozen) in TEST_ACCOUNTS.items():
        host.add_account(acct, name, balance_minor=balance, password=DEMO_PASSWORD, per_tx_limit=500_000,
                         daily_limit=2_000_000, password_free=100_000, confirm=confirm, home_region=REGION,
                         behaviour=behaviour)
        code = test_code(suffix)
        with host.store.write() as db:
            db.execute("INSERT OR IGNORE INTO payment_codes VALUES (?, ?, ?, ?, NULL, NULL, 1)",
                       (code_hash(code), code[-4:], acct, host.clock()))
            if frozen:
                db.execute("UPDATE accounts SET frozen = 1 WHERE id = ?", (acct,))
