"""The emulated payment host: accounts, limits, risk, an exactly-once ledger, bills, reports.

    from posterm.host import Host
    host = Host.open("host.db")            # demo data on an empty database
    reply = host.client().request(signed_auth_request, timeout=5)

:mod:`.core` (the host), :mod:`.store` (SQLite), :mod:`.risk` (rules), :mod:`.demo`
(demo data and test codes), :mod:`.server` / :mod:`.client` (TCP).
"""

from posterm.host.core import Host, HostRefused, InProcessHostClient, TradeView

__all__ = ["Host", "HostRefused", "InProcessHostClient", "TradeView"]
