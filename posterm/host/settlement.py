"""Settlement: close a terminal's batch and say whether its totals agree with the host's.

A batch is settled once per (terminal, batch number): the same SettleRequest again gets the
totals and verdict recorded the first time. The host's totals per currency count the
terminal's approved payments, its refunds, and its cancelled (or reversed) trades
(:func:`host_totals`); the merchant gateway's apps, which have no batch totals of their own,
settle with exactly these (``posterm.host.gateway.core.Gateway.settle``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Totals

from posterm.host.context import HostContext
from posterm.host.store import Tx

TOTALS_FIELDS = ("currency", "approved_count", "approved_minor", "refunded_count", "refunded_minor",
                 "cancelled_count")


def totals_json(t: Totals) -> dict[str, Any]:
    """``t`` as the settlements table keeps it."""
    return {k: getattr(t, k) for k in TOTALS_FIELDS}


def stored_totals(row: Any) -> tuple[Totals, ...]:
    """The totals of a ``settlements`` row."""
    return tuple(Totals(**x) for x in json.loads(row["totals"]))


def host_totals(tx: Tx, terminal_id: str) -> tuple[Totals, ...]:
    """The host's totals, by currency, of what ``terminal_id``'s next batch would close: its
    final trades and its refunds not in a batch yet."""
    per: dict[str, list[int]] = {}
    for t in tx.unsettled_final_trades(terminal_id):
        b = per.setdefault(t["currency"], [0, 0, 0, 0, 0])
        if t["status"] == "APPROVED":
            b[0] += 1
            b[1] += t["amount_minor"]
        else:  # refunded in full (cancelled or reversed after payment) or cancelled unpaid
            b[4] += 1
    for r in tx.unsettled_refunds(terminal_id):
        b = per.setdefault(r["currency"], [0, 0, 0, 0, 0])
        b[2] += 1
        b[3] += r["amount_minor"]
    return tuple(Totals(cur, *v) for cur, v in sorted(per.items()))


def settle(ctx: HostContext, msg: h.SettleRequest) -> h.HostMessage:
    """Answer a SettleRequest (see the module docstring)."""
    with ctx.store.transaction() as tx:
        done = tx.settlement(msg.terminal_id, msg.batch_no)
        if done is not None:
            return h.SettleResponse(batch_no=msg.batch_no, totals=stored_totals(done), agrees=bool(done["agrees"]))
        mine = host_totals(tx, msg.terminal_id)
        agrees = mine == tuple(sorted(msg.totals, key=lambda x: x.currency))
        tx.settle(msg.terminal_id, msg.batch_no, [totals_json(x) for x in mine], agrees, ctx.clock())
        return h.SettleResponse(batch_no=msg.batch_no, totals=mine, agrees=agrees,
                                settled_at=datetime.fromtimestamp(ctx.clock()).astimezone().isoformat(
                                    timespec="seconds"))
