"""The operator's functions, as table actions: refund, settlement, key loading, and the
supervisor's reset of the operator password.

Each needs the operator password (the keypad counts wrong ones toward a lock); a refused
one is answered at once with the function's own result message (RefundResult, SettleReport,
KeyStatus), never an Error. Refund and settlement go to the host and print a receipt;
loading a key is the PIN pad's business alone (the key block never passes through here in
clear).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from firmware_protocol.host import messages as h
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason, Stage

from posterm.emulator.firmware import receipts
from posterm.emulator.firmware.flow import Flow
from posterm.emulator.peripherals import PeripheralError
from posterm.emulator.states import Action, Event, handles
from posterm.errors import PosError

log = logging.getLogger("posterm.emulator")


class OperatorActions:
    """Mixed into :class:`~posterm.emulator.firmware.machine.Firmware`: the handlers of the
    operator's actions."""

    # ---------------------------------------------------------------- refund

    @handles(Action.REFUND_AT_HOST)
    def _act_refund_at_host(self, *, request: m.Refund) -> None:
        self._flow = Flow("refund", request, order_id=request.order_id, amount_minor=request.amount_minor,
                          currency=request.currency)
        verdict = self.keypad.check(request.operator_password)
        if verdict is not Reason.NONE:
            self._fire(Event.OPERATOR_REFUSED, reason=verdict)
            return
        self._progress(Stage.REFUNDING, "Refunding...")
        self._host(h.HostRefund(terminal_id=self.identity.terminal_id, order_id=request.order_id,
                                refund_id=request.refund_id, amount_minor=request.amount_minor,
                                currency=request.currency))

    @handles(Action.REFUND_REFUSED)
    def _act_refund_refused(self, *, reason: Reason) -> None:
        flow = self._flow
        self._flow = None
        assert flow is not None
        req = flow.request
        assert isinstance(req, m.Refund)
        self._send(m.RefundResult(order_id=req.order_id, refund_id=req.refund_id, outcome=Outcome.DECLINED,
                                  amount_minor=req.amount_minor, currency=req.currency, reason=reason))

    @handles(Action.REFUND_FINISHED)
    def _act_refund_finished(self, *, reply: h.HostMessage | None) -> None:
        """The host's RefundResponse (or its error, or silence: UNKNOWN) is journaled if final and printed."""
        flow = self._flow
        assert flow is not None
        req = flow.request
        assert isinstance(req, m.Refund)
        if isinstance(reply, h.RefundResponse):
            outcome = Outcome(reply.outcome) if reply.outcome in iter(Outcome) else Outcome.DECLINED
            result = m.RefundResult(order_id=req.order_id, refund_id=req.refund_id, outcome=outcome,
                                    amount_minor=reply.amount_minor or req.amount_minor,
                                    currency=reply.currency or req.currency, reason=reply.reason,
                                    refunded_total_minor=reply.refunded_total_minor)
            # ORDER_CONFLICT judges this request, not the refund id's earlier outcome: not recorded.
            if outcome in (Outcome.APPROVED, Outcome.DECLINED) and reply.reason != Reason.ORDER_CONFLICT:
                self.journal.record_refund(req.refund_id, req.order_id, result.amount_minor, result.currency,
                                           outcome, int(reply.reason), reply.refunded_total_minor, self._stamp())
        else:
            reason = int(getattr(reply, "reason", 0)) or Reason.HOST_UNAVAILABLE
            outcome = Outcome.UNKNOWN if reply is None else Outcome.DECLINED
            result = m.RefundResult(order_id=req.order_id, refund_id=req.refund_id, outcome=outcome,
                                    amount_minor=req.amount_minor, currency=req.currency, reason=reason)
        flow.final = result
        self._print(receipts.refund(self.identity, self._stamp(), req, result), req.order_id, "refund")

    # ---------------------------------------------------------------- settlement

    @handles(Action.SETTLE_AT_HOST)
    def _act_settle_at_host(self, *, request: m.Settle) -> None:
        batch = self.journal.batch_no()
        self._flow = Flow("settle", request, batch_no=batch)
        verdict = self.keypad.check(request.operator_password)
        if verdict is not Reason.NONE:
            self._fire(Event.OPERATOR_REFUSED, reason=verdict)
            return
        self._flow.totals = self.journal.totals(batch)
        self._progress(Stage.SETTLING, f"Settling batch {batch}...", order_id="settle")
        self._host(h.SettleRequest(terminal_id=self.identity.terminal_id, batch_no=batch, totals=self._flow.totals))

    @handles(Action.SETTLE_REFUSED)
    def _act_settle_refused(self, *, reason: Reason) -> None:
        flow = self._flow
        self._flow = None
        assert flow is not None
        self._send(m.SettleReport(batch_no=flow.batch_no, host_agrees=False, outcome=Outcome.DECLINED, reason=reason))

    @handles(Action.SETTLE_UNKNOWN)
    def _act_settle_unknown(self, *, reply: h.HostMessage | None = None) -> None:
        """No answer: the batch stays open, the ECR is told UNKNOWN (settling again is safe)."""
        flow = self._flow
        self._flow = None
        assert flow is not None
        self._send(m.SettleReport(batch_no=flow.batch_no, totals=flow.totals, host_agrees=False,
                                  outcome=Outcome.UNKNOWN, reason=Reason.HOST_UNAVAILABLE))

    @handles(Action.SETTLE_FINISHED)
    def _act_settle_finished(self, *, reply: h.HostMessage) -> None:
        flow = self._flow
        assert flow is not None
        if isinstance(reply, h.SettleResponse):
            self.journal.close_batch(flow.batch_no, flow.totals, reply.agrees, reply.settled_at)
            report = m.SettleReport(batch_no=flow.batch_no, totals=flow.totals, host_agrees=reply.agrees,
                                    settled_at=reply.settled_at, outcome=Outcome.APPROVED)
        else:
            report = m.SettleReport(batch_no=flow.batch_no, totals=flow.totals, host_agrees=False,
                                    outcome=Outcome.DECLINED, reason=int(getattr(reply, "reason", 0)) or Reason.OTHER)
        flow.final = report
        lines = receipts.settlement(self.identity, self._stamp(), flow.batch_no, flow.totals, report.host_agrees)
        self._print(lines, None, "settlement")

    # ---------------------------------------------------------------- key loading

    @handles(Action.LOAD_KEY)
    def _act_load_key(self, *, request: m.KeyLoad) -> None:
        self._flow = Flow("key", request)
        verdict = self.keypad.check(request.operator_password)
        if verdict is not Reason.NONE:
            self._flow.key_reason = verdict
        else:
            try:
                self.pinpad.load_key_block(request.key_block)
            except (PosError, ValueError) as exc:
                log.warning("%s: key block refused: %s", self.identity.terminal_id, type(exc).__name__)
                self._flow.key_reason = Reason.KEY_ERROR
        self._fire(Event.KEY_LOADED)

    @handles(Action.KEY_STATUS)
    def _act_key_status(self) -> None:
        flow = self._flow
        self._flow = None
        self._send(self._key_status(flow.key_reason if flow else Reason.NONE))

    # ---------------------------------------------------------------- the supervisor's reset

    @handles(Action.RESET_OPERATOR)
    def _act_reset_operator(self, *, request: m.OperatorReset) -> None:
        """The supervisor password (its own 3-try limit) sets a new operator password and
        clears its lock. Answered at once; neither password is logged or kept in clear."""
        tid = self.identity.terminal_id
        try:
            verdict = self.keypad.reset_operator(request.supervisor_password, request.new_operator_password)
        except PeripheralError as exc:
            self._send(m.Error(code=m.ErrorCode.NOT_ALLOWED, text=str(exc)[:128], in_reply_to=request.TYPE))
            return
        if verdict.reason is Reason.NONE:
            log.warning("%s: operator password reset by the supervisor", tid)
            self._send(m.OperatorResetResult(outcome=Outcome.APPROVED, supervisor_tries_left=verdict.tries_left))
            return
        log.warning("%s: operator password reset refused: %s", tid, verdict.reason.name.lower())
        until = None
        if verdict.locked_until is not None:
            until = datetime.fromtimestamp(verdict.locked_until, timezone.utc).isoformat(timespec="seconds")
        self._send(m.OperatorResetResult(outcome=Outcome.DECLINED, reason=verdict.reason,
                                         supervisor_tries_left=verdict.tries_left, locked_until=until))
