"""The emulated payment host: accounts, limits, risk, an exactly-once ledger, bills, reports.

    from posterm.host import Host
    host = Host.open("host.db")            # demo data on an empty database
    reply = host.client().request(signed_auth_request, timeout=5)

:mod:`.service` (the :class:`Host` façade: MAC/KSN checks, dispatch), and one module per
responsibility: :mod:`.signing` (MAC, KSN replay guards), :mod:`.logon`, :mod:`.authorise`
(payment, PIN, query), :mod:`.ledger` (money), :mod:`.after_sales` (cancel, refund),
:mod:`.settlement`, :mod:`.admin`, :mod:`.wallet` (the customer's phone), :mod:`.risk`
(rules); :mod:`.store` (every SQL statement; SQLite), :mod:`.demo` (demo data and the test
accounts' behaviour); :mod:`.server` / :mod:`.client` (TCP, over :mod:`.wire`).
"""

from posterm.host.context import HostRefused
from posterm.host.admin import TradeView
from posterm.host.service import Host, InProcessHostClient

__all__ = ["Host", "HostRefused", "InProcessHostClient", "TradeView"]
