"""The emulated terminal's ZVT front: ZVT on the line, native messages to the firmware.

:class:`ZvtFront` is a :class:`posterm.families.interfaces.TerminalFront`: the emulator's
line loop drives it (through :class:`posterm.families.pump.Pump`) like any front, over a
:class:`~posterm.families.zvt.link.ZvtLink` in the PT role. What the register sends, and
what the firmware hears::

    ECR -> PT                        firmware                 PT -> ECR (after 80 00 00)
    06 00 Registration               Hello                    06 0F (19 status, 29 TID, 49 if sent)
    06 01 Authorisation (04, 49)     PayRequest               04 FF*, 04 0F, 06 D1* | 06 D3, 06 0F
                                                              (declined: 04 0F, receipt, 06 1E rc)
    06 22 Pre-authorisation          PayRequest               as 06 01 (04 0F carries BMP 87)
    06 24 Book total (87, 04)        Refund(reserved - 04)    04 0F, receipt, 06 0F | 06 1E rc
                                     (nothing when equal)
    06 23 Partial reversal (87, 04)  Refund(04)               04 0F, receipt, 06 0F | 06 1E rc
    06 25 Pre-auth reversal (87)     Cancel                   04 0F, receipt, 06 0F | 06 1E rc
    06 30 Reversal (pw, 87)          Cancel(operator pw)      04 0F, receipt, 06 0F | 06 1E rc
    06 31 Refund (pw, 87, 04)        Refund(operator pw)      04 0F, receipt, 06 0F | 06 1E rc
    06 20 Repeat receipt (pw)        -                        04 0F, receipt, 06 0F | 06 1E 83
    06 50 End of day (pw)            Settle(operator pw)      04 0F (04 net, 60 totals), receipt, 06 0F
    06 70 Diagnosis                  StatusRequest            04 FF, receipt, 06 0F (host not reached: 06 1E A1)
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
* Intermediate status (04 FF) by the firmware's stage: the customer asked for the payment
  code 0A ("insert card": the code shown to the scanner is this terminal's card), for the
  PIN 01 ("please watch PIN-Pad"), to confirm on the phone or scan the terminal's QR FF ("no
  ZVT status code matches, see TLV tags 24 and 07"); with these three the firmware's own
  display text goes along in TLV 24 { 07 line ... }. Waiting for the host 04, reversing
  after an abort 05 ("sending auto-reversal"), anything else 17 ("please wait").
* The firmware's Print comes before its outcome; the front keeps the lines and sends them
  after the 04 0F, before the 06 0F, as real terminals order them. The last payment
  receipt (its 04 0F and lines) is kept for 06 20.
* ZVT names a payment by its receipt number (BMP 87, 1..9999 then round again): the front
  keeps receipt number <-> order for the last 9999 approvals (bounded by the number range
  itself). Reversal (06 30), refund (06 31) and the pre-authorisation commands name the
  payment by BMP 87; without it they are refused.
* With ``state_path`` the map, the receipt and trace counters and the last receipt survive
  a restart: one JSON-lines file of ours (0600; each change appends its lines, fsynced, and
  the file is replaced atomically by a compact copy once the appended part outweighs the
  rest; read at start: a damaged line is skipped, a damaged head is rebuilt from the
  entries, so a receipt number still in use is never given out again).
* Pre-authorisation: the native firmware has no hold. A pre-authorisation is a payment of
  the reserved amount at the host; book total of X gives back (reserved - X) as a refund
  (nothing when equal; X above what is still reserved is refused, 06 1E B7); a partial
  reversal gives back its BMP 04 (the amount released); a pre-authorisation reversal
  cancels the payment. The refund ids are fixed by receipt and step, so a register that
  repeats a booking after a lost answer cannot refund twice.
* Passwords: the registration's and the repeat receipt's are checked against the
  terminal's (the operator password this front is made with); those of reversal, refund
  and end of day are the operator password the firmware checks (a wrong one counts toward
  the keypad's lock). The pre-authorisation commands carry none: the front gives the
  firmware its own.
* The payment code: ZVT has no field for it. The emulated customer shows it at the
  scanner (the scenario's ``present_code``, or the default test code), as at a Concert
  terminal: the PayRequest carries no code.
* Delivery: ZVT has no query by order id, so the firmware holds an approval until the
  register took it (``ecr_can_query=False``): the ECR's 80 00 00 to the payment's 04 0F is
  reported as :class:`ResultDelivery` delivered; no 80 00 00 (T3), a negative one, or a
  line reset first is reported undelivered (the firmware reverses it) and the dialog is
  closed with 06 1E. An approval that comes after the register's 06 B0 is reported
  undelivered at once (reversed) and the payment ends 06 1E 6C: the host is never left
  with a charge the register does not know.
* The transport is the line's: a front made with ``transport="auto"`` (the default: the
  emulator does not say whether it is on a pty or a socket) takes serial framing when the
  first byte of a connection is DLE (10; no ZVT command class is 10), bare TCP APDUs
  otherwise, and stays serial once it has been (a pty never turns into a socket).

Result codes (BMP 27, 06 1E): 00 success; 6C aborted (customer, ECR, timeout); 6F wrong
currency; 83 function not possible (also a wrong password, nothing to repeat: ZVT's list
has no closer code); 85 key missing; 9C please wait (busy); A1 host does not answer; B4
already reversed; B5 reversal not possible; B7 pre-authorisation amount too high; B8 error
pre-authorisation (not one, or already booked); and the host's refusals as the network
operator's ISO 8583 response codes 01..99 sent as a binary byte (ZVT: "01-63 errorcodes from
network-operator system", hex, i.e. 1..99; 0x64 on are ZVT's own, so ISO 65 cannot be 0x65,
"card-data not present"; the tillhub payment engine's Lavego table reads them so: 55
incorrect PIN, 65 no-PIN limit exceeded): 05 declined, 13 invalid amount, 14 invalid card,
38 PIN tries exceeded, 51 insufficient funds, 54 expired, 55 wrong PIN, 59 suspected fraud,
61 over the amount limit, 62 restricted, 65 over the daily (frequency) limit. The driver
(ecr.py ``RESULT_REASONS``) reads them back the same way.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from firmware_protocol.currency import from_numeric, numeric
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import Outcome, Reason
from firmware_protocol.zvt import (
    Abort,
    Aborted,
    Ack,
    Authorisation,
    BookTotal,
    CardTotal,
    Completion,
    Diagnosis,
    DisplayText,
    EndOfDay,
    Fields,
    IndividualTotals,
    LogOff,
    Nack,
    PartialReversal,
    PreAuthorisation,
    PreAuthReversal,
    PrintLine,
    PrintTextBlock,
    Refund,
    Registration,
    RepeatReceipt,
    Reversal,
    StatusEnquiry,
    StatusInformation,
    Tlv,
    TlvContainer,
    UnknownCommand,
)
from firmware_protocol.zvt.apdu import IntermediateStatus

from posterm.errors import LocalProtocolError, PosError, SendQueueFull
from posterm.families.events import Delivered, MessageReceived, ResultDelivery, SendFailed, UndecodableMessage
from posterm.families.zvt.link import Refused, ZvtConfig, ZvtLink
from posterm.safefs import private_file, read_private, replace_private

log = logging.getLogger("posterm.emulator.zvt")

__all__ = ["ZvtFront", "RESULT_CODES", "new_zvt_order_id"]

# -- the config byte of 06 00
ECR_PRINTS_PAYMENT = 0x02
ECR_PRINTS_ADMIN = 0x04
WANTS_INTERMEDIATE = 0x08
PRINT_COMMANDS = 0x80

# -- result codes (ZVT chapter 10, as EVerest zvt's constants.rs ErrorMessages and
#    Portalum.Zvt's EnglishErrorMessageRepository list them) and negative acknowledgements
RC_OK = 0x00
RC_DECLINED = 5                 # ISO 8583 05 "do not honour", binary (see the module)
RC_ABORTED = 0x6C
RC_WRONG_CURRENCY = 0x6F
RC_NOT_POSSIBLE = 0x83
RC_KEY_MISSING = 0x85
RC_PROTOCOL_ERROR = 0x9A
RC_BUSY = 0x9C
RC_HOST_SILENT = 0xA1
RC_ALREADY_REVERSED = 0xB4
RC_REVERSAL_NOT_POSSIBLE = 0xB5
RC_PREAUTH_AMOUNT = 0xB7        # "pre-authorisation incorrect (amount too high) or amount wrong"
RC_PREAUTH_ERROR = 0xB8         # "error pre-authorisation"
NOT_SUPPORTED = 0x83
# A wrong password (registration, repeat receipt) and "nothing to repeat": the chapter 10
# list has no password or no-receipt code; 83 "function not possible" is its nearest.
RC_WRONG_PASSWORD = RC_NOT_POSSIBLE
RC_NOTHING_TO_REPEAT = RC_NOT_POSSIBLE

# The host's refusals: ISO 8583 response codes, decimal, sent as one binary byte.
RESULT_CODES: dict[int, int] = {
    Reason.INSUFFICIENT_BALANCE: 51, Reason.OVER_TRANSACTION_LIMIT: 61, Reason.OVER_DAILY_LIMIT: 65,
    Reason.CODE_INVALID: 14, Reason.CODE_EXPIRED: 54, Reason.CODE_USED: RC_DECLINED,
    Reason.ACCOUNT_FROZEN: 62, Reason.NOT_REAL_NAME_VERIFIED: RC_DECLINED, Reason.RISK_REJECTED: 59,
    Reason.WRONG_PIN: 55, Reason.PIN_LOCKED: 38, Reason.CONFIRMATION_TIMEOUT: RC_ABORTED,
    Reason.CUSTOMER_CANCELLED: RC_ABORTED, Reason.ABORTED_BY_ECR: RC_ABORTED, Reason.NO_CODE_PRESENTED: RC_ABORTED,
    Reason.HOST_UNAVAILABLE: RC_HOST_SILENT, Reason.ORDER_CONFLICT: RC_NOT_POSSIBLE,
    Reason.ORDER_NOT_FOUND: RC_REVERSAL_NOT_POSSIBLE, Reason.REFUND_EXCEEDS_PAID: RC_NOT_POSSIBLE,
    Reason.CANCEL_WINDOW_EXPIRED: RC_REVERSAL_NOT_POSSIBLE, Reason.NOT_PAID: RC_REVERSAL_NOT_POSSIBLE,
    Reason.OPERATOR_PASSWORD_WRONG: RC_WRONG_PASSWORD, Reason.OPERATOR_LOCKED: RC_NOT_POSSIBLE,
    Reason.TERMINAL_BUSY: RC_BUSY, Reason.KEY_ERROR: RC_KEY_MISSING, Reason.CURRENCY_MISMATCH: RC_WRONG_CURRENCY,
    Reason.INVALID_AMOUNT: 13,
}

# -- intermediate status (04 FF): what the terminal waits for (the codes as Portalum.Zvt's
#    IntermediateStatusInformationParser lists them)
IS_WATCH_PIN_PAD = 0x01         # "please watch PIN-Pad"
IS_WAITING_FOR_HOST = 0x04      # "PT is waiting for response from FEP"
IS_AUTO_REVERSAL = 0x05         # "PT is sending auto-reversal"
IS_INSERT_CARD = 0x0A           # "insert card": here, show the payment code to the scanner
IS_PLEASE_WAIT = 0x17           # "please wait..."
IS_SEE_TEXT = 0xFF              # "no appropriate ZVT status code matches the status. See TLV tags 24 and 07"
# The timeout byte is BCD seconds, as the EVerest zvt crate reads it
# (packets.rs IntermediateStatusInformation: `timeout` with `encoding::Bcd`): 60 s, longer
# than the firmware's 4 s keepalive, which repeats the status while the customer dawdles.
IS_TIMEOUT = 0x60
_STAGE_STATUS = {
    m.Stage.WAITING_FOR_SCAN: IS_INSERT_CARD, m.Stage.WAITING_FOR_PIN: IS_WATCH_PIN_PAD,
    m.Stage.WAITING_FOR_PHONE: IS_SEE_TEXT, m.Stage.SHOWING_QR: IS_SEE_TEXT,
    m.Stage.AUTHORISING: IS_WAITING_FOR_HOST, m.Stage.QUERYING: IS_WAITING_FOR_HOST,
    m.Stage.CANCELLING: IS_PLEASE_WAIT, m.Stage.PRINTING: IS_PLEASE_WAIT,
    m.Stage.REFUNDING: IS_WAITING_FOR_HOST, m.Stage.SETTLING: IS_WAITING_FOR_HOST,
}
# The stages where the customer is asked for something: the firmware's text goes along.
_CUSTOMER_STAGES = frozenset({m.Stage.WAITING_FOR_SCAN, m.Stage.WAITING_FOR_PIN, m.Stage.WAITING_FOR_PHONE,
                              m.Stage.SHOWING_QR})

# 06 D1 attribute: "1000 0000 RFU; 1xxx xxxx (not equal to 80h) this is the last line;
# 1111 1111 linefeed" (the spec's table as Portalum.Zvt's PrintLineParser quotes it): 80 is
# reserved, so the last line is 81; any other line is 00, normal text.
LINE_NORMAL = 0x00
LINE_LAST = 0x81

# The native PayResult names no wallet, and the host issues Alipay-style codes only
# (posterm/host/admin.py: 18 digits, prefix 25-30; the test codes 2899...): the card name is Alipay's.
WALLET_CARD_NAME = "Alipay"
SOFTWARE_VERSION = "posterm-emulator"
MAX_RECEIPT_NO = 9999
MAX_TRACE = 999_999
MAX_PRINT_LINES = 400           # kept per operation until its outcome (a receipt is some 20)
MAX_OUT = 64                    # ZVT messages waiting for the ECR's 80 00 00 to the one before
TLV_PERMITTED_COMMANDS = 0x26
TLV_COMMAND = 0x0A
TLV_DISPLAY_TEXTS = 0x24
TLV_TEXT_LINE = 0x07
TEXT_BLOCK = bytes((0x06, 0xD3))
# -- the state file
STATE_VERSION = 1
# 9999 entries of some 110 bytes are 1.1 MB; appended lines are compacted away once they
# reach twice the file's size after its last rewrite (plus COMPACT_SLACK): well under the cap.
MAX_STATE_BYTES = 16 * 1024 * 1024
COMPACT_SLACK = 256 * 1024
_STATE_FIELDS = ("amount", "currency", "trace", "time", "date", "receipt_no", "card_name", "terminal_id",
                 "vu_number", "result_code")
_ORDER_ID = re.compile(r"[A-Za-z0-9_\-.:]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3}")


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
    """The ECR's command in progress: what it became for the firmware, and what it gathered.

    ``kind``: registration pay preauth reversal refund book release preauth_reversal eod
    status diagnosis refused. ``amount_minor`` is what the 04 0F reports (a booking: the
    booked amount); ``native_minor`` what went to the firmware (a booking: what is given back)."""

    kind: str
    order_id: str | None = None
    amount_minor: int = 0
    currency: str = "EUR"
    receipt_no: int | None = None
    native_minor: int = 0
    aborted: bool = False           # the ECR sent 06 B0 while it ran
    lines: list[str] = field(default_factory=list)


@dataclass
class _Paid:
    """An approval by receipt number. A pre-authorisation: ``amount_minor`` is what was
    reserved (and paid at the host), ``released`` what was given back since, ``booked``
    the booked total once booked."""

    order_id: str
    amount_minor: int
    currency: str
    reversed: bool = False
    preauth: bool = False
    released: int = 0
    booked: int | None = None
    seq: int = 0                    # the order it was issued in (a damaged state file is rebuilt by it)

    @property
    def reserved(self) -> int:
        return self.amount_minor - self.released


@dataclass
class _Out:
    """A ZVT message for the ECR; ``order_id``: its 80 00 00 is the approval's delivery."""

    message: Any
    order_id: str | None = None
    intermediate: bool = False


