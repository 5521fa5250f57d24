"""THE state table of the emulated terminal's firmware, as data.

``TABLE[(state, event)] = (next_state, action)``. The firmware looks every
transition up here and runs the handler that declares ``@handles(action)``; a
pair that is not in the table is a bug (ours or the peer's timing we did not
foresee) and raises :class:`NoTransition`, naming the state and the event,
never a silent no-op. Events, actions and the data each event carries are
enums and a map here, so a test checks the table against the handlers
(tests/emulator/test_state_table.py): every action has a handler that takes
its events' data, no handler is unreachable, every state is reachable.

Events come from four places (the data each carries is :data:`EVENT_DATA`):

* the ECR (``pay_code``, ``pay_scan``, ``pay_qr``, ``cancel``, ``refund``,
  ``settle``, ``key_load``, ``operator_reset``, ``abort``),
* the customer at a peripheral (``code_scanned``, ``pin_entered``,
  ``pin_cancelled``, ``walked_away``),
* the host, as the answer to the flow's one request in flight
  (``order_new_<code|scan|qr>`` / ``order_elsewhere`` / ``check_failed`` for the
  HostQuery that looks a new order id up before anything is authorised;
  ``host_<status>`` for AuthRequest / PinVerify / ConfirmPoll / HostQuery,
  ``host_silent`` when it did not answer; ``cancel_done`` / ``cancel_refused``
  / ``cancel_silent`` for HostCancel, and ``cancel_unpaid`` /
  ``cancel_needs_password`` for the HostQuery before a password-free ECR
  Cancel; ``refund_done`` / ``refund_silent``;
  ``settle_done`` / ``settle_silent``),
* the firmware itself (``operator_refused``, ``key_loaded``, ``fault``) and its
  timers (``poll_due``, ``polls_exhausted``, ``queries_exhausted``,
  ``scan_timeout``, ``pin_timeout``, ``qr_timeout``, ``printed``, ``recovered``).

Requests that never change the state (Hello, StatusRequest, KeyStatusRequest,
Query, a PayRequest for an order already journaled) are answered outside the
table: they are allowed in every state.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, TypeVar

from firmware_protocol.host.messages import HostStatus
from firmware_protocol.native.messages import TerminalState as S

from posterm.errors import PosError


class TableError(PosError):
    """The firmware broke its own state table: a bug, never the peer's input alone."""


class NoTransition(TableError):
    """The firmware got an event its current state has no transition for."""

    def __init__(self, state: S, event: str) -> None:
        super().__init__(f"no transition from state {state.name} on event {str(event)!r}")
        self.state = state
        self.event = event


class WrongEventData(TableError):
    """An event was fired with other data than :data:`EVENT_DATA` declares for it."""

    def __init__(self, event: str, given: frozenset[str]) -> None:
        super().__init__(f"event {str(event)!r} carries {sorted(EVENT_DATA[Event(event)])}, "
                         f"was fired with {sorted(given)}")
        self.event = event


class NoHandler(TableError):
    """The table names an action no firmware method handles."""

    def __init__(self, action: str) -> None:
        super().__init__(f"no handler for action {str(action)!r}")
        self.action = action


