"""Wires an emulated terminal together: transport -> link -> firmware -> host link.

Threads, not asyncio: each terminal has its own line thread, which waits in ``poll`` on
its port and a wake-up pipe (so a host answer reaches the firmware at once); the work per
frame is tiny and mostly in C (poll, sqlite, AES) and the firmware stays single-threaded
and simple. Host requests run on a bounded pool of host workers shared by the process's
terminals (:data:`HOST_CONNECTIONS`, each with its own host connection: an SQLite
connection to the embedded host, or one TCP connection to a remote one), one request at a
time per terminal and in order; an idle terminal costs no host thread and no host
connection (see docs/emulator.md, "Fleets").

Each terminal keeps its state under ``<home>/terminals/<id>/``: the PIN pad's sealed
DUKPT state, the operator password (a sealed salted hash; default 246810), the supervisor
password that resets it (``supervisor.sealed``, the same way; default 975310) and the
terminal journal. At first start the runner acts as the key injection facility: it
injects the terminal's key-block protection key and loads its initial DUKPT key in a
TR-31 block, both from the HSM under ``<home>/hsm`` (where the host keeps it).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace
import os
import queue
import threading
from collections import deque
import time
from pathlib import Path
from typing import Any

from firmware_protocol.native import messages as m

from posterm.crypto.pinpad import OperatorPassword, SecureModule, SupervisorPassword
from posterm.emulator.firmware import Firmware, FirmwareConfig, Identity
from posterm.emulator.hostlink import HostRefusedLogon, SignedHostLink
from posterm.emulator.orders import OrderStore
from posterm.emulator.peripherals import OperatorKeypad, PinPad
from posterm.emulator.scenario import Scenario, load_scenario
from posterm.errors import ConfigError, Disconnected, PosError, SendQueueFull, TransportError
from posterm.home import posterm_home
from posterm.families.events import MessageReceived
from posterm.families.interfaces import TerminalFront
from posterm.families.pump import Pump
from posterm.safefs import private_dir
from posterm.transport.fd import wait_ready

log = logging.getLogger("posterm.emulator")
DEMO_OPERATOR_PASSWORD = "246810"
DEMO_SUPERVISOR_PASSWORD = "975310"   # resets the operator password (OperatorReset)
# The line's output buffer: what the ECR has not read yet. An ECR that takes nothing for
# WRITE_STALL_TIMEOUT seconds, or lets MAX_OUTPUT bytes pile up, is dropped (TCP: the
# connection is closed and the next one accepted; pty: the backlog is discarded and the
# terminal waits for the next reader). The loop itself never blocks on a write.
WRITE_STALL_TIMEOUT = 5.0
MAX_OUTPUT = 256 * 1024
_REASKABLE = (m.Status, m.KeyStatus, m.Progress, m.Error)
_TERMINAL_ID = re.compile(r"[A-Za-z0-9_\-.:]{1,32}")

_hosts: dict[Path, list] = {}
_hosts_lock = threading.Lock()


def _embedded_host(home: Path, **kw: Any):
    """One embedded host per database per process, shared by a fleet (reference counted).

    Returns ``(host, client)``: the client is shared by the fleet and takes the host one
    request at a time. The host's writes are serialised by SQLite anyway, but SQLite makes
    a blocked writer sleep and poll (1, 2, 5 ... 100 ms), so with 50 terminals some lose
    over and over and wait for seconds; waiting on a lock here wakes them in turn instead.
    """
    from posterm.host import Host

    path = home.resolve() / "host.db"  # not host.db resolved: a planted link must reach Store, refused
    with _hosts_lock:
        entry = _hosts.get(path)
        if entry is None:
            host = Host.open(path, **kw)
            entry = _hosts[path] = [host, 0, _SerialClient(host.client())]
        entry[1] += 1
        return entry[0], entry[2]


class _SerialClient:
    """A host client that lets one request in at a time (see _embedded_host)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def request(self, msg, timeout: float):
        if not self._lock.acquire(timeout=timeout):
            from posterm.errors import PosTimeout

            raise PosTimeout(f"the embedded host was busy for {timeout:g}s")
        try:
            return self._inner.request(msg, timeout)
        finally:
            self._lock.release()


def _release_host(host) -> None:
    with _hosts_lock:
        for path, entry in list(_hosts.items()):
            if entry[0] is host:
                entry[1] -= 1
                if entry[1] <= 0:
                    host.close()
                    del _hosts[path]


# ---------------------------------------------------------------- shared host workers (fleets)
# Host requests of every terminal in the process run on at most HOST_CONNECTIONS threads,
# each holding its own host connection (the embedded host's store keeps one SQLite
# connection per thread; a remote host gets one TCP connection per worker, made lazily).
HOST_CONNECTIONS = 16
FRESH_CONNECTIONS = 8     # TCP connections being opened (not yet answered) at once, per process
_workers: "dict[int, _HostWorkers]" = {}   # by size: a fleet's own size is its own pool
_workers_lock = threading.Lock()


def set_host_connections(n: int) -> None:
    """How many host workers (host connections) the terminals started from now on share (a
    pool of that size starts with the first of them and stops with the last)."""
    global HOST_CONNECTIONS
    if not 1 <= n <= 1024:
        raise ConfigError(f"--host-connections is 1 to 1024, not {n}")
    HOST_CONNECTIONS = n


