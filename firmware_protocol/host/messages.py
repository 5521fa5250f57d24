"""Terminal <-> host messages (type codes 0x0100-0x01FF), carried in the same
frames and TLV bodies as the ECR messages (over TCP, or in-process).

Every host message ends with two fields:

    tag 0x7E  ksn  10 bytes (TDES DUKPT) or 12 bytes (AES DUKPT): the key serial
                   number whose MAC key signed this message
    tag 0x7F  mac  8 bytes: AES-CMAC (or TDES CMAC), truncated, under the DUKPT
                   MAC key of ``ksn``, over the payload with the 0x7F item removed

A request is signed with the terminal's MAC-generation key for a fresh KSN; the
host answers with the same KSN and the MAC-verification ("response") key of that
KSN. The host refuses a missing or bad MAC, and a KSN whose counter does not
increase (a replay). :func:`mac_input` gives the exact bytes a MAC covers.

Logon is a mutual challenge-response::

    terminal -> host   LogonRequest   (identity, terminal_nonce)
    host -> terminal   LogonChallenge (host_nonce, host_proof = CMAC(key, "H" | tn | hn))
    terminal -> host   LogonConfirm   (terminal_proof = CMAC(key, "T" | hn | tn))
    host -> terminal   LogonResult    (accepted, session_id)

A host that has seen a terminal nonce before refuses the logon (replayed challenge).

Security notices: an accepted LogonResult carries the notices the host publishes
(``notices``, 0x85, at most 5) and their version (``notices_version``, 0x86); every
AuthResponse, RefundResponse and SettleResponse carries the version of the moment, so a
terminal whose version differs logs on again before its next request. Both are optional
tags: a terminal that does not know them skips them, and a host that sends none has none.

An order id belongs to the merchant, and to the first terminal whose AuthRequest the
host stored for it: every AuthResponse names that terminal (``owner_terminal_id``, host
protocol 2), and the host changes an order only at its owner's request.
"""

from __future__ import annotations

import enum

from firmware_protocol.errors import FieldError, MessageError
from firmware_protocol.native.messages import (
    AMOUNT,
    CURRENCY,
    ID32,
    ORDER_ID,
    OUTCOME,
    PAYMENT_CODE,
    REASON,
    SHORT_TEXT,
    TOTALS,
    U8,
    U16,
    U32,
    Reason,
    Totals,
)
from firmware_protocol.native.tlv import Blob, EnumCodec, Flag, Message, Text, message, split_items, tlv

KSN_TAG = 0x7E
MAC_TAG = 0x7F
MAC_SIZE = 8
# Host protocol version a terminal states in LogonRequest.protocol_version. 2: AuthResponse
# carries owner_terminal_id (0x0E), and the host refuses a cancel/reversal/PIN of an order
# owned by another terminal. A version-1 terminal ignores the item (unknown optional tag).
HOST_PROTOCOL_VERSION = 2


class HostStatus(enum.IntEnum):
    APPROVED = 1
    DECLINED = 2
    CANCELLED = 3
    NEED_PIN = 4        # ask the customer for the payment password on the PIN pad
    WAIT_BUYER = 5      # the customer confirms on the phone; poll with ConfirmPoll
    PROCESSING = 6      # not final yet; query again
    NOT_FOUND = 7
    REFUNDED = 8        # paid, then fully refunded (or cancelled after payment)
    SHOW_QR = 9         # precreated: show qr_data for the customer's wallet to scan


class HostErrorCode(enum.IntEnum):
    """``HostError.code``: why the host refused a request before serving it (wire values;
    ``reason`` says the same in the shared Reason codes, docs/host.md)."""

    MAC_INVALID = 1         # bad or missing MAC
    REPLAY_DETECTED = 2     # the KSN counter did not increase (the request's, or a PIN block's)
    REFUSED = 3             # the host refused the operation (an account missing, ...)
    NOT_LOGGED_ON = 4       # no session for this terminal: log on first
    UNEXPECTED_MESSAGE = 5  # a message the host does not serve
    KEY_ERROR = 6           # the PIN block's KSN is not from the requesting terminal's device


class ConfirmMethod(enum.IntEnum):
    NONE = 0
    PIN = 1
    PHONE = 2


KSN = Blob(10, 12)
MAC = Blob(MAC_SIZE, MAC_SIZE)
NONCE = Blob(16, 16)
PIN_BLOCK = Blob(8, 16)
LOCATION = Text(32, 0, r"[A-Za-z0-9_\-.:]*", ascii_only=True)
# Security notices (optional tags, so a terminal that does not know them skips them): the
# text of each in LogonResult, and in every answer the version of the set the host publishes
# now, so a terminal holding another version logs on again to fetch them.
NOTICE = Text(256, 1)
NOTICES_TAG = 0x85
NOTICES_VERSION_TAG = 0x86
MAX_NOTICES = 5          # notices the reference host sends at most; a terminal shows no more