class Event(enum.StrEnum):
    """What can happen to the terminal (the table's columns)."""

    # the ECR's requests
    PAY_CODE = "pay_code"
    PAY_SCAN = "pay_scan"
    PAY_QR = "pay_qr"
    CANCEL = "cancel"
    REFUND = "refund"
    SETTLE = "settle"
    KEY_LOAD = "key_load"
    OPERATOR_RESET = "operator_reset"
    ABORT = "abort"
    # the customer at a peripheral
    CODE_SCANNED = "code_scanned"
    PIN_ENTERED = "pin_entered"
    PIN_CANCELLED = "pin_cancelled"
    WALKED_AWAY = "walked_away"
    # the host: the look-up of a new order id
    ORDER_NEW_CODE = "order_new_code"
    ORDER_NEW_SCAN = "order_new_scan"
    ORDER_NEW_QR = "order_new_qr"
    ORDER_ELSEWHERE = "order_elsewhere"
    CHECK_FAILED = "check_failed"
    # the host: its answer to a payment request, by HostStatus (see HOST_ANSWER)
    HOST_APPROVED = "host_approved"
    HOST_DECLINED = "host_declined"
    HOST_CANCELLED = "host_cancelled"
    HOST_NEED_PIN = "host_need_pin"
    HOST_WAIT_BUYER = "host_wait_buyer"
    HOST_PROCESSING = "host_processing"
    HOST_NOT_FOUND = "host_not_found"
    HOST_REFUNDED = "host_refunded"
    HOST_SHOW_QR = "host_show_qr"
    HOST_SILENT = "host_silent"
    # the host: cancels, refunds, settlement
    CANCEL_DONE = "cancel_done"
    CANCEL_REFUSED = "cancel_refused"
    CANCEL_SILENT = "cancel_silent"
    CANCEL_UNPAID = "cancel_unpaid"
    CANCEL_NEEDS_PASSWORD = "cancel_needs_password"
    REFUND_DONE = "refund_done"
    REFUND_SILENT = "refund_silent"
    SETTLE_DONE = "settle_done"
    SETTLE_SILENT = "settle_silent"
    # the firmware itself
    OPERATOR_REFUSED = "operator_refused"
    KEY_LOADED = "key_loaded"
    FAULT = "fault"
    # timers
    POLL_DUE = "poll_due"
    POLLS_EXHAUSTED = "polls_exhausted"
    QUERIES_EXHAUSTED = "queries_exhausted"
    SCAN_TIMEOUT = "scan_timeout"
    PIN_TIMEOUT = "pin_timeout"
    QR_TIMEOUT = "qr_timeout"        # in the table, fired by nothing yet: the QR's deadline ends the polls
    PRINTED = "printed"
    RECOVERED = "recovered"


class Action(enum.StrEnum):
    """What the firmware does on a transition (the table's cells); one handler each."""

    # answers outside a flow
    BUSY = "busy"
    IGNORE = "ignore"
    NOTHING_TO_ABORT = "nothing_to_abort"
    # the payment
    CHECK_ORDER = "check_order"
    ELSEWHERE = "elsewhere"
    NOT_SENT = "not_sent"
    AUTHORISE = "authorise"
    PRECREATE = "precreate"
    ASK_FOR_SCAN = "ask_for_scan"
    ASK_FOR_PIN = "ask_for_pin"
    VERIFY_PIN = "verify_pin"
    WAIT_FOR_PHONE = "wait_for_phone"
    SHOW_QR = "show_qr"
    POLL_HOST = "poll_host"
    SCHEDULE_POLL = "schedule_poll"
    QUERY_HOST = "query_host"
    QUERY_AGAIN = "query_again"
    APPROVED = "approved"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    NO_CODE = "no_code"
    ABORTED_BEFORE_HOST = "aborted_before_host"
    UNKNOWN = "unknown"
    DELIVER = "deliver"
    # cancelling (a payment in flight, or an ECR Cancel of an earlier order)
    CANCEL_ORDER = "cancel_order"
    CANCEL_REFUSED = "cancel_refused"
    CANCEL_AT_HOST = "cancel_at_host"
    CANCEL_FINISHED = "cancel_finished"
    # operator functions
    REFUND_AT_HOST = "refund_at_host"
    REFUND_REFUSED = "refund_refused"
    REFUND_FINISHED = "refund_finished"
    SETTLE_AT_HOST = "settle_at_host"
    SETTLE_REFUSED = "settle_refused"
    SETTLE_UNKNOWN = "settle_unknown"
    SETTLE_FINISHED = "settle_finished"
    LOAD_KEY = "load_key"
    KEY_STATUS = "key_status"
    RESET_OPERATOR = "reset_operator"
    # faults
    FAIL = "fail"
    RESUME = "resume"


E, A = Event, Action

_ECR_REQUESTS = (E.PAY_CODE, E.PAY_SCAN, E.PAY_QR, E.CANCEL, E.REFUND, E.SETTLE, E.KEY_LOAD, E.OPERATOR_RESET)
_LOOKUP_ANSWERS = (E.ORDER_NEW_CODE, E.ORDER_NEW_SCAN, E.ORDER_NEW_QR, E.ORDER_ELSEWHERE, E.CHECK_FAILED)

