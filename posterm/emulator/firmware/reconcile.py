"""Settling with the host what the terminal could not finish: the reconciler.

An order is *unfinished* when the ECR got UNKNOWN (the host did not answer), when the
terminal faulted or was killed with it in flight, or (Concert, ``void_unfinished``) when the
ECR never acknowledged an approval. The reconciler asks the host about each (HostQuery), one
conversation at a time, with back-off, and then:

* a final answer (approved, declined, cancelled, refunded) is journaled as the outcome;
* anything else (still in progress, or not at the host at all) is undone: HostCancel, or a
  ReversalAdvice for an order the host never saw (our AuthRequest may still land);
* with ``void_unfinished``, an approval is reversed too: that ECR was told "not processed".

The same side conversation answers an ECR Query (or a re-sent PayRequest) for an order that
is not in flight and not final in the journal. Nothing here talks to the host directly: a
request leaves through ``call_host`` (a token), its answer comes back as :meth:`on_reply`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from firmware_protocol.host import messages as h
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason
from firmware_protocol.native.tlv import Message

from posterm.emulator.firmware.flow import FINAL_STATUSES, result_of
from posterm.emulator.firmware.values import FirmwareConfig, ResultDelivery
from posterm.emulator.orders import OrderRecord, OrderStore

log = logging.getLogger("posterm.emulator")

_MAX_UNDELIVERED = 1000


@dataclass
class SideOp:
    """A host conversation beside the flow: an ECR Query, or reconciling an unfinished order."""

    order_id: str
    step: str                                    # query | reverse | cancel
    record: OrderRecord | None
    answer_ecr: bool = False


class Reconciler:
    """The firmware's side conversations with the host and the schedule of unfinished orders.

    ``config`` is read at each use (a scenario may change it); ``clock`` is the firmware's
    time, ``stamp`` its wall-clock time for the journal; ``send`` queues a message for the
    ECR; ``call_host`` queues a host request and returns its token; ``in_flight`` names the
    order of the payment in flight (never reconciled under its feet).
    """

    def __init__(self, journal: OrderStore, terminal_id: str, *, config: Callable[[], FirmwareConfig],
                 clock: Callable[[], float], stamp: Callable[[], str], send: Callable[[Message], None],
                 call_host: Callable[[h.HostMessage], int], in_flight: Callable[[], str | None]) -> None:
        self.journal = journal
        self.terminal_id = terminal_id
        self._config = config
        self._clock = clock
        self._stamp = stamp
        self._send = send
        self._call_host = call_host
        self._in_flight = in_flight
        self._side: dict[int, SideOp] = {}
        self._side_by_order: dict[str, int] = {}
        self._due: dict[str, float] = {}
        self._undelivered: dict[str, dict[str, Any]] = {}   # Concert: approvals awaiting the ECR's ACK
        self._reverse: set[str] = set()                       # Concert: approvals the ECR never took

    # ---------------------------------------------------------------- the schedule

    def schedule(self, order_id: str, at: float) -> None:
        """Ask the host about ``order_id`` at ``at`` (or as soon after as no conversation runs)."""
        self._due[order_id] = at

    def next_due(self) -> float | None:
        """When :meth:`tick` next has work, or None (also while a conversation runs)."""
        if not self._side and self._due:
            return min(self._due.values())
        return None

    def tick(self) -> None:
        """Start the conversation for the order most overdue, if none runs."""
        if not self._due or self._side:
            return
        now = self._clock()
        order_id, due = min(self._due.items(), key=lambda kv: kv[1])
        if due > now or order_id == self._in_flight():
            return
        rec = self.journal.get(order_id)
        if rec is not None and rec.final and order_id in self._reverse and rec.outcome is Outcome.APPROVED:
            self._due[order_id] = now + self._config().reconcile_max
            self.ask(order_id, rec, answer_ecr=False)
            return
        self._reverse.discard(order_id)
        if rec is None or rec.final:
            self._due.pop(order_id, None)
            return
        self._due[order_id] = now + self._config().reconcile_max  # until the answer reschedules it
        self.ask(order_id, rec, answer_ecr=False)

    # ---------------------------------------------------------------- conversations

    def ask(self, order_id: str, rec: OrderRecord | None, answer_ecr: bool) -> None:
        """Query the host about ``order_id``; ``answer_ecr``: send the ECR a PayResult when it answers.
        One conversation per order: a second ask joins the first."""
        token = self._side_by_order.get(order_id)
        if token is not None:
            self._side[token].answer_ecr |= answer_ecr
            return
        op = SideOp(order_id, "query", rec, answer_ecr)
        self._side_send(op, h.HostQuery(terminal_id=self.terminal_id, order_id=order_id))

    def on_reply(self, token: int, reply: h.HostMessage | None) -> bool:
        """The host's answer (None: none came) if ``token`` is a side conversation's; False if not."""
        op = self._side.pop(token, None)
        if op is None:
            return False
        self._side_by_order.pop(op.order_id, None)
        self._on_side_reply(op, reply)
        return True

    def _side_send(self, op: SideOp, msg: h.HostMessage) -> None:
        token = self._call_host(msg)
        self._side[token] = op
        self._side_by_order[op.order_id] = token

    def _on_side_reply(self, op: SideOp, reply: h.HostMessage | None) -> None:
        status = getattr(reply, "status", None)
        rec = op.record
        config = self._config()
        if rec is None:
            # An order this terminal never journaled: the host's word is the answer.
            if op.answer_ecr:
                self._send(host_result(op.order_id, reply))
            return
        # An unfinished order of ours: query, then undo what cannot be finished.
        if (config.void_unfinished and op.step == "query" and not op.answer_ecr
                and status is h.HostStatus.APPROVED):
            # The ECR cannot learn that it was paid (see FirmwareConfig.void_unfinished): refund it.
            op.step = "reverse"
            log.warning("%s: order %s was approved after the ECR was told it was not: reversing it",
                        self.terminal_id, rec.order_id)
            self._side_send(op, h.HostCancel(terminal_id=self.terminal_id, order_id=rec.order_id,
                                             reason=int(Reason.HOST_UNAVAILABLE)))
            return
        if status in FINAL_STATUSES and not (op.step != "query" and status is h.HostStatus.DECLINED):
            outcome = FINAL_STATUSES[status]
            reason = int(reply.reason) if outcome is not Outcome.APPROVED else Reason.NONE
            if op.step != "query" and outcome is Outcome.CANCELLED:
                reason = reason or Reason.HOST_UNAVAILABLE
            self._settle_record(rec, outcome, reason, reply)
        elif op.step == "query" and status is not None and status is not h.HostStatus.DECLINED:
            # Not final at the host (customer gone) or not there at all: cancel / reverse it.
            op.step = "reverse"
            if status is h.HostStatus.NOT_FOUND:
                msg: h.HostMessage = h.ReversalAdvice(terminal_id=self.terminal_id, order_id=rec.order_id,
                                                      reason=int(Reason.HOST_UNAVAILABLE))
            else:
                msg = h.HostCancel(terminal_id=self.terminal_id, order_id=rec.order_id,
                                   reason=int(Reason.HOST_UNAVAILABLE))
            self._side_send(op, msg)
            return
        elif op.step != "query" and status is h.HostStatus.NOT_FOUND:
            self._settle_record(rec, Outcome.CANCELLED, Reason.HOST_UNAVAILABLE, reply)
        else:
            attempts = self.journal.count_attempt(rec.order_id)
            delay = min(config.reconcile_base * 2 ** min(attempts, 16), config.reconcile_max)
            self._due[rec.order_id] = self._clock() + delay
        if op.answer_ecr:
            latest = self.journal.get(rec.order_id)
            self._send(result_of(latest) if latest is not None else host_result(rec.order_id, reply))

    def _settle_record(self, rec: OrderRecord, outcome: Outcome, reason: int, reply: Any) -> None:
        status = getattr(reply, "status", None)
        refunded = getattr(reply, "refunded_minor", 0) or (rec.amount_minor if status is h.HostStatus.REFUNDED else 0)
        self.journal.finish_order(rec.order_id, outcome, reason, self._stamp(),
                                  reason_text=getattr(reply, "reason_text", "") or "",
                                  trade_no=getattr(reply, "trade_no", None), paid_at=getattr(reply, "paid_at", None),
                                  refunded_minor=refunded, code_last4=getattr(reply, "code_last4", None))
        self._due.pop(rec.order_id, None)
        self._reverse.discard(rec.order_id)
        log.info("%s: order %s reconciled with the host: %s", self.terminal_id, rec.order_id, outcome.name)

    # ---------------------------------------------------------------- Concert: did the ECR take it?

    def hold(self, order_id: str, outcome: dict[str, Any]) -> None:
        """An approval the ECR has yet to acknowledge: ``outcome`` holds ``finish_order``'s
        arguments (``outcome``, ``reason`` and its keywords), journaled on delivery."""
        self._undelivered[order_id] = outcome
        for key in list(self._undelivered)[:-_MAX_UNDELIVERED]:   # bounded; the journal keeps them in flight anyway
            self._undelivered.pop(key, None)

    def on_delivery(self, ev: ResultDelivery) -> None:
        """Concert: the ECR acknowledged an outcome (keep it) or never did (reverse an approval)."""
        pending = self._undelivered.pop(ev.order_id, None)
        if ev.delivered:
            if pending is not None:
                out = pending.pop("outcome")
                reason = pending.pop("reason")
                self.journal.finish_order(ev.order_id, out, reason, self._stamp(), **pending)
            return
        rec = self.journal.get(ev.order_id)
        if rec is None or (rec.final and rec.outcome is not Outcome.APPROVED):
            return   # nothing was charged: nothing to give back
        log.warning("%s: the ECR never acknowledged the answer for %s (%s): reversing it at the host",
                    self.terminal_id, ev.order_id, ev.cause or "undelivered")
        self._reverse.add(ev.order_id)
        self._due[ev.order_id] = self._clock()


def host_result(order_id: str, reply: h.HostMessage | None) -> m.PayResult:
    """The ECR's PayResult for an order, from the host's answer to a query about it alone."""
    status = getattr(reply, "status", None)
    amount = getattr(reply, "amount_minor", 0) or 0
    currency = getattr(reply, "currency", None) or "XXX"
    if reply is None:
        outcome, reason = Outcome.UNKNOWN, Reason.HOST_UNAVAILABLE
    elif status in FINAL_STATUSES:
        outcome = FINAL_STATUSES[status]
        reason = int(reply.reason) if outcome is not Outcome.APPROVED else Reason.NONE
    elif status is h.HostStatus.NOT_FOUND:
        outcome, reason = Outcome.DECLINED, Reason.ORDER_NOT_FOUND
    elif status is not None:
        outcome, reason = Outcome.PENDING, Reason.NONE
    else:
        outcome, reason = Outcome.UNKNOWN, int(getattr(reply, "reason", 0)) or Reason.OTHER
    return m.PayResult(order_id=order_id, outcome=outcome, amount_minor=amount, currency=currency, reason=reason,
                       trade_no=getattr(reply, "trade_no", None), code_last4=getattr(reply, "code_last4", None),
                       refunded_minor=getattr(reply, "refunded_minor", 0) or 0,
                       paid_at=getattr(reply, "paid_at", None))
