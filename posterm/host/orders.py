"""An order as the terminals see it: find it, who owns it, and the answer it gives.

An order id belongs to the merchant, and to the first terminal whose AuthRequest the host
stored for it (its owner); only the owner changes it, every other terminal gets its answer
unchanged, which names the owner (host protocol 2).
"""

from __future__ import annotations

import logging
from datetime import datetime

from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Reason

from posterm.host.store import Tx
from posterm.host.store.queries import Row

log = logging.getLogger("posterm.host")


def trade_for(tx: Tx, terminal_id: str, order_id: str) -> Row | None:
    """The trade of ``order_id`` at the terminal's merchant; None for an unknown terminal or order."""
    term = tx.terminal(terminal_id)
    if term is None:
        return None
    return tx.trade_by_order(term["merchant_id"], order_id)


def foreign(t: Row, terminal_id: str, what: str) -> bool:
    """True (and logged) when ``t`` is owned by a terminal other than ``terminal_id``."""
    if t["terminal_id"] == terminal_id:
        return False
    log.warning("refused %s of order %s from %s: it is %s's order", what, t["order_id"], terminal_id,
                t["terminal_id"])
    return True


def not_found(order_id: str) -> h.AuthResponse:
    return h.AuthResponse(order_id=order_id, status=h.HostStatus.NOT_FOUND, reason=Reason.ORDER_NOT_FOUND)


def answer(tx: Tx, trade_no: str) -> h.AuthResponse:
    """The AuthResponse the trade gives now (to its owner and to anyone asking again)."""
    t = tx.trade(trade_no)
    status = h.HostStatus[t["status"]]
    tries = None
    if status is h.HostStatus.NEED_PIN and t["account_id"]:
        tries = max(0, 3 - tx.pin_tries(t["account_id"]))
    paid = datetime.fromtimestamp(t["paid_at"]).astimezone().isoformat(timespec="seconds") if t["paid_at"] else None
    return h.AuthResponse(order_id=t["order_id"], status=status, reason=t["reason"],
                          reason_text=t["reason_text"] or "",
                          trade_no=t["trade_no"] if status in (h.HostStatus.APPROVED, h.HostStatus.REFUNDED)
                          else None, amount_minor=t["amount_minor"], currency=t["currency"],
                          qr_data=t["qr_data"] if status is h.HostStatus.SHOW_QR else None,
                          code_last4=t["code_last4"], paid_at=paid, refunded_minor=t["refunded_minor"],
                          pin_tries_left=tries,
                          poll_interval_ms=None, owner_terminal_id=t["terminal_id"])
