"""pytest plugin (entry point ``pytest11``, loaded automatically once posterm is installed):
an emulated terminal per test.

    from posterm import Terminal

    def test_checkout(posterm_terminal):
        with Terminal.open(posterm_terminal.port) as term:
            assert term.pay(1234, "CNY", payment_code="289900000000000001").approved
        assert posterm_terminal.receipts()

The fixture starts a terminal on a fresh pty with an embedded host whose state lives in
the test's own temporary directory, and points ``$POSTERM_HOME`` there, ``$POSTERM_PORT``
at the terminal's port and ``$POSTERM_PROTOCOL`` at its protocol family for the test, so
the driver's journal is per test too and ``Terminal.open()`` needs no argument. Nothing is
shared between tests or pytest-xdist workers. Confirmation polling is shortened (0.2 s x
10) to keep tests fast.

The terminal's protocol family and line, most specific first:

* indirect parametrisation: ``@pytest.mark.parametrize("posterm_terminal", ["zvt",
  {"protocol": "zvt", "listen": True}], indirect=True)``;
* a marker on the test (or its class or module): ``@pytest.mark.posterm_terminal(protocol="zvt",
  listen=True)``;
* the command line ``--posterm-protocol zvt``, or ``posterm_protocol = zvt`` in the ini file;
* else ``posterm``, on a pty.

``listen=True`` puts the terminal on a TCP port on loopback (``.port`` is
``tcp://127.0.0.1:PORT``) instead of a pty. The terminal's operator password (ZVT's
password too) is :data:`DEMO_OPERATOR_PASSWORD`::

    from posterm.families.zvt.ecr import ZvtTerminal
    from posterm.testing.pytest_plugin import DEMO_OPERATOR_PASSWORD

    @pytest.mark.posterm_terminal(protocol="zvt")
    def test_zvt_checkout(posterm_terminal):
        with ZvtTerminal.open(posterm_terminal.port, password=DEMO_OPERATOR_PASSWORD) as term:
            term.hello()
            assert term.pay(1234, "EUR").approved    # the customer shows the EUR test code

Many terminals per session: ``posterm_fleet`` is a session-scoped fleet of N terminals
(``posterm_fleet_size = N`` in the ini file or ``--posterm-fleet-size N``; default 8), and
``posterm_fleet_terminal`` leases a free one of them to a test and takes it back after::

    def test_checkout_on_any_lane(posterm_fleet_terminal):
        with Terminal.open(posterm_fleet_terminal.port) as term:      # or Terminal.open(): $POSTERM_PORT
            assert term.pay(1234, "CNY", payment_code="289900000000000001").approved

The fleet starts once per session (per pytest-xdist worker: each its own fleet and host),
on ptys, with an embedded host under the session's temporary directory; up to 250
terminals in the test process (``.emulated``: the EmulatedTerminal, ``.host``), more over
several processes (``posterm_fleet_processes``; ``.emulated`` None, ``.host`` the parent's
host). A lease is the terminal's alone until the test ends; its scenario is reset then.
``posterm_fleet.lease(timeout)`` / ``.release(lease)`` lease more than one in a test.

The customer and the operator as methods (:class:`posterm.emulator.control.TerminalControl`,
made at the first call; the customer stays automatic unless ``set_manual(True)``). An
action given before its prompt waits for it, so give it before the payment::

    def test_pin_payment(posterm_terminal):
        posterm_terminal.present_code("289900000000000003")   # always asks for the PIN
        posterm_terminal.type_pin()                           # the demo PIN, at the PIN prompt
        with Terminal.open() as term:
            assert term.pay(100, "CNY").approved
        assert posterm_terminal.state()["last_result"]["outcome"] == "approved"
"""

from __future__ import annotations

from typing import Any

import pytest