# The host's answer to a request of the payment flow, by HostStatus (and silence).
HOST_ANSWER: dict[HostStatus, Event] = {status: Event(f"host_{status.name.lower()}") for status in HostStatus}
HOST_ANSWERS = (*HOST_ANSWER.values(), E.HOST_SILENT)

# The keyword data each event is fired with, exactly: its handlers take these keywords.
EVENT_DATA: dict[Event, frozenset[str]] = {
    **{e: frozenset({"request"}) for e in (*_ECR_REQUESTS, E.ABORT)},
    E.CODE_SCANNED: frozenset({"code"}),
    E.PIN_ENTERED: frozenset({"pin"}),
    **{e: frozenset({"reply"}) for e in (*_LOOKUP_ANSWERS, *HOST_ANSWERS, E.CANCEL_DONE, E.CANCEL_REFUSED,
                                         E.CANCEL_SILENT, E.CANCEL_UNPAID, E.CANCEL_NEEDS_PASSWORD,
                                         E.REFUND_DONE, E.REFUND_SILENT, E.SETTLE_DONE, E.SETTLE_SILENT)},
    E.OPERATOR_REFUSED: frozenset({"reason"}),
    E.FAULT: frozenset({"error"}),
}
for _event in Event:
    EVENT_DATA.setdefault(_event, frozenset())   # the customer's gestures, timers: no data

