"""THE state table of the emulated terminal's firmware, as data.

``TABLE[(state, event)] = (next_state, action)``. The firmware looks every
transition up here and runs ``Firmware._act_<action>``; a pair that is not in
the table is a bug (ours or the peer's timing we did not foresee) and raises
:class:`NoTransition`, naming the state and the event, never a silent no-op.

Events come from four places:

* the ECR (``pay_code``, ``pay_scan``, ``pay_qr``, ``cancel``, ``refund``,
  ``settle``, ``key_load``, ``abort``),
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
* timers (``poll_due``, ``polls_exhausted``, ``scan_timeout``, ``pin_timeout``,
  ``qr_timeout``, ``printed``, ``recovered``).

Requests that never change the state (Hello, StatusRequest, KeyStatusRequest,
Query, a PayRequest for an order already journaled) are answered outside the
table: they are allowed in every state.
"""

from __future__ import annotations

from firmware_protocol.native.messages import TerminalState as S

from posterm.errors import PosError


class NoTransition(PosError):
    """The firmware got an event its current state has no transition for."""

    def __init__(self, state: S, event: str) -> None:
        super().__init__(f"no transition from state {state.name} on event {event!r}")
        self.state = state
        self.event = event


# Host answers to a request of the payment flow, by HostStatus name.
HOST_ANSWERS = ("approved", "declined", "cancelled", "need_pin", "wait_buyer", "processing",
                "not_found", "refunded", "show_qr", "silent")