from dataclasses import dataclass  # noqa: E402  (after the codecs it annotates)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class HostMessage(Message):
    """Base of terminal <-> host messages: each carries the KSN and the MAC."""

    ksn: bytes | None = tlv(KSN_TAG, KSN, default=None)
    mac: bytes | None = tlv(MAC_TAG, MAC, default=None, secret=True)


@message(0x0101)
class LogonRequest(HostMessage):
    terminal_id: str = tlv(0x01, ID32)
    merchant_id: str = tlv(0x02, ID32)
    firmware_version: str = tlv(0x03, Text(32, 1))
    location: str = tlv(0x04, LOCATION, default="")
    terminal_nonce: bytes = tlv(0x05, NONCE)
    protocol_version: int = tlv(0x06, U16, default=1)


@message(0x0102)
class LogonChallenge(HostMessage):
    host_nonce: bytes = tlv(0x01, NONCE)
    host_proof: bytes = tlv(0x02, Blob(8, 16))


@message(0x0103)
class LogonConfirm(HostMessage):
    terminal_id: str = tlv(0x01, ID32)
    terminal_proof: bytes = tlv(0x02, Blob(8, 16))


@message(0x0104)
class LogonResult(HostMessage):
    accepted: bool = tlv(0x01, Flag())
    reason: int = tlv(0x02, REASON, default=Reason.NONE)
    session_id: str | None = tlv(0x03, ID32, default=None)
    host_time: str | None = tlv(0x04, Text(32), default=None)
    notices: tuple[str, ...] = tlv(NOTICES_TAG, NOTICE, repeated=True)   # security notices to show
    notices_version: int | None = tlv(NOTICES_VERSION_TAG, U32, default=None)   # absent: none


@message(0x0110)
class AuthRequest(HostMessage):
    """Authorise a payment. With ``dynamic_qr`` the host precreates a trade and answers SHOW_QR."""

    terminal_id: str = tlv(0x01, ID32)
    order_id: str = tlv(0x02, ORDER_ID)
    amount_minor: int = tlv(0x03, AMOUNT)
    currency: str = tlv(0x04, CURRENCY)
    payment_code: str | None = tlv(0x05, PAYMENT_CODE, default=None, secret=True)
    dynamic_qr: bool = tlv(0x06, Flag(), default=False)
    location: str = tlv(0x07, LOCATION, default="")
    description: str | None = tlv(0x08, SHORT_TEXT, default=None)
    pin_block: bytes | None = tlv(0x09, PIN_BLOCK, default=None, secret=True)
    pin_ksn: bytes | None = tlv(0x0A, KSN, default=None)
    pin_format: int | None = tlv(0x0B, U8, default=None)

    def validate(self) -> None:
        if self.amount_minor <= 0:
            raise FieldError("AuthRequest.amount_minor must be positive")
        if (self.payment_code is None) == (not self.dynamic_qr):
            raise FieldError("AuthRequest needs exactly one of payment_code and dynamic_qr")
        if (self.pin_block is None) != (self.pin_ksn is None):
            raise FieldError("AuthRequest: pin_block and pin_ksn go together")


@message(0x0111)
class AuthResponse(HostMessage):
    """The host's answer to AuthRequest, PinVerify, ConfirmPoll, HostQuery, HostCancel, ReversalAdvice."""

    order_id: str = tlv(0x01, ORDER_ID)
    status: HostStatus = tlv(0x02, EnumCodec(HostStatus))
    reason: int = tlv(0x03, REASON, default=Reason.NONE)
    reason_text: str = tlv(0x04, SHORT_TEXT, default="")
    trade_no: str | None = tlv(0x05, ID32, default=None)
    amount_minor: int = tlv(0x06, AMOUNT, default=0)
    currency: str | None = tlv(0x07, CURRENCY, default=None)
    qr_data: str | None = tlv(0x08, Text(512), default=None)
    code_last4: str | None = tlv(0x09, Text(4, 4, r"[0-9]{4}", ascii_only=True), default=None)
    paid_at: str | None = tlv(0x0A, Text(32), default=None)
    refunded_minor: int = tlv(0x0B, AMOUNT, default=0)
    pin_tries_left: int | None = tlv(0x0C, U8, default=None)
    poll_interval_ms: int | None = tlv(0x0D, U32, default=None)
    # Since host protocol 2: the terminal that owns the order (the first to authorise its
    # id). A terminal that gets an answer owned by another terminal must not count it.
    owner_terminal_id: str | None = tlv(0x0E, ID32, default=None)
    notices_version: int | None = tlv(NOTICES_VERSION_TAG, U32, default=None)


