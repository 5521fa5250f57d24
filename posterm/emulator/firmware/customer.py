"""The simulated customer at the terminal's peripherals, driven by the payment's script.

When the firmware asks the customer for something (show a code, type the PIN, confirm on
the phone, scan the QR), the script's answer for that stage is played after its delay, on
the firmware's ``customer`` timer: an event for the table (``code_scanned``,
``pin_entered``, ...) or a :class:`WalletCall` for the runner (the wallet acts at the host,
not through the terminal). PIN digits go one key per timer to the PIN pad's secure module;
the firmware only ever sees the encrypted block.
"""

from __future__ import annotations

from firmware_protocol.host.messages import pin_pan
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import TerminalState as S

from posterm.emulator.firmware.values import WalletCall
from posterm.emulator.peripherals import PeripheralError
from posterm.emulator.scenario import STAGE_OF, TERMINAL_ACTIONS, Action, key_list
from posterm.emulator.states import CUSTOMER_STATES, Event
from posterm.errors import PosError

#: The prompt (a scenario stage) each customer-facing state is.
PROMPTS = {S.AWAITING_SCAN: "scan", S.AWAITING_PIN: "pin", S.AWAITING_PHONE: "phone", S.SHOWING_QR: "qr"}
#: States in which the operator's CANCEL key aborts the payment (as the ECR's Abort does).
_ABORTABLE = CUSTOMER_STATES | {S.AUTHORISING, S.QUERYING}


class CustomerActions:
    """Mixed into :class:`~posterm.emulator.firmware.machine.Firmware`: uses its flow,
    timers, PIN pad and wallet queue."""

    @property
    def prompt(self) -> str | None:
        """What the terminal asks the customer for now (scan | pin | phone | qr), or None."""
        return PROMPTS.get(self.state) if self._flow is not None else None

    def customer_acts(self, action: Action) -> str:
        """An action given live (the control panel, a test): ``"now"`` when the terminal asks
        for its kind of input (played after ``action.after``), ``"held"`` until the next prompt
        of its kind otherwise, ``"full"`` when :data:`MAX_HELD_ACTIONS` already wait. Keys and
        what happens to the terminal itself are done now, whatever the screen shows."""
        stage = self.prompt
        if action.kind in TERMINAL_ACTIONS or action.kind == "press_keys":
            self._live_seq = getattr(self, "_live_seq", 0) + 1   # one timer each: several may be pending
            self._timer(f"live{self._live_seq}", action.after, lambda: self._customer_does(action, stage or "", self.display.qr_data,
                                                                          again=False))
            return "now"
        if stage is not None and STAGE_OF[action.kind] in (stage, "any"):
            if action.kind == "do_nothing":
                self._clear_customer_timers()
            else:
                self._timer("customer", action.after, lambda: self._customer_does(action, stage, self.display.qr_data))
            return "now"
        if len(self.held_actions) >= (self.held_actions.maxlen or 0):
            return "full"
        self.held_actions.append(action)
        return "held"

    def _held_for(self, stage: str) -> Action | None:
        """The first live action held for this prompt (``wait``s before it are dropped: live
        actions have their own ``after``)."""
        while self.held_actions and self.held_actions[0].kind == "wait":
            self.held_actions.popleft()
        if self.held_actions and STAGE_OF[self.held_actions[0].kind] in (stage, "any"):
            return self.held_actions.popleft()
        return None

    def _customer_at(self, stage: str, qr_data: str | None = None) -> None:
        """The terminal now asks the customer (``stage``: scan | pin | phone | qr)."""
        flow = self._flow
        assert flow is not None and flow.customer is not None
        held = self._held_for(stage)
        if held is not None:
            if held.kind != "do_nothing":
                self._timer("customer", held.after, lambda: self._customer_does(held, stage, qr_data))
            return
        plan = flow.customer.respond(stage)
        if plan is None:
            return
        delay, action = plan
        self._timer("customer", delay, lambda: self._customer_does(action, stage, qr_data))

    def _customer_does(self, action: Action, stage: str, qr_data: str | None, again: bool = True) -> None:
        kind = action.kind
        if kind in TERMINAL_ACTIONS or kind == "press_keys":
            if kind == "press_keys":
                self._press_keys(action.keys or "")
            else:
                self._terminal_out.append(action)
            # Not an answer to the prompt: the prompt's own action (if any) follows.
            if again and kind != "restart" and self._flow is not None and self.prompt == stage and stage:
                self._customer_at(stage, qr_data)
            return
        flow = self._flow
        if flow is None:
            return
        if kind == "present_code":
            self._fire(Event.CODE_SCANNED, code=action.code)
        elif kind == "walk_away":
            if stage == "pin":
                self._fire(Event.PIN_CANCELLED)
            elif stage in ("scan", "qr"):
                self._fire(Event.WALKED_AWAY)
            # at the phone prompt, walking away looks like silence: the polls run out
        elif kind == "cancel_pin":
            self._fire(Event.PIN_CANCELLED)
        elif kind == "type_pin":
            self._type_pin(action.digits or "", action.key_interval)
        elif kind == "refuse_on_phone":
            if stage == "phone" and self.state is S.AWAITING_PHONE:
                self._fire(Event.WALKED_AWAY)   # the wallet says no: the terminal cancels the order
        elif kind == "confirm_on_phone":
            self._wallet_out.append(WalletCall("confirm", flow.order_id or ""))
        elif kind == "scan_qr":
            self._wallet_out.append(WalletCall("scan_qr", flow.order_id or "", qr_data=qr_data, code=action.code))

    def _type_pin(self, digits: str, interval: float) -> None:
        # One key per timer, like fingers on a keypad; the digits go to the secure module only.
        keys = iter(digits)

        def press() -> None:
            if self.state is not S.AWAITING_PIN:
                return
            key = next(keys, None)
            if key is None:
                try:
                    block = self.pinpad.finish()
                except PeripheralError:
                    self._fire(Event.PIN_CANCELLED)
                    return
                self._fire(Event.PIN_ENTERED, pin=block)
                return
            self.pinpad.press(key)
            self._timer("customer", interval, press)

        press()

    def _press_keys(self, keys: str) -> None:
        """Keys on the terminal's keypad, now. At the PIN prompt digits go to the PIN pad's
        secure module, OK ends the entry, CLEAR starts it again; CANCEL cancels the PIN entry
        there, and elsewhere in a payment aborts it (as the ECR's Abort does)."""
        try:
            names = key_list(keys)
        except ValueError:
            return
        for key in names:
            flow = self._flow
            if self.state is S.AWAITING_PIN and flow is not None:
                if key.isdigit():
                    try:
                        self.pinpad.press(key)
                    except PosError:
                        pass
                elif key == "OK":
                    self._clear_customer_timers()
                    try:
                        block = self.pinpad.finish()
                    except PeripheralError:
                        self._fire(Event.PIN_CANCELLED)
                        return
                    self._fire(Event.PIN_ENTERED, pin=block)
                elif key == "CLEAR":
                    self.pinpad.cancel()
                    try:
                        self.pinpad.begin(pin_pan((flow.code or "0000")[-4:]))
                    except PosError:
                        self._fire(Event.PIN_CANCELLED)
                        return
                elif key == "CANCEL":
                    self._clear_customer_timers()
                    self._fire(Event.PIN_CANCELLED)
            elif key == "CANCEL" and flow is not None and flow.kind == "pay" and self.state in _ABORTABLE:
                self._clear_customer_timers()
                self._fire(Event.ABORT, request=m.Abort(order_id=flow.order_id))

    def _clear_customer_timers(self) -> None:
        self._clear_timer("customer")
