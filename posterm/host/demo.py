"""Demo data and behaviour: merchant M100000001, terminals T0000001..T0004096 (enough for
the largest ``posterm emulate --count``), the test accounts and their payment codes.

Like test card numbers, the codes 289900000000000001..008 pick an outcome without any
setup, stay valid forever and can be reused (see docs/host.md): each belongs to a test
account whose *behaviour* (:data:`BEHAVIOURS`) scripts what the host does with it. The
host never issues a real code in :data:`TEST_CODE_RANGE`. The WeChat Pay test codes
139900000000000001..008 (a WeChat code is 18 digits with prefix 10-15) belong to the same
accounts: the one ending in the same digit behaves the same.

The accounts are in CNY; each has a twin in EUR (ZVT counters trade in EUR), code
289900000000978001..008 (978: EUR's ISO 4217 number), with the same balance, limits, PIN
and behaviour: ``test_code(suffix, "EUR")``.

:func:`seed` loads the data into a host with no merchant yet; ``posterm host serve``,
``posterm emulate`` and ``posterm demo`` call it (through ``Host.open(demo=True)`` for the
embedded host).
"""

from __future__ import annotations

from posterm.host import admin
from posterm.host.context import Behaviour, HostContext
from posterm.host.risk import Decision

DEMO_MERCHANT = "M100000001"
DEMO_PASSWORD = "147258"
# Registered in one transaction at seed time (one commit, about 10 ms for all); their keys
# are derived when a terminal first starts (the HSM allocates a device number then).
MAX_TERMINALS = 4096
TERMINALS = [f"T{n:07d}" for n in range(1, MAX_TERMINALS + 1)]
REGION = "CN-SH"
TEST_CODE_RANGE = "2899"
TEST_CODE_PREFIX = "2899000000000000"
# currency -> the prefix of its test codes (the suffix "01".."08" picks the account)
TEST_CODE_PREFIXES = {"CNY": TEST_CODE_PREFIX, "EUR": "2899000000009780"}
WECHAT_TEST_CODE_PREFIX = "1399000000000000"

# The test accounts' outcomes are scripted: risk control is not consulted (it would alert
# or ask on a demo's repeated payments), except where the script is risk control's answer.
_SCRIPTED = Decision("allow", ())
BEHAVIOURS: dict[str, Behaviour] = {
    "test": Behaviour(risk=_SCRIPTED),
    "always_pin": Behaviour(risk=_SCRIPTED, always_ask=True),
    "phone": Behaviour(risk=_SCRIPTED, always_ask=True, phone_confirms=True),
    "phone_never": Behaviour(risk=_SCRIPTED, always_ask=True),
    "outage": Behaviour(risk=_SCRIPTED, outage=True),
    "risk_reject": Behaviour(risk=Decision("reject", ("test account 289900000000000007: always rejected by risk "
                                                      "control",))),
    "risk_reject_eur": Behaviour(risk=Decision("reject", ("test account 289900000000978007: always rejected by "
                                                          "risk control",))),
}

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


def test_code(suffix: str, currency: str = "CNY") -> str:
    """The test payment code ending in ``suffix`` ("01".."08") of the account in ``currency``
    (CNY or EUR). Raises KeyError for another currency."""
    return TEST_CODE_PREFIXES[currency] + suffix


def demo_accounts(currency: str = "CNY") -> dict[str, tuple]:
    """:data:`TEST_ACCOUNTS` as in ``currency``: the EUR twins are ``demo-eur-0NN``, same
    balance, limits, confirmation and behaviour (their risk text names their own code)."""
    if currency == "CNY":
        return dict(TEST_ACCOUNTS)
    tag = currency.lower()
    return {suffix: (acct.replace("demo-", f"demo-{tag}-"), f"{name} ({currency})", balance,
                     f"{behaviour}_{tag}" if f"{behaviour}_{tag}" in BEHAVIOURS else behaviour, confirm, frozen)
            for suffix, (acct, name, balance, behaviour, confirm, frozen) in TEST_ACCOUNTS.items()}


def _add_test_accounts(ctx: HostContext, currency: str) -> None:
    for suffix, (acct, name, balance, behaviour, confirm, frozen) in demo_accounts(currency).items():
        admin.add_account(ctx, acct, name, currency=currency, balance_minor=balance, password=DEMO_PASSWORD,
                          per_tx_limit=500_000, daily_limit=2_000_000, password_free=100_000, confirm=confirm,
                          home_region=REGION, behaviour=behaviour)
        with ctx.store.transaction() as tx:
            tx.add_code(test_code(suffix, currency), acct, ctx.clock(), None, test=True)
            if currency == "CNY":   # the WeChat Pay test codes belong to the CNY accounts
                tx.add_code(wechat_test_code(suffix), acct, ctx.clock(), None, test=True)
            if frozen:
                tx.set_account(acct, "frozen", True)  # frozen from the start: no alert, no case


def wechat_test_code(suffix: str) -> str:
    """The WeChat Pay test payment code ending in ``suffix`` ("01".."08"): same account as :func:`test_code`."""
    return WECHAT_TEST_CODE_PREFIX + suffix


def seed(ctx: HostContext) -> bool:
    """Load the demo merchant, terminals, accounts and test codes into a host with no
    merchant yet (``Host.ctx``). Returns whether it did; a host with a merchant is left as it
    is, but for one the demo seeded before the EUR accounts existed: it gains them (its CNY
    accounts and everything else untouched)."""
    view = ctx.store.view()
    if view.merchant_count():
        if view.account(TEST_ACCOUNTS["01"][0]) is not None and view.account(demo_accounts("EUR")["01"][0]) is None:
            _add_test_accounts(ctx, "EUR")
        return False
    admin.add_merchant(ctx, DEMO_MERCHANT, "posterm demo shop")
    with ctx.store.transaction() as tx:   # one commit for all: admin.register_terminal is one each
        now = ctx.clock()
        for tid in TERMINALS:
            tx.put_terminal(tid, DEMO_MERCHANT, REGION, now)
    for currency in TEST_CODE_PREFIXES:   # CNY first: the CNY accounts' rows are as before the EUR ones existed
        _add_test_accounts(ctx, currency)
    return True
