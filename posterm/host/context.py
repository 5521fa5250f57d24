"""What every host service module is given, and the refusal they raise.

:class:`HostContext` carries the store, the HSM, the clock, the risk rules and the table of
account behaviours; the service modules (:mod:`.logon`, :mod:`.authorise`, :mod:`.ledger`,
:mod:`.after_sales`, :mod:`.settlement`, :mod:`.admin`, :mod:`.wallet`) are functions of it.
None of them knows where a request came from (a terminal over TCP, in process, a gateway):
the front ends translate to the same calls (DESIGN.md, "Rules that keep the shape").

An account's *behaviour* (a column of the account) names a :class:`Behaviour`: how the
account departs from the rules. Real accounts are ``normal`` (no departure); the demo's
test accounts (:mod:`.demo`) script their outcome (always ask for the PIN, confirm on the
phone by themselves, lose the answer in an outage, be rejected by risk control).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Mapping

from posterm.crypto.hsm import Hsm
from posterm.errors import PosError
from posterm.host import risk
from posterm.host.security_keys import SecurityKeys
from posterm.host.store import Store, Tx
from posterm.host.store.queries import Row


class HostRefused(PosError):
    """A host operation the caller asked for cannot be done (unknown account, ...)."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How an account departs from the rules (see the module docstring).

    ``risk``: the decision risk control gives without consulting the rules (None: the
    rules decide). ``always_ask``: every payment waits for the PIN or the phone, even
    password-free ones. ``phone_confirms``: a payment waiting on the phone is confirmed
    by itself ``phone_delay`` seconds after it was asked (seen at the next query).
    ``outage``: the payment is processed but its answer is lost, and the host stays
    silent to that terminal for ``outage_seconds``.
    """

    risk: risk.Decision | None = None
    always_ask: bool = False
    phone_confirms: bool = False
    outage: bool = False


NORMAL = Behaviour()
# A behaviour name this host has no table entry for: an account whose outcome was scripted
# by a host with other test accounts. Its risk is not evaluated (as for every scripted one).
UNKNOWN_SCRIPT = Behaviour(risk=risk.Decision("allow", ()))


@dataclass(slots=True)
class HostContext:
    """The host's parts, shared by its service modules. ``outage_until``: terminal id ->
    the clock time until which the host stays silent to it (in memory, like sessions).
    ``keys``: the security centre's keys (codes' MAC, the inbox's and webhooks' seal)."""

    store: Store
    hsm: Hsm
    clock: Callable[[], float]
    rules: dict
    behaviours: Mapping[str, Behaviour]
    outage_seconds: float = 30.0
    phone_delay: float = 2.0
    reserved_code_prefixes: tuple[str, ...] = ()
    outage_until: dict[str, float] = field(default_factory=dict)
    keys: SecurityKeys = field(default_factory=SecurityKeys.ephemeral)
    # how an alert reaches the customer (the Host sets posterm.host.alerts.fan_out: alerts
    # imports this module, so it is handed in rather than imported); None: the alerts row only
    fan_out: Callable[..., None] | None = None

    def behaviour(self, acct: Row) -> Behaviour:
        """The :class:`Behaviour` of account row ``acct``."""
        name = acct["behaviour"]
        if name == "normal":
            return NORMAL
        return self.behaviours.get(name, UNKNOWN_SCRIPT)

    def alert(self, tx: Tx, account_id: str, kind: str, text: str) -> None:
        """Tell the account holder: an alerts row, an entry in the phone's inbox and, when the
        account set one, a signed webhook queued in the outbox
        (``fan_out``: :func:`posterm.host.alerts.fan_out`), all in ``tx``."""
        if self.fan_out is None:
            tx.alert(account_id, kind, text[:200], self.clock())
        else:
            self.fan_out(self, tx, account_id, kind, text[:200])


def iso_time(ts: float) -> str:
    """``ts`` (epoch seconds) as ISO 8601 in the machine's time zone, with its offset, to the second."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def require_account(tx: Tx, account_id: str) -> Row:
    """The account's row. Raises HostRefused when there is none."""
    row = tx.account(account_id)
    if row is None:
        raise HostRefused(f"no account {account_id}")
    return row