class ZvtFront:
    """ZVT on the wire (the PT role), native messages towards the firmware.

    ``state_path``: a file this front owns (0600, replaced atomically) where the receipt
    numbers and their orders, the receipt and trace counters and the last receipt are kept
    across restarts; None keeps them in memory only. A file that cannot be read is logged
    and what can be read of it is used (see :meth:`_load`).
    """

    def __init__(self, operator_password: str, config: ZvtConfig | None = None, *, transport: str = "auto",
                 line_rate: float | None = None, state_path: Path | None = None) -> None:
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
        self._seq = 0
        self._trace = 0
        self._batch_first: int | None = None
        self._last_receipt: dict[str, Any] | None = None    # {"fields": {...}, "lines": [...]} for 06 20
        self._terminal_id: str | None = None
        self._merchant_id: str | None = None
        self._firmware_version = SOFTWARE_VERSION
        self._stats_base = {"frames_in": 0}
        self._wire = bytearray()     # what the link's send() returned, for the next data_to_send()
        self._state_path = Path(state_path) if state_path is not None else None
        self._dirty = False
        self._changed: set[int] = set()      # receipt numbers whose entry changed since the last write
        self._receipt_dirty = False
        self._disk_bytes = 0                  # the state file's size (appended lines included)
        self._compact_bytes = 0               # its size when last written whole
        if self._state_path is not None:
            self._load()

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
                self._intermediate(op, message)
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
        elif isinstance(message, m.Status) and op.kind == "diagnosis":
            self._diagnosis_result(op, message)
        elif isinstance(message, m.PayResult) and op.kind in ("pay", "preauth", "reversal", "preauth_reversal"):
            if message.outcome is not Outcome.PENDING:
                self._pay_result(op, message)
        elif isinstance(message, m.RefundResult) and op.kind in ("refund", "book", "release"):
            self._refund_result(op, message)
        elif isinstance(message, m.SettleReport) and op.kind == "eod":
            self._settle_result(op, message)
        elif isinstance(message, m.Error) and message.in_reply_to == m.Abort.TYPE:
            log.info("zvt: abort: %s (the payment ends as it ends)", message.text)
        elif isinstance(message, m.Error):
            log.info("zvt: %s refused by the firmware: %s %s", op.kind, message.code.name
                     if isinstance(message.code, m.ErrorCode) else message.code, message.text)
            self._finish(Aborted(RC_BUSY if message.code == m.ErrorCode.BUSY else RC_NOT_POSSIBLE))
        # On disk before the 04 0F that names a new receipt number leaves.
        self._persist()
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
        self._persist()
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
            if op is not None and op.kind in ("pay", "preauth") and not op.aborted:
                # The customer is at the terminal: the firmware stops the payment (cancelling
                # it at the host if it got there); an approval that still comes is reversed.
                op.aborted = True
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
        if native is not None:       # None: the front answered it alone
            self._events.append(MessageReceived(native, None, raw))

    # -- commands -> native requests (each after 80 00 00) ----------------------------------

    def _check_password(self, password: str) -> None:
        if not hmac.compare_digest(password.encode(), self._password.encode()):
            raise _Refusal(RC_WRONG_PASSWORD, "wrong password")

    def _registration(self, cmd: Registration) -> m.Message:
        self._check_password(cmd.password)
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

    def _authorisation(self, cmd: Authorisation | PreAuthorisation, kind: str = "pay") -> m.Message:
        amount = cmd.fields.amount
        if not amount:
            raise _Refusal(RC_NOT_POSSIBLE, "no amount (BMP 04): amounts are not typed on this terminal")
        currency = _currency(cmd.fields.currency) if cmd.fields.currency is not None else self._reg.currency
        order_id = new_zvt_order_id()
        self._op = _Op(kind, order_id, amount, currency)
        return m.PayRequest(amount_minor=amount, currency=currency, order_id=order_id)

    def _pre_authorisation(self, cmd: PreAuthorisation) -> m.Message:
        # BMP 19 (payment type) is read and not needed: the customer pays by code either way.
        return self._authorisation(cmd, "preauth")

    def _paid_for(self, cmd: Any, what: str, missing: int = RC_REVERSAL_NOT_POSSIBLE) -> tuple[int, _Paid]:
        receipt_no = cmd.fields.receipt_no
        if receipt_no is None or receipt_no == 0xFFFF:
            raise _Refusal(missing, f"a {what} names its payment by receipt number (BMP 87)")
        paid = self._paid.get(receipt_no)
        if paid is None:
            raise _Refusal(missing, f"no payment with receipt number {receipt_no}")
        if paid.reversed:
            raise _Refusal(RC_ALREADY_REVERSED, f"receipt {receipt_no} is already reversed")
        currency = cmd.fields.currency
        if currency is not None and _currency(currency) != paid.currency:
            raise _Refusal(RC_WRONG_CURRENCY, f"receipt {receipt_no} is in {paid.currency}")
        return receipt_no, paid

    def _preauth_for(self, cmd: Any, what: str) -> tuple[int, _Paid]:
        receipt_no, paid = self._paid_for(cmd, what, RC_PREAUTH_ERROR)
        if not paid.preauth:
            raise _Refusal(RC_PREAUTH_ERROR, f"receipt {receipt_no} is not a pre-authorisation")
        if paid.booked is not None:
            raise _Refusal(RC_PREAUTH_ERROR, f"pre-authorisation {receipt_no} is already booked")
        return receipt_no, paid

    def _reversal(self, cmd: Reversal) -> m.Message:
        receipt_no, paid = self._paid_for(cmd, "reversal")
        self._op = _Op("reversal", paid.order_id, paid.amount_minor, paid.currency, receipt_no)
        return m.Cancel(order_id=paid.order_id, operator_password=cmd.password)

    def _refund(self, cmd: Refund) -> m.Message:
        receipt_no, paid = self._paid_for(cmd, "refund")
        amount = cmd.fields.amount or paid.amount_minor
        self._op = _Op("refund", paid.order_id, amount, paid.currency, receipt_no, native_minor=amount)
        return m.Refund(order_id=paid.order_id, amount_minor=amount, currency=paid.currency,
                        refund_id=f"R{paid.order_id}-{secrets.token_hex(3)}", operator_password=cmd.password)

    def _book_total(self, cmd: BookTotal) -> m.Message | None:
        receipt_no, paid = self._preauth_for(cmd, "book total")
        total = cmd.fields.amount if cmd.fields.amount is not None else paid.reserved
        if total > paid.reserved:
            raise _Refusal(RC_PREAUTH_AMOUNT, f"book total {total} is above the {paid.reserved} reserved")
        self._op = _Op("book", paid.order_id, total, paid.currency, receipt_no, native_minor=paid.reserved - total)
        if total == paid.reserved:
            # The host already holds exactly this: nothing goes to the firmware.
            paid.booked = total
            self._touch(receipt_no)
            self._queue(_Out(StatusInformation(Fields(result_code=RC_OK, **self._base_fields(self._op)))))
            self._finish(Completion())
            return None
        # One refund id per pre-authorisation: a booking repeated after a lost answer is the
        # same refund at the host (idempotent on refund_id), never a second one.
        return m.Refund(order_id=paid.order_id, amount_minor=paid.reserved - total, currency=paid.currency,
                        refund_id=f"B{paid.released}-{paid.order_id}", operator_password=self._password)

    def _partial_reversal(self, cmd: PartialReversal) -> m.Message:
        receipt_no, paid = self._preauth_for(cmd, "partial reversal")
        amount = cmd.fields.amount
        if not amount:
            raise _Refusal(RC_PREAUTH_AMOUNT, "a partial reversal names the amount it releases (BMP 04)")
        if amount > paid.reserved:
            raise _Refusal(RC_PREAUTH_AMOUNT, f"{amount} is above the {paid.reserved} reserved")
        self._op = _Op("release", paid.order_id, amount, paid.currency, receipt_no, native_minor=amount)
        return m.Refund(order_id=paid.order_id, amount_minor=amount, currency=paid.currency,
                        refund_id=f"P{paid.released}-{paid.order_id}", operator_password=self._password)

    def _pre_auth_reversal(self, cmd: PreAuthReversal) -> m.Message:
        receipt_no, paid = self._preauth_for(cmd, "pre-authorisation reversal")
        self._op = _Op("preauth_reversal", paid.order_id, paid.reserved, paid.currency, receipt_no)
        return m.Cancel(order_id=paid.order_id, operator_password=self._password)

    def _repeat_receipt(self, cmd: RepeatReceipt) -> None:
        self._check_password(cmd.password)
        last = self._last_receipt
        if last is None:
            raise _Refusal(RC_NOTHING_TO_REPEAT, "no payment receipt to repeat")
        self._op = _Op("repeat", lines=list(last["lines"]))
        self._queue(_Out(StatusInformation(Fields(**last["fields"]))))
        self._receipt(self._op, payment=True)
        self._finish(Completion())

    def _end_of_day(self, cmd: EndOfDay) -> m.Message:
        self._op = _Op("eod", currency=self._reg.currency)
        return m.Settle(operator_password=cmd.password)

    def _status_enquiry(self, cmd: StatusEnquiry) -> m.Message:
        self._op = _Op("status")
        return m.StatusRequest()

    def _diagnosis(self, cmd: Diagnosis) -> m.Message:
        # A real terminal checks its host connection; the firmware knows whether the host
        # answered its last request (Status.host_online), and this reports that.
        self._op = _Op("diagnosis")
        return m.StatusRequest()

    # -- native outcomes -> ZVT --------------------------------------------------------------

    def _intermediate(self, op: _Op, progress: m.Progress) -> None:
        code = _STAGE_STATUS.get(progress.stage, IS_SEE_TEXT)
        if progress.stage is m.Stage.CANCELLING and op.aborted:
            code = IS_AUTO_REVERSAL
        if code == IS_SEE_TEXT or progress.stage in _CUSTOMER_STAGES:
            text = [line[:40] for line in progress.text.splitlines() if line.strip()][:4] or ["Please wait"]
            msg = IntermediateStatus(code, IS_TIMEOUT, Fields(tlv=TlvContainer((
                Tlv(TLV_DISPLAY_TEXTS, tuple(Tlv(TLV_TEXT_LINE, _cp437(t)) for t in text)),))))
        else:
            msg = IntermediateStatus(code)
        # Only the latest status matters: one not yet on the line is replaced.
        for i, o in enumerate(self._out):
            if o.intermediate:
                self._out[i] = _Out(msg, intermediate=True)
                return
        self._queue(_Out(msg, intermediate=True))

    def _base_fields(self, op: _Op, amount: int | None = None, stamp: str | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"amount": op.amount_minor if amount is None else amount,
                                  "currency": _numeric(op.currency), "trace": self._next_trace()}
        if op.receipt_no is not None:
            fields["receipt_no"] = op.receipt_no
        fields.update(_when(stamp))
        if self._terminal_id:
            fields["terminal_id"] = self._terminal_id
        return fields

    def _pay_result(self, op: _Op, res: m.PayResult) -> None:
        sale = op.kind in ("pay", "preauth")
        approved = res.outcome is (Outcome.APPROVED if sale else Outcome.CANCELLED)
        fields = self._base_fields(op, op.amount_minor or res.amount_minor, res.paid_at)
        if sale and approved and op.aborted:
            # Approved after the register's 06 B0: it was told the payment is aborted, so the
            # host must not keep it. Undelivered: the firmware reverses it at the host.
            log.warning("zvt: order %s approved after the ECR aborted it: reversing it", res.order_id)
            self._events.append(ResultDelivery(res.order_id, False, "aborted by the ECR"))
            op.lines = []
            self._queue(_Out(StatusInformation(Fields(result_code=RC_ABORTED, **fields))))
            self._finish(Aborted(RC_ABORTED))
            return
        if sale and approved:
            receipt_no = self._remember(op.order_id or res.order_id, fields["amount"], op.currency,
                                        preauth=op.kind == "preauth")
            op.receipt_no = receipt_no
            fields.update(receipt_no=receipt_no, card_name=_wallet_name(res))
            if self._merchant_id:
                fields["vu_number"] = self._merchant_id
            info = Fields(result_code=RC_OK, **fields)
            self._remember_receipt(info, op.lines)
            if res.code_last4:
                info = Fields(result_code=RC_OK, pan="E" * 14 + res.code_last4, **fields)
            self._queue(_Out(StatusInformation(info), order_id=res.order_id))
            self._receipt(op, payment=True)
            self._finish(Completion())
            return
        if approved:   # a reversal done
            paid = self._paid.get(op.receipt_no) if op.receipt_no is not None else None
            if paid is not None:
                paid.reversed = True
                self._touch(op.receipt_no)
            fields["receipt_no"] = self._take_receipt_no()
            self._result(op, RC_OK, fields)
            return
        code = RC_HOST_SILENT if res.outcome is Outcome.UNKNOWN else RESULT_CODES.get(int(res.reason), RC_DECLINED)
        if not sale and res.outcome is Outcome.DECLINED and code == RC_DECLINED:
            code = RC_REVERSAL_NOT_POSSIBLE
        self._result(op, code, fields)

    def _refund_result(self, op: _Op, res: m.RefundResult) -> None:
        fields = self._base_fields(op, res.amount_minor if op.kind == "refund" else op.amount_minor)
        if res.outcome is not Outcome.APPROVED:
            code = RC_HOST_SILENT if res.outcome is Outcome.UNKNOWN else RESULT_CODES.get(int(res.reason), RC_DECLINED)
            self._result(op, code, fields)
            return
        paid = self._paid.get(op.receipt_no) if op.receipt_no is not None else None
        if paid is not None and op.kind in ("book", "release"):
            paid.released += op.native_minor
            if op.kind == "book":
                paid.booked = op.amount_minor
            self._touch(op.receipt_no)
        fields["receipt_no"] = self._take_receipt_no()
        self._result(op, RC_OK, fields)

    def _result(self, op: _Op, code: int, fields: dict[str, Any]) -> None:
        """A payment-side outcome: its 04 0F (kept for a repeat), its receipt, 06 0F or 06 1E."""
        info = Fields(result_code=code, **fields)
        self._remember_receipt(info, op.lines)
        self._queue(_Out(StatusInformation(info)))
        self._receipt(op, payment=True)
        self._finish(Completion() if code == RC_OK else Aborted(code))

    def _diagnosis_result(self, op: _Op, status: m.Status) -> None:
        """Diagnosis answers as the spec's sequence has it (2.17, as the EVerest zvt crate's
        ``DiagnosisResponse`` lists it: intermediate status, print lines or a text block,
        then 06 0F or 06 1E; no 04 0F, which a strict register would not parse there): the
        host check's result is the closing message, and an administration receipt says it."""
        if self._reg.config_byte & WANTS_INTERMEDIATE:
            self._queue(_Out(IntermediateStatus(IS_WAITING_FOR_HOST), intermediate=True))
        online = status.host_online
        op.lines = ["DIAGNOSIS", f"TERMINAL {self._terminal_id or '-'}", f"SOFTWARE {self._firmware_version[:30]}",
                    "HOST ONLINE" if online else "HOST NOT REACHED", "PRINTER OK" if status.paper_ok else "NO PAPER",
                    "KEY LOADED" if status.key_loaded else "KEY MISSING"]
        self._receipt(op, payment=False)
        self._finish(Completion() if online else Aborted(RC_HOST_SILENT))

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
        self._touch()
        self._queue(_Out(StatusInformation(Fields(result_code=RC_OK, **fields))))
        self._receipt(op, payment=False)
        self._finish(Completion())

    def _remember_receipt(self, info: Fields, lines: list[str]) -> None:
        """The last payment receipt, for 06 20 (no card data in it: the PAN is left out)."""
        self._last_receipt = {"fields": {n: getattr(info, n) for n in _STATE_FIELDS if getattr(info, n) is not None},
                              "lines": list(lines[:MAX_PRINT_LINES])}
        self._receipt_dirty = True
        self._touch()

    def _receipt(self, op: _Op, *, payment: bool) -> None:
        """The receipt lines the firmware printed, to the ECR if it prints them by command."""
        lines, op.lines = op.lines, []
        cfg = self._reg.config_byte
        if not lines or not cfg & PRINT_COMMANDS or not cfg & (ECR_PRINTS_PAYMENT if payment else ECR_PRINTS_ADMIN):
            return   # printed on the terminal (or the ECR builds its own from the 04 0F)
        texts = [_cp437_text(line) for line in lines]
        if self._reg.text_blocks:
            block = Tlv(0x25, tuple(Tlv(TLV_TEXT_LINE, t.encode("cp437")) for t in texts) + (Tlv(0x09, b"\xff"),))
            kind = b"\x02" if payment else b"\x03"    # customer receipt; administration receipt
            self._queue(_Out(PrintTextBlock(Fields(tlv=TlvContainer((Tlv(0x1F07, kind), block))))))
            return
        for i, text in enumerate(texts):
            self._queue(_Out(PrintLine(LINE_LAST if i == len(texts) - 1 else LINE_NORMAL, text)))

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

    def _remember(self, order_id: str, amount: int, currency: str, *, preauth: bool = False) -> int:
        receipt_no = self._take_receipt_no()
        self._seq += 1
        self._paid[receipt_no] = _Paid(order_id, amount, currency, preauth=preauth, seq=self._seq)
        self._touch(receipt_no)
        return receipt_no

    def _take_receipt_no(self) -> int:
        """The next receipt number, for any booking that prints a receipt (a payment, and a
        reversal or refund: each has its own number, as a terminal's journal does; the
        payment it undoes is named by the command's BMP 87, not by the answer's)."""
        receipt_no = self._next_receipt
        self._next_receipt = receipt_no % MAX_RECEIPT_NO + 1
        if self._paid.pop(receipt_no, None) is not None:
            # The number comes round again: the old payment is forgotten, and the next write
            # replaces the file whole (an appended file still holds its entry).
            self._disk_bytes = 0
        if self._batch_first is None:
            self._batch_first = receipt_no
        self._touch(receipt_no)
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
        self._touch()
        return self._trace

    # -- the state file ---------------------------------------------------------------------------
    #
    #   {"v": 1, "next_receipt": 8, "seq": 7, "trace": 12, "batch_first": 3}     the head
    #   {"last_receipt": {"fields": {...}, "lines": [...]}}                     if there is one
    #   {"r": 3, "o": "Z...", "a": 1250, "c": "EUR", "x": false, "p": false, "l": 0, "b": null, "s": 1, "t": 4}
    #   ...                                                                       one line per receipt

    def _touch(self, receipt_no: int | None = None) -> None:
        self._dirty = True
        if receipt_no is not None:
            self._changed.add(receipt_no)

    def _persist(self) -> None:
        """Write what changed to the state file: appended (one head line, the changed
        entries, the last receipt if new; fsynced), or the whole file replaced atomically
        once the appended lines outweigh the rest (so a payment costs a line, not a
        rewrite of 9999 entries). A failure is logged and the terminal goes on: losing the file loses
        reversals by receipt number, never money."""
        if not self._dirty or self._state_path is None:
            return
        self._dirty = False
        changed, self._changed = self._changed, set()
        receipt, self._receipt_dirty = self._receipt_dirty, False
        compact = self._disk_bytes == 0 or self._disk_bytes > 2 * self._compact_bytes + COMPACT_SLACK
        lines = [self._head_line()]
        if self._last_receipt is not None and (receipt or compact):
            lines.append(_line({"last_receipt": self._last_receipt}))
        for no in (self._paid if compact else sorted(changed)):
            paid = self._paid.get(no)
            if paid is not None:
                lines.append(self._entry_line(no, paid))
        data = ("\n".join(lines) + "\n").encode()
        try:
            if compact:
                replace_private(self._state_path, data)
                self._disk_bytes = self._compact_bytes = len(data)
            else:
                fd = private_file(self._state_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                with os.fdopen(fd, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._disk_bytes += len(data)
        except (OSError, PosError) as exc:
            log.error("zvt: receipt numbers not saved to %s: %s", self._state_path, exc)
            self._disk_bytes = 0             # whatever is there, the next write replaces it whole

    def _head_line(self) -> str:
        return _line({"v": STATE_VERSION, "next_receipt": self._next_receipt, "seq": self._seq, "trace": self._trace,
                      "batch_first": self._batch_first})

    def _entry_line(self, no: int, p: _Paid) -> str:
        return _line({"r": no, "o": p.order_id, "a": p.amount_minor, "c": p.currency, "x": p.reversed,
                      "p": p.preauth, "l": p.released, "b": p.booked, "s": p.seq, "t": self._trace})

    def _load(self) -> None:
        """Read the state file: a missing one is a first start. Lines count in order (the
        last head wins; for a receipt number, its newest payment); a damaged line (a write
        cut off, a stray edit) is skipped and logged; with no readable head the counters are
        rebuilt from the entries, so the next receipt number follows the newest one kept and
        no number still in the map is given out again."""
        path = self._state_path
        assert path is not None
        try:
            raw = read_private(path, MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except (OSError, PosError) as exc:
            log.error("zvt: receipt numbers not read from %s: %s; starting empty", path, exc)
            return
        if len(raw) > MAX_STATE_BYTES:
            log.error("zvt: %s is over %d bytes: only its start is read", path, MAX_STATE_BYTES)
            raw = raw[:MAX_STATE_BYTES]
        head: dict[str, Any] | None = None
        bad = 0
        entries: list[tuple[int, _Paid, int]] = []
        for n, line in enumerate(raw.decode("utf-8", "replace").splitlines()):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if isinstance(item, dict) and "v" in item:
                    head = _valid_head(item)
                elif isinstance(item, dict) and "last_receipt" in item:
                    self._last_receipt = _valid_receipt(item["last_receipt"])
                else:
                    entries.append(_valid_entry(item))
            except (ValueError, TypeError, KeyError) as exc:
                bad += 1
                if bad == 1:
                    log.error("zvt: %s line %d is damaged (%s): skipped", path, n + 1, type(exc).__name__)
        if bad > 1:
            log.error("zvt: %s: %d damaged lines skipped in all", path, bad)
        entries.sort(key=lambda e: e[1].seq)     # stable: of two lines for one payment, the later wins
        for no, paid, _trace in entries:
            self._paid.pop(no, None)
            self._paid[no] = paid
        newest = entries[-1] if entries else None
        if head is not None:
            self._next_receipt, self._seq, self._trace = head["next_receipt"], head["seq"], head["trace"]
            self._batch_first = head["batch_first"]
        elif newest is not None:
            log.error("zvt: %s has no readable head: counters rebuilt from its %d receipts", path, len(entries))
            self._trace = max(e[2] for e in entries)
        elif raw.strip():
            log.error("zvt: %s could not be read at all: receipt numbers start again at 1 and may repeat "
                      "ones the register still holds", path)
        if newest is not None and (head is None or newest[1].seq > head["seq"]):
            self._next_receipt = newest[0] % MAX_RECEIPT_NO + 1     # an entry newer than the head: it wins
        self._seq = max([self._seq, *(p.seq for p in self._paid.values())])
        if bad or head is None:
            self._dirty = True       # rewritten whole at the first change (or now, below)
        self._disk_bytes = 0 if bad or head is None else len(raw)
        self._compact_bytes = self._disk_bytes


class _Refusal(Exception):
    """A command this terminal acknowledged but will not carry out: 06 1E ``code``."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


_HANDLERS = {
    Registration: ZvtFront._registration, Authorisation: ZvtFront._authorisation, Reversal: ZvtFront._reversal,
    Refund: ZvtFront._refund, EndOfDay: ZvtFront._end_of_day, StatusEnquiry: ZvtFront._status_enquiry,
    PreAuthorisation: ZvtFront._pre_authorisation, BookTotal: ZvtFront._book_total,
    PartialReversal: ZvtFront._partial_reversal, PreAuthReversal: ZvtFront._pre_auth_reversal,
    RepeatReceipt: ZvtFront._repeat_receipt, Diagnosis: ZvtFront._diagnosis,
}


def _wallet_name(res: m.PayResult) -> str:
    """BMP 8B, the card name: the wallet whose code paid (see :data:`WALLET_CARD_NAME`)."""
    return WALLET_CARD_NAME


def _line(item: dict[str, Any]) -> str:
    return json.dumps(item, separators=(",", ":"))


def _int(value: Any, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError("out of range")
    return value


def _valid_head(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("v") != STATE_VERSION:
        raise ValueError("unknown version")
    first = item.get("batch_first")
    return {"next_receipt": _int(item["next_receipt"], 1, MAX_RECEIPT_NO), "seq": _int(item["seq"], 0, 2**62),
            "trace": _int(item["trace"], 0, MAX_TRACE),
            "batch_first": None if first is None else _int(first, 1, MAX_RECEIPT_NO)}


def _valid_entry(item: Any) -> tuple[int, _Paid, int]:
    if not isinstance(item, dict):
        raise TypeError("not an object")
    order_id, currency = item["o"], item["c"]
    if not isinstance(order_id, str) or not _ORDER_ID.fullmatch(order_id):
        raise ValueError("order id")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise ValueError("currency")
    amount = _int(item["a"], 1, m.MAX_AMOUNT_MINOR)
    released = _int(item.get("l", 0), 0, amount)
    booked = item.get("b")
    flags = [item.get(k, False) for k in ("x", "p")]
    if any(type(f) is not bool for f in flags):
        raise ValueError("flags")
    paid = _Paid(order_id, amount, currency, reversed=flags[0], preauth=flags[1], released=released,
                 booked=None if booked is None else _int(booked, 0, amount), seq=_int(item.get("s", 0), 0, 2**62))
    return _int(item["r"], 1, MAX_RECEIPT_NO), paid, _int(item.get("t", 0), 0, MAX_TRACE)


def _valid_receipt(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("fields"), dict) or not isinstance(item.get("lines"), list):
        raise TypeError("not a receipt")
    fields = {k: v for k, v in item["fields"].items() if k in _STATE_FIELDS}
    Fields(**fields)                    # the values must still encode (a bad one raises ZvtFieldError, a ValueError)
    lines = [line for line in item["lines"][:MAX_PRINT_LINES] if isinstance(line, str)]
    return {"fields": fields, "lines": [line[:64] for line in lines]}


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
