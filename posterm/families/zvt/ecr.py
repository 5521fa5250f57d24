"""Drive a ZVT terminal (the German counter protocol) with the ECR driver API.

    from posterm.families.zvt.ecr import ZvtTerminal

    with ZvtTerminal.open("tcp://192.168.1.50:20007", password="123456") as term:
        term.hello()                                   # Registration 06 00
        result = term.pay(1250, "EUR", order_id="A-17")

One command is one dialog (the master-rights rule, :mod:`posterm.families.zvt.link`): the
register sends a command, the terminal answers ``80 00 00`` (or refuses ``84 xx``) and,
holding control, sends intermediate status (04 FF, reported to ``on_progress``), status
information (04 0F, the transaction's result), print lines (06 D1) and text blocks (06 D3)
(the receipt), each acknowledged ``80 00 00`` by the register, until Completion (06 0F) or
Abort (06 1E) hands control back.

============  =============================================================================
operation     on the wire
============  =============================================================================
``hello``     Registration 06 00: password, config byte, currency; until Completion
``pay``       Authorisation 06 01: 04 amount, 49 currency
``cancel``    Reversal 06 30: password, 87 the receipt number journaled for the order
``refund``    Refund 06 31: password, 04 amount, 49 currency
``settle``    End of day 06 50: password; totals from the status information (04, 60)
``status``    Status enquiry 05 01; the Completion carries the terminal status byte
``abort``     Abort 06 B0 (also sent by ``pay`` when its timeout passes)
``query``     none: ZVT cannot ask about an order (:class:`Unsupported`)
============  =============================================================================

What the driver does about what ZVT lacks:

* **No order id on the wire.** The order is journaled before the Authorisation leaves;
  the status information's receipt number (87), trace number (0B), card name (8B) and
  terminal id (29) are journaled with the outcome (the result's ``"zvt"`` entry), and the
  reversal finds the receipt number there. An order id this journal already holds is never
  sent again: a final one is answered from the journal, an unfinished one refused (the
  terminal could not tell a retry from a second payment).
* **The acknowledgement is the receipt.** The link holds the status information's
  ``80 00 00`` (``ZvtLink(confirm_results=True)``) until its result is journaled: a
  register killed or cut off after that has the approval in its journal; if journaling
  fails, nothing is acknowledged. A status information for no dialog of this register's
  (one given up by another process, or arriving during a registration) is never
  acknowledged: the terminal reverses it, and it is never taken for another order's.
* **No query.** ``recover`` cannot ask the terminal, and does not need to (as with
  Concert): an unfinished payment is one whose status information this register never
  journaled, hence never acknowledged, and a ZVT terminal does not keep a result its
  register did not take (it reverses it; posterm's emulator does). So ``recover`` records
  it ``cancelled`` with the reason in ``reason_text``; it is never sent again (that could
  charge twice). Unfinished reversals and refunds are reported ``unknown``. An approval is
  final in the journal from its status information on and never downgraded; ``pay``
  returns it even when the terminal never completes the dialog.
* **Abort.** ``pay``'s timeout, or :meth:`ZvtTerminal.abort` while it runs (the CLI calls it
  on Ctrl-C), sends 06 B0 and waits at most :data:`ABORT_GRACE` (plus T3) for the
  terminal's 06 1E: cancelled (``aborted_by_ecr``), or with no answer ``PosTimeout`` and the
  order unfinished for ``recover``.
* **Passwords.** ZVT has one password field: the terminal's (``password``, for
  registration and status enquiry) is also used for reversal, refund and end of day when
  no ``operator_password`` is given. There is no default: the CLI takes
  ``--terminal-password``, ``--terminal-password-stdin`` or ``$POSTERM_TERMINAL_PASSWORD``.
* **Transport.** ``tcp://`` and ``socket://`` carry bare APDUs, everything else the serial
  framing (:func:`framing_for`; ``framing=`` / ``--zvt-framing`` overrides).
* **Refund ids** do not cross the line: a refund id already journaled is answered from the
  journal and never sent again.
* Passwords go on the wire as BCD; traces (``trace=True`` or the ``posterm.wire`` logger at
  DEBUG) show every APDU described with the password and secret BMPs masked
  (:func:`firmware_protocol.zvt.describe`), hex dumps with the password bytes as
  :data:`posterm.ecr.trace.MASK_BYTE` and none at all for an APDU holding a secret BMP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from firmware_protocol import currency as cur
from firmware_protocol.errors import ProtocolError
from firmware_protocol.native.messages import Stage, Status, TerminalState, Totals
from firmware_protocol.zvt import (
    SECRET_BMPS,
    Abort,
    Aborted,
    Authorisation,
    Command,
    Completion,
    EndOfDay,
    Fields,
    IndividualTotals,
    IntermediateStatus,
    PrintLine,
    PrintTextBlock,
    Refund,
    Registration,
    Reversal,
    StatusEnquiry,
    StatusInformation,
    ZvtFieldError,
    describe,
)

from posterm.ecr.ids import new_order_id
from posterm.ecr.journal import Journal, JournalEntry
from posterm.ecr.results import (
    Capability, Outcome, OutcomeMismatch, PaymentResult, Reason, RefundOutcome, Settlement, TerminalInfo,
    journaled_refund, mismatch,
)
from posterm.ecr.session import (
    DEFAULT_PAY_TIMEOUT, PortSession, check_timeout, line_rate, line_settings, resolve_port,
)
from posterm.ecr.trace import MASK_BYTE, hexdump
from posterm.errors import LinkFailed, LocalProtocolError, PosError, PosTimeout
from posterm.families.events import (
    Delivered, DuplicateIgnored, FrameRejected, GarbageSkipped, MessageReceived, PartialDiscarded, Retransmitted,
    SendFailed, UndecodableMessage,
)
from posterm.families.pump import Pump
from posterm.families.zvt.link import Refused, TimedOut, ZvtConfig, ZvtLink

__all__ = ["DEFAULT_CONFIG_BYTE", "NO_PASSWORD", "framing_for", "RESULT_REASONS", "SERIAL_DEFAULTS", "Unsupported", "ZvtProgress", "ZvtRefused",
           "ZvtTerminal", "outcome_for", "reason_for"]

log = logging.getLogger("posterm.ecr.zvt")
wire_log = logging.getLogger("posterm.wire")

#: ZVT's usual line: 9600 baud, 8 data bits, no parity, 2 stop bits.
SERIAL_DEFAULTS = {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 2}
#: The config byte the Feig capture's register sends (0xDE): the ECR prints the payment and
#: administration receipts (print lines come to it), the PT sends intermediate status, the
#: ECR controls the payment; 0x80: receipts as text blocks (06 D3) where the PT can.
DEFAULT_CONFIG_BYTE = 0xDE
MAX_RECEIPT_LINES = 256
MAX_AMOUNT_MINOR = 999_999_999_999          # BMP 04: 6 bytes BCD
ABORT_GRACE = 5.0                           # seconds to wait for 06 1E after our 06 B0
RESULT_ABORTED = 0x6C                       # "abort via timeout or abort key"

#: ZVT result codes (BMP 27, 06 1E) -> posterm's reasons. 0x01..0x63 are the authorisation
#: host's ISO 8583 response codes as a binary byte (0x33 = 51 insufficient funds); 0x64 on
#: are ZVT's own (spec chapter 10, as the public ZVT implementations list them). A code not
#: here is declined with Reason.OTHER and its number in the reason text.
RESULT_REASONS: dict[int, Reason] = {
    0x0D: Reason.INVALID_AMOUNT, 0x0E: Reason.CODE_INVALID, 0x26: Reason.PIN_LOCKED,
    0x33: Reason.INSUFFICIENT_BALANCE, 0x36: Reason.CODE_EXPIRED, 0x37: Reason.WRONG_PIN,
    0x3B: Reason.RISK_REJECTED, 0x3D: Reason.OVER_TRANSACTION_LIMIT, 0x3E: Reason.ACCOUNT_FROZEN,
    0x41: Reason.OVER_DAILY_LIMIT,
    0x64: Reason.CODE_INVALID, 0x65: Reason.NO_CODE_PRESENTED, 0x6B: Reason.TERMINAL_UNKNOWN,
    RESULT_ABORTED: Reason.CUSTOMER_CANCELLED, 0x6E: Reason.ACCOUNT_FROZEN, 0x6F: Reason.CURRENCY_MISMATCH,
    0x71: Reason.INSUFFICIENT_BALANCE, 0x73: Reason.CODE_INVALID, 0x78: Reason.CODE_EXPIRED,
    0x79: Reason.CODE_INVALID, 0x7A: Reason.CODE_INVALID, 0x7D: Reason.HOST_UNAVAILABLE,
    0x85: Reason.KEY_ERROR, 0x9B: Reason.HOST_UNAVAILABLE, 0x9C: Reason.TERMINAL_BUSY,
    0xA0: Reason.HOST_UNAVAILABLE, 0xA1: Reason.HOST_UNAVAILABLE, 0xA3: Reason.HOST_UNAVAILABLE,
    0xB5: Reason.CANCEL_WINDOW_EXPIRED, 0xC3: Reason.OVER_TRANSACTION_LIMIT, 0xC6: Reason.CURRENCY_MISMATCH,
    0xC8: Reason.INVALID_AMOUNT, 0xC9: Reason.INVALID_AMOUNT, 0xCB: Reason.CURRENCY_MISMATCH,
    0xE4: Reason.TERMINAL_UNKNOWN,
}

#: Intermediate status bytes (04 FF) -> what the customer is being asked, for ``on_progress``.
_INTERMEDIATE: dict[int, tuple[Stage, str]] = {
    0x00: (Stage.AUTHORISING, "waiting for amount confirmation"),
    0x01: (Stage.WAITING_FOR_PIN, "please watch PIN pad"), 0x02: (Stage.WAITING_FOR_PIN, "please watch PIN pad"),
    0x04: (Stage.AUTHORISING, "waiting for the host"), 0x0A: (Stage.WAITING_FOR_SCAN, "insert card"),
    0x0E: (Stage.AUTHORISING, "please wait"), 0x15: (Stage.WAITING_FOR_PIN, "incorrect PIN"),
    0x17: (Stage.AUTHORISING, "please wait"), 0x41: (Stage.WAITING_FOR_PIN, "please watch PIN pad"),
    0x42: (Stage.WAITING_FOR_PIN, "please watch PIN pad"), 0xD2: (Stage.AUTHORISING, "connecting"),
    0xD3: (Stage.AUTHORISING, "connected"),
}
_TEXT_LINE = 0x07          # TLV: a display or receipt text line
#: Said when an operation needs the terminal's password and none was given: how to give it,
#: from the command line and from Python.
NO_PASSWORD = ("ZVT registration needs the terminal's password (6 digits): give --terminal-password,"
               " --terminal-password-stdin or $POSTERM_TERMINAL_PASSWORD (Python: open(..., password=...))")
#: Why ``recover`` records an unfinished payment cancelled (the ACK is the receipt).
UNACKNOWLEDGED = ("ZVT has no query; this ECR never acknowledged a result for it, and a ZVT terminal reverses"
                  " a result its ECR did not acknowledge (check the terminal's journal if yours does not)")


def framing_for(url: str) -> str:
    """The ZVT transport a port URL implies: ``tcp`` (bare APDUs) for ``tcp://`` and
    pyserial's ``socket://`` (a ZVT terminal on the network, port 20007 by convention),
    ``serial`` (DLE framing, CRC, ACK bytes) for a device, a pty, ``rfc2217://`` (a serial port
    on the network) and the rest. A raw serial-over-TCP bridge (ser2net) on ``socket://``
    carries the serial framing: pass ``framing="serial"``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return "tcp" if scheme in ("tcp", "socket") else "serial"