#: The emulated terminal's operator password (its ZVT password too); as
#: posterm.emulator.runner.DEMO_OPERATOR_PASSWORD, kept here so importing the plugin stays cheap.
DEMO_OPERATOR_PASSWORD = "246810"
_KEYS = {"protocol", "listen"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("posterm")
    group.addoption("--posterm-protocol", default=None, metavar="NAME",
                    help="protocol family of the posterm_terminal fixture's terminal (default: the ini's"
                         " posterm_protocol, else posterm)")
    parser.addini("posterm_protocol", "protocol family of the posterm_terminal fixture's terminal", default="posterm")
    group.addoption("--posterm-fleet-size", default=None, metavar="N", type=int,
                    help="terminals in the session's posterm_fleet (default: the ini's posterm_fleet_size, else 8)")
    parser.addini("posterm_fleet_size", "terminals in the session's posterm_fleet", default="8")
    parser.addini("posterm_fleet_processes", "processes the session's posterm_fleet runs in (default: 1 up to"
                  " 250 terminals, then one per 250)", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "posterm_terminal(protocol='posterm', listen=False): the protocol family of"
                                       " the posterm_terminal fixture's terminal, and whether it listens on TCP")


def _settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """protocol and listen, from the most specific place that says (see the module docstring)."""
    out: dict[str, Any] = {"protocol": request.config.getoption("posterm_protocol")
                           or request.config.getini("posterm_protocol") or "posterm", "listen": False}
    marker = request.node.get_closest_marker("posterm_terminal")
    layers = [marker.kwargs] if marker is not None else []
    param = getattr(request, "param", None)
    if param is not None:
        layers.append({"protocol": param} if isinstance(param, str) else param)
    for layer in layers:
        if not isinstance(layer, dict) or set(layer) - _KEYS:
            raise pytest.UsageError(f"posterm_terminal: expected a protocol name or a dict of {sorted(_KEYS)},"
                                    f" not {layer!r}")
        out.update(layer)
    return out


class ControlledTerminal:
    """The fixture's handle: the :class:`~posterm.emulator.EmulatedTerminal` (every attribute
    of it: ``.port``, ``.host``, ``.receipts()``, ...) plus the control methods."""

    _CONTROL = ("present_code", "scan_qr", "type_pin", "wrong_pin", "cancel_pin", "confirm_on_phone",
                "refuse_on_phone", "do_nothing", "walk_away", "press_keys", "line_fault", "unplug", "replug",
                "restart", "state", "traffic", "wait_for", "wait_for_prompt", "set_manual", "scenario_toml", "act")

    def __init__(self, term: Any) -> None:
        self.terminal = term
        self._control: Any = None

    @property
    def control(self) -> Any:
        """The terminal's :class:`~posterm.emulator.control.TerminalControl` (made at first use)."""
        if self._control is None:
            from posterm.emulator.control import TerminalControl

            self._control = TerminalControl(self.terminal, manual=False)
        return self._control

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("terminal", "_control"):
            object.__setattr__(self, name, value)
        else:   # e.g. write_stall_timeout: the terminal's
            setattr(self.terminal, name, value)

    def __getattr__(self, name: str) -> Any:
        if name in ControlledTerminal._CONTROL:
            return getattr(self.control, name)
        return getattr(self.terminal, name)


@pytest.fixture
def posterm_terminal(request, tmp_path, monkeypatch):
    """An emulated terminal (:class:`ControlledTerminal` over :class:`posterm.emulator.EmulatedTerminal`): ``.port`` (the pty
    path, or ``tcp://127.0.0.1:PORT``), ``.protocol``, ``.set_scenario(path_or_Scenario)``,
    ``.receipts()``, ``.journal_orders()``, ``.journal`` (the terminal journal), ``.host``
    (the embedded host: ``order_status``, wallet actions, ``check_books``), and the
    customer's and operator's actions (``.present_code(code)``, ``.type_pin()``, ``.state()``,
    ... see the module docstring). Closed after the test; fails the test if the emulator
    itself crashed."""
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal

    settings = _settings(request)
    home = tmp_path / "posterm"
    monkeypatch.setenv("POSTERM_HOME", str(home))
    term = EmulatedTerminal.start(home=home, protocol=settings["protocol"],
                                  listen="tcp://127.0.0.1:0" if settings["listen"] else None,
                                  config=FirmwareConfig(poll_interval=0.2, poll_attempts=10))
    monkeypatch.setenv("POSTERM_PORT", term.port)
    monkeypatch.setenv("POSTERM_PROTOCOL", term.protocol)
    handle = ControlledTerminal(term)
    try:
        yield handle
    finally:
        if handle._control is not None:
            handle._control.close()
        term.close()
    if term.error is not None:
        pytest.fail(f"the emulated terminal crashed: {type(term.error).__name__}: {term.error}")


# ---------------------------------------------------------------------- many terminals per session

class FleetLease:
    """One terminal of the session fleet, leased to a test: ``.port``, ``.terminal_id``,
    ``.emulated`` (the EmulatedTerminal when the fleet runs in the test process), ``.host``."""

    __slots__ = ("index", "port", "terminal_id", "emulated", "host")

    def __init__(self, index: int, port: str, emulated: Any, host: Any) -> None:
        self.index, self.port, self.emulated, self.host = index, port, emulated, host
        self.terminal_id = f"T{index + 1:07d}"

    def __repr__(self) -> str:
        return f"<FleetLease {self.terminal_id} {self.port}>"


class SessionFleet:
    """The ``posterm_fleet`` fixture's value: ``.ports``, ``.size``, ``.host``, ``.lease()``, ``.release()``."""

    def __init__(self, fleet: Any, emulated: list, host: Any) -> None:
        import threading

        self._fleet, self._emulated, self.host = fleet, emulated, host
        self.ports: list[str] = list(fleet.ports)
        self.size = len(self.ports)
        self._free = list(range(self.size))
        self._cond = threading.Condition()

    def lease(self, timeout: float = 60.0) -> FleetLease:
        """A free terminal, the lowest-numbered first; waits (bounded) for one to be released."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._free, timeout):
                raise TimeoutError(f"posterm_fleet: all {self.size} terminals leased for {timeout:g}s")
            n = self._free.pop(0)
        return FleetLease(n, self.ports[n], self._emulated[n] if self._emulated else None, self.host)

    def release(self, lease: FleetLease) -> None:
        if lease.emulated is not None:
            lease.emulated.set_scenario(None)
        with self._cond:
            if lease.index not in self._free:
                self._free.append(lease.index)
                self._free.sort()
                self._cond.notify()

    def errors(self) -> list[str]:
        return [f"{t.terminal_id}: {type(t.error).__name__}: {t.error}" for t in self._emulated if t.error is not None]

    def close(self) -> None:
        self._fleet.close()


def _fleet_settings(config: pytest.Config) -> tuple[int, int | None]:
    size = config.getoption("posterm_fleet_size") or config.getini("posterm_fleet_size") or 8
    procs = config.getini("posterm_fleet_processes") or None
    try:
        size, procs = int(size), (int(procs) if procs else None)
    except ValueError:
        raise pytest.UsageError("posterm_fleet_size / posterm_fleet_processes: whole numbers") from None
    if not 1 <= size <= 4096:
        raise pytest.UsageError(f"posterm_fleet_size is 1 to 4096, not {size}")
    return size, procs


@pytest.fixture(scope="session")
def posterm_fleet(request, tmp_path_factory):
    """A fleet of ``posterm_fleet_size`` emulated terminals for the whole session (see the
    module docstring); fails the session's last user if an in-process terminal crashed."""
    from posterm.emulator.fleet import ProcessFleet, default_processes
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import Fleet

    size, procs = _fleet_settings(request.config)
    procs = procs or default_processes(size)
    home = tmp_path_factory.mktemp("posterm-fleet")
    if procs == 1:
        fleet = Fleet.start(size, home=home, config=FirmwareConfig(poll_interval=0.2, poll_attempts=10))
        handle = SessionFleet(fleet, fleet.terminals, fleet.terminals[0].host)
    else:
        fleet = ProcessFleet.start(size, processes=procs, home=home,
                                   child_args=["--poll-interval", "0.2", "--poll-attempts", "10"])
        handle = SessionFleet(fleet, [], fleet.host)
    try:
        yield handle
    finally:
        handle.close()
    errors = handle.errors()
    if errors:
        pytest.fail(f"posterm_fleet: {len(errors)} emulated terminal(s) crashed: {errors[0]}")


@pytest.fixture
def posterm_fleet_terminal(posterm_fleet, tmp_path, monkeypatch):
    """A terminal of the session's ``posterm_fleet``, this test's alone (:class:`FleetLease`);
    ``$POSTERM_PORT`` / ``$POSTERM_PROTOCOL`` point at it and ``$POSTERM_HOME`` at the test's
    own directory (the driver's journal). Returned to the fleet after the test."""
    lease = posterm_fleet.lease()
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path / "posterm"))
    monkeypatch.setenv("POSTERM_PORT", lease.port)
    monkeypatch.setenv("POSTERM_PROTOCOL", "posterm")
    try:
        yield lease
    finally:
        posterm_fleet.release(lease)
    if lease.emulated is not None and lease.emulated.error is not None:
        pytest.fail(f"the emulated terminal crashed: {type(lease.emulated.error).__name__}: {lease.emulated.error}")
