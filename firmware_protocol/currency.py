"""ISO 4217 currencies: alphabetic code -> (numeric code, minor-unit exponent).

Money on the wire is always an integer count of minor units plus the alphabetic
code; the exponent is only needed to show or read a decimal amount. The table
covers the currencies of the wallets and markets posterm targets; the wire
accepts any three upper-case letters, so a newer peer can use one not listed.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

CURRENCIES: dict[str, tuple[int, int]] = {
    "AED": (784, 2), "AUD": (36, 2), "BHD": (48, 3), "BRL": (986, 2), "CAD": (124, 2),
    "CHF": (756, 2), "CLP": (152, 0), "CNY": (156, 2), "CZK": (203, 2), "DKK": (208, 2),
    "EUR": (978, 2), "GBP": (826, 2), "HKD": (344, 2), "HUF": (348, 2), "IDR": (360, 2),
    "ILS": (376, 2), "INR": (356, 2), "ISK": (352, 0), "JOD": (400, 3), "JPY": (392, 0),
    "KRW": (410, 0), "KWD": (414, 3), "MOP": (446, 2), "MXN": (484, 2), "MYR": (458, 2),
    "NOK": (578, 2), "NZD": (554, 2), "OMR": (512, 3), "PHP": (608, 2), "PLN": (985, 2),
    "QAR": (634, 2), "RUB": (643, 2), "SAR": (682, 2), "SEK": (752, 2), "SGD": (702, 2),
    "THB": (764, 2), "TND": (788, 3), "TRY": (949, 2), "TWD": (901, 2), "USD": (840, 2),
    "VND": (704, 0), "XAF": (950, 0), "XOF": (952, 0), "ZAR": (710, 2),
}
_BY_NUMERIC = {num: code for code, (num, _) in CURRENCIES.items()}
CURRENCY_PATTERN = r"[A-Z]{3}"


def exponent(code: str) -> int:
    """Minor-unit exponent of ``code``. Raises ``KeyError`` for an unknown currency."""
    return CURRENCIES[code][1]


def numeric(code: str) -> int:
    """ISO 4217 numeric code of ``code``. Raises ``KeyError`` for an unknown currency."""
    return CURRENCIES[code][0]


def from_numeric(num: int) -> str:
    """Alphabetic code for an ISO 4217 numeric code. Raises ``KeyError``."""
    return _BY_NUMERIC[num]


def to_minor(amount: str, code: str) -> int:
    """Parse a decimal string ("12.34") into minor units of ``code``, exactly.

    Raises ``ValueError`` for a malformed amount, a negative one, more decimals
    than the currency has, or an unknown currency. Never goes through float.
    """
    if code not in CURRENCIES:
        raise ValueError(f"unknown currency {code!r}")
    exp = exponent(code)
    try:
        d = Decimal(amount.strip())
    except (InvalidOperation, AttributeError):
        raise ValueError(f"not a decimal amount: {amount!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"amount must be a non-negative number: {amount!r}")
    scaled = d.scaleb(exp)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount!r} has more than {exp} decimals, the exponent of {code}")
    return int(scaled)


def format_minor(amount_minor: int, code: str) -> str:
    """Show ``amount_minor`` of ``code`` as a decimal string ("12.34 CNY")."""
    exp = CURRENCIES.get(code, (0, 2))[1]
    sign = "-" if amount_minor < 0 else ""
    q, r = divmod(abs(amount_minor), 10**exp)
    return f"{sign}{q}.{r:0{exp}d} {code}" if exp else f"{sign}{q} {code}"