class Unsupported(LocalProtocolError):
    """The ZVT protocol has no message for this operation."""


class ZvtRefused(PosError):
    """The terminal refused the command with ``84 xx`` (``error`` is xx: 83 unknown command,
    9C repeat later, ...) or ended it with 06 1E before doing anything (``result_code``)."""

    def __init__(self, text: str, error: int | None = None, result_code: int | None = None) -> None:
        super().__init__(text)
        self.error = error
        self.result_code = result_code


@dataclass(frozen=True, slots=True)
class ZvtProgress:
    """What ``on_progress`` gets for an intermediate status (04 FF): the stage and text the
    CLI shows, the raw status byte, the order the operation is for."""

    stage: Stage
    text: str
    status: int
    order_id: str | None = None
    qr_data: str | None = None


def reason_for(code: int) -> Reason:
    """The :class:`Reason` of a non-zero ZVT result code (:data:`RESULT_REASONS`, else OTHER)."""
    return RESULT_REASONS.get(code, Reason.OTHER)


def outcome_for(code: int, aborted_by_ecr: bool = False) -> tuple[Outcome, Reason]:
    """A ZVT result code as posterm's outcome and reason: 00 approved; 6C (abort by timeout
    or the abort key) cancelled, by the customer or, after our 06 B0, by the ECR; anything
    else declined."""
    if code == 0:
        return Outcome.APPROVED, Reason.NONE
    if code == RESULT_ABORTED:
        return Outcome.CANCELLED, Reason.ABORTED_BY_ECR if aborted_by_ecr else Reason.CUSTOMER_CANCELLED
    return Outcome.DECLINED, reason_for(code)