@message(0x0112)
class PinVerify(HostMessage):
    terminal_id: str = tlv(0x01, ID32)
    order_id: str = tlv(0x02, ORDER_ID)
    pin_block: bytes = tlv(0x03, PIN_BLOCK, secret=True)
    pin_ksn: bytes = tlv(0x04, KSN)
    pin_format: int = tlv(0x05, U8, default=4)


@message(0x0113)
class ConfirmPoll(HostMessage):
    terminal_id: str = tlv(0x01, ID32)
    order_id: str = tlv(0x02, ORDER_ID)


@message(0x0114)
class HostQuery(HostMessage):
    terminal_id: str = tlv(0x01, ID32)
    order_id: str = tlv(0x02, ORDER_ID)


@message(0x0115)
class HostCancel(HostMessage):
    terminal_id: str = tlv(0x01, ID32)
    order_id: str = tlv(0x02, ORDER_ID)
    reason: int = tlv(0x03, REASON, default=Reason.NONE)


@message(0x0116)
class HostRefund(HostMessage):
    terminal_id: str = tlv(0x01, ID32)
    order_id: str = tlv(0x02, ORDER_ID)
    refund_id: str = tlv(0x03, ORDER_ID)
    amount_minor: int = tlv(0x04, AMOUNT)
    currency: str = tlv(0x05, CURRENCY)

    def validate(self) -> None:
        if self.amount_minor <= 0:
            raise FieldError("HostRefund.amount_minor must be positive")


@message(0x0117)
class RefundResponse(HostMessage):
    order_id: str = tlv(0x01, ORDER_ID)
    refund_id: str = tlv(0x02, ORDER_ID)
    outcome: int = tlv(0x03, OUTCOME)
    reason: int = tlv(0x04, REASON, default=Reason.NONE)
    amount_minor: int = tlv(0x05, AMOUNT, default=0)
    refunded_total_minor: int = tlv(0x06, AMOUNT, default=0)
    currency: str | None = tlv(0x07, CURRENCY, default=None)
    notices_version: int | None = tlv(NOTICES_VERSION_TAG, U32, default=None)


@message(0x0118)
class ReversalAdvice(HostMessage):
    """The terminal does not know the outcome (timeout, power loss): undo it if it happened."""

    terminal_id: str = tlv(0x01, ID32)
    order_id: str = tlv(0x02, ORDER_ID)
    reason: int = tlv(0x03, REASON, default=Reason.NONE)


@message(0x0119)
class SettleRequest(HostMessage):
    terminal_id: str = tlv(0x01, ID32)
    batch_no: int = tlv(0x02, U32)
    totals: tuple[Totals, ...] = tlv(0x03, TOTALS, repeated=True)


@message(0x011A)
class SettleResponse(HostMessage):
    batch_no: int = tlv(0x01, U32)
    totals: tuple[Totals, ...] = tlv(0x02, TOTALS, repeated=True)
    agrees: bool = tlv(0x03, Flag())
    settled_at: str | None = tlv(0x04, Text(32), default=None)
    notices_version: int | None = tlv(NOTICES_VERSION_TAG, U32, default=None)


@message(0x011F)
class HostError(HostMessage):
    code: int = tlv(0x01, U16)  # a HostErrorCode from the host (the emulated terminal uses 0 for its own)
    reason: int = tlv(0x02, REASON, default=Reason.NONE)
    text: str = tlv(0x03, SHORT_TEXT, default="")


HOST_MESSAGES = (
    LogonRequest, LogonChallenge, LogonConfirm, LogonResult, AuthRequest, AuthResponse,
    PinVerify, ConfirmPoll, HostQuery, HostCancel, HostRefund, RefundResponse,
    ReversalAdvice, SettleRequest, SettleResponse, HostError,
)


def mac_input(payload: bytes) -> bytes:
    """The bytes a host-message MAC covers: ``payload`` without its 0x7F item.

    Raises :class:`MessageError` if the payload has no MAC item or more than one.
    """
    _, items = split_items(payload)
    macs = [(off, len(v)) for tag, off, v in items if tag == MAC_TAG]
    if len(macs) != 1:
        raise MessageError("host message must carry exactly one MAC item")
    off, n = macs[0]
    return payload[:off] + payload[off + 3 + n:]


def pin_pan(code_last4: str) -> str:
    """The "PAN" an ISO 9564 PIN block for a payment is bound to: the payment code's last
    4 digits, left-padded with zeros to 12 digits.

    A one-time payment code is single use and the host keeps only its hash and last 4
    digits, so both sides bind the PIN block to what both keep.
    """
    if len(code_last4) != 4 or not code_last4.isdigit():
        raise FieldError("pin_pan needs the last 4 digits of the payment code")
    return code_last4.rjust(12, "0")