TABLE: dict[tuple[S, str], tuple[S, str]] = {
    # -- a payment starts -------------------------------------------------------------
    # A new order id is first looked up at the host (HostQuery, read only): the host keys
    # orders by merchant, so an id another terminal of the merchant already used gets that
    # terminal's stored answer, which must not be counted in this terminal's batch.
    (S.IDLE, "pay_code"): (S.AUTHORISING, "check_order"),
    (S.IDLE, "pay_scan"): (S.AUTHORISING, "check_order"),
    (S.IDLE, "pay_qr"): (S.AUTHORISING, "check_order"),
    (S.AUTHORISING, "order_new_code"): (S.AUTHORISING, "authorise"),
    (S.AUTHORISING, "order_new_scan"): (S.AWAITING_SCAN, "ask_for_scan"),
    (S.AUTHORISING, "order_new_qr"): (S.AUTHORISING, "precreate"),
    (S.AUTHORISING, "order_elsewhere"): (S.PRINTING, "elsewhere"),
    # No answer (or a refusal) to the look-up: nothing that could charge has left.
    (S.AUTHORISING, "check_failed"): (S.PRINTING, "not_sent"),
    (S.AWAITING_SCAN, "code_scanned"): (S.AUTHORISING, "authorise"),
    (S.AWAITING_SCAN, "walked_away"): (S.PRINTING, "no_code"),
    (S.AWAITING_SCAN, "scan_timeout"): (S.PRINTING, "no_code"),
    # Nothing reached the host yet: an abort needs no HostCancel.
    (S.AWAITING_SCAN, "abort"): (S.PRINTING, "aborted_before_host"),
    # -- the host answers the authorisation (or the PIN, or the query) ------------------
    (S.AUTHORISING, "host_approved"): (S.PRINTING, "approved"),
    (S.AUTHORISING, "host_declined"): (S.PRINTING, "declined"),
    (S.AUTHORISING, "host_cancelled"): (S.PRINTING, "cancelled"),
    (S.AUTHORISING, "host_refunded"): (S.PRINTING, "cancelled"),
    (S.AUTHORISING, "host_not_found"): (S.PRINTING, "declined"),
    (S.AUTHORISING, "host_need_pin"): (S.AWAITING_PIN, "ask_for_pin"),
    (S.AUTHORISING, "host_wait_buyer"): (S.AWAITING_PHONE, "wait_for_phone"),
    (S.AUTHORISING, "host_show_qr"): (S.SHOWING_QR, "show_qr"),
    (S.AUTHORISING, "host_processing"): (S.QUERYING, "query_host"),
    (S.AUTHORISING, "host_silent"): (S.QUERYING, "query_host"),
    # The request in flight cannot be taken back: cancel once it is answered.
    (S.AUTHORISING, "abort"): (S.CANCELLING, "cancel_at_host"),
    # -- PIN on the terminal's PIN pad ---------------------------------------------------
    (S.AWAITING_PIN, "pin_entered"): (S.AUTHORISING, "verify_pin"),
    (S.AWAITING_PIN, "pin_cancelled"): (S.CANCELLING, "cancel_at_host"),
    (S.AWAITING_PIN, "pin_timeout"): (S.CANCELLING, "cancel_at_host"),
    (S.AWAITING_PIN, "abort"): (S.CANCELLING, "cancel_at_host"),
    # -- confirmation on the customer's phone: poll, then give up and cancel ------------
    (S.AWAITING_PHONE, "poll_due"): (S.AWAITING_PHONE, "poll_host"),
    (S.AWAITING_PHONE, "host_wait_buyer"): (S.AWAITING_PHONE, "schedule_poll"),
    (S.AWAITING_PHONE, "host_processing"): (S.AWAITING_PHONE, "schedule_poll"),
    (S.AWAITING_PHONE, "host_silent"): (S.AWAITING_PHONE, "schedule_poll"),
    (S.AWAITING_PHONE, "host_approved"): (S.PRINTING, "approved"),
    (S.AWAITING_PHONE, "host_declined"): (S.PRINTING, "declined"),
    (S.AWAITING_PHONE, "host_cancelled"): (S.PRINTING, "cancelled"),
    (S.AWAITING_PHONE, "host_refunded"): (S.PRINTING, "cancelled"),
    (S.AWAITING_PHONE, "polls_exhausted"): (S.CANCELLING, "cancel_at_host"),
    (S.AWAITING_PHONE, "abort"): (S.CANCELLING, "cancel_at_host"),
    # -- merchant-presented QR: the customer's wallet scans it; we poll ----------------
    (S.SHOWING_QR, "poll_due"): (S.SHOWING_QR, "poll_host"),
    (S.SHOWING_QR, "host_show_qr"): (S.SHOWING_QR, "schedule_poll"),
    (S.SHOWING_QR, "host_wait_buyer"): (S.SHOWING_QR, "schedule_poll"),
    (S.SHOWING_QR, "host_processing"): (S.SHOWING_QR, "schedule_poll"),
    (S.SHOWING_QR, "host_not_found"): (S.SHOWING_QR, "schedule_poll"),
    (S.SHOWING_QR, "host_silent"): (S.SHOWING_QR, "schedule_poll"),
    (S.SHOWING_QR, "host_need_pin"): (S.AWAITING_PIN, "ask_for_pin"),
    (S.SHOWING_QR, "host_approved"): (S.PRINTING, "approved"),
    (S.SHOWING_QR, "host_declined"): (S.PRINTING, "declined"),
    (S.SHOWING_QR, "host_cancelled"): (S.PRINTING, "cancelled"),
    (S.SHOWING_QR, "host_refunded"): (S.PRINTING, "cancelled"),
    (S.SHOWING_QR, "polls_exhausted"): (S.CANCELLING, "cancel_at_host"),
    (S.SHOWING_QR, "walked_away"): (S.CANCELLING, "cancel_at_host"),
    (S.SHOWING_QR, "abort"): (S.CANCELLING, "cancel_at_host"),
    # -- the answer did not come: ask what happened -------------------------------------
    (S.QUERYING, "host_approved"): (S.PRINTING, "approved"),
    (S.QUERYING, "host_declined"): (S.PRINTING, "declined"),
    (S.QUERYING, "host_cancelled"): (S.PRINTING, "cancelled"),
    (S.QUERYING, "host_refunded"): (S.PRINTING, "cancelled"),
    (S.QUERYING, "host_need_pin"): (S.AWAITING_PIN, "ask_for_pin"),
    (S.QUERYING, "host_wait_buyer"): (S.AWAITING_PHONE, "wait_for_phone"),
    (S.QUERYING, "host_show_qr"): (S.SHOWING_QR, "show_qr"),
    (S.QUERYING, "host_processing"): (S.QUERYING, "query_again"),
    (S.QUERYING, "queries_exhausted"): (S.PRINTING, "unknown"),
    # Our request may still be on its way: tell the host to undo it if it lands.
    (S.QUERYING, "host_not_found"): (S.CANCELLING, "cancel_at_host"),
    (S.QUERYING, "host_silent"): (S.PRINTING, "unknown"),
    (S.QUERYING, "abort"): (S.CANCELLING, "cancel_at_host"),
    # The answer to our AuthRequest was lost; the query finds the order another terminal's.
    (S.QUERYING, "order_elsewhere"): (S.PRINTING, "elsewhere"),
    # -- cancelling (ECR Cancel, Abort, timeouts) ----------------------------------------
    # An ECR Cancel of an earlier order: a paid one is refunded, so it needs the operator
    # password; without one the terminal first asks the host whether the order is paid.
    (S.IDLE, "cancel"): (S.CANCELLING, "cancel_order"),
    (S.CANCELLING, "operator_refused"): (S.IDLE, "cancel_refused"),
    (S.CANCELLING, "cancel_needs_password"): (S.IDLE, "cancel_refused"),
    (S.CANCELLING, "cancel_unpaid"): (S.CANCELLING, "cancel_at_host"),
    (S.CANCELLING, "cancel_done"): (S.PRINTING, "cancel_finished"),
    (S.CANCELLING, "cancel_refused"): (S.PRINTING, "cancel_finished"),
    (S.CANCELLING, "cancel_silent"): (S.PRINTING, "unknown"),
    (S.CANCELLING, "abort"): (S.CANCELLING, "ignore"),
    **{(S.CANCELLING, f"host_{a}"): (S.CANCELLING, "cancel_at_host") for a in HOST_ANSWERS},
    (S.CANCELLING, "poll_due"): (S.CANCELLING, "ignore"),
    (S.CANCELLING, "pin_entered"): (S.CANCELLING, "ignore"),
    # Aborted during the look-up: nothing reached the host, and an order that is another
    # terminal's is not ours to cancel.
    **{(S.CANCELLING, e): (S.PRINTING, "aborted_before_host")
       for e in ("order_new_code", "order_new_scan", "order_new_qr", "order_elsewhere", "check_failed")},
    # -- operator functions -------------------------------------------------------------
    (S.IDLE, "refund"): (S.REFUNDING, "refund_at_host"),
    (S.REFUNDING, "refund_done"): (S.PRINTING, "refund_finished"),
    (S.REFUNDING, "refund_silent"): (S.PRINTING, "refund_finished"),
    (S.REFUNDING, "operator_refused"): (S.IDLE, "refund_refused"),
    (S.IDLE, "settle"): (S.SETTLING, "settle_at_host"),
    (S.SETTLING, "settle_done"): (S.PRINTING, "settle_finished"),
    (S.SETTLING, "settle_silent"): (S.IDLE, "settle_unknown"),
    (S.SETTLING, "operator_refused"): (S.IDLE, "settle_refused"),
    (S.IDLE, "key_load"): (S.LOADING_KEY, "load_key"),
    (S.LOADING_KEY, "key_loaded"): (S.IDLE, "key_status"),
    # -- the receipt is out: answer the ECR and go back to idle ---------------------------
    (S.PRINTING, "printed"): (S.IDLE, "deliver"),
    (S.PRINTING, "abort"): (S.PRINTING, "ignore"),  # the outcome is decided and on its way
    # -- something inside the terminal broke ----------------------------------------------
    (S.ERROR, "recovered"): (S.IDLE, "resume"),
}

