"""The host's store: every SQL statement the host runs lives here (SQLite now; PostgreSQL later).

:mod:`.sqlite` (schema, connections, transactions), :mod:`.queries` (the named queries the
service modules call, :class:`Tx`), :mod:`.books` (daily totals, the ledger check).
"""

from posterm.host.store.books import check_ledger, daily_spend_from_trades, local_day
from posterm.host.store.queries import Tx, code_hash
from posterm.host.store.sqlite import SCHEMA, Store

__all__ = ["SCHEMA", "Store", "Tx", "check_ledger", "code_hash", "daily_spend_from_trades", "local_day"]
