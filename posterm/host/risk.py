"""Real-time risk monitoring: rules in TOML, each decision recorded with its reasons.

Rules (all optional; defaults below). ``action`` is ``allow`` (record only), ``alert``
(record and alert the account holder), ``confirm`` (require the payment password or
the phone), or ``reject``::

    [amount]        # against the account's history
    factor = 10     # above factor x the median of its last payments ...
    min_history = 3 # ... once it has this many
    action = "confirm"
    [night]         # local time of the account's time zone
    start = "01:00"
    end = "05:00"
    action = "confirm"
    [region]        # terminal location's region differs from the account's home region
    action = "confirm"
    [velocity]      # n payments within t seconds
    count = 10
    window_s = 60
    action = "reject"
    [new_terminal]  # first payment of this account at this terminal
    action = "alert"
    [wrong_pins]    # repeated wrong PINs within a window
    count = 3
    window_s = 3600
    action = "reject"
    [outflow]       # unusual outflow (posterm.host.monitor): paid within the rolling window,
    factor = 3      # this payment included, above factor x the account's usual daily spending
    window_s = 86400
    history_days = 30   # usual: the median of its last 30 days with spending, before today,
    min_history = 3     # once it has 3 such days
    action = "alert"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime, time as dtime
from pathlib import Path
from typing import Any

from posterm.errors import ConfigError

DEFAULT_RULES: dict[str, dict[str, Any]] = {
    "amount": {"factor": 10, "min_history": 3, "action": "confirm"},
    "night": {"start": "01:00", "end": "05:00", "action": "confirm"},
    "region": {"action": "confirm"},
    "velocity": {"count": 10, "window_s": 60, "action": "reject"},
    "new_terminal": {"action": "alert"},
    "wrong_pins": {"count": 3, "window_s": 3600, "action": "reject"},
    "outflow": {"factor": 3, "window_s": 86400, "history_days": 30, "min_history": 3, "action": "alert"},
}
ACTIONS = ("allow", "alert", "confirm", "reject")
_RANK = {a: i for i, a in enumerate(ACTIONS)}


@dataclass(frozen=True, slots=True)
class RiskInput:
    amount_minor: int
    local_time: datetime
    terminal_region: str
    home_region: str
    recent_amounts: tuple[int, ...]      # the account's last approved payments
    payments_in_window: int               # payments within the velocity window
    new_terminal: bool
    wrong_pins_in_window: int
    outflow_in_window: int = 0            # paid within the outflow window, this payment included
    usual_daily: tuple[int, ...] = ()     # the account's recent daily totals (see [outflow])


@dataclass(frozen=True, slots=True)
class Decision:
    action: str                 # allow | alert | confirm | reject
    reasons: tuple[str, ...]

    @property
    def alerts(self) -> bool:
        return self.action != "allow" or bool(self.reasons)


def load_rules(source: str | Path | dict | None) -> dict[str, dict[str, Any]]:
    """Rules from a TOML file, a dict, or the defaults. Raises ConfigError naming the problem."""
    rules = {k: dict(v) for k, v in DEFAULT_RULES.items()}
    if source is None:
        return rules
    if isinstance(source, dict):
        data = source
    else:
        try:
            data = tomllib.loads(Path(source).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"risk rules {source}: {exc}") from None
    for name, table in data.items():
        if name not in rules or not isinstance(table, dict):
            raise ConfigError(f"risk rules: unknown rule [{name}] (known: {', '.join(rules)})")
        unknown = set(table) - set(rules[name]) - {"enabled"}
        if unknown:
            raise ConfigError(f"risk rules [{name}]: unknown keys {sorted(unknown)}")
        rules[name].update(table)
        if rules[name]["action"] not in ACTIONS:
            raise ConfigError(f"risk rules [{name}]: action must be one of {ACTIONS}")
    return rules


def _hhmm(text: str) -> dtime:
    try:
        h, m = text.split(":")
        return dtime(int(h), int(m))
    except ValueError:
        raise ConfigError(f"risk rules: {text!r} is not HH:MM") from None


def evaluate(rules: dict[str, dict[str, Any]], x: RiskInput) -> Decision:
    """Apply every enabled rule; the strictest action wins; every triggered rule is a reason."""
    hits: list[tuple[str, str]] = []

    def on(name: str) -> bool:
        return rules[name].get("enabled", True)

    r = rules["amount"]
    if on("amount") and len(x.recent_amounts) >= r["min_history"]:
        ordered = sorted(x.recent_amounts)
        median = ordered[len(ordered) // 2]
        if median > 0 and x.amount_minor > r["factor"] * median:
            hits.append((r["action"], f"amount {x.amount_minor} is over {r['factor']}x the usual {median}"))
    r = rules["night"]
    if on("night"):
        start, end, now = _hhmm(r["start"]), _hhmm(r["end"]), x.local_time.time()
        inside = start <= now < end if start <= end else (now >= start or now < end)
        if inside:
            hits.append((r["action"], f"at night ({x.local_time:%H:%M} local)"))
    r = rules["region"]
    if on("region") and x.home_region and x.terminal_region and \
            x.terminal_region.split(":")[0] != x.home_region:
        hits.append((r["action"], f"terminal in {x.terminal_region}, account at home in {x.home_region}"))
    r = rules["velocity"]
    if on("velocity") and x.payments_in_window >= r["count"]:
        hits.append((r["action"], f"{x.payments_in_window} payments within {r['window_s']} s"))
    r = rules["new_terminal"]
    if on("new_terminal") and x.new_terminal:
        hits.append((r["action"], "first payment at this terminal"))
    r = rules["wrong_pins"]
    if on("wrong_pins") and x.wrong_pins_in_window >= r["count"]:
        hits.append((r["action"], f"{x.wrong_pins_in_window} wrong PINs recently"))
    r = rules["outflow"]
    if on("outflow") and len(x.usual_daily) >= r["min_history"]:
        ordered = sorted(x.usual_daily)
        usual = ordered[len(ordered) // 2]
        if usual > 0 and x.outflow_in_window > r["factor"] * usual:
            hits.append((r["action"], f"{x.outflow_in_window} paid within {r['window_s']} s is over "
                                      f"{r['factor']}x the usual daily {usual}"))
    if not hits:
        return Decision("allow", ())
    action = max((a for a, _ in hits), key=_RANK.__getitem__)
    return Decision(action, tuple(reason for _, reason in hits))