def _code_text(code: int) -> str:
    return f"zvt result 0x{code:02X}"


@dataclass
class _Dialog:
    """One command's dialog as it goes: what came, whether it ended."""

    command: Command
    order_id: str | None
    on_status: Callable[[StatusInformation], None] | None
    on_progress: Callable[[Any], None] | None
    accepted: bool = False
    statuses: list[StatusInformation] = field(default_factory=list)
    receipt: list[str] = field(default_factory=list)
    receipt_dropped: int = 0
    completion: Completion | None = None
    aborted: Aborted | None = None
    abort_sent: bool = False
    gave_up_after: float | None = None
    done: bool = False


class ZvtTerminal(PortSession):
    """An ECR talking ZVT to a terminal, over serial (DLE framing, ACK/NAK) or TCP (bare
    APDUs). One operation at a time; a context manager. ``password`` is the terminal's
    (6 digits) for Registration and Status enquiry; the operations that need the operator's
    take ``operator_password``."""

    protocol = "zvt"
    #: What answered ``hello``: what ``posterm doctor`` reports.
    probe = "Registration (06 00) answered by Completion (06 0F)"
    READ_SIZE = 4096

    def __init__(self, transport: Any, *, port_name: str = "", journal: Journal | None = None,
                 framing: str | None = None, config: ZvtConfig | None = None, password: str | None = None,
                 config_byte: int = DEFAULT_CONFIG_BYTE, currency: str = "EUR", trace: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._init_port(transport, port_name, journal)
        # The ACK is the receipt: a status information is acknowledged only once journaled.
        self._link = ZvtLink("ecr", framing or framing_for(self.port_name), config, confirm_results=True)
        self._clock = clock
        if password is not None:
            _build(Registration, password=password, config_byte=0)    # checks the form: 6 digits
        if type(config_byte) is not int or not 0 <= config_byte <= 255:
            raise LocalProtocolError("the ZVT config byte is 0..255")
        self._password = password
        self.config_byte = config_byte
        self.currency = currency
        self._currency_numeric = _numeric(currency)
        self._trace = trace
        self._lock = threading.Lock()
        self._abort_requested = False
        self._registration_tried = False
        # A dialog given up while the terminal held control (a timeout, an error): what the
        # terminal still sends for it belongs to its order, not to the next command's.
        self._abandoned: _Dialog | None = None
        self.info: TerminalInfo | None = None
        #: The terminal status byte and software version of the last status enquiry.
        self.terminal_status: int | None = None
        self.software_version: str | None = None

    def __repr__(self) -> str:            # never the password
        return f"<ZvtTerminal {self.port_name} {self._link.transport}>"

    @classmethod
    def open(cls, url: str | None = None, *, journal: Journal | str | None = None, record: str | None = None,
             password: str | None = None, config_byte: int = DEFAULT_CONFIG_BYTE, currency: str = "EUR",
             framing: str | None = None, config: ZvtConfig | None = None, trace: bool = False,
             **settings: Any) -> "ZvtTerminal":
        """Open ``url``: ``tcp://HOST:PORT`` (bare APDUs; port 20007 by convention) or a serial
        port (9600 8N2 unless ``settings`` say otherwise). ``framing`` ("serial" / "tcp")
        overrides what the URL implies (:func:`framing_for`). Raises TransportError, LocalProtocolError."""
        url = resolve_port(url)
        settings = line_settings(url, settings, SERIAL_DEFAULTS, foreign=("reconnect", "link_config"))
        framing = framing or framing_for(url)
        rate = line_rate(url, settings) if framing == "serial" else None
        if rate is not None and (config is None or config.line_rate is None):
            # a 1 KiB receipt takes over a second at 9600 baud: the ACK byte's wait must allow it
            config = dataclasses.replace(config or ZvtConfig(), line_rate=rate)
        return cls._open_session(url, settings, record, journal, lambda transport, journal, _: cls(
            transport, port_name=url, journal=journal, framing=framing, config=config, password=password,
            config_byte=config_byte, currency=currency, trace=trace))

    @property
    def link_stats(self) -> dict[str, int]:
        return dict(self._link.stats)

    # -- operations -----------------------------------------------------------------------

    def hello(self, timeout: float = 10.0) -> TerminalInfo:
        """Registration 06 00 (password, config byte, currency) until the terminal's Completion.
        Returns what the Completion says (terminal id 29; software version if given).
        Raises LocalProtocolError (no password given to ``open``), ZvtRefused, PosTimeout."""
        check_timeout(timeout)
        if self._password is None:
            raise LocalProtocolError(NO_PASSWORD)
        command = _build(Registration, password=self._password, config_byte=self.config_byte,
                         currency=self._currency_numeric)
        self._registration_tried = True
        with self._op():
            d = self._dialog(command, timeout)
        if d.completion is None:
            raise ZvtRefused(f"registration refused by {self.port_name}: {_aborted_text(d)}",
                             result_code=d.aborted.result_code if d.aborted else None)
        c = d.completion
        self.info = TerminalInfo(c.fields.terminal_id or "", (c.fields.vu_number or "").strip(),
                                 c.software_version or "zvt", 0, Capability(0))
        return self.info

    def status(self, timeout: float = 10.0) -> Status:
        """Status enquiry 05 01 (with the password when ``open`` had one). Returns a
        :class:`Status`: IDLE when the terminal status byte is 00 (ready), ERROR otherwise
        (the byte is kept in ``self.terminal_status``)."""
        check_timeout(timeout)
        command = _build(StatusEnquiry, password=self._password)
        with self._op():
            d = self._dialog(command, timeout)
        if d.completion is None:
            raise ZvtRefused(f"status enquiry ended by {self.port_name}: {_aborted_text(d)}",
                             result_code=d.aborted.result_code if d.aborted else None)
        self.terminal_status = d.completion.terminal_status
        self.software_version = d.completion.software_version
        ready = self.terminal_status in (None, 0)
        return Status(state=TerminalState.IDLE if ready else TerminalState.ERROR,
                      unfinished=len(self._journal.unfinished()) if self._journal is not None else 0)

    def pay(self, amount_minor: int, currency: str, order_id: str | None = None, payment_code: str | None = None,
            on_progress: Callable[[Any], None] | None = None, timeout: float = DEFAULT_PAY_TIMEOUT,
            description: str | None = None, dynamic_qr: bool = False) -> PaymentResult:
        """Authorisation 06 01 of ``amount_minor`` in ``currency``; the customer pays at the
        terminal. Journaled before it is sent; the status information's result journaled
        before it is acknowledged. When ``timeout`` passes, Abort 06 B0 is sent and the
        terminal's answer returned (``gave_up_after`` set). ``description`` has no ZVT
        field and is not sent. Raises PosTimeout (no outcome:
        the order stays unfinished), OutcomeMismatch (approved for another amount:
        journaled), ZvtRefused (84 xx: nothing was charged), LinkFailed, TransportError."""
        if payment_code is not None or dynamic_qr:
            raise Unsupported("ZVT has no field for a payment code or a dynamic QR: the terminal reads"
                              " the card or scans the customer's code itself")
        _check_amount(amount_minor)
        check_timeout(timeout)
        numeric = _numeric(currency)
        order_id = order_id or new_order_id("ZV")
        self._register_once()
        with self._op():
            earlier = self._journal.get(order_id) if self._journal is not None else None
            if earlier is not None:
                return self._pay_again(earlier, amount_minor, currency)
            self._journal_sent(order_id, "pay", amount_minor, currency)
            command = Authorisation.make(amount=amount_minor, currency=numeric)
            results: list[PaymentResult] = []

            def on_status(si: StatusInformation) -> None:
                result = self._txn_result(si, d, order_id, amount_minor, currency)
                if result is not None:
                    results.append(result)
                    self._journal_outcome("pay", result, si)

            d = _Dialog(command, order_id, on_status, on_progress)
            try:
                self._run(d, timeout, abortable=True)
            except PosTimeout:
                if not results:
                    if self._journal is not None:
                        self._journal.record_attempt(order_id, "pay", "gave_up",
                                                     f"no outcome within {timeout:g} s"
                                                     + (" (Abort sent, not confirmed)" if d.abort_sent else ""))
                    raise PosTimeout(f"no outcome for order {order_id} from {self.port_name}"
                                     + (" after Abort" if d.abort_sent and d.gave_up_after is None
                                        else f" within {timeout:g} s" + (" (nor after Abort)" if d.abort_sent else ""))
                                     + ": it stays unfinished in the journal (run recover)") from None
                # The status information (journaled, acknowledged) is the result; the missing
                # completion only hands control back.
                log.warning("order %s: the terminal sent its result but never completed the dialog", order_id)
            except BaseException:
                if self._journal is not None and not results:
                    self._journal.record_attempt(order_id, "pay", "gave_up", "interrupted before an outcome")
                raise
        result = self._final(d, results, order_id, amount_minor, currency, "pay")
        problem = mismatch(result, order_id, amount_minor, currency)
        if problem is not None:
            raise OutcomeMismatch(f"{problem}; journaled as the terminal said it: check order {order_id}"
                                  " with the terminal's receipt")
        return result

    def cancel(self, order_id: str, operator_password: str | None = None, timeout: float = 60.0,
               on_progress: Callable[[Any], None] | None = None) -> PaymentResult:
        """Reversal 06 30 of ``order_id`` by the receipt number its approval journaled.
        Returns CANCELLED (result code 00) or DECLINED with the reason. Raises
        LocalProtocolError when there is no approval with a receipt number in this journal
        or no password."""
        check_timeout(timeout)
        operator_password = self._operator(operator_password, "a ZVT reversal")
        entry = self._journal.get(order_id) if self._journal is not None else None
        receipt_no = _zvt(entry).get("receipt_no") if entry is not None else None
        if entry is None or entry.outcome != "approved" or receipt_no is None:
            raise LocalProtocolError(
                f"order {order_id} has no approval with a receipt number in this journal: ZVT reverses by receipt"
                " number only; reverse it on the terminal")
        command = _build(Reversal, password=operator_password, receipt_no=receipt_no)
        self._register_once()
        with self._op():
            self._journal_sent(order_id, "cancel", entry.amount_minor, entry.currency)
            results: list[PaymentResult] = []

            def on_status(si: StatusInformation) -> None:
                result = self._txn_result(si, d, order_id, entry.amount_minor, entry.currency, reversal=True)
                if result is not None:
                    results.append(result)
                    self._journal_outcome("cancel", result, si)

            d = _Dialog(command, order_id, on_status, on_progress)
            self._run(d, timeout)
        return self._final(d, results, order_id, entry.amount_minor, entry.currency, "cancel")

    def refund(self, order_id: str, amount_minor: int, refund_id: str, operator_password: str | None = None,
               currency: str | None = None, timeout: float = 60.0,
               on_progress: Callable[[Any], None] | None = None) -> RefundOutcome:
        """Refund 06 31 of ``amount_minor`` (password, 04 amount, 49 currency, and 87 the
        receipt number when this journal has the order's approval). ZVT carries no order or
        refund id: a refund id this journal has seen is answered from it, never sent again.
        ``operator_password`` None: the terminal's (ZVT has one password)."""
        check_timeout(timeout)
        _check_amount(amount_minor)
        operator_password = self._operator(operator_password, "a ZVT refund")
        entry = self._journal.get(order_id) if self._journal is not None else None
        if currency is None:
            if entry is None:
                raise LocalProtocolError("currency is required when the order is not in this journal")
            currency = entry.currency
        numeric = _numeric(currency)
        receipt_no = _zvt(entry).get("receipt_no") if entry is not None and entry.outcome == "approved" else None
        command = _build(Refund, password=operator_password, amount=amount_minor, currency=numeric,
                         **({"receipt_no": receipt_no} if receipt_no is not None else {}))
        self._register_once()
        with self._op():
            if self._journal is not None:
                earlier = self._journal.get(order_id, "refund", refund_id)
                if earlier is not None:
                    return journaled_refund(earlier, amount_minor, currency, protocol="ZVT", look="the terminal's receipt")
            self._journal_sent(order_id, "refund", amount_minor, currency, ref_id=refund_id)
            outcomes: list[RefundOutcome] = []

            def on_status(si: StatusInformation) -> None:
                if si.fields.result_code is None:
                    return
                outcome, reason = outcome_for(si.fields.result_code, d.abort_sent)
                out = RefundOutcome(order_id, refund_id, Outcome.APPROVED if outcome is Outcome.APPROVED
                                    else Outcome.DECLINED, _amount(si, amount_minor), currency, reason,
                                    self._refunded_total(order_id, refund_id, amount_minor, outcome),
                                    "" if outcome is Outcome.APPROVED else _code_text(si.fields.result_code))
                outcomes.append(out)
                self._journal_refund(out, si)

            d = _Dialog(command, order_id, on_status, on_progress)
            self._run(d, timeout)
        receipt = tuple(d.receipt)
        if outcomes:
            return dataclasses.replace(outcomes[-1], receipt=receipt)
        if d.aborted is not None:
            _, reason = outcome_for(d.aborted.result_code)
            out = RefundOutcome(order_id, refund_id, Outcome.DECLINED, amount_minor, currency, reason,
                                self._refunded_total(order_id, refund_id, 0, Outcome.DECLINED),
                                _code_text(d.aborted.result_code), receipt)
            self._journal_refund(out, None)
            return out
        return RefundOutcome(order_id, refund_id, Outcome.UNKNOWN, amount_minor, currency, Reason.NONE, 0,
                             "completion without status information: check the terminal's receipt", receipt)

    def settle(self, operator_password: str | None = None, timeout: float = 120.0,
               on_progress: Callable[[Any], None] | None = None) -> Settlement:
        """End of day 06 50. The totals come from the status information: 04 the total, 60 the
        count per card group, 49 the currency (else the one given to ``open``), 0B the trace
        number (``batch_no``). ``operator_password`` None: the terminal's."""
        check_timeout(timeout)
        command = _build(EndOfDay, password=self._operator(operator_password, "a ZVT end of day"))
        self._register_once()
        with self._op():
            d = _Dialog(command, None, None, on_progress)
            self._run(d, timeout)
        receipt = tuple(d.receipt)
        si = next((s for s in reversed(d.statuses) if s.fields.result_code is not None), None)
        code = si.fields.result_code if si is not None else (d.aborted.result_code if d.aborted else None)
        if code is None:
            return Settlement(0, (), False, None, Outcome.UNKNOWN, Reason.NONE, receipt)
        outcome, reason = outcome_for(code)
        f = si.fields if si is not None else Fields()
        count = 0
        if f.single_amounts is not None:
            try:
                count = sum(t.count for t in IndividualTotals.decode(f.single_amounts).totals.values())
            except ZvtFieldError:
                log.warning("end of day: BMP 60 is not the individual totals layout; count unknown")
        currency = _alpha(f.currency) or self.currency
        totals = (Totals(currency, count, f.amount or 0, 0, 0, 0),) if si is not None else ()
        return Settlement(f.trace or 0, totals, outcome is Outcome.APPROVED, _when(f), outcome, reason, receipt)

    def abort(self, order_id: str | None = None, timeout: float = 10.0) -> None:
        """Abort 06 B0. While ``pay`` runs (from ``on_progress`` or another thread): asks it to
        send the abort; that ``pay`` returns the terminal's answer (normally cancelled). With
        nothing running here: sends it (the terminal acknowledges, or refuses with 84 xx when it
        has nothing to abort). Returns None."""
        check_timeout(timeout)
        if self._lock.locked():
            self._abort_requested = True
            return None
        with self._op():
            d = _Dialog(Abort(), order_id, None, None)
            try:
                self._run(d, timeout)
            except ZvtRefused as exc:
                log.info("abort refused by the terminal (84 %02X): nothing in progress", exc.error or 0)
        return None

    def recover(self, timeout: float = 10.0, **_kw: Any) -> list[PaymentResult | RefundOutcome]:
        """ZVT cannot ask about an order, so nothing is sent; as with Concert, the ACK is the
        receipt. An unfinished payment is one whose status information this register never
        journaled, and so never acknowledged (:class:`ZvtLink` holds the 80 00 00 until the
        journal has it): a ZVT terminal does not keep a result its register did not take (it
        reverses it; posterm's emulator does), so the payment is recorded ``cancelled`` (final)
        with the reason in ``reason_text``. Never sent again: that could charge twice.
        Unfinished reversals and refunds are reported ``unknown`` and left unfinished (check
        the terminal's journal: a refund id already journaled is never re-sent). Approvals
        are final from their status information on and are never downgraded."""
        check_timeout(timeout)
        if self._journal is None:
            return []
        out: list[PaymentResult | RefundOutcome] = []
        text = "ZVT has no query: this ECR never acknowledged a result for this {}; check the terminal's journal"
        for entry in self._journal.unfinished():
            if entry.kind == "pay":
                result = PaymentResult(entry.order_id, Outcome.CANCELLED, entry.amount_minor, entry.currency,
                                       Reason.NONE, UNACKNOWLEDGED)
                self._journal_outcome("pay", result, None)
                log.warning("order %s: its result was never acknowledged by this ECR: recorded cancelled"
                            " (the terminal reverses it)", entry.order_id)
                out.append(result)
            elif entry.kind == "refund":
                out.append(RefundOutcome(entry.order_id, entry.ref_id, Outcome.UNKNOWN, entry.amount_minor,
                                         entry.currency, reason_text=text.format("refund")))
            else:
                out.append(PaymentResult(entry.order_id, Outcome.UNKNOWN, entry.amount_minor, entry.currency,
                                         reason_text=text.format("reversal")))
        return out

    def query(self, order_id: str, timeout: float = 10.0) -> PaymentResult:
        raise Unsupported("the ZVT protocol has no query by order: see the terminal's receipt (or `recover`)")

    def load_key(self, key_block: str, operator_password: str, timeout: float = 10.0) -> Any:
        raise Unsupported("ZVT has no key-loading command for the ECR")

    def key_status(self, timeout: float = 3.0) -> Any:
        raise Unsupported("ZVT has no key-status command for the ECR")

    def _register_once(self) -> None:
        """Register (06 00) before this session's first transaction, when ``open`` had the
        password and ``hello`` was not called: the config byte decides who prints the receipt
        and whether intermediate status comes, and a terminal may forget a registration with
        its connection. Tried once per session; a terminal that refuses or does not answer it
        is left with its own settings (logged), the transaction goes on."""
        if self._registration_tried or self._password is None or self.info is not None:
            return
        try:
            self.hello()
        except (ZvtRefused, PosTimeout) as exc:
            log.warning("registration before the first transaction failed (%s): the terminal's own settings apply",
                        exc)

    def _operator(self, password: str | None, what: str) -> str:
        """The password for ``what``: the one given, else the terminal's (ZVT has one password
        field; the terminal checks it). Raises LocalProtocolError when there is neither."""
        if password is not None:
            return password
        if self._password is None:
            raise LocalProtocolError(f"{what} needs the terminal's password: give --operator-password or"
                                     " --terminal-password (Python: operator_password=..., or open(..., password=...))")
        return self._password

    # -- the dialog -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _op(self) -> Iterator[None]:
        if self._closed:
            raise LocalProtocolError("terminal is closed")
        if not self._lock.acquire(blocking=False):
            raise LocalProtocolError("another operation is in progress on this terminal")
        self._abort_requested = False
        try:
            yield
        finally:
            self._abort_requested = False
            self._lock.release()

    def _dialog(self, command: Command, timeout: float) -> _Dialog:
        d = _Dialog(command, None, None, None)
        self._run(d, timeout)
        return d

    def _pump(self) -> Pump:
        return Pump(self._link, self._read, self._write, clock=self._clock)

    def _run(self, d: _Dialog, timeout: float, abortable: bool = False) -> None:
        """Send ``d.command`` and turn the line until its dialog ends. Each turn's events are
        handled before anything is written, so a status information is journaled (by
        ``d.on_status``) before its 80 00 00 leaves; if handling fails nothing is
        acknowledged. ``abortable``: when ``timeout`` passes while the terminal holds
        control, send Abort and wait :data:`ABORT_GRACE` more for its end."""
        pump = self._pump()
        self._trace_out(d.command)
        pump.send(d.command)
        deadline = self._clock() + timeout
        while not d.done:
            now = self._clock()
            if self._abort_requested and not d.abort_sent and d.accepted:
                self._send_abort(pump, d)
                # The terminal answers an abort with 06 1E at once, or never: wait a bounded time.
                deadline = min(deadline, now + ABORT_GRACE + self._link.config.t3)
            if now >= deadline:
                if d.accepted and not d.done:
                    self._abandoned = d
                if abortable and d.accepted and not d.abort_sent:
                    log.warning("no outcome within %g s: aborting on the terminal", timeout)
                    d.gave_up_after = timeout
                    self._send_abort(pump, d)
                    deadline = now + ABORT_GRACE + self._link.config.t3
                    continue
                raise PosTimeout(f"no end of {d.command.NAME} from {self.port_name} within the timeout")
            data = self._read(pump.wait_time(now, deadline))
            try:
                for event in pump.feed(data, self._clock(), write=False):
                    self._on_event(event, d)
            except BaseException:
                self._link.refuse()          # never acknowledge what was not handled (journaled)
                self._link.data_to_send()
                if d.accepted and not d.done:
                    self._abandoned = d
                raise
            pump.flush()
        self._drain(pump)

    def _send_abort(self, pump: Pump, d: _Dialog) -> None:
        d.abort_sent = True
        self._abort_requested = False
        abort = Abort()
        self._trace_out(abort)
        pump.send(abort)

    def _drain(self, pump: Pump) -> None:
        """Serial: keep the line moving until our last 80 00 00 has its ACK byte (bounded)."""
        cfg = self._link.config
        until = self._clock() + cfg.t3 * cfg.frame_attempts
        while not self._link.idle and self._clock() < until:
            data = self._read(pump.wait_time(self._clock(), until))
            for event in pump.feed(data, self._clock()):
                self._diagnostic(event)

    def _on_event(self, event: Any, d: _Dialog) -> None:
        if isinstance(event, MessageReceived):
            self._on_message(event.message, d)
        elif isinstance(event, Delivered):
            if event.message is d.command:
                d.accepted = True
                if isinstance(d.command, Abort):    # an abort while the ECR is master ends at 80 00 00
                    d.done = True
        elif isinstance(event, Refused):
            if event.message is d.command:
                raise ZvtRefused(f"{d.command.NAME} refused by {self.port_name} (84 {event.error:02X})",
                                 error=event.error)
            log.info("the terminal refused our abort (84 %02X): the dialog goes on", event.error)
        elif isinstance(event, SendFailed):
            if event.message is d.command:
                raise LinkFailed(f"{d.command.NAME} not taken by {self.port_name} after {event.attempts}"
                                 f" attempt(s) ({event.cause}): check the cable, port and settings (ZVT: 9600 8N2)")
            log.warning("%s not taken by the terminal (%s)", type(event.message).__name__, event.cause)
        elif isinstance(event, TimedOut):
            if event.command is not d.command:
                log.warning("the terminal never ended an earlier %s (T4): the ECR is master again",
                            getattr(event.command, "NAME", "command"))
                self._abandoned = None
                return
            raise PosTimeout(f"{self.port_name} held control after {d.command.NAME} and sent nothing for"
                             f" {self._link.config.t4:g} s (T4)")
        elif isinstance(event, UndecodableMessage):
            log.warning("undecodable APDU from the terminal: %s", event.error)
        else:
            self._diagnostic(event)

    def _on_message(self, msg: Any, d: _Dialog) -> None:
        self._trace_in(msg)
        if not d.accepted:
            # Our command waits for the line (the terminal still ends an earlier dialog): this
            # is that dialog's, and goes to its order (a late result is journaled, never lost
            # and never taken for the new command's).
            self._late(msg)
            return
        if isinstance(msg, IntermediateStatus):
            if d.on_progress is not None:
                d.on_progress(_progress(msg, d.order_id))
        elif isinstance(msg, StatusInformation):
            if d.on_status is None and not isinstance(d.command, EndOfDay):
                # Registration, status enquiry, abort carry no transaction: a result now is an
                # earlier dialog's (the terminal going on as if it took our command), never ours.
                self._late(msg)
                return
            d.statuses.append(msg)
            if d.on_status is not None:
                d.on_status(msg)          # journals: before the 80 00 00 (raises: never acknowledged)
            self._link.accept()
        elif isinstance(msg, PrintLine):
            self._receipt(d, [msg.text])
        elif isinstance(msg, PrintTextBlock):
            tlv = msg.fields.tlv
            self._receipt(d, [t.text() for t in tlv.find_all(_TEXT_LINE)] if tlv is not None else [])
        elif isinstance(msg, Completion):
            d.completion = msg
            d.done = True
        elif isinstance(msg, Aborted):
            d.aborted = msg
            d.done = True
        else:
            log.warning("unexpected %s from the terminal, ignored", type(msg).__name__)

    def _late(self, msg: Any) -> None:
        old = self._abandoned
        if old is None:
            if isinstance(msg, StatusInformation):
                # A result for no order of ours (another process gave it up, or none sent it):
                # not acknowledged, so the terminal reverses it, and it is never taken for ours.
                self._link.refuse()
                log.warning("a status information for no order of this ECR (result code %s): not acknowledged,"
                            " the terminal reverses it", msg.fields.result_code)
                return
            log.warning("%s from the terminal before it took our command, for no dialog of ours: ignored",
                        type(msg).__name__)
            return
        log.warning("late %s for the %s given up earlier (order %s)", type(msg).__name__, old.command.NAME,
                    old.order_id)
        if isinstance(msg, StatusInformation):
            old.statuses.append(msg)
            if old.on_status is not None:
                old.on_status(msg)
            self._link.accept()
        elif isinstance(msg, (Completion, Aborted)):
            self._abandoned = None

    @staticmethod
    def _receipt(d: _Dialog, lines: list[str]) -> None:
        room = max(0, MAX_RECEIPT_LINES - len(d.receipt))
        d.receipt.extend(line.rstrip("\x00") for line in lines[:room])
        d.receipt_dropped += len(lines) - min(room, len(lines))

    def _diagnostic(self, event: Any) -> None:
        if isinstance(event, Retransmitted):
            wire_log.info("repeated a frame, attempt %d (%s)", event.attempt, event.cause)
        elif isinstance(event, FrameRejected):
            wire_log.info("NAK sent: frame rejected: %s", event.reason)
        elif isinstance(event, GarbageSkipped):
            wire_log.info("skipped %d bytes of line noise", len(event.data))
        elif isinstance(event, PartialDiscarded):
            wire_log.info("inter-byte timeout: dropped a partial frame of %d bytes", len(event.data))
        elif isinstance(event, DuplicateIgnored):
            wire_log.info("a repeated frame acknowledged again, not delivered twice")
        elif isinstance(event, MessageReceived):
            log.warning("%s from the terminal after its dialog ended, ignored", type(event.message).__name__)

    # -- results and the journal ------------------------------------------------------------

    def _txn_result(self, si: StatusInformation, d: _Dialog, order_id: str, amount_minor: int, currency: str,
                    reversal: bool = False) -> PaymentResult | None:
        code = si.fields.result_code
        if code is None:
            return None
        outcome, reason = outcome_for(code, d.abort_sent)
        if reversal:
            outcome = Outcome.CANCELLED if outcome is Outcome.APPROVED else Outcome.DECLINED
        pan = si.fields.pan or ""
        last4 = pan[-4:] if len(pan) >= 4 and pan[-4:].isdigit() else None
        return PaymentResult(order_id, outcome, _amount(si, amount_minor), _alpha(si.fields.currency) or currency,
                             reason, "" if code == 0 else _code_text(code),
                             None if si.fields.trace is None else str(si.fields.trace), last4,
                             paid_at=_when(si.fields) if outcome is Outcome.APPROVED else None)

    def _final(self, d: _Dialog, results: list[PaymentResult], order_id: str, amount_minor: int, currency: str,
               kind: str) -> PaymentResult:
        """The operation's result once its dialog ended: the status information's (an approval
        stands whatever follows), else the abort's result code, else unknown."""
        receipt = tuple(d.receipt)
        if d.receipt_dropped:
            log.warning("receipt cut at %d lines: %d more dropped", MAX_RECEIPT_LINES, d.receipt_dropped)
        if results:
            # One transaction has one result; should a terminal send several, a success stands
            # (the journal keeps it whatever follows, and so does the answer).
            best = next((r for r in results if r.outcome in (Outcome.APPROVED, Outcome.CANCELLED)), results[-1])
            if d.aborted is not None and best.outcome in (Outcome.APPROVED, Outcome.CANCELLED):
                log.warning("order %s: the terminal approved, then ended with 06 1E %02X; the approval stands",
                            order_id, d.aborted.result_code)
            return dataclasses.replace(best, receipt=receipt, gave_up_after=d.gave_up_after)
        if d.aborted is not None:
            outcome, reason = outcome_for(d.aborted.result_code, d.abort_sent)
            if kind == "cancel" and outcome is Outcome.CANCELLED:
                outcome = Outcome.DECLINED       # an aborted reversal reversed nothing
            result = PaymentResult(order_id, outcome, amount_minor, currency, reason,
                                   _code_text(d.aborted.result_code), receipt=receipt, gave_up_after=d.gave_up_after)
            self._journal_outcome(kind, result, None)
            return result
        result = PaymentResult(order_id, Outcome.UNKNOWN, amount_minor, currency, Reason.NONE,
                               "the terminal completed without a status information: check its receipt",
                               receipt=receipt, gave_up_after=d.gave_up_after)
        self._journal_outcome(kind, result, None)
        return result

    def _journal_sent(self, order_id: str, kind: str, amount_minor: int, currency: str, ref_id: str = "") -> None:
        if self._journal is not None:
            self._journal.record_sent(order_id, kind, self.port_name, amount_minor, currency,
                                      self.info.terminal_id or None if self.info else None, ref_id=ref_id)

    def _journal_outcome(self, kind: str, result: PaymentResult, si: StatusInformation | None) -> None:
        """Journal ``result`` with what ZVT identifies the transaction by (the ``"zvt"`` entry:
        receipt number, trace, card name, terminal id, result code). A reversal also goes
        on the order's own row, which never downgrades (an approval keeps its receipt number)."""
        if self._journal is None:
            return
        data = {**result.to_json(), "zvt": _identity(si)}
        outcome = result.result
        self._journal.record_outcome(result.order_id, kind, outcome, int(result.reason), data, final=result.final)
        if kind == "cancel" and result.outcome is Outcome.CANCELLED:
            self._journal.record_outcome(result.order_id, "pay", outcome, int(result.reason), data, final=True)

    def _journal_refund(self, out: RefundOutcome, si: StatusInformation | None) -> None:
        if self._journal is not None:
            self._journal.record_outcome(out.order_id, "refund", out.result, int(out.reason),
                                         {**out.to_json(), "zvt": _identity(si)}, final=out.final,
                                         ref_id=out.refund_id)

    def _refunded_total(self, order_id: str, refund_id: str, amount_minor: int, outcome: Outcome) -> int:
        if self._journal is None:
            return amount_minor if outcome is Outcome.APPROVED else 0
        total = sum(e.amount_minor for e in self._journal.entries()
                    if e.order_id == order_id and e.kind == "refund" and e.ref_id != refund_id
                    and e.outcome == "approved")
        return total + (amount_minor if outcome is Outcome.APPROVED else 0)

    def _pay_again(self, earlier: JournalEntry, amount_minor: int, currency: str) -> PaymentResult:
        """An order id this journal holds. ZVT carries no order id, so the terminal would take
        a second Authorisation as a second payment: the journal answers, nothing is sent."""
        if (earlier.amount_minor, earlier.currency) != (amount_minor, currency):
            raise LocalProtocolError(
                f"order {earlier.order_id} was already sent for {earlier.amount_minor} {earlier.currency}:"
                " a different amount needs a new order id")
        if earlier.state != "final" or not earlier.result:
            raise LocalProtocolError(
                f"order {earlier.order_id} was sent and its outcome never came: ZVT cannot ask, and sending it"
                " again could charge twice; check the terminal's receipt")
        return _result_from_json(earlier)

    # -- traces (secrets masked) ------------------------------------------------------------

    def _trace_out(self, msg: Command) -> None:
        self._trace_apdu("->", msg)

    def _trace_in(self, msg: Command) -> None:
        self._trace_apdu("<-", msg)

    def _trace_apdu(self, arrow: str, msg: Command) -> None:
        if not (self._trace or wire_log.isEnabledFor(logging.DEBUG)):
            return
        wire_log.log(logging.INFO if self._trace else logging.DEBUG, "%s %s\n%s", arrow,
                     json.dumps(describe(msg, mask=True), sort_keys=False), _masked_hex(msg))


# -- helpers -------------------------------------------------------------------------------


def _build(command: type[Command], **kw: Any) -> Command:
    """``command.make(**kw)``, a bad value (a password that is not 6 digits...) a
    LocalProtocolError (the wire contract's messages never quote the value)."""
    try:
        return command.make(**kw)
    except ZvtFieldError as exc:
        raise LocalProtocolError(f"{command.NAME}: {exc}") from None


def _numeric(currency: str) -> int:
    try:
        return cur.numeric(currency)
    except (KeyError, TypeError):
        raise LocalProtocolError(f"unknown currency {currency!r}") from None


def _alpha(numeric: int | None) -> str | None:
    if numeric is None:
        return None
    try:
        return cur.from_numeric(numeric)
    except KeyError:
        return None


def _check_amount(amount_minor: Any) -> None:
    if type(amount_minor) is not int:
        raise LocalProtocolError("amount_minor must be an int of minor units (never a float)")
    if not 0 < amount_minor <= MAX_AMOUNT_MINOR:
        raise LocalProtocolError(f"a ZVT amount is 1..{MAX_AMOUNT_MINOR} minor units")


def _amount(si: StatusInformation, requested: int) -> int:
    return si.fields.amount if si.fields.amount is not None else requested


def _when(f: Any) -> str | None:
    """ZVT's date (0D MMDD, or AA YYMMDD) and time (0C HHMMSS) as ISO text (no year in 0D)."""
    if f.time is None or (f.date is None and f.full_date is None):
        return None
    t = f"{f.time[:2]}:{f.time[2:4]}:{f.time[4:]}"
    if f.full_date is not None:
        return f"20{f.full_date[:2]}-{f.full_date[2:4]}-{f.full_date[4:]}T{t}"
    return f"--{f.date[:2]}-{f.date[2:]}T{t}"


def _identity(si: StatusInformation | None) -> dict[str, Any]:
    if si is None:
        return {}
    f = si.fields
    return {k: v for k, v in (("receipt_no", f.receipt_no), ("trace", f.trace), ("card_name", f.card_name),
                              ("terminal_id", f.terminal_id), ("result_code", f.result_code),
                              ("amount_minor", f.amount)) if v is not None}


def _zvt(entry: JournalEntry) -> dict[str, Any]:
    zvt = (entry.result or {}).get("zvt")
    return zvt if isinstance(zvt, dict) else {}


def _result_from_json(entry: JournalEntry) -> PaymentResult:
    r = entry.result or {}
    reason: Reason | int = Reason.NONE
    if r.get("reason"):
        reason = Reason.__members__.get(str(r["reason"]).upper(), Reason.OTHER)
    return PaymentResult(entry.order_id, Outcome[str(r.get("result", "unknown")).upper()],
                         r.get("amount_minor", entry.amount_minor), entry.currency, reason,
                         "the journal's answer to the first request with this order id (not sent again)",
                         r.get("trade_no"), r.get("code_last4"), paid_at=r.get("paid_at"),
                         receipt=tuple(r.get("receipt") or ()))


def _aborted_text(d: _Dialog) -> str:
    return _code_text(d.aborted.result_code) if d.aborted is not None else "no completion"


def _progress(msg: IntermediateStatus, order_id: str | None) -> ZvtProgress:
    stage, text = _INTERMEDIATE.get(msg.status, (Stage.AUTHORISING, f"status 0x{msg.status:02X}"))
    tlv = msg.fields.tlv
    if tlv is not None:
        lines = [t.text().strip() for t in tlv.find_all(_TEXT_LINE)]
        if any(lines):
            text = " ".join(line for line in lines if line)
    return ZvtProgress(stage, text, msg.status, order_id)


_PASSWORD_FIRST = (Registration, Reversal, Refund, EndOfDay, StatusEnquiry)


def _masked_hex(msg: Command) -> str:
    """The APDU's hex with the password's three BCD bytes as MASK_BYTE; withheld when a
    secret BMP (PAN, track data, PIN data...) is in it."""
    fields = getattr(msg, "fields", None)
    if fields is not None and any(b in SECRET_BMPS for b, _ in fields.present()):
        return "(hex withheld: the APDU holds a secret BMP)"
    try:
        raw = bytearray(msg.encode())
    except ProtocolError:
        return "(does not encode)"
    if isinstance(msg, _PASSWORD_FIRST) and getattr(msg, "password", None) is not None:
        start = 5 if raw[2] == 0xFF else 3
        raw[start:start + 3] = bytes([MASK_BYTE]) * 3
    return hexdump(bytes(raw))
