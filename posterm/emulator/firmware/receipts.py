"""What the terminal prints: the text of each receipt, from values (no printer, no journal).

Every receipt starts with the same head (firmware, merchant, terminal, UTC time, title and
the order id if there is one); lines are ``receipt_line`` columns 32 characters wide. A
payment code only ever appears masked to its last four digits.
"""

from __future__ import annotations

import textwrap

from firmware_protocol.currency import format_minor
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason

from posterm.emulator.peripherals import RECEIPT_WIDTH, receipt_line
from posterm.ecr.trace import mask_code

from posterm.emulator.firmware.values import Identity


def head(identity: Identity, stamp: str, title: str, order_id: str | None) -> list[str]:
    """The lines every receipt starts with; ``stamp`` is an ISO 8601 UTC time."""
    lines = [identity.firmware_version, receipt_line("MERCHANT", identity.merchant_id),
             receipt_line("TERMINAL", identity.terminal_id), stamp[:19].replace("T", " ") + " UTC", title]
    if order_id:
        lines += ["ORDER", order_id]
    return lines


def payment(identity: Identity, stamp: str, *, sale: bool, order_id: str, amount_minor: int, currency: str,
            code_last4: str | None, outcome: Outcome, reason: int, trade_no: str | None) -> tuple[str, ...]:
    """A sale (``sale``) or an ECR Cancel of an earlier order: its outcome, and what to do if unknown."""
    return tuple(head(identity, stamp, "SALE" if sale else "CANCEL", order_id) + [
        receipt_line("AMOUNT", format_minor(amount_minor, currency)),
        *([receipt_line("CODE", mask_code("*" * 14 + code_last4))] if code_last4 else []),
        receipt_line("RESULT", outcome.name),
        *([receipt_line("REASON", reason_name(reason))] if reason else []),
        *([receipt_line("TRADE NO", trade_no)] if trade_no else []),
        *(["CHECK WITH THE HOST BEFORE", "TAKING THE PAYMENT AGAIN"] if outcome is Outcome.UNKNOWN else []),
        *(["TAKEN ON ANOTHER TERMINAL", "NOT IN THIS BATCH"] if sale and reason == Reason.ORDER_CONFLICT else []),
    ])


def refund(identity: Identity, stamp: str, request: m.Refund, result: m.RefundResult) -> tuple[str, ...]:
    """A refund: what was asked, what came of it, and the order's refunded total if approved."""
    return tuple(head(identity, stamp, "REFUND", request.order_id) + [
        receipt_line("REFUND ID", request.refund_id[:20]),
        receipt_line("AMOUNT", format_minor(result.amount_minor, result.currency)),
        receipt_line("RESULT", result.outcome.name),
        *([receipt_line("REASON", reason_name(result.reason))] if result.reason else []),
        *([receipt_line("REFUNDED", format_minor(result.refunded_total_minor, result.currency))]
          if result.outcome is Outcome.APPROVED else []),
    ])


def settlement(identity: Identity, stamp: str, batch_no: int, totals: tuple[m.Totals, ...],
               host_agrees: bool) -> tuple[str, ...]:
    """A batch's totals per currency, and whether the host's totals matched."""
    lines = head(identity, stamp, f"SETTLEMENT BATCH {batch_no}", None)
    for t in totals:
        lines += [receipt_line(f"SALES x{t.approved_count}", format_minor(t.approved_minor, t.currency)),
                  receipt_line(f"REFUNDS x{t.refunded_count}", format_minor(t.refunded_minor, t.currency)),
                  receipt_line(f"CANCELLED x{t.cancelled_count}"),
                  receipt_line("NET", format_minor(t.net_minor, t.currency))]
    if not totals:
        lines.append("NO TRANSACTIONS")
    lines.append(receipt_line("HOST AGREES", "YES" if host_agrees else "NO"))
    return tuple(lines)


def notices_footer(notices: tuple[str, ...]) -> tuple[str, ...]:
    """The security notices at the foot of a receipt: a rule, a title, each notice wrapped to
    the receipt's width (nothing when there are none)."""
    if not notices:
        return ()
    lines = ["-" * RECEIPT_WIDTH, "SECURITY NOTICE" if len(notices) == 1 else "SECURITY NOTICES"]
    for text in notices:
        lines += textwrap.wrap(text, RECEIPT_WIDTH) or [text[:RECEIPT_WIDTH]]
    return tuple(lines)


def idle_screen(notices: tuple[str, ...]) -> str:
    """What the display shows between transactions: the welcome, then the security notices."""
    return "\n".join(("WELCOME", *notices))


def reason_name(code: int) -> str:
    """A Reason code's name, or ``CODE n`` for one this firmware does not know."""
    try:
        return Reason(code).name
    except ValueError:
        return f"CODE {code}"
