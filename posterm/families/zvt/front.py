"""The emulated terminal's ZVT front: ZVT on the line, native messages to the firmware.

:class:`ZvtFront` is a :class:`posterm.families.interfaces.TerminalFront`: the emulator's
line loop drives it (through :class:`posterm.families.pump.Pump`) like any front, over a
:class:`~posterm.families.zvt.link.ZvtLink` in the PT role. What the register sends, and
what the firmware hears::

    ECR -> PT                        firmware                 PT -> ECR (after 80 00 00)
    06 00 Registration               Hello                    06 0F (19 status, 29 TID, 49 if sent)
    06 01 Authorisation (04, 49)     PayRequest               04 FF*, 04 0F, 06 D1* | 06 D3, 06 0F
                                                              (declined: 04 0F, receipt, 06 1E rc)
    06 30 Reversal (pw, 87)          Cancel(operator pw)      04 0F, receipt, 06 0F | 06 1E rc
    06 31 Refund (pw, 87, 04)        Refund(operator pw)      04 0F, receipt, 06 0F | 06 1E rc
    06 50 End of day (pw)            Settle(operator pw)      04 0F (04 net, 60 totals), receipt, 06 0F
    05 01 Status enquiry             StatusRequest            06 0F (software version, status)
    06 B0 Abort (while paying)       Abort                    the payment's 06 1E 6C
    06 02 Log off, 06 E0 Display     -                        80 00 00 only
    anything else                    -                        84 83 (not supported), 84 9A (malformed)

Rules:

* The config byte of the registration decides (ZVT: bit 2 the ECR prints payment receipts,
  bit 3 administration receipts, bit 4 it wants intermediate status, bit 8 by print
  commands): 04 FF only if asked; receipts go to the ECR only if it prints them *and* asks
  for print commands (otherwise it builds them from 04 0F, or the PT prints), as 06 D3
  text blocks when the registration's TLV lists 06 D3 among the permitted commands (tag
  26, items 0A), else one 06 D1 per line. Before any registration (or after a log off):
  the PT prints, no intermediate status, currency EUR.
* The firmware's Print comes before its outcome; the front keeps the lines and sends them
  after the 04 0F, before the 06 0F, as real terminals order them.
* ZVT names a payment by its receipt number (BMP 87, 1..9999 then round again): the front
  keeps receipt number <-> order id for the last 9999 approvals (bounded by the number
  range itself). Reversal (06 30) and refund (06 31) name the payment by BMP 87; a refund
  without it is refused (ZVT's refund is a credit to a card; ours refunds an order).
* Passwords: the registration's is checked against the terminal's (the operator password
  this front is made with); those of reversal, refund and end of day are the operator
  password the firmware checks (a wrong one counts toward the keypad's lock).
* The payment code: ZVT has no field for it. The emulated customer shows it at the
  scanner (the scenario's ``present_code``, or the default test code), as at a Concert
  terminal: the PayRequest carries no code.
* Delivery: ZVT has no query by order id, so the firmware holds an approval until the
  register took it (``ecr_can_query=False``): the ECR's 80 00 00 to the payment's 04 0F is
  reported as :class:`ResultDelivery` delivered; no 80 00 00 (T3), a negative one, or a
  line reset first is reported undelivered (the firmware reverses it) and the dialog is
  closed with 06 1E.
* The transport is the line's: a front made with ``transport="auto"`` (the default: the
  emulator does not say whether it is on a pty or a socket) takes serial framing when the
  first byte of a connection is DLE (10; no ZVT command class is 10), bare TCP APDUs
  otherwise, and stays serial once it has been (a pty never turns into a socket).

Result codes (BMP 27, 06 1E): 00 success; 6C aborted (customer, ECR, timeout); 6F wrong
currency; 83 function not possible; 85 key missing; 9C please wait (busy); A1 host does
not answer; B4 already reversed; B5 reversal not possible; and the host's refusals as the
network operator codes 01..63 (05 declined, 13 invalid amount, 14 invalid card, 51
insufficient funds, 55 wrong PIN, 59 suspected fraud, 61 over the limit, 62 restricted).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any

from firmware_protocol.currency import from_numeric, numeric
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason
from firmware_protocol.zvt import (
    Abort,
    Aborted,
    Ack,
    Authorisation,
    Completion,
    DisplayText,
    EndOfDay,
    Fields,
    IndividualTotals,
    CardTotal,
    LogOff,
    Nack,
    PrintLine,
    PrintTextBlock,
    Refund,
    Registration,
    Reversal,
    StatusEnquiry,
    StatusInformation,
    Tlv,
    TlvContainer,
    UnknownCommand,
)
from firmware_protocol.zvt.apdu import IntermediateStatus

from posterm.errors import LocalProtocolError, SendQueueFull
from posterm.families.events import Delivered, MessageReceived, ResultDelivery, SendFailed, UndecodableMessage
from posterm.families.zvt.link import Refused, ZvtConfig, ZvtLink

log = logging.getLogger("posterm.emulator.zvt")

__all__ = ["ZvtFront", "RESULT_CODES", "new_zvt_order_id"]

# -- the config byte of 06 00
ECR_PRINTS_PAYMENT = 0x02
ECR_PRINTS_ADMIN = 0x04
WANTS_INTERMEDIATE = 0x08
PRINT_COMMANDS = 0x80

# -- result codes (ZVT chapter 10) and negative acknowledgements
RC_OK = 0x00
RC_DECLINED = 0x05
RC_ABORTED = 0x6C
RC_WRONG_CURRENCY = 0x6F
RC_NOT_POSSIBLE = 0x83
RC_KEY_MISSING = 0x85
RC_PROTOCOL_ERROR = 0x9A
RC_BUSY = 0x9C
RC_HOST_SILENT = 0xA1
RC_ALREADY_REVERSED = 0xB4
RC_REVERSAL_NOT_POSSIBLE = 0xB5
NOT_SUPPORTED = 0x83

RESULT_CODES: dict[int, int] = {
    Reason.INSUFFICIENT_BALANCE: 0x51, Reason.OVER_TRANSACTION_LIMIT: 0x61, Reason.OVER_DAILY_LIMIT: 0x61,
    Reason.CODE_INVALID: 0x14, Reason.CODE_EXPIRED: 0x54, Reason.CODE_USED: RC_DECLINED,
    Reason.ACCOUNT_FROZEN: 0x62, Reason.NOT_REAL_NAME_VERIFIED: RC_DECLINED, Reason.RISK_REJECTED: 0x59,
    Reason.WRONG_PIN: 0x55, Reason.PIN_LOCKED: 0x38, Reason.CONFIRMATION_TIMEOUT: RC_ABORTED,
    Reason.CUSTOMER_CANCELLED: RC_ABORTED, Reason.ABORTED_BY_ECR: RC_ABORTED, Reason.NO_CODE_PRESENTED: RC_ABORTED,
    Reason.HOST_UNAVAILABLE: RC_HOST_SILENT, Reason.ORDER_CONFLICT: RC_NOT_POSSIBLE,
    Reason.ORDER_NOT_FOUND: RC_REVERSAL_NOT_POSSIBLE, Reason.REFUND_EXCEEDS_PAID: RC_NOT_POSSIBLE,
    Reason.CANCEL_WINDOW_EXPIRED: RC_REVERSAL_NOT_POSSIBLE, Reason.NOT_PAID: RC_REVERSAL_NOT_POSSIBLE,
    Reason.OPERATOR_PASSWORD_WRONG: RC_NOT_POSSIBLE, Reason.OPERATOR_LOCKED: RC_NOT_POSSIBLE,
    Reason.TERMINAL_BUSY: RC_BUSY, Reason.KEY_ERROR: RC_KEY_MISSING, Reason.CURRENCY_MISMATCH: RC_WRONG_CURRENCY,
    Reason.INVALID_AMOUNT: 0x13,
}

# -- intermediate status (04 FF): what the terminal waits for
IS_WATCH_PIN_PAD = 0x01
IS_WAITING_FOR_HOST = 0x04
IS_PLEASE_WAIT = 0x17
IS_SEE_TEXT = 0xFF              # no ZVT code fits: the text is in TLV 24 { 07 line }
IS_TIMEOUT = 0x60               # 60 s read as BCD, 96 as binary: longer than the firmware's 4 s keepalive either way
_STAGE_STATUS = {
    m.Stage.WAITING_FOR_PIN: IS_WATCH_PIN_PAD, m.Stage.AUTHORISING: IS_WAITING_FOR_HOST,
    m.Stage.QUERYING: IS_WAITING_FOR_HOST, m.Stage.CANCELLING: IS_PLEASE_WAIT, m.Stage.PRINTING: IS_PLEASE_WAIT,
    m.Stage.REFUNDING: IS_WAITING_FOR_HOST, m.Stage.SETTLING: IS_WAITING_FOR_HOST,
}

WALLET_CARD_NAME = "Alipay"     # the native PayResult names no wallet; the demo host's is Alipay-style
SOFTWARE_VERSION = "posterm-emulator"
MAX_RECEIPT_NO = 9999
MAX_TRACE = 999_999
MAX_PRINT_LINES = 400           # kept per operation until its outcome (a receipt is some 20)
MAX_OUT = 64                    # ZVT messages waiting for the ECR's 80 00 00 to the one before
TLV_PERMITTED_COMMANDS = 0x26
TLV_COMMAND = 0x0A
TEXT_BLOCK = bytes((0x06, 0xD3))


def new_zvt_order_id() -> str:
    """``Z`` and 16 random hex digits: ZVT carries no order id, the terminal makes one up."""
    return "Z" + secrets.token_hex(8).upper()


@dataclass
class _Registration:
    config_byte: int = 0
    currency: str = "EUR"
    currency_sent: bool = False
    text_blocks: bool = False


@dataclass
class _Op:
    """The ECR's command in progress: what it became for the firmware, and what it gathered."""

    kind: str                       # registration pay reversal refund eod status
    order_id: str | None = None
    amount_minor: int = 0
    currency: str = "EUR"
    receipt_no: int | None = None
    lines: list[str] = field(default_factory=list)


