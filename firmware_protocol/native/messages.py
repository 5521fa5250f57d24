"""The ECR <-> terminal message catalogue (application protocol version 1).

Each message is a frozen, slotted dataclass that validates on construction;
its wire form is the TLV body described in :mod:`firmware_protocol.native.tlv`.
Type codes 0x0001-0x00FF are ECR <-> terminal; 0x0100-0x01FF are terminal <->
host (:mod:`firmware_protocol.host.messages`). PROTOCOL.md has the byte tables.

Who sends what, and what answers it::

    ECR -> terminal            terminal -> ECR
    Hello                      HelloReply
    StatusRequest              Status
    PayRequest                 Progress*, Print*, PayResult
    Query                      PayResult (the order's current outcome)
    Cancel                     Progress*, PayResult
    Refund                     Progress*, Print*, RefundResult
    Settle                     Progress*, Print*, SettleReport
    KeyLoad                    KeyStatus
    KeyStatusRequest           KeyStatus
    OperatorReset              OperatorResetResult
    Abort                      PayResult (cancelled) for the operation in flight, or Error
    any malformed request      Error
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from construct import Int32ub, Int64ub, PaddedString, Struct

from firmware_protocol.currency import CURRENCY_PATTERN
from firmware_protocol.errors import FieldError
from firmware_protocol.native.tlv import (
    EnumCodec,
    Flag,
    Message,
    StructCodec,
    Text,
    UInt,
    message,
    tlv,
)


# What `from firmware_protocol.native.messages import *` gives: the messages and their enums, not the
# helpers imported from tlv (a star import of `tlv` shadowed the firmware_protocol.native.tlv module).
__all__ = [
    "PROTOCOL_VERSION",
    "MAX_AMOUNT_MINOR",
    "Capability",
    "TerminalState",
    "Stage",
    "Outcome",
    "Reason",
    "ErrorCode",
    "KeyAlgorithm",
    "Totals",
    "Hello",
    "HelloReply",
    "StatusRequest",
    "Status",
    "PayRequest",
    "Progress",
    "PayResult",
    "Query",
    "Cancel",
    "Refund",
    "RefundResult",
    "Settle",
    "SettleReport",
    "Print",
    "KeyLoad",
    "KeyStatusRequest",
    "KeyStatus",
    "Abort",
    "Error",
    "OperatorReset",
    "OperatorResetResult",
    "ECR_MESSAGES",
]

PROTOCOL_VERSION = 1
MAX_AMOUNT_MINOR = 10**15  # well beyond any retail payment, well inside u64

# ------------------------------------------------------------------ enums


class Capability(enum.IntFlag):
    """Bits in Hello/HelloReply ``capabilities``."""

    SCANNER = 0x0001          # terminal has a code scanner
    PIN_PAD = 0x0002          # terminal has a PIN pad (secure module)
    PRINTER = 0x0004          # terminal has a receipt printer
    DYNAMIC_QR = 0x0008       # terminal can show a merchant-presented QR
    PHONE_CONFIRM = 0x0010    # customer confirmation on the phone supported
    REFUND = 0x0020
    SETTLEMENT = 0x0040
    KEY_LOADING = 0x0080
    ECR_PRINTS = 0x0100       # (ECR side) the ECR prints receipts sent in Print


class TerminalState(enum.IntEnum):
    IDLE = 0
    AWAITING_SCAN = 1
    AUTHORISING = 2
    AWAITING_PIN = 3
    AWAITING_PHONE = 4
    QUERYING = 5
    CANCELLING = 6
    PRINTING = 7
    SETTLING = 8
    LOADING_KEY = 9
    REFUNDING = 10
    SHOWING_QR = 11
    ERROR = 15


class Stage(enum.IntEnum):
    """What the terminal is doing, reported in Progress."""

    WAITING_FOR_SCAN = 1
    WAITING_FOR_PIN = 2
    WAITING_FOR_PHONE = 3
    AUTHORISING = 4
    QUERYING = 5
    CANCELLING = 6
    PRINTING = 7
    SHOWING_QR = 8
    REFUNDING = 9
    SETTLING = 10
    LOADING_KEY = 11


class Outcome(enum.IntEnum):
    APPROVED = 1
    DECLINED = 2
    CANCELLED = 3
    UNKNOWN = 4   # the terminal could not learn the outcome: query or recover later
    PENDING = 5   # (Query only) the order is still in progress


class Reason(enum.IntEnum):
    """Why a payment was declined, cancelled or unknown. Shared with the host protocol.

    Receivers keep codes they do not know as plain ints (a newer peer may add some).
    """

    NONE = 0
    INSUFFICIENT_BALANCE = 1
    OVER_TRANSACTION_LIMIT = 2
    OVER_DAILY_LIMIT = 3
    CODE_INVALID = 4
    CODE_EXPIRED = 5
    CODE_USED = 6
    ACCOUNT_FROZEN = 7
    NOT_REAL_NAME_VERIFIED = 8
    RISK_REJECTED = 9
    WRONG_PIN = 10
    PIN_LOCKED = 11
    CONFIRMATION_TIMEOUT = 12
    CUSTOMER_CANCELLED = 13
    ABORTED_BY_ECR = 14
    HOST_UNAVAILABLE = 15
    ORDER_CONFLICT = 16        # same order id, different parameters
    ORDER_NOT_FOUND = 17
    REFUND_EXCEEDS_PAID = 18
    CANCEL_WINDOW_EXPIRED = 19
    TERMINAL_UNKNOWN = 20
    MAC_INVALID = 21
    OPERATOR_PASSWORD_WRONG = 22
    OPERATOR_LOCKED = 23
    TERMINAL_BUSY = 24
    KEY_ERROR = 25
    CURRENCY_MISMATCH = 26
    INVALID_AMOUNT = 27
    NO_CODE_PRESENTED = 28     # customer walked away at the scan step
    REPLAY_DETECTED = 29
    NOT_PAID = 30              # refund of an order that was never paid
    SUPERVISOR_PASSWORD_WRONG = 31   # terminal: OperatorReset with a wrong supervisor password
    SUPERVISOR_LOCKED = 32           # terminal: 3 wrong supervisor passwords; locked for a while
    PASSWORD_NOT_ALLOWED = 33        # terminal: the new operator password is the supervisor's
    OTHER = 255


class ErrorCode(enum.IntEnum):
    """Codes in an Error message: the request could not be processed at all."""

    MALFORMED = 1            # could not decode the message
    UNKNOWN_MESSAGE = 2      # message type not supported
    UNEXPECTED = 3           # valid message, wrong state (e.g. Query while paying)
    BUSY = 4                 # another operation is in flight
    VERSION_UNSUPPORTED = 5
    NOT_ALLOWED = 6          # e.g. key loading disabled
    INTERNAL = 7


class KeyAlgorithm(enum.IntEnum):
    NONE = 0
    AES_DUKPT = 1
    TDES_DUKPT = 2


# ------------------------------------------------------------------ codecs

AMOUNT = UInt(8, maximum=MAX_AMOUNT_MINOR)
CURRENCY = Text(3, 3, CURRENCY_PATTERN, ascii_only=True)
ORDER_ID = Text(64, 1, r"[A-Za-z0-9_\-.:]+", ascii_only=True)
ID32 = Text(32, 1, r"[A-Za-z0-9_\-.:]+", ascii_only=True)
PAYMENT_CODE = Text(32, 10, r"[0-9]+", ascii_only=True)
DISPLAY = Text(256)
SHORT_TEXT = Text(128)
PASSWORD = Text(32, 4, r"[0-9A-Za-z]+", ascii_only=True)
REASON = EnumCodec(Reason, width=2, strict=False)
OUTCOME = EnumCodec(Outcome)
U8, U16, U32 = UInt(1), UInt(2), UInt(4)


@dataclass(frozen=True, slots=True)
class Totals:
    """End-of-day totals for one currency."""

    currency: str
    approved_count: int
    approved_minor: int
    refunded_count: int
    refunded_minor: int
    cancelled_count: int

    def __post_init__(self) -> None:
        CURRENCY.check("Totals.currency", self.currency)
        for name in ("approved_count", "refunded_count", "cancelled_count"):
            U32.check(f"Totals.{name}", getattr(self, name))
        for name in ("approved_minor", "refunded_minor"):
            AMOUNT.check(f"Totals.{name}", getattr(self, name))

    @property
    def net_minor(self) -> int:
        return self.approved_minor - self.refunded_minor


TotalsSchema = Struct(
    "currency" / PaddedString(3, "ascii"),
    "approved_count" / Int32ub,
    "approved_minor" / Int64ub,
    "refunded_count" / Int32ub,
    "refunded_minor" / Int64ub,
    "cancelled_count" / Int32ub,
)
TOTALS = StructCodec(TotalsSchema, Totals)


def _check_amount_positive(name: str, amount: int) -> None:
    if amount <= 0:
        raise FieldError(f"{name} must be positive")


# ------------------------------------------------------------------ messages


@message(0x0001)
class Hello(Message):
    """ECR -> terminal: first message after opening the port; negotiates the version."""

    protocol_version: int = tlv(0x01, U16)
    capabilities: int = tlv(0x02, U32, default=0)
    ecr_id: str | None = tlv(0x03, ID32, default=None)
    min_version: int = tlv(0x04, U16, default=1)
    # A random number per ECR session. It makes every session's Hello a new frame, so a
    # terminal's duplicate window cannot swallow it; on a Hello the terminal forgets the
    # frames of the previous session (Link.start_session). Optional: old peers skip it.
    session: int | None = tlv(0x85, U32, default=None)

    def validate(self) -> None:
        if self.min_version > self.protocol_version:
            raise FieldError("Hello.min_version is above protocol_version")


@message(0x0002)
class HelloReply(Message):
    """Terminal -> ECR: the version both will speak (min of the two) and who the terminal is."""

    protocol_version: int = tlv(0x01, U16)
    capabilities: int = tlv(0x02, U32)
    terminal_id: str = tlv(0x03, ID32)
    merchant_id: str = tlv(0x04, ID32)
    firmware_version: str = tlv(0x05, Text(32, 1))
    max_payload: int = tlv(0x06, U16, default=4096)


@message(0x0003)
class StatusRequest(Message):
    """ECR -> terminal: what are you doing?"""


@message(0x0004)
class Status(Message):
    state: TerminalState = tlv(0x01, EnumCodec(TerminalState))
    order_id: str | None = tlv(0x02, ORDER_ID, default=None)
    host_online: bool = tlv(0x03, Flag(), default=True)
    paper_ok: bool = tlv(0x04, Flag(), default=True)
    key_loaded: bool = tlv(0x05, Flag(), default=True)
    unfinished: int = tlv(0x06, U16, default=0)   # journaled orders not yet settled with the host


@message(0x0010)
class PayRequest(Message):
    """ECR -> terminal: take a payment. Without ``payment_code`` the terminal scans one
    (or shows a dynamic QR when ``dynamic_qr`` is set)."""

    amount_minor: int = tlv(0x01, AMOUNT)
    currency: str = tlv(0x02, CURRENCY)
    order_id: str = tlv(0x03, ORDER_ID)
    payment_code: str | None = tlv(0x04, PAYMENT_CODE, default=None, secret=True)
    description: str | None = tlv(0x05, SHORT_TEXT, default=None)
    dynamic_qr: bool = tlv(0x06, Flag(), default=False)
    timeout_s: int | None = tlv(0x07, U16, default=None)

    def validate(self) -> None:
        _check_amount_positive("PayRequest.amount_minor", self.amount_minor)
        if self.dynamic_qr and self.payment_code is not None:
            raise FieldError("PayRequest: dynamic_qr and payment_code exclude each other")


@message(0x0011)
class Progress(Message):
    """Terminal -> ECR: the operation moved on; ``text`` is what the display shows."""

    order_id: str = tlv(0x01, ORDER_ID)
    stage: Stage = tlv(0x02, EnumCodec(Stage, strict=False))
    text: str = tlv(0x03, DISPLAY, default="")
    qr_data: str | None = tlv(0x04, Text(512), default=None)
    attempt: int | None = tlv(0x05, U8, default=None)


@message(0x0012)
class PayResult(Message):
    """Terminal -> ECR: the outcome of a payment (answer to PayRequest, Query, Cancel, Abort)."""

    order_id: str = tlv(0x01, ORDER_ID)
    outcome: Outcome = tlv(0x02, OUTCOME)
    amount_minor: int = tlv(0x03, AMOUNT)
    currency: str = tlv(0x04, CURRENCY)
    reason: int = tlv(0x05, REASON, default=Reason.NONE)
    reason_text: str = tlv(0x06, SHORT_TEXT, default="")
    trade_no: str | None = tlv(0x07, ID32, default=None)
    code_last4: str | None = tlv(0x08, Text(4, 4, r"[0-9]{4}", ascii_only=True), default=None)
    refunded_minor: int = tlv(0x09, AMOUNT, default=0)
    paid_at: str | None = tlv(0x0A, Text(32), default=None)   # ISO 8601 UTC


@message(0x0013)
class Query(Message):
    """ECR -> terminal: what became of this order? Answered by PayResult."""

    order_id: str = tlv(0x01, ORDER_ID)


@message(0x0014)
class Cancel(Message):
    """ECR -> terminal: cancel this order (closes an unpaid one, refunds a paid one)."""

    order_id: str = tlv(0x01, ORDER_ID)
    operator_password: str | None = tlv(0x02, PASSWORD, default=None, secret=True)


@message(0x0015)
class Refund(Message):
    """ECR -> terminal: refund part or all of a paid order; idempotent on ``refund_id``."""

    order_id: str = tlv(0x01, ORDER_ID)
    amount_minor: int = tlv(0x02, AMOUNT)
    currency: str = tlv(0x03, CURRENCY)
    refund_id: str = tlv(0x04, ORDER_ID)
    operator_password: str = tlv(0x05, PASSWORD, secret=True)

    def validate(self) -> None:
        _check_amount_positive("Refund.amount_minor", self.amount_minor)


@message(0x0016)
class RefundResult(Message):
    order_id: str = tlv(0x01, ORDER_ID)
    refund_id: str = tlv(0x02, ORDER_ID)
    outcome: Outcome = tlv(0x03, OUTCOME)
    amount_minor: int = tlv(0x04, AMOUNT)
    currency: str = tlv(0x05, CURRENCY)
    reason: int = tlv(0x06, REASON, default=Reason.NONE)
    refunded_total_minor: int = tlv(0x07, AMOUNT, default=0)
    reason_text: str = tlv(0x08, SHORT_TEXT, default="")


@message(0x0017)
class Settle(Message):
    """ECR -> terminal: close the batch and settle with the host."""

    operator_password: str = tlv(0x01, PASSWORD, secret=True)


@message(0x0018)
class SettleReport(Message):
    batch_no: int = tlv(0x01, U32)
    totals: tuple[Totals, ...] = tlv(0x02, TOTALS, repeated=True)
    host_agrees: bool = tlv(0x03, Flag(), default=True)
    settled_at: str | None = tlv(0x04, Text(32), default=None)
    outcome: Outcome = tlv(0x05, OUTCOME, default=Outcome.APPROVED)
    reason: int = tlv(0x06, REASON, default=Reason.NONE)


@message(0x0019)
class Print(Message):
    """Terminal -> ECR: receipt lines (the terminal printed them, or asks the ECR to)."""

    lines: tuple[str, ...] = tlv(0x01, Text(64), repeated=True)
    order_id: str | None = tlv(0x02, ORDER_ID, default=None)
    copy: str = tlv(0x03, Text(16), default="customer")


@message(0x001A)
class KeyLoad(Message):
    """ECR -> terminal: load the initial DUKPT key from a TR-31 key block."""

    key_block: str = tlv(0x01, Text(512, 16, r"[0-9A-Z]+", ascii_only=True), secret=True)
    operator_password: str = tlv(0x02, PASSWORD, secret=True)


@message(0x001B)
class KeyStatusRequest(Message):
    pass


@message(0x001C)
class KeyStatus(Message):
    """Terminal -> ECR: the PIN pad's key state. Never key bytes."""

    loaded: bool = tlv(0x01, Flag())
    algorithm: KeyAlgorithm = tlv(0x02, EnumCodec(KeyAlgorithm), default=KeyAlgorithm.NONE)
    ksn: str | None = tlv(0x03, Text(24, 20, r"[0-9A-F]+", ascii_only=True), default=None)
    counters_left: int = tlv(0x04, U32, default=0)
    kcv: str | None = tlv(0x05, Text(6, 6, r"[0-9A-F]+", ascii_only=True), default=None)
    reason: int = tlv(0x06, REASON, default=Reason.NONE)