TABLE: dict[tuple[S, Event], tuple[S, Action]] = {
    # -- a payment starts -------------------------------------------------------------
    # A new order id is first looked up at the host (HostQuery, read only): the host keys
    # orders by merchant, so an id another terminal of the merchant already used gets that
    # terminal's stored answer, which must not be counted in this terminal's batch.
    (S.IDLE, E.PAY_CODE): (S.AUTHORISING, A.CHECK_ORDER),
    (S.IDLE, E.PAY_SCAN): (S.AUTHORISING, A.CHECK_ORDER),
    (S.IDLE, E.PAY_QR): (S.AUTHORISING, A.CHECK_ORDER),
    (S.AUTHORISING, E.ORDER_NEW_CODE): (S.AUTHORISING, A.AUTHORISE),
    (S.AUTHORISING, E.ORDER_NEW_SCAN): (S.AWAITING_SCAN, A.ASK_FOR_SCAN),
    (S.AUTHORISING, E.ORDER_NEW_QR): (S.AUTHORISING, A.PRECREATE),
    (S.AUTHORISING, E.ORDER_ELSEWHERE): (S.PRINTING, A.ELSEWHERE),
    # No answer (or a refusal) to the look-up: nothing that could charge has left.
    (S.AUTHORISING, E.CHECK_FAILED): (S.PRINTING, A.NOT_SENT),
    (S.AWAITING_SCAN, E.CODE_SCANNED): (S.AUTHORISING, A.AUTHORISE),
    (S.AWAITING_SCAN, E.WALKED_AWAY): (S.PRINTING, A.NO_CODE),
    (S.AWAITING_SCAN, E.SCAN_TIMEOUT): (S.PRINTING, A.NO_CODE),
    # Nothing reached the host yet: an abort needs no HostCancel.
    (S.AWAITING_SCAN, E.ABORT): (S.PRINTING, A.ABORTED_BEFORE_HOST),
    # -- the host answers the authorisation (or the PIN, or the query) ------------------
    (S.AUTHORISING, E.HOST_APPROVED): (S.PRINTING, A.APPROVED),
    (S.AUTHORISING, E.HOST_DECLINED): (S.PRINTING, A.DECLINED),
    (S.AUTHORISING, E.HOST_CANCELLED): (S.PRINTING, A.CANCELLED),
    (S.AUTHORISING, E.HOST_REFUNDED): (S.PRINTING, A.CANCELLED),
    (S.AUTHORISING, E.HOST_NOT_FOUND): (S.PRINTING, A.DECLINED),
    (S.AUTHORISING, E.HOST_NEED_PIN): (S.AWAITING_PIN, A.ASK_FOR_PIN),
    (S.AUTHORISING, E.HOST_WAIT_BUYER): (S.AWAITING_PHONE, A.WAIT_FOR_PHONE),
    (S.AUTHORISING, E.HOST_SHOW_QR): (S.SHOWING_QR, A.SHOW_QR),
    (S.AUTHORISING, E.HOST_PROCESSING): (S.QUERYING, A.QUERY_HOST),
    (S.AUTHORISING, E.HOST_SILENT): (S.QUERYING, A.QUERY_HOST),
    # The request in flight cannot be taken back: cancel once it is answered.
    (S.AUTHORISING, E.ABORT): (S.CANCELLING, A.CANCEL_AT_HOST),
    # -- PIN on the terminal's PIN pad ---------------------------------------------------
    (S.AWAITING_PIN, E.PIN_ENTERED): (S.AUTHORISING, A.VERIFY_PIN),
    (S.AWAITING_PIN, E.PIN_CANCELLED): (S.CANCELLING, A.CANCEL_AT_HOST),
    (S.AWAITING_PIN, E.PIN_TIMEOUT): (S.CANCELLING, A.CANCEL_AT_HOST),
    (S.AWAITING_PIN, E.ABORT): (S.CANCELLING, A.CANCEL_AT_HOST),
    # -- confirmation on the customer's phone: poll, then give up and cancel ------------
    (S.AWAITING_PHONE, E.POLL_DUE): (S.AWAITING_PHONE, A.POLL_HOST),
    (S.AWAITING_PHONE, E.HOST_WAIT_BUYER): (S.AWAITING_PHONE, A.SCHEDULE_POLL),
    (S.AWAITING_PHONE, E.HOST_PROCESSING): (S.AWAITING_PHONE, A.SCHEDULE_POLL),
    (S.AWAITING_PHONE, E.HOST_SILENT): (S.AWAITING_PHONE, A.SCHEDULE_POLL),
    (S.AWAITING_PHONE, E.HOST_APPROVED): (S.PRINTING, A.APPROVED),
    (S.AWAITING_PHONE, E.HOST_DECLINED): (S.PRINTING, A.DECLINED),
    (S.AWAITING_PHONE, E.HOST_CANCELLED): (S.PRINTING, A.CANCELLED),
    (S.AWAITING_PHONE, E.HOST_REFUNDED): (S.PRINTING, A.CANCELLED),
    (S.AWAITING_PHONE, E.POLLS_EXHAUSTED): (S.CANCELLING, A.CANCEL_AT_HOST),
    (S.AWAITING_PHONE, E.ABORT): (S.CANCELLING, A.CANCEL_AT_HOST),
    # the customer refuses in the wallet app (refuse_on_phone): the terminal cancels the order
    (S.AWAITING_PHONE, E.WALKED_AWAY): (S.CANCELLING, A.CANCEL_AT_HOST),
    # -- merchant-presented QR: the customer's wallet scans it; we poll ----------------
    (S.SHOWING_QR, E.POLL_DUE): (S.SHOWING_QR, A.POLL_HOST),
    (S.SHOWING_QR, E.HOST_SHOW_QR): (S.SHOWING_QR, A.SCHEDULE_POLL),
    (S.SHOWING_QR, E.HOST_WAIT_BUYER): (S.SHOWING_QR, A.SCHEDULE_POLL),
    (S.SHOWING_QR, E.HOST_PROCESSING): (S.SHOWING_QR, A.SCHEDULE_POLL),
    (S.SHOWING_QR, E.HOST_NOT_FOUND): (S.SHOWING_QR, A.SCHEDULE_POLL),
    (S.SHOWING_QR, E.HOST_SILENT): (S.SHOWING_QR, A.SCHEDULE_POLL),
    (S.SHOWING_QR, E.HOST_NEED_PIN): (S.AWAITING_PIN, A.ASK_FOR_PIN),
    (S.SHOWING_QR, E.HOST_APPROVED): (S.PRINTING, A.APPROVED),
    (S.SHOWING_QR, E.HOST_DECLINED): (S.PRINTING, A.DECLINED),
    (S.SHOWING_QR, E.HOST_CANCELLED): (S.PRINTING, A.CANCELLED),
    (S.SHOWING_QR, E.HOST_REFUNDED): (S.PRINTING, A.CANCELLED),
    (S.SHOWING_QR, E.POLLS_EXHAUSTED): (S.CANCELLING, A.CANCEL_AT_HOST),
    (S.SHOWING_QR, E.WALKED_AWAY): (S.CANCELLING, A.CANCEL_AT_HOST),
    (S.SHOWING_QR, E.ABORT): (S.CANCELLING, A.CANCEL_AT_HOST),
    # -- the answer did not come: ask what happened -------------------------------------
    (S.QUERYING, E.HOST_APPROVED): (S.PRINTING, A.APPROVED),
    (S.QUERYING, E.HOST_DECLINED): (S.PRINTING, A.DECLINED),
    (S.QUERYING, E.HOST_CANCELLED): (S.PRINTING, A.CANCELLED),
    (S.QUERYING, E.HOST_REFUNDED): (S.PRINTING, A.CANCELLED),
    (S.QUERYING, E.HOST_NEED_PIN): (S.AWAITING_PIN, A.ASK_FOR_PIN),
    (S.QUERYING, E.HOST_WAIT_BUYER): (S.AWAITING_PHONE, A.WAIT_FOR_PHONE),
    (S.QUERYING, E.HOST_SHOW_QR): (S.SHOWING_QR, A.SHOW_QR),
    (S.QUERYING, E.HOST_PROCESSING): (S.QUERYING, A.QUERY_AGAIN),
    (S.QUERYING, E.QUERIES_EXHAUSTED): (S.PRINTING, A.UNKNOWN),
    # Our request may still be on its way: tell the host to undo it if it lands.
    (S.QUERYING, E.HOST_NOT_FOUND): (S.CANCELLING, A.CANCEL_AT_HOST),
    (S.QUERYING, E.HOST_SILENT): (S.PRINTING, A.UNKNOWN),
    (S.QUERYING, E.ABORT): (S.CANCELLING, A.CANCEL_AT_HOST),
    # The answer to our AuthRequest was lost; the query finds the order another terminal's.
    (S.QUERYING, E.ORDER_ELSEWHERE): (S.PRINTING, A.ELSEWHERE),
    # -- cancelling (ECR Cancel, Abort, timeouts) ----------------------------------------
    # An ECR Cancel of an earlier order: a paid one is refunded, so it needs the operator
    # password; without one the terminal first asks the host whether the order is paid.
    (S.IDLE, E.CANCEL): (S.CANCELLING, A.CANCEL_ORDER),
    (S.CANCELLING, E.OPERATOR_REFUSED): (S.IDLE, A.CANCEL_REFUSED),
    (S.CANCELLING, E.CANCEL_NEEDS_PASSWORD): (S.IDLE, A.CANCEL_REFUSED),
    (S.CANCELLING, E.CANCEL_UNPAID): (S.CANCELLING, A.CANCEL_AT_HOST),
    (S.CANCELLING, E.CANCEL_DONE): (S.PRINTING, A.CANCEL_FINISHED),
    (S.CANCELLING, E.CANCEL_REFUSED): (S.PRINTING, A.CANCEL_FINISHED),
    (S.CANCELLING, E.CANCEL_SILENT): (S.PRINTING, A.UNKNOWN),
    (S.CANCELLING, E.ABORT): (S.CANCELLING, A.IGNORE),
    **{(S.CANCELLING, e): (S.CANCELLING, A.CANCEL_AT_HOST) for e in HOST_ANSWERS},
    (S.CANCELLING, E.POLL_DUE): (S.CANCELLING, A.IGNORE),
    (S.CANCELLING, E.PIN_ENTERED): (S.CANCELLING, A.IGNORE),
    # Aborted during the look-up: nothing reached the host, and an order that is another
    # terminal's is not ours to cancel.
    **{(S.CANCELLING, e): (S.PRINTING, A.ABORTED_BEFORE_HOST) for e in _LOOKUP_ANSWERS},
    # -- operator functions -------------------------------------------------------------
    (S.IDLE, E.REFUND): (S.REFUNDING, A.REFUND_AT_HOST),
    (S.REFUNDING, E.REFUND_DONE): (S.PRINTING, A.REFUND_FINISHED),
    (S.REFUNDING, E.REFUND_SILENT): (S.PRINTING, A.REFUND_FINISHED),
    (S.REFUNDING, E.OPERATOR_REFUSED): (S.IDLE, A.REFUND_REFUSED),
    (S.IDLE, E.SETTLE): (S.SETTLING, A.SETTLE_AT_HOST),
    (S.SETTLING, E.SETTLE_DONE): (S.PRINTING, A.SETTLE_FINISHED),
    (S.SETTLING, E.SETTLE_SILENT): (S.IDLE, A.SETTLE_UNKNOWN),
    (S.SETTLING, E.OPERATOR_REFUSED): (S.IDLE, A.SETTLE_REFUSED),
    (S.IDLE, E.KEY_LOAD): (S.LOADING_KEY, A.LOAD_KEY),
    (S.LOADING_KEY, E.KEY_LOADED): (S.IDLE, A.KEY_STATUS),
    # The supervisor resets the operator password (checked and done at once: no host).
    (S.IDLE, E.OPERATOR_RESET): (S.IDLE, A.RESET_OPERATOR),
    # -- the receipt is out: answer the ECR and go back to idle ---------------------------
    (S.PRINTING, E.PRINTED): (S.IDLE, A.DELIVER),
    (S.PRINTING, E.ABORT): (S.PRINTING, A.IGNORE),  # the outcome is decided and on its way
    # -- something inside the terminal broke ----------------------------------------------
    (S.ERROR, E.RECOVERED): (S.IDLE, A.RESUME),
}