class _HostWorkers:
    """Up to ``size`` threads taking terminals with host work from one queue, one request each
    turn (a terminal with more queues again behind the others: no terminal starves the rest)."""

    def __init__(self, size: int) -> None:
        self.size, self.users = size, 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, side: "_HostSide") -> None:
        self._queue.put(side)
        with self._lock:
            if self._idle == 0 and len(self._threads) < self.size:
                t = threading.Thread(target=self._run, name=f"emu-host-{len(self._threads) + 1}", daemon=True)
                self._threads.append(t)
                t.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            side = self._queue.get()
            with self._lock:
                self._idle -= 1
            if side is None:
                break
            side.run_one()
        for client in _tcp_clients.pop(threading.get_ident(), {}).values():
            client.close()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(5)


def _acquire_workers() -> _HostWorkers:
    with _workers_lock:
        pool = _workers.get(HOST_CONNECTIONS)
        if pool is None:
            pool = _workers[HOST_CONNECTIONS] = _HostWorkers(HOST_CONNECTIONS)
        pool.users += 1
        return pool


def _release_workers(pool: _HostWorkers) -> None:
    with _workers_lock:
        pool.users -= 1
        if pool.users > 0:
            return
        if _workers.get(pool.size) is pool:
            del _workers[pool.size]
    pool.stop()


class _HostSide:
    """A terminal's host requests (logon, calls, wallet actions), run in order on the shared
    workers; what its own host thread was (``put``, ``is_alive``, ``join``)."""

    def __init__(self, term: "EmulatedTerminal") -> None:
        self._term = term
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._pool: _HostWorkers | None = None
        self._scheduled = self._busy = self._closed = self._dead = False

    def start(self) -> None:
        self._pool = _acquire_workers()
        with self._cond:
            self._kick()

    def _kick(self) -> None:   # under the condition's lock
        if self._pool is not None and self._items and not (self._scheduled or self._closed or self._dead):
            self._scheduled = True
            self._pool.submit(self)

    def put(self, item) -> None:
        with self._cond:
            if item is None:
                self._closed = True
                self._items.clear()
                self._cond.notify_all()
                return
            self._items.append(item)
            self._kick()

    def run_one(self) -> None:
        with self._cond:
            self._scheduled = False
            if self._closed or self._dead or not self._items:
                return
            kind, payload = self._items.popleft()
            self._busy = True
        term = self._term
        try:
            term._host_item(kind, payload)
        except BaseException as exc:  # noqa: BLE001 - a dead host side takes the terminal down, loudly
            with self._cond:
                self._dead = True
            if not term._stop.is_set():
                term.error = exc
                log.exception("%s: host thread stopped", term.terminal_id)
        finally:
            term._wake()   # while busy: close() waits for that before it closes the wake-up pipe
            with self._cond:
                self._busy = False
                self._kick()
                self._cond.notify_all()

    def is_alive(self) -> bool:
        with self._cond:
            return not self._dead and not (self._closed and not self._busy)

    def join(self, timeout: float) -> None:
        """Wait (bounded) until no request of this terminal is running; then leave the pool."""
        with self._cond:
            self._cond.wait_for(lambda: not self._busy, timeout)
            pool, self._pool = self._pool, None
        if pool is not None:
            _release_workers(pool)


# thread id -> url -> that worker's own TcpHostClient (closed when the worker stops)
_tcp_clients: dict[int, dict[str, Any]] = {}
_fresh = threading.BoundedSemaphore(FRESH_CONNECTIONS)