@dataclass
class _Paid:
    order_id: str
    amount_minor: int
    currency: str
    reversed: bool = False


@dataclass
class _Out:
    """A ZVT message for the ECR; ``order_id``: its 80 00 00 is the approval's delivery."""

    message: Any
    order_id: str | None = None
    intermediate: bool = False


class ZvtFront:
    """ZVT on the wire (the PT role), native messages towards the firmware."""

    def __init__(self, operator_password: str, config: ZvtConfig | None = None, *, transport: str = "auto",
                 line_rate: float | None = None) -> None:
        if transport not in ("auto", "serial", "tcp"):
            raise ValueError(f"transport must be auto, serial or tcp, not {transport!r}")
        self._password = operator_password
        self._config = config or ZvtConfig()
        if line_rate is not None:   # a paced line: the ACK byte's wait allows a long frame its time
            self._config = replace(self._config, line_rate=line_rate)
        self._transport = transport
        self._serial_seen = transport == "serial"
        self._link: ZvtLink | None = None if transport == "auto" else ZvtLink("pt", transport, self._config)
        self._events: deque = deque()
        self._reg = _Registration()
        self._op: _Op | None = None
        self._out: deque[_Out] = deque()
        self._inflight: _Out | None = None
        self._paid: OrderedDict[int, _Paid] = OrderedDict()
        self._next_receipt = 1
        self._trace = 0
        self._batch_first: int | None = None
        self._terminal_id: str | None = None
        self._merchant_id: str | None = None
        self._firmware_version = SOFTWARE_VERSION
        self._stats_base = {"frames_in": 0}
        self._wire = bytearray()     # what the link's send() returned, for the next data_to_send()

    # -- the Link shape -------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        return self._link.stats if self._link is not None else dict(self._stats_base)

    @property
    def transport(self) -> str | None:
        """``serial`` or ``tcp`` once the line said (``None`` before its first byte)."""
        return self._link.transport if self._link is not None else None

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        if self._link is None:
            if not data:
                return
            serial = self._serial_seen or data[0] == 0x10
            self._link = ZvtLink("pt", "serial" if serial else "tcp", self._config)
            self._serial_seen = serial
        self._link.receive_data(data, now)
        self._drain(now)

    def tick(self, now: float) -> None:
        if self._link is not None:
            self._link.tick(now)
            self._drain(now)

    def next_event(self) -> Any | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._wire) + (self._link.data_to_send() if self._link is not None else b"")
        self._wire.clear()
        return out

    def next_deadline(self) -> float | None:
        return self._link.next_deadline() if self._link is not None else None

    @property
    def idle(self) -> bool:
        return self._op is None and not self._out and self._inflight is None and (
            self._link is None or self._link.idle)

    def start_session(self) -> None:
        """ZVT has no sessions."""

    def new_session(self) -> list:
        """A registration reaches the firmware as a Hello; nothing of ours is stale then
        (the register cannot register while the terminal holds control)."""
        return []

    def reset(self) -> list:
        """A new connection: what was in flight never reached the ECR (an approval among it
        is reported undelivered), the registration is forgotten, the transport re-read."""
        pending = [o.message for o in ([self._inflight] if self._inflight else []) + list(self._out)]
        self._undelivered_all("line reset")
        self._wire.clear()
        self._op = None
        self._reg = _Registration()
        if self._link is not None:
            self._link.reset()
        if self._transport == "auto":
            self._link = None
        return pending

    def drop_queued(self, which: Any = None, *, in_flight: bool = False) -> list:
        """Drop ZVT messages not yet taken by the ECR (``which(message)`` picks, default all;
        the one on the line too with ``in_flight``). An approval's 04 0F dropped is reported
        undelivered."""
        dropped = [o for o in self._out if which is None or which(o.message)]
        for o in dropped:
            self._out.remove(o)
        if in_flight and self._inflight is not None and (which is None or which(self._inflight.message)):
            dropped.insert(0, self._inflight)
            self._inflight = None
        for o in dropped:
            if o.order_id:
                self._events.append(ResultDelivery(o.order_id, False, "dropped"))
        return [o.message for o in dropped]

    def send(self, message: m.Message, now: float | None = None) -> bytes:
        """A firmware message for the ECR: translated into the ZVT messages of the command
        in progress (nothing for what the ECR did not ask, or what it does not want)."""
        op = self._op
        if op is None:
            if not isinstance(message, (m.Progress, m.Print)):
                log.debug("zvt: %s from the firmware with no command in progress, dropped", type(message).__name__)
            return b""
        if isinstance(message, m.Progress):
            if self._reg.config_byte & WANTS_INTERMEDIATE:
                self._intermediate(message)
        elif isinstance(message, m.Print):
            room = MAX_PRINT_LINES - len(op.lines)
            op.lines.extend(message.lines[:max(0, room)])
        elif isinstance(message, m.HelloReply) and op.kind == "registration":
            self._terminal_id = _digits8(message.terminal_id)
            self._merchant_id = message.merchant_id[:15]
            self._firmware_version = message.firmware_version
            # 19, 29, 49 in the order ZVT lists them: a completion's untagged first fields
            # (software version, terminal status) make ECRs guess, and python-ecrterm read
            # a leading 49 01 56 as terminal status 49 then BMP 01 (fixtures/zvt/ecrterm).
            self._finish(Completion(fields=Fields(type_byte=0, terminal_id=self._terminal_id,
                                                  currency=numeric(self._reg.currency)
                                                  if self._reg.currency_sent else None,
                                                  order=(0x19, 0x29, 0x49))))
        elif isinstance(message, m.Status) and op.kind == "status":
            self._finish(Completion(software_version=self._firmware_version[:64],
                                    terminal_status=_terminal_status(message)))
        elif isinstance(message, m.PayResult) and op.kind in ("pay", "reversal"):
            if message.outcome is not Outcome.PENDING:
                self._pay_result(op, message)
        elif isinstance(message, m.RefundResult) and op.kind == "refund":
            self._refund_result(op, message)
        elif isinstance(message, m.SettleReport) and op.kind == "eod":
            self._settle_result(op, message)
        elif isinstance(message, m.Error) and message.in_reply_to == m.Abort.TYPE:
            log.info("zvt: abort: %s (the payment ends as it ends)", message.text)
        elif isinstance(message, m.Error):
            log.info("zvt: %s refused by the firmware: %s %s", op.kind, message.code.name
                     if isinstance(message.code, m.ErrorCode) else message.code, message.text)
            self._finish(Aborted(RC_BUSY if message.code == m.ErrorCode.BUSY else RC_NOT_POSSIBLE))
        self._release(now)
        return self.data_to_send()

    # -- from the line ---------------------------------------------------------------------

    def _drain(self, now: float | None) -> None:
        link = self._link
        assert link is not None
        while (ev := link.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                self._on_command(ev.message, ev.raw, now)
            elif isinstance(ev, UndecodableMessage):
                code = NOT_SUPPORTED if isinstance(ev.error, UnknownCommand) else RC_PROTOCOL_ERROR
                log.info("zvt: command refused (84 %02X): %s", code, ev.error)
                self._answer(Nack(code), now)
            elif isinstance(ev, Delivered):
                self._on_delivered(ev.message, now)
            elif isinstance(ev, (SendFailed, Refused)):
                self._on_failed(ev.message, ev.cause if isinstance(ev, SendFailed) else f"84 {ev.error:02X}", now)
        self._release(now)

    def _answer(self, ack: Ack | Nack, now: float | None) -> None:
        assert self._link is not None
        try:
            self._wire += self._link.send(ack, now)
        except SendQueueFull:
            # A register that floods commands and never reads: it gets no more answers.
            log.warning("zvt: acknowledgements pile up unread; %s dropped", type(ack).__name__)
        except LocalProtocolError as exc:
            # Two commands in one read: the link keeps one unanswered command (the last), so
            # the earlier one's answer took it and this one goes unanswered (the ECR's T3).
            log.warning("zvt: %s not sent: %s", type(ack).__name__, exc)

    def _on_command(self, cmd: Any, raw: bytes, now: float | None) -> None:
        busy = self._op is not None or self._inflight is not None or bool(self._out)
        if isinstance(cmd, Abort):
            self._answer(Ack(), now)
            op = self._op
            if op is not None and op.kind == "pay":
                self._events.append(MessageReceived(m.Abort(order_id=op.order_id), None, raw))
            return
        if busy:
            log.info("zvt: %s while the terminal holds control: refused", type(cmd).__name__)
            self._answer(Nack(RC_BUSY), now)
            return
        if isinstance(cmd, (LogOff, DisplayText)):
            if isinstance(cmd, LogOff):
                self._reg = _Registration()
            self._answer(Ack(), now)
            return
        handler = _HANDLERS.get(type(cmd))
        if handler is None:
            log.info("zvt: %s is not supported: 84 83", getattr(cmd, "NAME", type(cmd).__name__))
            self._answer(Nack(NOT_SUPPORTED), now)
            return
        self._answer(Ack(), now)
        try:
            native = handler(self, cmd)
        except _Refusal as exc:
            log.info("zvt: %s refused: %s (result code %02X)", cmd.NAME, exc, exc.code)
            self._op = _Op("refused")
            self._finish(Aborted(exc.code))
            return
        self._events.append(MessageReceived(native, None, raw))

    # -- commands -> native requests (each after 80 00 00) ----------------------------------

    def _registration(self, cmd: Registration) -> m.Message:
        if not hmac.compare_digest(cmd.password.encode(), self._password.encode()):
            raise _Refusal(RC_NOT_POSSIBLE, "wrong password")
        currency = self._reg.currency
        if cmd.currency is not None:
            currency = _currency(cmd.currency)
        blocks = False
        tlv = cmd.fields.tlv
        if tlv is not None:
            permitted = tlv.find(TLV_PERMITTED_COMMANDS)
            blocks = permitted is not None and any(
                not isinstance(i.value, tuple) and i.value == TEXT_BLOCK for i in permitted.find_all(TLV_COMMAND))
        self._reg = _Registration(cmd.config_byte, currency, cmd.currency is not None, blocks)
        self._op = _Op("registration")
        caps = m.Capability.ECR_PRINTS if cmd.config_byte & ECR_PRINTS_PAYMENT else 0
        return m.Hello(protocol_version=m.PROTOCOL_VERSION, capabilities=int(caps), ecr_id="zvt")

    def _authorisation(self, cmd: Authorisation) -> m.Message:
        amount = cmd.fields.amount
        if not amount:
            raise _Refusal(RC_NOT_POSSIBLE, "no amount (BMP 04): amounts are not typed on this terminal")
        currency = _currency(cmd.fields.currency) if cmd.fields.currency is not None else self._reg.currency
        order_id = new_zvt_order_id()
        self._op = _Op("pay", order_id, amount, currency)
        return m.PayRequest(amount_minor=amount, currency=currency, order_id=order_id)

    def _paid_for(self, cmd: Any, what: str) -> tuple[int, _Paid]:
        receipt_no = cmd.fields.receipt_no
        if receipt_no is None:
            raise _Refusal(RC_REVERSAL_NOT_POSSIBLE, f"a {what} names its payment by receipt number (BMP 87)")
        paid = self._paid.get(receipt_no)
        if paid is None:
            raise _Refusal(RC_REVERSAL_NOT_POSSIBLE, f"no payment with receipt number {receipt_no}")
        return receipt_no, paid

    def _reversal(self, cmd: Reversal) -> m.Message:
        receipt_no, paid = self._paid_for(cmd, "reversal")
        if paid.reversed:
            raise _Refusal(RC_ALREADY_REVERSED, f"receipt {receipt_no} is already reversed")
        self._op = _Op("reversal", paid.order_id, paid.amount_minor, paid.currency, receipt_no)
        return m.Cancel(order_id=paid.order_id, operator_password=cmd.password)

    def _refund(self, cmd: Refund) -> m.Message:
        receipt_no, paid = self._paid_for(cmd, "refund")
        amount = cmd.fields.amount or paid.amount_minor
        currency = _currency(cmd.fields.currency) if cmd.fields.currency is not None else paid.currency
        self._op = _Op("refund", paid.order_id, amount, currency, receipt_no)
        return m.Refund(order_id=paid.order_id, amount_minor=amount, currency=currency,
                        refund_id=f"R{paid.order_id}-{secrets.token_hex(3)}", operator_password=cmd.password)

    def _end_of_day(self, cmd: EndOfDay) -> m.Message:
        self._op = _Op("eod", currency=self._reg.currency)
        return m.Settle(operator_password=cmd.password)

    def _status_enquiry(self, cmd: StatusEnquiry) -> m.Message:
        self._op = _Op("status")
        return m.StatusRequest()

    # -- native outcomes -> ZVT --------------------------------------------------------------

    def _intermediate(self, progress: m.Progress) -> None:
        code = _STAGE_STATUS.get(progress.stage, IS_SEE_TEXT)
        if code == IS_SEE_TEXT:
            text = [line[:40] for line in progress.text.splitlines() if line.strip()][:4] or ["Please wait"]
            msg = IntermediateStatus(code, IS_TIMEOUT, Fields(tlv=TlvContainer((
                Tlv(0x24, tuple(Tlv(0x07, _cp437(t)) for t in text)),))))
        else:
            msg = IntermediateStatus(code)
        # Only the latest status matters: one not yet on the line is replaced.
        for i, o in enumerate(self._out):
            if o.intermediate:
                self._out[i] = _Out(msg, intermediate=True)
                return
        self._queue(_Out(msg, intermediate=True))

    def _pay_result(self, op: _Op, res: m.PayResult) -> None:
        approved = (res.outcome is Outcome.APPROVED if op.kind == "pay" else res.outcome is Outcome.CANCELLED)
        fields: dict[str, Any] = {"amount": op.amount_minor or res.amount_minor,
                                  "currency": _numeric(op.currency), "trace": self._next_trace()}
        fields.update(_when(res.paid_at))
        if self._terminal_id:
            fields["terminal_id"] = self._terminal_id
        if approved and op.kind == "pay":
            receipt_no = self._remember(op.order_id or res.order_id, fields["amount"], op.currency)
            fields.update(receipt_no=receipt_no, card_name=WALLET_CARD_NAME)
            if res.code_last4:
                fields["pan"] = "E" * 14 + res.code_last4
            if self._merchant_id:
                fields["vu_number"] = self._merchant_id
            self._queue(_Out(StatusInformation(Fields(result_code=RC_OK, **fields)), order_id=res.order_id))
            self._receipt(op, payment=True)
            self._finish(Completion())
            return
        if approved:   # a reversal done
            paid = self._paid.get(op.receipt_no) if op.receipt_no is not None else None
            if paid is not None:
                paid.reversed = True
            self._queue(_Out(StatusInformation(Fields(result_code=RC_OK, receipt_no=op.receipt_no, **fields))))
            self._receipt(op, payment=True)
            self._finish(Completion())
            return
        code = RC_HOST_SILENT if res.outcome is Outcome.UNKNOWN else RESULT_CODES.get(int(res.reason), RC_DECLINED)
        if op.kind == "reversal" and res.outcome is Outcome.DECLINED and code == RC_DECLINED:
            code = RC_REVERSAL_NOT_POSSIBLE
        self._queue(_Out(StatusInformation(Fields(result_code=code, **fields))))
        self._receipt(op, payment=True)
        self._finish(Aborted(code))

    def _refund_result(self, op: _Op, res: m.RefundResult) -> None:
        fields = {"amount": res.amount_minor, "currency": _numeric(res.currency), "trace": self._next_trace()}
        if self._terminal_id:
            fields["terminal_id"] = self._terminal_id
        if res.outcome is Outcome.APPROVED:
            self._queue(_Out(StatusInformation(Fields(result_code=RC_OK, receipt_no=op.receipt_no, **fields))))
            self._receipt(op, payment=True)
            self._finish(Completion())
            return
        code = RC_HOST_SILENT if res.outcome is Outcome.UNKNOWN else RESULT_CODES.get(int(res.reason), RC_DECLINED)
        self._queue(_Out(StatusInformation(Fields(result_code=code, **fields))))
        self._receipt(op, payment=True)
        self._finish(Aborted(code))

    def _settle_result(self, op: _Op, rep: m.SettleReport) -> None:
        if rep.outcome is not Outcome.APPROVED:
            code = RC_HOST_SILENT if rep.outcome is Outcome.UNKNOWN else RESULT_CODES.get(int(rep.reason), RC_NOT_POSSIBLE)
            self._receipt(op, payment=False)
            self._finish(Aborted(code))
            return
        mine = [t for t in rep.totals if t.currency == op.currency]
        net = max(0, sum(t.net_minor for t in mine))
        count = sum(t.approved_count for t in mine)
        last = (self._next_receipt - 1) or MAX_RECEIPT_NO
        first = self._batch_first if self._batch_first is not None else last
        totals = IndividualTotals(first if count else 0, last if count else 0,
                                  {"others": CardTotal(min(count, 255), net)})
        fields: dict[str, Any] = {"amount": net, "trace": self._next_trace(), "single_amounts": totals.encode()}
        fields.update(_when(rep.settled_at))
        if self._terminal_id:
            fields["terminal_id"] = self._terminal_id
        self._batch_first = None
        self._queue(_Out(StatusInformation(Fields(result_code=RC_OK, **fields))))
        self._receipt(op, payment=False)
        self._finish(Completion())

    def _receipt(self, op: _Op, *, payment: bool) -> None:
        """The receipt lines the firmware printed, to the ECR if it prints them by command."""
        lines, op.lines = op.lines, []
        cfg = self._reg.config_byte
        if not lines or not cfg & PRINT_COMMANDS or not cfg & (ECR_PRINTS_PAYMENT if payment else ECR_PRINTS_ADMIN):
            return   # printed on the terminal (or the ECR builds its own from the 04 0F)
        texts = [_cp437_text(line) for line in lines]
        if self._reg.text_blocks:
            block = Tlv(0x25, tuple(Tlv(0x07, t.encode("cp437")) for t in texts) + (Tlv(0x09, b"\xff"),))
            kind = b"\x02" if payment else b"\x03"    # customer receipt; administration receipt
            self._queue(_Out(PrintTextBlock(Fields(tlv=TlvContainer((Tlv(0x1F07, kind), block))))))
            return
        for i, text in enumerate(texts):
            self._queue(_Out(PrintLine(0x80 if i == len(texts) - 1 else 0x00, text)))

    def _finish(self, closing: Completion | Aborted) -> None:
        self._op = None
        self._queue(_Out(closing))

    # -- the ECR's turn: one message on the line at a time ------------------------------------

    def _queue(self, out: _Out) -> None:
        if len(self._out) >= MAX_OUT:
            # An ECR that takes nothing: the oldest intermediate status makes room, else the message is lost.
            for o in self._out:
                if o.intermediate:
                    self._out.remove(o)
                    break
            else:
                log.warning("zvt: %d messages wait for the ECR; %s dropped", len(self._out), type(out.message).__name__)
                return
        self._out.append(out)

    def _release(self, now: float | None) -> None:
        """The next message goes to the link once the ECR acknowledged the one before."""
        link = self._link
        while link is not None and self._inflight is None and self._out:
            out = self._out.popleft()
            try:
                self._wire += link.send(out.message, now)
            except LocalProtocolError as exc:   # out of turn, or a value that does not encode: our bug, logged
                log.error("zvt: %s not sent: %s", type(out.message).__name__, exc)
                if out.order_id:
                    self._events.append(ResultDelivery(out.order_id, False, "not sent"))
                continue
            self._inflight = out

    def _on_delivered(self, message: Any, now: float | None) -> None:
        out = self._inflight
        if out is None or out.message is not message:
            return
        self._inflight = None
        if out.order_id:
            self._events.append(ResultDelivery(out.order_id, True))

    def _on_failed(self, message: Any, cause: str, now: float | None) -> None:
        out = self._inflight
        if out is None or out.message is not message:
            return
        self._inflight = None
        if out.order_id is None:
            return     # an intermediate status, a print line, the completion: the dialog goes on
        # The ECR never took the approval: the firmware reverses it; the rest of the dialog
        # (receipt, completion) would tell the ECR otherwise, so it ends in 06 1E instead.
        self._events.append(ResultDelivery(out.order_id, False, cause))
        closing = [o for o in self._out if isinstance(o.message, (Completion, Aborted))]
        self._out.clear()
        if closing:
            self._out.append(_Out(Aborted(RC_ABORTED)))

    def _undelivered_all(self, cause: str) -> None:
        for o in ([self._inflight] if self._inflight else []) + list(self._out):
            if o.order_id:
                self._events.append(ResultDelivery(o.order_id, False, cause))
        self._inflight = None
        self._out.clear()

    # -- receipt numbers and traces -------------------------------------------------------------

    def _remember(self, order_id: str, amount: int, currency: str) -> int:
        receipt_no = self._next_receipt
        self._next_receipt = receipt_no % MAX_RECEIPT_NO + 1
        self._paid.pop(receipt_no, None)            # the number comes round again: the old payment is forgotten
        self._paid[receipt_no] = _Paid(order_id, amount, currency)
        if self._batch_first is None:
            self._batch_first = receipt_no
        return receipt_no

    def receipt_of(self, order_id: str) -> int | None:
        """The receipt number this terminal gave the approved payment ``order_id`` (if still kept)."""
        for no, paid in self._paid.items():
            if paid.order_id == order_id:
                return no
        return None

    def order_of(self, receipt_no: int) -> str | None:
        """The order id behind receipt number ``receipt_no`` (if still kept)."""
        paid = self._paid.get(receipt_no)
        return paid.order_id if paid is not None else None

    def _next_trace(self) -> int:
        self._trace = self._trace % MAX_TRACE + 1
        return self._trace


class _Refusal(Exception):
    """A command this terminal acknowledged but will not carry out: 06 1E ``code``."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


_HANDLERS = {
    Registration: ZvtFront._registration, Authorisation: ZvtFront._authorisation, Reversal: ZvtFront._reversal,
    Refund: ZvtFront._refund, EndOfDay: ZvtFront._end_of_day, StatusEnquiry: ZvtFront._status_enquiry,
}


def _currency(code: int) -> str:
    try:
        return from_numeric(code)
    except (KeyError, ValueError):
        raise _Refusal(RC_WRONG_CURRENCY, f"currency {code:03d} is not accepted") from None


def _numeric(currency: str) -> int | None:
    try:
        return numeric(currency)
    except (KeyError, ValueError):
        return None


def _digits8(terminal_id: str) -> str:
    """BMP 29 is 8 digits: the digits of our terminal id (T0000001 -> 00000001)."""
    return "".join(c for c in terminal_id if c.isdigit())[-8:].rjust(8, "0")


_ISO = re.compile(r"\d{4}-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})")


def _when(stamp: str | None) -> dict[str, str]:
    """BMP 0C time HHMMSS and 0D date MMDD from an ISO 8601 stamp (none when it has none)."""
    hit = _ISO.match(stamp or "")
    if hit is None:
        return {}
    mo, d, hh, mi, ss = hit.groups()
    return {"time": hh + mi + ss, "date": mo + d}


def _cp437_text(text: str) -> str:
    return text.encode("cp437", "replace").decode("cp437").rstrip("\x00")


def _cp437(text: str) -> bytes:
    return text.encode("cp437", "replace")


def _terminal_status(status: m.Status) -> int:
    """The terminal status byte of 06 0F after a status enquiry: 00 ready."""
    if not status.key_loaded:
        return 0xDF          # out of order
    if not status.paper_ok:
        return 0xCC          # printer not ready
    if not status.host_online:
        return 0xC2          # diagnosis required (it re-establishes the host connection)
    if status.state is not m.TerminalState.IDLE:
        return RC_BUSY
    return 0x00