_BUSY_STATES = tuple(s for s in S if s not in (S.IDLE,))
# Customer input and timers that arrive when the terminal is no longer asking for them.
_LATE = (E.CODE_SCANNED, E.PIN_ENTERED, E.PIN_CANCELLED, E.WALKED_AWAY, E.POLL_DUE, E.SCAN_TIMEOUT,
         E.PIN_TIMEOUT, E.QR_TIMEOUT, E.POLLS_EXHAUSTED)

# One operation at a time: every other state answers a new request with Error(BUSY).
for _state in _BUSY_STATES:
    for _event in _ECR_REQUESTS:
        TABLE.setdefault((_state, _event), (_state, A.BUSY))
    TABLE.setdefault((_state, E.FAULT), (S.ERROR, A.FAIL))
    for _event in _LATE:
        TABLE.setdefault((_state, _event), (_state, A.IGNORE))
for _state in (S.IDLE, S.REFUNDING, S.SETTLING, S.LOADING_KEY, S.ERROR):
    TABLE.setdefault((_state, E.ABORT), (_state, A.NOTHING_TO_ABORT))
TABLE[(S.IDLE, E.FAULT)] = (S.ERROR, A.FAIL)
for _event in (*_LATE, E.PRINTED):
    TABLE.setdefault((S.IDLE, _event), (S.IDLE, A.IGNORE))
