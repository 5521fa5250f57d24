"""The payment: from the ECR's PayRequest (or Cancel) to the PayResult, as table actions.

A new order id is looked up at the host first (``check_order``); an order that is ours is
journaled before anything that could charge leaves (``_begin_pay``); the customer shows a
code, types a PIN, confirms on the phone or scans the terminal's QR; an unanswered request
is queried, then cancelled; every end goes through :meth:`PaymentActions._conclude`, which
journals the outcome and prints the receipt; the PayResult goes out once printed (the
machine's ``deliver``).
An ECR Cancel of an earlier order also ends in a PayResult, so it lives here too.
"""

from __future__ import annotations

import logging

from firmware_protocol.currency import format_minor
from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import pin_pan
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason, Stage, TerminalState as S
from firmware_protocol.native.tlv import Message

from posterm.emulator.firmware import receipts
from posterm.emulator.firmware.flow import CANCEL_REASONS, FINAL_STATUSES, Flow, new_order_event, result_of
from posterm.emulator.peripherals import Customer, PinBlock
from posterm.emulator.states import Action, Event, handles
from posterm.errors import PosError

log = logging.getLogger("posterm.emulator")


class PaymentActions:
    """Mixed into :class:`~posterm.emulator.firmware.machine.Firmware`: the handlers of the
    payment's actions, and the requests about orders answered outside the table."""

    # ---------------------------------------------------------------- requests outside the table

    def _on_pay(self, msg: m.PayRequest) -> None:
        flow = self._flow
        if flow is not None and flow.kind == "pay" and flow.order_id == msg.order_id:
            if (flow.amount_minor, flow.currency) == (msg.amount_minor, msg.currency):
                # The ECR re-sent its request (cut cable, reconnect): carry on, re-say where we are.
                if flow.progress is not None:
                    self._send(flow.progress)
            else:
                self._send(self._conflict(msg))
            return
        rec = self.journal.get(msg.order_id)
        if rec is not None:
            if (rec.amount_minor, rec.currency) != (msg.amount_minor, msg.currency):
                self._send(self._conflict(msg))
            elif rec.final:
                self._send(result_of(rec))   # the stored answer: never charge twice
            else:
                self.reconciler.ask(rec.order_id, rec, answer_ecr=True)
            return
        if msg.dynamic_qr:
            self._fire(Event.PAY_QR, request=msg)
        elif msg.payment_code:
            self._fire(Event.PAY_CODE, request=msg)
        else:
            self._fire(Event.PAY_SCAN, request=msg)

    def _conflict(self, msg: m.PayRequest) -> m.PayResult:
        return m.PayResult(order_id=msg.order_id, outcome=Outcome.DECLINED, amount_minor=msg.amount_minor,
                           currency=msg.currency, reason=Reason.ORDER_CONFLICT,
                           reason_text="order id already used with other parameters")

    def _on_query(self, order_id: str) -> None:
        rec = self.journal.get(order_id)
        if rec is not None and rec.final:
            self._send(result_of(rec))
            return
        flow = self._flow
        if flow is not None and flow.kind == "pay" and flow.order_id == order_id:
            self._send(m.PayResult(order_id=order_id, outcome=Outcome.PENDING, amount_minor=flow.amount_minor,
                                   currency=flow.currency))
            return
        self.reconciler.ask(order_id, rec, answer_ecr=True)

    # ---------------------------------------------------------------- a payment starts

    @handles(Action.CHECK_ORDER)
    def _act_check_order(self, *, request: m.PayRequest) -> None:
        """A new order id: ask the host whether it already has it (another terminal of the
        merchant used it). Nothing is journaled yet: a HostQuery cannot charge anyone, so a
        terminal killed now has nothing to reconcile. No Progress either: the ECR sees the
        payment start as before."""
        script = self._scripts.pop(0) if self._scripts else None
        self._flow = Flow("pay", request, order_id=request.order_id, amount_minor=request.amount_minor,
                          currency=request.currency, code=request.payment_code, dynamic_qr=request.dynamic_qr,
                          customer=Customer(script, request.currency, manual=self.manual_customer), script=script)
        if not self.config.check_new_orders:
            self._fire(new_order_event(request), reply=None)
            return
        self._host(h.HostQuery(terminal_id=self.identity.terminal_id, order_id=request.order_id), sent="check")

    def _begin_pay(self) -> Flow:
        """The order is this terminal's: journal it before anything that could charge leaves."""
        flow = self._flow
        assert flow is not None and flow.kind == "pay"
        if not flow.journaled:
            req = flow.request
            self.journal.begin_order(req.order_id, req.amount_minor, req.currency,
                                     req.payment_code[-4:] if req.payment_code else None, req.dynamic_qr,
                                     self._stamp())
            flow.journaled = True
        return flow

    @handles(Action.ELSEWHERE)
    def _act_elsewhere(self, *, reply: h.AuthResponse) -> None:
        """The host already has this order id from another terminal of the merchant: tell the
        ECR what became of it (paid or not, never charged twice), marked ORDER_CONFLICT, and
        keep it out of this terminal's journal and batch: it is the other terminal's sale."""
        status = reply.status
        outcome = FINAL_STATUSES.get(status, Outcome.UNKNOWN)  # still in progress there: ask again later
        log.warning("%s: order %s was taken on another terminal (host status %s): answered, not counted",
                    self.identity.terminal_id, reply.order_id, status.name)
        flow = self._flow
        if flow is not None and flow.journaled:
            # Journaled before its AuthRequest left: close it as not ours (a decline is in no
            # batch total) so neither settlement nor the reconciler ever takes it for a sale.
            self.journal.finish_order(flow.order_id, Outcome.DECLINED, Reason.ORDER_CONFLICT, self._stamp(),
                                      reason_text=f"order taken on terminal {reply.owner_terminal_id}")
        self._conclude(outcome, Reason.ORDER_CONFLICT, reply, record=False,
                       reason_text=f"order taken on another terminal ({status.name.lower()}); not in this batch")

    @handles(Action.NOT_SENT)
    def _act_not_sent(self, *, reply: h.HostMessage | None = None) -> None:
        reason = int(getattr(reply, "reason", 0) or 0) or (Reason.HOST_UNAVAILABLE if reply is None else Reason.OTHER)
        self._conclude(Outcome.DECLINED, reason, None, record=False,
                       reason_text="the host could not be asked; nothing was charged")

    @handles(Action.AUTHORISE)
    def _act_authorise(self, *, code: str | None = None, reply: h.HostMessage | None = None) -> None:
        """Send the AuthRequest: the code came with the request (``reply``: the look-up's
        answer, unused) or the customer just showed it (``code``)."""
        flow = self._begin_pay()
        if code is not None:
            flow.code = code
            self.journal.set_code(flow.order_id, code[-4:], self._stamp())
        self._clear_customer_timers()
        self._progress(Stage.AUTHORISING, "Authorising...")
        self._host(h.AuthRequest(terminal_id=self.identity.terminal_id, order_id=flow.order_id,
                                 amount_minor=flow.amount_minor, currency=flow.currency, payment_code=flow.code,
                                 location=self.identity.location, description=flow.request.description))

    @handles(Action.PRECREATE)
    def _act_precreate(self, *, reply: h.HostMessage | None = None) -> None:
        flow = self._begin_pay()
        self._progress(Stage.AUTHORISING, "Preparing QR code...")
        self._host(h.AuthRequest(terminal_id=self.identity.terminal_id, order_id=flow.order_id,
                                 amount_minor=flow.amount_minor, currency=flow.currency, dynamic_qr=True,
                                 location=self.identity.location, description=flow.request.description))

    # ---------------------------------------------------------------- the customer's part

    @handles(Action.ASK_FOR_SCAN)
    def _act_ask_for_scan(self, *, reply: h.HostMessage | None = None) -> None:
        flow = self._begin_pay()
        request = flow.request
        timeout = float(request.timeout_s) if request.timeout_s else self.config.scan_timeout
        self._progress(Stage.WAITING_FOR_SCAN, f"{format_minor(flow.amount_minor, flow.currency)}\nShow your payment code")
        self._timer("flow", timeout, lambda: self._fire(Event.SCAN_TIMEOUT))
        self._customer_at("scan")

    @handles(Action.ASK_FOR_PIN)
    def _act_ask_for_pin(self, *, reply: h.AuthResponse | None = None) -> None:
        flow = self._flow
        assert flow is not None
        self._clear_timer("flow")
        tries = getattr(reply, "pin_tries_left", None)
        text = "Enter payment password" + (f" ({tries} tries left)" if tries is not None else "")
        try:
            self.pinpad.begin(pin_pan((flow.code or "0000")[-4:]))
        except PosError as exc:
            log.error("%s: PIN pad unusable: %s", self.identity.terminal_id, type(exc).__name__)
            flow.cancel_reason = Reason.KEY_ERROR
            self._fire(Event.PIN_CANCELLED)
            return
        self._progress(Stage.WAITING_FOR_PIN, text)
        self._timer("flow", self.config.pin_timeout, lambda: self._fire(Event.PIN_TIMEOUT))
        self._customer_at("pin")

    @handles(Action.VERIFY_PIN)
    def _act_verify_pin(self, *, pin: PinBlock) -> None:
        flow = self._flow
        assert flow is not None
        self._clear_timer("flow")
        self._progress(Stage.AUTHORISING, "Checking password...")
        self._host(h.PinVerify(terminal_id=self.identity.terminal_id, order_id=flow.order_id,
                               pin_block=pin.block, pin_ksn=pin.ksn, pin_format=pin.format))

    @handles(Action.WAIT_FOR_PHONE)
    def _act_wait_for_phone(self, *, reply: h.AuthResponse | None = None) -> None:
        flow = self._flow
        assert flow is not None
        flow.poll_attempt = 0
        self._progress(Stage.WAITING_FOR_PHONE, "Confirm the payment on your phone", attempt=0)
        self._timer("flow", self.config.poll_interval, lambda: self._fire(Event.POLL_DUE))
        self._customer_at("phone")

    @handles(Action.SHOW_QR)
    def _act_show_qr(self, *, reply: h.AuthResponse) -> None:
        flow = self._flow
        assert flow is not None
        flow.poll_attempt = 0
        qr = reply.qr_data or ""
        timeout = float(flow.request.timeout_s) if flow.request.timeout_s else self.config.qr_timeout
        flow.qr_deadline = self._now + timeout
        self.display.show("Scan with your wallet", qr_data=qr)
        self._progress(Stage.SHOWING_QR, f"{format_minor(flow.amount_minor, flow.currency)}\nScan with your wallet",
                       qr_data=qr)
        self._timer("flow", self.config.poll_interval, lambda: self._fire(Event.POLL_DUE))
        self._customer_at("qr", qr_data=qr)

    @handles(Action.POLL_HOST)
    def _act_poll_host(self) -> None:
        flow = self._flow
        assert flow is not None
        flow.poll_attempt += 1
        if self.state is S.SHOWING_QR:
            self._progress(Stage.SHOWING_QR, "Scan with your wallet", qr_data=self.display.qr_data,
                           attempt=min(flow.poll_attempt, 255))
            self._host(h.HostQuery(terminal_id=self.identity.terminal_id, order_id=flow.order_id))
        else:
            self._progress(Stage.WAITING_FOR_PHONE, "Confirm the payment on your phone",
                           attempt=min(flow.poll_attempt, 255))
            self._host(h.ConfirmPoll(terminal_id=self.identity.terminal_id, order_id=flow.order_id))

    @handles(Action.SCHEDULE_POLL)
    def _act_schedule_poll(self, *, reply: h.HostMessage | None = None) -> None:
        flow = self._flow
        assert flow is not None
        if self.state is S.SHOWING_QR:
            exhausted = flow.qr_deadline is not None and self._now + self.config.poll_interval > flow.qr_deadline
        else:
            exhausted = flow.poll_attempt >= self.config.poll_attempts
        if exhausted:
            self._fire(Event.POLLS_EXHAUSTED)
            return
        interval = self.config.poll_interval
        self._timer("flow", interval, lambda: self._fire(Event.POLL_DUE))

    # ---------------------------------------------------------------- no answer: ask what happened

    @handles(Action.QUERY_HOST)
    def _act_query_host(self, *, reply: h.HostMessage | None = None) -> None:
        flow = self._flow
        assert flow is not None
        flow.queries += 1
        self._progress(Stage.QUERYING, "Checking with the host...")
        self._host(h.HostQuery(terminal_id=self.identity.terminal_id, order_id=flow.order_id))

    @handles(Action.QUERY_AGAIN)
    def _act_query_again(self, *, reply: h.HostMessage | None = None) -> None:
        flow = self._flow
        assert flow is not None
        if flow.queries >= self.config.query_attempts:
            self._fire(Event.QUERIES_EXHAUSTED)
            return
        self._timer("flow", self.config.query_delay, self._act_query_host)

    # ---------------------------------------------------------------- cancelling

    @handles(Action.CANCEL_ORDER)
    def _act_cancel_order(self, *, request: m.Cancel) -> None:
        """An ECR Cancel while idle. Cancelling a paid order refunds it, which needs the
        operator password (a wrong one counts toward the lock, as for refunds). Without a
        password only an unpaid order may be cancelled: the journal, or else the host, says."""
        rec = self.journal.get(request.order_id)
        flow = Flow("cancel", request, order_id=request.order_id, amount_minor=rec.amount_minor if rec else 0,
                    currency=rec.currency if rec else "XXX", cancel_reason=Reason.NONE)
        self._flow = flow
        if request.operator_password is not None or (rec is not None and rec.outcome is Outcome.APPROVED):
            verdict = self.keypad.check(request.operator_password)
            if verdict is not Reason.NONE:
                self._fire(Event.OPERATOR_REFUSED, reason=verdict)
                return
            self._act_cancel_at_host()
            return
        # A race remains: an order confirmed at the host between this query and the HostCancel
        # is refunded (to its payer) without the password. Closing it needs a conditional cancel.
        self._progress(Stage.CANCELLING, "Checking with the host...")
        self._host(h.HostQuery(terminal_id=self.identity.terminal_id, order_id=request.order_id), sent="cancel_check")

    @handles(Action.CANCEL_REFUSED)
    def _act_cancel_refused(self, *, reason: int = Reason.NONE, reply: h.HostMessage | None = None) -> None:
        """Refused by the keypad (``reason``), or the host says the order is paid and no
        password came (``reply``)."""
        flow = self._flow
        self._flow = None
        assert flow is not None and flow.order_id is not None
        self._clear_timer("keepalive")
        if not reason:  # the host says the order is paid and no password came
            reason = Reason.OPERATOR_LOCKED if self.keypad.check(None) is Reason.OPERATOR_LOCKED \
                else Reason.OPERATOR_PASSWORD_WRONG
        text = "" if isinstance(flow.request, m.Cancel) and flow.request.operator_password is not None \
            else "the operator password is needed to cancel a paid order"
        self._send(m.PayResult(order_id=flow.order_id, outcome=Outcome.DECLINED,
                               amount_minor=flow.amount_minor or getattr(reply, "amount_minor", 0) or 0,
                               currency=getattr(reply, "currency", None) or flow.currency, reason=reason,
                               reason_text=text))

    @handles(Action.CANCEL_AT_HOST)
    def _act_cancel_at_host(self, *, request: Message | None = None, reply: h.HostMessage | None = None) -> None:
        """Cancel the flow's order at the host, once no request of it is in flight. Why is
        the event's (CANCEL_REASONS), unless the flow already knows."""
        flow = self._flow
        assert flow is not None
        if flow.cancel_reason is None:
            reason = CANCEL_REASONS.get(self._event, Reason.OTHER)
            if isinstance(request, m.Abort):
                reason = Reason.ABORTED_BY_ECR
            flow.cancel_reason = reason
        self._clear_timer("flow")
        self._clear_customer_timers()
        self.pinpad.cancel()
        if flow.inflight is not None:
            return  # the request in flight is answered first; then we cancel (CANCELLING, host_*)
        self._progress(Stage.CANCELLING, "Cancelling...")
        self._host(h.HostCancel(terminal_id=self.identity.terminal_id, order_id=flow.order_id,
                                reason=int(flow.cancel_reason)))

    @handles(Action.CANCEL_FINISHED)
    def _act_cancel_finished(self, *, reply: h.HostMessage | None = None) -> None:
        flow = self._flow
        assert flow is not None
        status = getattr(reply, "status", None)
        host_reason = int(getattr(reply, "reason", Reason.NONE))
        if flow.kind == "pay":
            if status is h.HostStatus.APPROVED:
                self._conclude(Outcome.APPROVED, Reason.NONE, reply)
            else:
                # Cancelled, reversed, or never there: the customer was not charged.
                self._conclude(Outcome.CANCELLED, flow.cancel_reason or host_reason, reply)
            return
        # An ECR Cancel of an earlier order.
        if status in (h.HostStatus.CANCELLED, h.HostStatus.REFUNDED):
            outcome, reason = Outcome.CANCELLED, Reason.NONE
        elif status is h.HostStatus.NOT_FOUND:
            outcome, reason = Outcome.DECLINED, Reason.ORDER_NOT_FOUND
        else:
            outcome, reason = Outcome.DECLINED, host_reason or Reason.OTHER
        self._conclude(outcome, reason, reply, record=outcome is Outcome.CANCELLED)

    # ---------------------------------------------------------------- the outcome

    @handles(Action.APPROVED)
    def _act_approved(self, *, reply: h.AuthResponse) -> None:
        self._conclude(Outcome.APPROVED, Reason.NONE, reply)

    @handles(Action.DECLINED)
    def _act_declined(self, *, reply: h.HostMessage) -> None:
        reason = int(getattr(reply, "reason", Reason.NONE))
        if getattr(reply, "status", None) is h.HostStatus.NOT_FOUND:
            reason = reason or Reason.ORDER_NOT_FOUND
        self._conclude(Outcome.DECLINED, reason or Reason.OTHER, reply)

    @handles(Action.CANCELLED)
    def _act_cancelled(self, *, reply: h.HostMessage) -> None:
        self._conclude(Outcome.CANCELLED, int(getattr(reply, "reason", Reason.NONE)), reply)

    @handles(Action.NO_CODE)
    def _act_no_code(self) -> None:
        self._conclude(Outcome.CANCELLED, Reason.NO_CODE_PRESENTED, None)

    @handles(Action.ABORTED_BEFORE_HOST)
    def _act_aborted_before_host(self, *, request: Message | None = None, reply: h.HostMessage | None = None) -> None:
        """Aborted (``request``) before anything reached the host, or during the look-up whose
        answer (``reply``) has just come."""
        flow = self._flow
        if flow is not None and flow.journaled and isinstance(reply, h.AuthResponse):
            # Aborted while our AuthRequest was out, and its answer is another terminal's
            # order: nothing of ours to cancel, and not ours to count as cancelled either.
            self._act_elsewhere(reply=reply)
            return
        self._conclude(Outcome.CANCELLED, Reason.ABORTED_BY_ECR, None)

    @handles(Action.UNKNOWN)
    def _act_unknown(self, *, reply: h.HostMessage | None = None) -> None:
        flow = self._flow
        assert flow is not None
        if flow.kind == "pay":
            self._conclude(Outcome.UNKNOWN, Reason.HOST_UNAVAILABLE, None)
            self.reconciler.schedule(flow.order_id, self._now + self.config.reconcile_base)
        else:
            # An ECR Cancel the host did not answer: it may have been done (refunded) before the
            # answer was lost, or not. The order is no longer known to be approved, so it leaves
            # the batch and the reconciler asks the host; a Query meanwhile asks the host too
            # instead of answering APPROVED from the journal.
            rec = self.journal.get(flow.order_id)
            if rec is not None and rec.final and rec.outcome is Outcome.APPROVED:
                self.journal.finish_order(rec.order_id, Outcome.UNKNOWN, Reason.HOST_UNAVAILABLE, self._stamp(),
                                          trade_no=rec.trade_no, paid_at=rec.paid_at,
                                          refunded_minor=rec.refunded_minor)
                self.reconciler.schedule(rec.order_id, self._now + self.config.reconcile_base)
            self._conclude(Outcome.UNKNOWN, Reason.HOST_UNAVAILABLE, None, record=False)

    def _conclude(self, outcome: Outcome, reason: int, reply: object, record: bool = True,
                  reason_text: str | None = None) -> None:
        """Journal the outcome, print the receipt, and hold the PayResult until printed."""
        flow = self._flow
        assert flow is not None and flow.order_id is not None
        self._clear_timer("flow")
        self._clear_customer_timers()
        self._clear_timer("keepalive")
        self.pinpad.cancel()
        status = getattr(reply, "status", None)
        code_last4 = getattr(reply, "code_last4", None) or (flow.code[-4:] if flow.code else None)
        currency = getattr(reply, "currency", None) or flow.currency
        amount = flow.amount_minor or getattr(reply, "amount_minor", 0)
        refunded = getattr(reply, "refunded_minor", 0) or (amount if status is h.HostStatus.REFUNDED else 0)
        trade_no = getattr(reply, "trade_no", None)
        paid_at = getattr(reply, "paid_at", None)
        if reason_text is None:
            reason_text = getattr(reply, "reason_text", "") or ""
        result = m.PayResult(order_id=flow.order_id, outcome=outcome, amount_minor=amount, currency=currency,
                             reason=reason, reason_text=reason_text[:128], trade_no=trade_no,
                             code_last4=code_last4, refunded_minor=refunded, paid_at=paid_at)
        flow.final = result
        lines = receipts.payment(self.identity, self._stamp(), sale=flow.kind == "pay", order_id=flow.order_id,
                                 amount_minor=amount, currency=currency, code_last4=code_last4, outcome=outcome,
                                 reason=reason, trade_no=trade_no)
        kind = "pay" if flow.kind == "pay" else "cancel"
        printed = self.printer.print(lines)
        if (record and self.config.void_unfinished and flow.kind == "pay" and outcome is Outcome.APPROVED
                and self.journal.get(flow.order_id) is not None):
            # Concert: approved, but kept only once the ECR acknowledges the answer (ResultDelivery);
            # until then the order stays in flight, so a restart reverses it too.
            self.journal.add_receipt(flow.order_id, kind, printed, self._stamp())
            self.reconciler.hold(flow.order_id, {
                "outcome": outcome, "reason": reason, "reason_text": reason_text, "trade_no": trade_no,
                "paid_at": paid_at, "refunded_minor": refunded, "code_last4": code_last4})
        elif record and self.journal.get(flow.order_id) is not None:
            # The outcome and its receipt in one journal transaction (one fsync, not two).
            self.journal.finish_order(flow.order_id, outcome, reason, self._stamp(), reason_text=reason_text,
                                      trade_no=trade_no, paid_at=paid_at, refunded_minor=refunded,
                                      code_last4=code_last4, receipt=(kind, printed))
        else:
            self.journal.add_receipt(flow.order_id, kind, printed, self._stamp())
        self._printed(printed, flow.order_id)
