"""The state table (posterm.emulator.states) checked against the firmware's handlers.

The table is data: (state, event) -> (next state, action). These tests make sure it cannot
drift from the code that runs it: every action has one handler that takes exactly the data
its events carry, no handler is dead, every state and event is used, and the dispatch stays
closed (a missing pair, or an event fired with the wrong data, is a typed error).
"""

from __future__ import annotations

import inspect
from collections import deque

import pytest

from firmware_protocol.host.messages import HostStatus
from firmware_protocol.native import messages as m
from firmware_protocol.native.messages import TerminalState as S
from posterm.crypto.pinpad import OperatorPassword, SecureModule
from posterm.emulator import states
from posterm.emulator.firmware import Firmware, FirmwareConfig, Identity
from posterm.emulator.firmware.machine import HANDLERS
from posterm.emulator.orders import OrderStore
from posterm.emulator.peripherals import OperatorKeypad, PinPad
from posterm.emulator.states import EVENT_DATA, TABLE, Action, Event, NoTransition, WrongEventData

_SENTINEL = object()


def _events_of(action: Action) -> set[Event]:
    return {event for (_, event), (_, a) in TABLE.items() if a is action}


def test_the_table_holds_only_states_events_and_actions():
    for (state, event), (nxt, action) in TABLE.items():
        assert type(state) is S and type(nxt) is S, (state, event)
        assert type(event) is Event and type(action) is Action, (state, event)


def test_every_cell_names_a_handler_that_takes_its_events_data():
    for (state, event), (_, action) in TABLE.items():
        handler = HANDLERS.get(action)
        assert handler is not None, f"{state.name} --{event}--> {action}: no handler"
        data = {name: _SENTINEL for name in EVENT_DATA[event]}
        try:
            inspect.signature(handler).bind(_SENTINEL, **data)
        except TypeError as exc:
            pytest.fail(f"{state.name} --{event}--> {action}: {handler.__qualname__} cannot take "
                        f"{sorted(data)}: {exc}")


def test_each_handler_declares_exactly_the_data_of_the_events_that_reach_it():
    # Only `ignore` swallows anything; every other handler's keywords document its events.
    for action, handler in HANDLERS.items():
        params = list(inspect.signature(handler).parameters.values())
        assert params[0].name == "self"
        rest = params[1:]
        if action is Action.IGNORE:
            assert [p.kind for p in rest] == [inspect.Parameter.VAR_KEYWORD]
            continue
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), handler.__qualname__
        carried = set().union(*(EVENT_DATA[e] for e in _events_of(action)))
        assert {p.name for p in rest} == carried, handler.__qualname__
        always = set.intersection(*(set(EVENT_DATA[e]) for e in _events_of(action)))
        required = {p.name for p in rest if p.default is inspect.Parameter.empty}
        assert required <= always, f"{handler.__qualname__} requires {required - always}, not always carried"


def test_no_dead_handlers_and_no_unhandled_actions():
    used = {action for _, action in TABLE.values()}
    assert used == set(Action), f"actions in no cell: {set(Action) - used}"
    assert set(HANDLERS) == set(Action)
    assert HANDLERS == states.handlers_of(Firmware)
    # Every _act_ method is a table handler (none forgotten undecorated), named for its action.
    acts = {name for name in dir(Firmware) if name.startswith("_act_")}
    assert acts == {fn.__name__ for fn in HANDLERS.values()}
    for action, fn in HANDLERS.items():
        assert fn.__name__ == f"_act_{action.value}"


def test_every_state_is_reachable_from_idle():
    seen, todo = {S.IDLE}, deque([S.IDLE])
    while todo:
        state = todo.popleft()
        for (src, _), (nxt, _) in TABLE.items():
            if src is state and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S), f"unreachable: {sorted(s.name for s in set(S) - seen)}"


def test_every_event_has_a_cell_and_declared_data():
    assert {event for _, event in TABLE} == set(Event)
    assert set(EVENT_DATA) == set(Event)
    assert set(states.HOST_ANSWER) == set(HostStatus)   # a new HostStatus needs its event


def test_a_missing_pair_raises_the_typed_error_naming_both():
    assert (S.IDLE, Event.KEY_LOADED) not in TABLE
    with pytest.raises(NoTransition) as err:
        states.transition(S.IDLE, Event.KEY_LOADED)
    assert (err.value.state, err.value.event) == (S.IDLE, Event.KEY_LOADED)
    assert "IDLE" in str(err.value) and "'key_loaded'" in str(err.value)
    with pytest.raises(NoTransition, match="SETTLING.*'no_such_event'"):
        states.transition(S.SETTLING, "no_such_event")


def test_two_handlers_for_one_action_are_refused():
    class Twice:
        @states.handles(Action.IGNORE)
        def _act_ignore(self, **_):
            pass

        @states.handles(Action.IGNORE)
        def _act_other(self, **_):
            pass

    with pytest.raises(TypeError, match="both handle ignore"):
        states.handlers_of(Twice)


# ------------------------------------------------------------------ the dispatch stays closed


@pytest.fixture
def fw(tmp_path):
    journal = OrderStore(tmp_path / "journal.db")
    firmware = Firmware(Identity(), journal, PinPad(SecureModule()),
                        OperatorKeypad(OperatorPassword(password="246810")), config=FirmwareConfig(print_time=0.01))
    firmware.start(0.0)
    yield firmware
    journal.close()


def test_the_firmware_raises_on_an_event_its_state_has_no_cell_for(fw):
    with pytest.raises(NoTransition, match="IDLE.*'key_loaded'"):
        fw._fire(Event.KEY_LOADED)
    assert fw.state is S.IDLE          # nothing ran


def test_the_firmware_raises_on_an_event_fired_with_the_wrong_data(fw):
    with pytest.raises(WrongEventData, match="'printed'"):
        fw._fire(Event.PRINTED, reply=None)
    with pytest.raises(WrongEventData, match="'refund'"):
        fw._fire(Event.REFUND)         # an ECR request without its request
    assert fw.state is S.IDLE


def test_a_table_error_inside_an_action_is_not_taken_for_a_fault(fw, monkeypatch):
    # A handler that fires an event its new state has no cell for is a bug: it surfaces,
    # it does not turn into a terminal fault (ERROR) the way a failing journal would.
    def bad(self, *, request):
        self._fire(Event.KEY_LOADED)   # LOADING_KEY has it, SETTLING does not

    monkeypatch.setitem(HANDLERS, Action.SETTLE_AT_HOST, bad)
    with pytest.raises(NoTransition, match="SETTLING"):
        fw.on_message(m.Settle(operator_password="246810"), 1.0)
    assert fw.state is S.SETTLING