del _state, _event


def transition(state: S, event: str) -> tuple[S, Action]:
    """``(next_state, action)`` for ``event`` in ``state``. Raises :class:`NoTransition`."""
    try:
        return TABLE[(state, event)]  # type: ignore[index]  # a plain str hashes as its Event
    except KeyError:
        raise NoTransition(state, event) from None


# States in which the terminal waits for the customer (Progress at least every 5 s).
CUSTOMER_STATES = frozenset({S.AWAITING_SCAN, S.AWAITING_PIN, S.AWAITING_PHONE, S.SHOWING_QR})


# -- binding actions to handlers ------------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., None])


def handles(action: Action) -> Callable[[_F], _F]:
    """Mark a firmware method as the handler of ``action``; it is called with the data of
    the event that fired (keyword arguments, :data:`EVENT_DATA`)."""

    def mark(fn: _F) -> _F:
        fn.__handles__ = action  # type: ignore[attr-defined]
        return fn

    return mark


def handlers_of(cls: type) -> dict[Action, Callable[..., None]]:
    """Every ``@handles`` method of ``cls`` and its bases, by action (unbound functions).
    Raises ``TypeError`` if two methods claim one action."""
    found: dict[Action, Callable[..., None]] = {}
    names: dict[Action, str] = {}
    for name in dir(cls):
        fn: Any = getattr(cls, name, None)
        action = getattr(fn, "__handles__", None)
        if action is None:
            continue
        if action in found and names[action] != name:
            raise TypeError(f"{cls.__name__}.{name} and .{names[action]} both handle {action!s}")
        found[action] = fn
        names[action] = name
    return found