_ECR_REQUESTS = ("pay_code", "pay_scan", "pay_qr", "cancel", "refund", "settle", "key_load")
_BUSY_STATES = tuple(s for s in S if s not in (S.IDLE,))

# One operation at a time: every other state answers a new request with Error(BUSY).
for _state in _BUSY_STATES:
    for _event in _ECR_REQUESTS:
        TABLE.setdefault((_state, _event), (_state, "busy"))
    TABLE.setdefault((_state, "fault"), (S.ERROR, "fail"))
    # Customer input that arrives when the terminal is no longer asking for it.
    for _late in ("code_scanned", "pin_entered", "pin_cancelled", "walked_away", "poll_due",
                  "scan_timeout", "pin_timeout", "qr_timeout", "polls_exhausted"):
        TABLE.setdefault((_state, _late), (_state, "ignore"))
for _event in ("abort",):
    for _state in (S.IDLE, S.REFUNDING, S.SETTLING, S.LOADING_KEY, S.ERROR):
        TABLE.setdefault((_state, _event), (_state, "nothing_to_abort"))
TABLE[(S.IDLE, "fault")] = (S.ERROR, "fail")
for _late in ("code_scanned", "pin_entered", "pin_cancelled", "walked_away", "poll_due", "scan_timeout",
              "pin_timeout", "qr_timeout", "polls_exhausted", "printed"):
    TABLE.setdefault((S.IDLE, _late), (S.IDLE, "ignore"))
del _state, _event, _late


def transition(state: S, event: str) -> tuple[S, str]:
    """``(next_state, action)`` for ``event`` in ``state``. Raises :class:`NoTransition`."""
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise NoTransition(state, event) from None


# States in which the terminal waits for the customer (Progress at least every 5 s).
CUSTOMER_STATES = frozenset({S.AWAITING_SCAN, S.AWAITING_PIN, S.AWAITING_PHONE, S.SHOWING_QR})
