"""A small scripted terminal on posterm.families.native.link, for driver tests that need exact
control of the terminal's behaviour (silence, errors, garbage, mid-flow cuts).
End-to-end behaviour against the real emulator is tested in tests/emulator and
tests/integration."""

from __future__ import annotations

import threading
import time

from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason

from posterm.errors import Disconnected
from posterm.families.native.link import Link, LinkConfig, MessageReceived, UndecodableMessage


class FakeTerminal(threading.Thread):
    """Answers like a terminal. Payment codes pick the outcome:
    ...01 approved, ...02 declined (insufficient balance), ...05 waits for an
    Abort, ...08 approves and then hangs (ACKs, answers nothing) until ``mute`` is cleared, ...09 never answers the PayRequest (the order becomes queryable as
    approved), ...66 closes the connection mid-flow (then approved on query).

    Hostile codes (tests/driver/test_hostile.py): ...11 answers APPROVED for 1.00 more than
    asked (stored correctly: a query tells the truth), ...12 approves and stores the order in
    EUR (a query repeats the lie), ...13 first sends an approval for another order, ...14
    floods ``flood`` Print messages of 32 lines before the answer, ...15 first sends a stale
    Error about an earlier Refund. A refund id starting ``RF-LIE`` is answered APPROVED for
    one more minor unit than asked; ``mute_refunds`` / ``mute_cancels`` swallow those requests
    after doing them (a lost answer)."""

    def __init__(self, transport, terminal_id: str = "T0000001") -> None:
        super().__init__(daemon=True)
        self.t = transport
        self.link = Link(LinkConfig())
        self.terminal_id = terminal_id
        self.orders: dict[str, m.PayResult] = {}
        self.pay_requests: list[m.PayRequest] = []
        self.refunds: dict[str, m.RefundResult] = {}
        self.waiting_abort: m.PayRequest | None = None
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.mute = False  # ACK frames but answer nothing (a hung terminal)
        self.mute_refunds = False
        self.mute_cancels = False
        self.flood = 0

    def send(self, msg) -> None:
        self.t.write(self.link.send(msg, time.monotonic()))

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    data = self.t.read(4096, 0.02)
                except Disconnected:
                    return
                now = time.monotonic()
                self.link.receive_data(data, now)
                self.link.tick(now)
                out = self.link.data_to_send()
                if out:
                    self.t.write(out)
                while (ev := self.link.next_event()) is not None:
                    if isinstance(ev, MessageReceived):
                        self.handle(ev.message)
                    elif isinstance(ev, UndecodableMessage):
                        self.send(m.Error(code=m.ErrorCode.MALFORMED, text="cannot decode"))
        except Disconnected:
            return  # the ECR went away: a real terminal just waits for the next connection
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def result(self, req: m.PayRequest, outcome: Outcome, reason: Reason = Reason.NONE) -> m.PayResult:
        res = m.PayResult(order_id=req.order_id, outcome=outcome, amount_minor=req.amount_minor,
                          currency=req.currency, reason=reason,
                          code_last4=req.payment_code[-4:] if req.payment_code else None)
        self.orders[req.order_id] = res
        return res

    def handle(self, msg) -> None:
        if self.mute:
            return
        if isinstance(msg, m.Hello):
            self.link.start_session()
            self.send(m.HelloReply(protocol_version=1, capabilities=int(m.Capability.PIN_PAD),
                                   terminal_id=self.terminal_id, merchant_id="M100000001",
                                   firmware_version="fake 1"))
        elif isinstance(msg, m.StatusRequest):
            state = m.TerminalState.AWAITING_PHONE if self.waiting_abort else m.TerminalState.IDLE
            self.send(m.Status(state=state))
        elif isinstance(msg, m.PayRequest):
            self.pay_requests.append(msg)
            if msg.order_id in self.orders:
                stored = self.orders[msg.order_id]
                if (stored.amount_minor, stored.currency) != (msg.amount_minor, msg.currency) \
                        and stored.currency not in ("EUR", "USD"):
                    self.send(m.PayResult(order_id=msg.order_id, outcome=Outcome.DECLINED,
                                          amount_minor=msg.amount_minor, currency=msg.currency,
                                          reason=Reason.ORDER_CONFLICT, reason_text="order id reused"))
                    return
                self.send(stored)
                return
            code = msg.payment_code or ""
            self.send(m.Progress(order_id=msg.order_id, stage=m.Stage.AUTHORISING, text="Authorising..."))
            if code.endswith("02"):
                self.send(self.result(msg, Outcome.DECLINED, Reason.INSUFFICIENT_BALANCE))
            elif code.endswith("05"):
                self.waiting_abort = msg
                self.send(m.Progress(order_id=msg.order_id, stage=m.Stage.WAITING_FOR_PHONE, text="Confirm on phone"))
            elif code.endswith("08"):
                self.result(msg, Outcome.APPROVED)
                self.mute = True  # hangs after approving
            elif code.endswith("09"):
                self.result(msg, Outcome.APPROVED)  # approved, but the answer is never sent
            elif code.endswith("11"):
                good = self.result(msg, Outcome.APPROVED)
                self.send(m.PayResult(order_id=good.order_id, outcome=Outcome.APPROVED,
                                      amount_minor=good.amount_minor + 100, currency=good.currency))
            elif code.endswith("12"):
                res = m.PayResult(order_id=msg.order_id, outcome=Outcome.APPROVED, amount_minor=msg.amount_minor,
                                  currency="EUR" if msg.currency != "EUR" else "USD")
                self.orders[msg.order_id] = res
                self.send(res)
            elif code.endswith("13"):
                self.send(m.PayResult(order_id="SOMEONE-ELSE", outcome=Outcome.APPROVED, amount_minor=1,
                                      currency="CNY"))
                self.send(self.result(msg, Outcome.APPROVED))
            elif code.endswith("14"):
                # Raw DATA frames, not through the link's stop-and-wait: a flood does not wait for ACKs.
                from firmware_protocol.native import frame as fr
                from firmware_protocol.native.tlv import encode

                payload = encode(m.Print(order_id=msg.order_id, lines=("x" * 64,) * 32))
                for i in range(self.flood):
                    self.t.write(fr.encode_frame(fr.FrameKind.DATA, (100 + i) % 256, payload))
                self.send(self.result(msg, Outcome.APPROVED))
            elif code.endswith("15"):
                self.send(m.Error(code=m.ErrorCode.BUSY, text="stale", in_reply_to=m.Refund.TYPE))
                self.send(self.result(msg, Outcome.APPROVED))
            elif code.endswith("66"):
                self.result(msg, Outcome.APPROVED)
                self.t.close()
            else:
                self.send(m.Print(order_id=msg.order_id, lines=("posterm fake", f"AMOUNT {msg.amount_minor}")))
                self.send(self.result(msg, Outcome.APPROVED))
        elif isinstance(msg, m.Query):
            res = self.orders.get(msg.order_id)
            if res is None and self.waiting_abort and self.waiting_abort.order_id == msg.order_id:
                res = m.PayResult(order_id=msg.order_id, outcome=Outcome.PENDING,
                                  amount_minor=self.waiting_abort.amount_minor, currency=self.waiting_abort.currency)
            if res is None:
                res = m.PayResult(order_id=msg.order_id, outcome=Outcome.DECLINED, amount_minor=0,
                                  currency="CNY", reason=Reason.ORDER_NOT_FOUND)
            self.send(res)
        elif isinstance(msg, m.Abort):
            if self.waiting_abort is None:
                self.send(m.Error(code=m.ErrorCode.UNEXPECTED, text="nothing in flight"))
            else:
                req, self.waiting_abort = self.waiting_abort, None
                self.send(self.result(req, Outcome.CANCELLED, Reason.ABORTED_BY_ECR))
        elif isinstance(msg, m.Cancel):
            res = self.orders.get(msg.order_id)
            if res is None:
                self.send(m.PayResult(order_id=msg.order_id, outcome=Outcome.DECLINED, amount_minor=0,
                                      currency="CNY", reason=Reason.ORDER_NOT_FOUND))
            else:
                new = m.PayResult(order_id=res.order_id, outcome=Outcome.CANCELLED, amount_minor=res.amount_minor,
                                  currency=res.currency, refunded_minor=res.amount_minor)
                self.orders[msg.order_id] = new
                if not self.mute_cancels:
                    self.send(new)
        elif isinstance(msg, m.Refund):
            if msg.operator_password != "246810":
                self.send(m.RefundResult(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.DECLINED,
                                         amount_minor=msg.amount_minor, currency=msg.currency,
                                         reason=Reason.OPERATOR_PASSWORD_WRONG))
                return
            if msg.refund_id not in self.refunds:
                total = sum(r.amount_minor for r in self.refunds.values() if r.order_id == msg.order_id)
                self.refunds[msg.refund_id] = m.RefundResult(
                    order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.APPROVED,
                    amount_minor=msg.amount_minor, currency=msg.currency,
                    refunded_total_minor=total + msg.amount_minor)
            elif self.refunds[msg.refund_id].amount_minor != msg.amount_minor:
                first = self.refunds[msg.refund_id]
                self.send(m.RefundResult(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.DECLINED,
                                         amount_minor=msg.amount_minor, currency=msg.currency,
                                         reason=Reason.ORDER_CONFLICT,
                                         refunded_total_minor=first.refunded_total_minor))
                return
            if self.mute_refunds:
                return
            res = self.refunds[msg.refund_id]
            if msg.refund_id.startswith("RF-LIE"):
                res = m.RefundResult(order_id=res.order_id, refund_id=res.refund_id, outcome=Outcome.APPROVED,
                                     amount_minor=res.amount_minor + 1, currency=res.currency)
            self.send(res)
        elif isinstance(msg, m.Settle):
            approved = [r for r in self.orders.values() if r.outcome is Outcome.APPROVED]
            self.send(m.SettleReport(batch_no=1, totals=(m.Totals(
                currency="CNY", approved_count=len(approved), approved_minor=sum(r.amount_minor for r in approved),
                refunded_count=len(self.refunds), refunded_minor=sum(r.amount_minor for r in self.refunds.values()),
                cancelled_count=0),)))
        elif isinstance(msg, m.KeyStatusRequest):
            self.send(m.KeyStatus(loaded=True, algorithm=m.KeyAlgorithm.AES_DUKPT, ksn="123456789012345600000001",
                                  counters_left=1000, kcv="ABCDEF"))


TRANSPORTS = ("pty", "socket", "virtual")


def make_pair(kind: str = "virtual", **term_kwargs):
    """(ECR-side transport, running FakeTerminal) joined by a real transport of ``kind``:
    ``pty`` (pyserial on the slave of a pseudo-terminal), ``socket`` (pyserial's
    ``socket://`` URL to a loopback listener) or ``virtual`` (the in-process pair)."""
    from posterm.transport import PtyTransport, TcpTransport, VirtualTransport, open_transport

    if kind == "pty":
        terminal_side, path = PtyTransport.create()
        ecr_side = open_transport(path)
    elif kind == "socket":
        with TcpTransport.listen() as listener:
            ecr_side = open_transport(f"socket://127.0.0.1:{listener.port}")
            terminal_side = listener.accept(timeout=2.0)
    elif kind == "virtual":
        ecr_side, terminal_side = VirtualTransport.pair()
    else:
        raise ValueError(kind)
    fake = FakeTerminal(terminal_side, **term_kwargs)
    fake.start()
    return ecr_side, fake