@message(0x001D)
class Abort(Message):
    """ECR -> terminal: stop the operation in flight (answered by its PayResult)."""

    order_id: str | None = tlv(0x01, ORDER_ID, default=None)


@message(0x001E)
class Error(Message):
    """Either way: the request could not be processed at all."""

    code: ErrorCode = tlv(0x01, EnumCodec(ErrorCode, strict=False))
    text: str = tlv(0x02, SHORT_TEXT, default="")
    in_reply_to: int | None = tlv(0x03, U16, default=None)


@message(0x001F)
class OperatorReset(Message):
    """ECR -> terminal: set a new operator password (and unlock it) with the terminal's
    supervisor password. Both are checked by the terminal; answered by OperatorResetResult."""

    supervisor_password: str = tlv(0x01, PASSWORD, secret=True)
    new_operator_password: str = tlv(0x02, PASSWORD, secret=True)


@message(0x0020)
class OperatorResetResult(Message):
    """Terminal -> ECR: whether the operator password was reset. DECLINED: ``reason`` is
    SUPERVISOR_PASSWORD_WRONG (with ``supervisor_tries_left``), SUPERVISOR_LOCKED (with
    ``locked_until``) or PASSWORD_NOT_ALLOWED."""

    outcome: Outcome = tlv(0x01, OUTCOME)
    reason: int = tlv(0x02, REASON, default=Reason.NONE)
    supervisor_tries_left: int | None = tlv(0x03, U8, default=None)
    locked_until: str | None = tlv(0x04, Text(32), default=None)   # ISO 8601 UTC


ECR_MESSAGES = (
    Hello, HelloReply, StatusRequest, Status, PayRequest, Progress, PayResult, Query, Cancel,
    Refund, RefundResult, Settle, SettleReport, Print, KeyLoad, KeyStatusRequest, KeyStatus,
    Abort, Error, OperatorReset, OperatorResetResult,
)