class _PooledTcpClient:
    """A remote host shared by the process's terminals: each host worker sends on its own
    connection (so a fleet holds at most HOST_CONNECTIONS of them, not one per terminal).
    A new connection's first request waits for one of FRESH_CONNECTIONS slots: a host server
    caps connections not yet logged on (32 by default) and evicts past it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _client(self):
        from posterm.host.client import TcpHostClient

        mine = _tcp_clients.setdefault(threading.get_ident(), {})
        client = mine.get(self.url)
        fresh = client is None
        if fresh:
            client = mine[self.url] = TcpHostClient(self.url)
        return client, fresh

    def request_with_payload(self, msg, timeout: float):
        client, fresh = self._client()
        if not fresh:
            return client.request_with_payload(msg, timeout)
        if not _fresh.acquire(timeout=timeout):
            from posterm.errors import PosTimeout

            raise PosTimeout(f"no host connection could be opened within {timeout:g}s")
        try:
            return client.request_with_payload(msg, timeout)
        finally:
            _fresh.release()

    def request(self, msg, timeout: float):
        return self.request_with_payload(msg, timeout)[0]


def _factory_keywords(fam) -> set[str]:
    """The keyword parameters the family's terminal-link factory names (all of them if it
    takes ``**kw``; none if it cannot be inspected: ``make_terminal_link`` reports that)."""
    import importlib
    import inspect

    module, _, attr = fam.terminal_link.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for name in attr.split("."):
            obj = getattr(obj, name)
        params = inspect.signature(obj).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return {"transport", "state_path"}
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _operator_password(path: Path, password: str | None, terminal_id: str) -> OperatorPassword:
    """The terminal's operator password: created from ``password`` (default the demo one) at
    first start, then what its state holds. A ``password`` the state does not hold is a
    ConfigError (the line's commands would carry one password, the keypad check another);
    checked without counting a wrong try, since the caller owns the state."""
    existed = path.exists()
    operator = OperatorPassword(path, password=password or DEMO_OPERATOR_PASSWORD)
    if existed and password is not None and not operator.matches(password):
        raise ConfigError(f"terminal {terminal_id} already has another operator password (in {path.parent}): "
                          "give that one, or start it with a new --home")
    return operator


def _supervisor_password(path: Path, password: str | None, terminal_id: str) -> SupervisorPassword:
    """The terminal's supervisor password, as :func:`_operator_password` (default the demo one)."""
    existed = path.exists()
    supervisor = SupervisorPassword(path, password=password or DEMO_SUPERVISOR_PASSWORD)
    if existed and password is not None and not supervisor.matches(password):
        raise ConfigError(f"terminal {terminal_id} already has another supervisor password (in {path.parent}): "
                          "give that one, or start it with a new --home")
    return supervisor


class EmulatedTerminal:
    """One emulated terminal. Start with :meth:`start`; a context manager."""

    def __init__(self, transport, port: str, firmware: Firmware, hostlink: SignedHostLink, *, front: TerminalFront,
                 host=None, listener=None, journal: OrderStore, faults: str | None = None,
                 record: str | Path | None = None, protocol: str = "posterm") -> None:
        self.port = port
        self.firmware = firmware
        self.hostlink = hostlink
        self.host = host                    # the embedded Host, if any (for wallet actions and tests)
        self.journal = journal
        self._listener = listener
        self._faults = faults
        self._record = Path(record) if record else None
        self.protocol = protocol
        self._transport = self._wrap(transport) if transport is not None else None
        # The family's terminal side of the line (posterm.families: family(protocol).make_terminal_link)
        self._link = front
        self._pump = Pump(front, max_wait=0.25)   # this loop reads and writes itself (select, output buffer)
        self._calls = _HostSide(self)      # host requests, on the process's shared host workers
        self._replies: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop = threading.Event()
        self._closed = False
        self._refused: int | None = None    # the host's last logon refusal (logged once at error level)
        self.error: BaseException | None = None
        self.bytes_received = 0             # wire bytes ECR -> terminal (for the wire-bound benchmark)
        self.bytes_sent = 0                 # wire bytes terminal -> ECR
        self.write_stall_timeout = WRITE_STALL_TIMEOUT
        self.max_output = MAX_OUTPUT
        self._outbuf = bytearray()
        self._out_progress = 0.0            # when the ECR last took bytes (or the buffer filled from empty)
        # What the line survived, by kind (write_stall, output_overflow, send_queue_full, replaced,
        # disconnected): for logs, tests (wait_for_line_event) and the fuzz.
        self.line_events: Counter[str] = Counter()
        self._line_cond = threading.Condition()
        self._quiet_until: dict[str, float] = {}
        # The control panel's hooks (posterm.emulator.control), all called on the line thread:
        # wire_tap(sender, bytes) sees what crosses the line; on_service() runs after each pass.
        self.wire_tap: Any = None
        self.on_service: Any = None
        self.restarts = 0
        self._unplugged_until = 0.0         # the cable is out until then (monotonic; inf: until replugged)
        self._fault_in = self._fault_out = 0   # one-shot line faults pending: corrupt the next chunk in, drop one out
        self._line = threading.Thread(target=self._line_loop, name=f"emu-{hostlink.terminal_id}", daemon=True)
        self._worker = self._calls

    # ------------------------------------------------------------------ construction

    @classmethod
    def start(cls, *, pty: bool = True, listen: str | None = None, host: str = "embedded",
              home: str | Path | None = None, terminal_id: str = "T0000001", merchant_id: str = "M100000001",
              location: str = "CN-SH", scenario: str | Path | Scenario | None = None, faults: str | None = None,
              pace: bool = False, baudrate: int | None = None, record: str | Path | None = None,
              protocol: str = "posterm", config: FirmwareConfig | None = None, link: str | None = None,
              host_options: dict | None = None, operator_password: str | None = None,
              line_format: str | None = None, supervisor_password: str | None = None) -> "EmulatedTerminal":
        """Start a terminal on a new pty (default) or ``listen`` (``tcp://127.0.0.1:PORT``).

        ``host``: ``"embedded"`` (a host in this process, state under ``home``) or
        ``tcp://HOST:PORT``. ``protocol``: a family of :mod:`posterm.families`.
        ``baudrate`` and ``line_format`` default to the family's serial defaults (ZVT 9600
        8N2, Concert 9600 8N1, posterm 115200 8N1): the pty's termios say so and ``pace``
        keeps to them. ``line_format``: ``8N1``/``8N2`` or ``7E1``/``7O1`` (seven bits and
        parity, carried on the pty exactly as a UART puts them on the wire).
        ``operator_password``: the terminal's operator password (the password of ZVT's
        commands too); kept in the terminal's state from its first start (default
        :data:`DEMO_OPERATOR_PASSWORD`); one given that the state does not hold is refused.
        ``supervisor_password``: the same for the supervisor password that resets it
        (``supervisor.sealed``, default :data:`DEMO_SUPERVISOR_PASSWORD`).
        Raises ConfigError / TransportError.
        """
        from posterm.transport.parity import parse_line_format

        if not isinstance(terminal_id, str) or not _TERMINAL_ID.fullmatch(terminal_id):
            raise ConfigError(f"terminal id {terminal_id!r}: 1 to 32 of A-Z a-z 0-9 _ - . :")
        if host != "embedded":
            if not host.startswith("tcp://"):
                raise ConfigError(f"--host must be 'embedded' or tcp://HOST:PORT, not {host!r}")
            from posterm.transport.tcp import parse_address

            try:
                parse_address(host)
            except PosError as exc:
                raise ConfigError(f"--host {exc}") from None
        if listen:
            from posterm.transport.tcp import LOOPBACK, parse_address

            try:
                listen_host, _ = parse_address(listen)
            except PosError as exc:
                raise ConfigError(f"--listen {exc}") from None
            if listen_host not in LOOPBACK:
                raise ConfigError(f"--listen {listen}: the emulator listens on loopback only "
                                  "(127.0.0.1, ::1, localhost); there is no option to expose it")
        if faults:
            from posterm.transport.faults import FaultSpec

            FaultSpec.parse(faults)   # now, not at the first TCP connection (ConfigError)
        if isinstance(scenario, (str, Path)):
            # read before the host, the journal or a port is opened: a bad file leaves nothing open
            scenario = load_scenario(scenario)
        from posterm.families import family

        fam = family(protocol)
        line = fam.serial_defaults
        if baudrate is None:
            baudrate = fam.baudrate
        if line_format is None:
            line_format = f"{line.get('bytesize', 8)}{line.get('parity', 'N')}{line.get('stopbits', 1):g}"
        try:
            bits, parity, stop = parse_line_format(line_format)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not fam.ecr_can_query:
            config = replace(config or FirmwareConfig(), void_unfinished=True)
        home = private_dir(home, own=True) if home else posterm_home()
        private_dir(home / "terminals", own=True)
        state = private_dir(home / "terminals" / terminal_id, own=True)
        module = SecureModule(state / "pinpad.sealed")
        operator = _operator_password(state / "operator.sealed", operator_password, terminal_id)
        supervisor = _supervisor_password(state / "supervisor.sealed", supervisor_password, terminal_id)
        operator_password = operator_password or DEMO_OPERATOR_PASSWORD
        embedded = None
        listener = transport = journal = None
        try:
            if host == "embedded":
                embedded, client = _embedded_host(home, **(host_options or {}))
                hsm = embedded.hsm
            elif host.startswith("tcp://"):
                from posterm.crypto.hsm import Hsm

                client, hsm = _PooledTcpClient(host), None
                if not module.status().loaded:
                    # the key injection facility shares the host's HSM state
                    hsm = Hsm.open(private_dir(home / "hsm", own=True))
            else:
                raise ConfigError(f"--host must be 'embedded' or tcp://HOST:PORT, not {host!r}")
            if not module.status().loaded:
                module.inject_kbpk(hsm.kbpk_for_injection(terminal_id))
                module.load_key_block(hsm.initial_key_block(terminal_id).block)
            journal = OrderStore(state / "journal.db")
            identity = Identity(terminal_id=terminal_id, merchant_id=merchant_id, location=location)
            firmware = Firmware(identity, journal, PinPad(module), OperatorKeypad(operator, supervisor), config=config,
                                scenario=scenario)
            hostlink = SignedHostLink(module, client, terminal_id=terminal_id, merchant_id=merchant_id,
                                      firmware_version=identity.firmware_version, location=location)
            if listen:
                from posterm.transport.tcp import TcpTransport, parse_address

                addr, port_no = parse_address(listen)
                listener = TcpTransport.listen(addr, port_no, pace=pace, baudrate=baudrate)
                port = listener.address
            else:
                from posterm.transport.pty_port import PtyTransport

                # The pty's termios carry the line settings (an ECR that opens the port without
                # setting its own sees them); its parity stays off: a pty refuses it (see parity).
                transport, port = PtyTransport.create(pace=pace, baudrate=baudrate, bytesize=bits, parity=parity,
                                                      stopbits=stop, link=link)
                if parity != "N":
                    from posterm.transport.parity import SoftParityTransport

                    transport = SoftParityTransport(transport, parity)
            # Paced like a cable: the front's timers may allow for a frame's time on the line
            # (line_rate, bytes per second: passed only then, so a family's factory may ignore pacing).
            from posterm.transport.base import bits_per_byte

            extra: dict[str, Any] = {"line_rate": baudrate / bits_per_byte(bits, parity, stop)} if pace else {}
            # What a family's factory may take besides (passed only if it says so): which line it is
            # on (a front that frames serial and TCP differently need not guess), and a file in the
            # terminal's state for what it must keep across restarts (ZVT: receipt number -> order).
            accepts = _factory_keywords(fam)
            if "transport" in accepts:
                extra["transport"] = "tcp" if listen else "serial"
            if "state_path" in accepts:
                extra["state_path"] = state / f"{fam.name}-receipts.json"
            try:
                front = fam.make_terminal_link(operator_password=operator_password, **extra)
            except ValueError as exc:   # a setting the family cannot carry (a ZVT password is 6 digits)
                raise ConfigError(f"--protocol {fam.name}: {exc}") from None
            term = cls(transport, port, firmware, hostlink, front=front, host=embedded, listener=listener,
                       journal=journal, faults=faults, record=record, protocol=fam.name)
        except BaseException:
            # Nothing started: the port, the journal and this terminal's hold on the host go
            # (a fleet or a test that carries on must not keep them).
            for res in (listener, transport):
                if res is not None:
                    try:
                        res.close()
                    except (PosError, OSError):
                        pass
            if journal is not None:
                journal.close()
            if embedded is not None:
                _release_host(embedded)
            raise
        firmware.start(time.monotonic())
        # The host's security notices reach the firmware on its own thread, like host answers.
        hostlink.on_notices = lambda notices: (term._replies.put(("notices", notices)), term._wake())
        # Log on now, not at the first payment: a host that refuses this terminal shows at
        # once (an error in the log, Status.host_online False), not as a failed sale.
        term._calls.put(("logon", None))
        term._worker.start()
        term._line.start()
        return term

    def _wrap(self, transport):
        if self._faults:
            from posterm.transport.faults import FaultyTransport

            transport = FaultyTransport(transport, self._faults)
        if self._record is not None:
            try:
                from posterm.record import RecordingTransport, recording_path
            except ImportError:
                raise ConfigError("recording is not available in this build") from None
            transport = RecordingTransport(transport, recording_path(self._record, self.hostlink.terminal_id),
                                           side="terminal", protocol=self.protocol)
        return transport

    # ------------------------------------------------------------------ the handle

    def set_scenario(self, scenario: str | Path | Scenario | None) -> None:
        """Replace the customer scripts; the next payment takes the first. Returns once the
        firmware has them (straight to the line thread, never queued behind a host request)."""
        if isinstance(scenario, (str, Path)):
            scenario = load_scenario(scenario)
        applied = threading.Event()
        self._replies.put(("scenario", (scenario, applied)))
        self._wake()
        if self._line.is_alive():
            applied.wait(5.0)

    def receipts(self) -> list:
        return self.journal.receipts()

    def journal_orders(self) -> list:
        return self.journal.orders()

    @property
    def terminal_id(self) -> str:
        return self.hostlink.terminal_id

    def close(self) -> None:
        """Stop both threads (bounded), close the port, the journal and an owned host.

        Once only; a terminal whose threads were already told to stop (a simulated kill)
        still lets go of its port, journal and its share of the embedded host."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._calls.put(None)
        self._wake()
        self._line.join(3)
        self._worker.join(3)
        for res in (self._transport, self._listener):
            if res is not None:
                try:
                    res.close()
                except (PosError, OSError):
                    pass
        self.journal.close()
        if self.host is not None:
            _release_host(self.host)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> "EmulatedTerminal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ threads

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def _host_item(self, kind: str, payload) -> None:
        """One host request of this terminal, on a shared host worker (see _HostSide)."""
        if kind == "logon":
            refused, err = None, ""
            try:
                self.hostlink.logon(self.firmware.config.host_timeout)
            except HostRefusedLogon as exc:
                refused, err = self._note_refusal(exc), type(exc).__name__
            except PosError as exc:
                err = type(exc).__name__
                log.info("%s: could not log on to the host yet: %s", self.terminal_id, exc)
            else:
                self._refused = None
            self._replies.put(("logon", (refused, err)))
        elif kind == "call":
            refused = None
            try:
                reply, err = self.hostlink.request(payload.message, payload.timeout), ""
                self._refused = None
            except HostRefusedLogon as exc:
                reply, err, refused = None, type(exc).__name__, self._note_refusal(exc)
            except PosError as exc:
                reply, err = None, type(exc).__name__
                log.info("%s: host: %s", self.terminal_id, exc)
            self._replies.put(("reply", (payload.token, reply, err, refused)))
        elif kind == "wallet":
            self._wallet(payload)

    def _note_refusal(self, exc: HostRefusedLogon) -> int:
        """Log a refused logon: at error level when it starts (or its reason changes), then quieter."""
        level = logging.INFO if self._refused == exc.reason else logging.ERROR
        self._refused = exc.reason
        log.log(level, "%s: %s (every host request fails until the host accepts this terminal)",
                self.terminal_id, exc)
        return exc.reason

    def _wallet(self, call) -> None:
        if self.host is None:
            log.warning("%s: wallet actions need the embedded host; %s skipped", self.terminal_id, call.kind)
            return
        try:
            if call.kind == "scan_qr":
                status = self.host.wallet_scan(call.qr_data, self.host.account_for_code(call.code))
                code = self._phone_code(call.order_id) if status == "WAIT_BUYER" else None
                if code is not None:    # two-factor, or over a limit: the customer types the phone's code
                    self.host.wallet_confirm(call.order_id, self.hostlink.merchant_id, code)
            elif call.kind == "confirm":
                self.host.wallet_confirm(call.order_id, self.hostlink.merchant_id, self._phone_code(call.order_id))
        except PosError as exc:
            log.info("%s: wallet %s: %s", self.terminal_id, call.kind, exc)

    def _phone_code(self, order_id: str) -> str | None:
        """The verification code the paying account's phone received for this payment (the
        customer reads it there: two-factor, or a scan over a limit or that risk control asks
        to confirm), or None (none pending: biometric approval)."""
        import re

        from posterm.host import phone

        view = self.host.store.view()
        t = view.trade_by_order(self.hostlink.merchant_id, order_id)
        if t is None or not t["account_id"]:
            return None
        pending = view.pending_verification(t["account_id"], "payment", t["trade_no"], method="code")
        if pending is None:
            return None
        for e in phone.inbox(self.host.ctx, t["account_id"]):
            if e["kind"] == "code" and e["ref"] == str(pending["id"]):
                m = re.search(r"\b(\d{6})\b", e["text"])
                return m.group(1) if m else None
        return None

    def _accept(self) -> bool:
        conn = self._listener.accept(0.2)
        if conn is None:
            return False
        self._transport = self._wrap(conn)
        self._link.reset()
        self._outbuf.clear()
        return True

    # -- what the line survived: counted, logged (at most once a second per kind), waitable

    def _note(self, kind: str, message: str, *args: Any) -> None:
        with self._line_cond:
            self.line_events[kind] += 1
            self._line_cond.notify_all()
        now = time.monotonic()
        if now >= self._quiet_until.get(kind, 0.0):
            self._quiet_until[kind] = now + 1.0
            log.warning("%s: " + message, self.terminal_id, *args)

    def wait_for_line_event(self, kind: str, count: int = 1, timeout: float = 30.0) -> bool:
        """Wait until the line has survived ``count`` events of ``kind`` (see ``line_events``)."""
        with self._line_cond:
            return self._line_cond.wait_for(lambda: self.line_events[kind] >= count, timeout)

    def wait_for_input(self, total: int, timeout: float = 30.0) -> bool:
        """Wait until the terminal has read ``total`` bytes from its ECRs since start."""
        with self._line_cond:
            return self._line_cond.wait_for(lambda: self.bytes_received >= total, timeout)

    def _drop_ecr(self, kind: str, why: str) -> None:
        """The ECR stopped reading (or flooded us): forget its backlog and link state; on TCP
        close the connection (the next one is accepted), on a pty wait for the next reader."""
        self._note(kind, "%s; dropped %d bytes of output and the link state", why, len(self._outbuf))
        self._outbuf.clear()
        self._link.reset()
        if self._listener is not None:
            if self._transport is not None:
                self._transport.close()
            self._transport = None
        else:
            discard = self._own(self._transport, "discard_output")
            if discard is not None:
                discard()

    @staticmethod
    def _own(transport, name: str):
        """``transport.name`` if its class defines it: a wrapper (recording, parity, faults)
        that forwards unknown attributes to the port must not be bypassed."""
        return getattr(transport, name) if getattr(type(transport), name, None) is not None else None

    def _flush(self, now: float) -> None:
        """Write what the ECR takes now, without blocking; drop an ECR that stalls."""
        if not self._outbuf or self._transport is None:
            return
        write_some = self._own(self._transport, "write_some")
        try:
            if write_some is None:  # a wrapper (faults, recording, parity): bounded blocking write
                self._transport.write(bytes(self._outbuf))
                sent = len(self._outbuf)
            else:
                sent = write_some(bytes(self._outbuf))
        except (Disconnected, TransportError) as exc:
            if self._listener is None and "stalled" not in str(exc):
                raise
            self._drop_ecr("write_stall", f"the ECR stopped reading ({exc})")
            return
        if sent:
            if self.wire_tap is not None:
                self.wire_tap("terminal", bytes(self._outbuf[:sent]))
            self.bytes_sent += sent
            del self._outbuf[:sent]
            self._out_progress = now
        if self._outbuf and now - self._out_progress >= self.write_stall_timeout:
            self._drop_ecr("write_stall", f"the ECR read nothing for {self.write_stall_timeout:g}s")

    def _line_loop(self) -> None:
        link, pump = self._link, self._pump
        try:
            while not self._stop.is_set():
                fw = self.firmware   # a restart (the panel, a scenario) replaces it
                if not self._worker.is_alive():
                    raise RuntimeError("the host thread died") from self.error
                if self._transport is None and not self._accept():
                    self._service(time.monotonic())
                    continue
                stall = self._out_progress + self.write_stall_timeout if self._outbuf else None
                wait = pump.wait_time(time.monotonic(), fw.next_deadline(), stall)
                fds = [self._wake_r]
                if self._listener is not None:
                    fds.append(self._listener.fileno())
                try:
                    port_fd = self._transport.fileno()
                    fds.append(port_fd)
                except OSError:
                    port_fd = None
                    wait = min(wait, 0.01)
                wfds = [port_fd] if self._outbuf and port_fd is not None else []
                ready, _writable = wait_ready(fds, wfds, wait)
                if self._wake_r in ready:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                if self._listener is not None and self._listener.fileno() in ready:
                    # A new ECR connection replaces the current one: the ECR reconnects at
                    # will, and a half-open old connection must not keep the terminal.
                    conn = self._listener.accept(0)
                    if conn is not None:
                        self._note("replaced", "a new ECR connection replaces the current one")
                        self._transport.close()
                        self._transport = self._wrap(conn)
                        self._link.reset()
                        self._outbuf.clear()
                        continue
                data = b""
                if port_fd is None or port_fd in ready:
                    try:
                        data = self._transport.read(4096, 0)
                    except (Disconnected, TransportError):
                        if self._listener is None:
                            raise
                        self._note("disconnected", "ECR disconnected")
                        self._transport.close()
                        self._transport = None
                        self._outbuf.clear()
                        continue
                now = time.monotonic()
                if data and (self._unplugged_until or self._fault_in):
                    data = self._cable_in(data, now)
                if data:
                    if self.wire_tap is not None:
                        self.wire_tap("ecr", data)
                    with self._line_cond:
                        self.bytes_received += len(data)
                        self._line_cond.notify_all()
                # Nothing written here: _service writes the ACKs with the answers, into the
                # output buffer (the loop never blocks on a write).
                for ev in pump.feed(data, now, write=False):
                    if isinstance(ev, MessageReceived) and isinstance(ev.message, m.Hello):
                        # A new ECR session (a Hello, in the firmware's vocabulary; a family without
                        # sessions never delivers one).
                        stale = link.new_session()
                        discard = self._own(self._transport, "discard_output")
                        if discard is not None:   # pty: bytes the last reader left unread
                            self._outbuf.clear()
                            discard()
                        if stale:
                            self._note("stale_dropped", "a new ECR session; %d answers to the last one dropped",
                                       len(stale))
                    fw.on_link_event(ev, now)
                self._service(now)
        except BaseException as exc:  # noqa: BLE001 - surfaced through .error and the log
            if not self._stop.is_set():
                self.error = exc
                log.exception("%s: emulator stopped", self.terminal_id)

    def _service(self, now: float) -> None:
        fw, link = self.firmware, self._link
        while True:
            try:
                kind, payload = self._replies.get_nowait()
            except queue.Empty:
                break
            if kind == "reply":
                token, reply, err, refused = payload
                fw.on_host_reply(token, reply, now, err, refused=refused)
            elif kind == "logon":
                fw.on_logon(payload[0], now, payload[1])
            elif kind == "scenario":
                fw.set_scenario(payload[0])
                payload[1].set()
            elif kind == "notices":
                fw.set_notices(payload)
            elif kind == "control":   # a call from the control panel, run here: the firmware is this thread's
                payload()
                fw = self.firmware
        fw.tick(now)
        for action in fw.take_terminal_calls():
            self._terminal_action(action, now)
            fw = self.firmware
        for call in fw.take_host_calls():
            self._calls.put(("call", call))
        for wcall in fw.take_wallet_calls():
            self._calls.put(("wallet", wcall))
        out = bytearray()
        for msg in fw.take_ecr():
            try:
                out += link.send(msg, now)
            except SendQueueFull:
                # The ECR sends requests faster than it takes the answers: overload, not a crash.
                # An answer it can ask for again (status, progress, an error) is dropped; a
                # result makes room by dropping those (it is journaled; a Query gets it anyway).
                evicted = [] if isinstance(msg, _REASKABLE) else link.drop_queued(
                    lambda q: isinstance(q, _REASKABLE))
                if evicted:
                    out += link.send(msg, now)
                self._note("send_queue_full", "the ECR is not taking answers; %s dropped",
                           ", ".join(sorted({type(q).__name__ for q in evicted})) if evicted else type(msg).__name__)
        out += link.data_to_send()
        if self.on_service is not None:
            self.on_service()
        if out and self._unplugged_until and now < self._unplugged_until:
            out = bytearray()   # lost on the line: the cable is out
        elif out and self._fault_out:
            self._fault_out -= 1
            out = bytearray()   # one chunk lost (an injected fault)
        if self._transport is None:
            return
        if out:
            if not self._outbuf:
                self._out_progress = now
            self._outbuf += out
            if len(self._outbuf) > self.max_output:
                self._drop_ecr("output_overflow", f"over {self.max_output} bytes of output not read by the ECR")
                return
        self._flush(now)
        self._after_payment(now)

    def _after_payment(self, now: float) -> None:
        """A scenario payment's ``then``, once the terminal is idle and the ECR has taken its
        answer (the link is idle, nothing left to write): what a person did between payments."""
        fw = self.firmware
        if not fw.after_payment or fw._flow is not None or not self._link.idle or self._outbuf:
            return
        while fw.after_payment:
            action = fw.after_payment.popleft()
            if action.kind == "press_keys":
                fw._press_keys(action.keys or "")
            else:
                self._terminal_action(action, now)
                fw = self.firmware


    # ------------------------------------------------------------------ the control panel's line actions

    def call_on_line(self, fn) -> None:
        """Run ``fn()`` on the line thread (it owns the firmware), soon; the caller bounds how
        many it queues (posterm.emulator.control)."""
        self._replies.put(("control", fn))
        self._wake()

    @property
    def unplugged(self) -> bool:
        return bool(self._unplugged_until) and time.monotonic() < self._unplugged_until

    def _cable_in(self, data: bytes, now: float) -> bytes:
        if self._unplugged_until:
            if now < self._unplugged_until:
                return b""      # the cable is out: what the ECR sends is lost
            self._unplugged_until = 0.0
            self._note("replugged", "the cable is back in")
        if self._fault_in and data:
            self._fault_in -= 1
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]   # one corrupted byte: a bad CRC
            self._note("fault_injected", "a corrupted chunk from the ECR (injected)")
        return data

    def _terminal_action(self, action, now: float) -> None:
        """A scenario's or the panel's action on the terminal itself (see scenario.TERMINAL_ACTIONS)."""
        if action.kind == "line_fault":
            if action.fault == "corrupt":
                self._fault_in += 1
            else:
                self._fault_out += 1
                self._note("fault_injected", "a chunk to the ECR dropped (injected)")
        elif action.kind == "unplug":
            self._unplugged_until = now + action.seconds if action.seconds else float("inf")
            self._outbuf.clear()
            self._note("unplugged", "the cable is out" + (f" for {action.seconds:g}s" if action.seconds else ""))
        elif action.kind == "replug":
            if self._unplugged_until:
                self._unplugged_until = 0.0
                self._note("replugged", "the cable is back in")
        elif action.kind == "restart":
            self._restart(now)

    def _restart(self, now: float) -> None:
        """Power-cycle the firmware: a new one over the same journal, peripherals and scripts;
        what was in flight is reconciled with the host as after a crash (Firmware.start)."""
        old = self.firmware
        old.pinpad.cancel()
        fw = Firmware(old.identity, old.journal, old.pinpad, old.keypad, config=old.base_config,
                      wallclock=old._wallclock)
        fw.display, fw.printer, fw._tokens = old.display, old.printer, old._tokens   # same screen, paper, token count
        fw._scripts, fw.config, fw.scenario_results = old._scripts, old.config, old.scenario_results
        fw.manual_customer, fw.outcomes, fw.after_payment = old.manual_customer, old.outcomes, old.after_payment
        fw.display.show("WELCOME")
        self._link.reset()
        self._outbuf.clear()
        self.firmware = fw
        self.restarts += 1
        self._note("restarted", "the terminal restarted")
        fw.start(now)
        self._calls.put(("logon", None))


class Fleet:
    """N emulated terminals (T0000001..) in one process, sharing one embedded host."""

    def __init__(self, terminals: list[EmulatedTerminal]) -> None:
        self.terminals = terminals

    @classmethod
    def start(cls, count: int, *, listen: str | None = None, first: int = 1, host_connections: int | None = None,
              **kw: Any) -> "Fleet":
        """``count`` terminals, each on its own pty, or with ``listen`` (``tcp://HOST:PORT``)
        on PORT, PORT+1, ... (``PORT`` 0: each on a free port); ``kw`` as
        :meth:`EmulatedTerminal.start`. ``first``: the first terminal's number (T0000001 by
        default; a share of a fleet over several processes starts further on).
        ``host_connections``: how many host workers (connections) the process's terminals share
        (:func:`set_host_connections`). Over several processes: :mod:`posterm.emulator.fleet`.
        Raises ConfigError / TransportError (none left running)."""
        before = HOST_CONNECTIONS
        if host_connections is not None:
            set_host_connections(host_connections)   # for this fleet's terminals (restored below)
        try:
            return cls._start(count, listen, first, kw)
        finally:
            set_host_connections(before)

    @classmethod
    def _start(cls, count: int, listen: str | None, first: int, kw: dict) -> "Fleet":
        from posterm.host.demo import MAX_TERMINALS

        if not 1 <= count <= MAX_TERMINALS + 1 - first:
            raise ConfigError(f"a fleet is 1 to {MAX_TERMINALS} terminals (the demo data registers "
                              f"T0000001..T{MAX_TERMINALS:07d})")
        addresses: list[str | None] = [None] * count
        if listen:
            from posterm.transport.tcp import parse_address

            try:
                addr, port0 = parse_address(listen)
            except PosError as exc:
                raise ConfigError(f"--listen {exc}") from None
            if port0 and port0 + count - 1 > 65535:
                raise ConfigError(f"--listen {listen}: {count} terminals need ports {port0}..{port0 + count - 1}")
            where = f"[{addr}]" if ":" in addr else addr
            addresses = [f"tcp://{where}:{port0 + n if port0 else 0}" for n in range(count)]
        started: list[EmulatedTerminal] = []
        try:
            for n in range(first, first + count):
                started.append(EmulatedTerminal.start(terminal_id=f"T{n:07d}", listen=addresses[n - first], **kw))
                if n == first and count > 1 and started[0].host is not None:   # one seal for the rest's numbers
                    started[0].host.hsm.reserve_devices([f"T{m:07d}" for m in range(first + 1, first + count)])
        except BaseException:
            for t in started:
                t.close()
            raise
        return cls(started)

    @property
    def ports(self) -> list[str]:
        return [t.port for t in self.terminals]

    def close(self) -> None:
        for t in self.terminals:
            t.close()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
