"""The simulated customer at the terminal's peripherals, driven by the payment's script.

When the firmware asks the customer for something (show a code, type the PIN, confirm on
the phone, scan the QR), the script's answer for that stage is played after its delay, on
the firmware's ``customer`` timer: an event for the table (``code_scanned``,
``pin_entered``, ...) or a :class:`WalletCall` for the runner (the wallet acts at the host,
not through the terminal). PIN digits go one key per timer to the PIN pad's secure module;
the firmware only ever sees the encrypted block.
"""

from __future__ import annotations

from firmware_protocol.native.messages import TerminalState as S

from posterm.emulator.firmware.values import WalletCall
from posterm.emulator.peripherals import PeripheralError
from posterm.emulator.scenario import Action
from posterm.emulator.states import Event


class CustomerActions:
    """Mixed into :class:`~posterm.emulator.firmware.machine.Firmware`: uses its flow,
    timers, PIN pad and wallet queue."""

    def _customer_at(self, stage: str, qr_data: str | None = None) -> None:
        """The terminal now asks the customer (``stage``: scan | pin | phone | qr)."""
        flow = self._flow
        assert flow is not None and flow.customer is not None
        plan = flow.customer.respond(stage)
        if plan is None:
            return
        delay, action = plan
        self._timer("customer", delay, lambda: self._customer_does(action, stage, qr_data))

    def _customer_does(self, action: Action, stage: str, qr_data: str | None) -> None:
        flow = self._flow
        if flow is None:
            return
        kind = action.kind
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

    def _clear_customer_timers(self) -> None:
        self._clear_timer("customer")
