"""A fleet over several processes: ``posterm emulate --count N --processes K``.

One Python process runs one core. Past :data:`PER_PROCESS` terminals (by default) the
fleet is split into K child processes, each ``posterm emulate`` running a contiguous share
of the terminal ids (T0000001.., then on), and the parent supervises them:

* **the host**: with ``--host embedded`` the parent opens the embedded host (state under
  ``--home``, the demo data seeded) and serves it on a loopback port to its children
  (:func:`posterm.host.server.serve`); with ``--host tcp://...`` the children use that host.
  Before the children start, the parent reserves every terminal's HSM device number in one
  go (:meth:`posterm.crypto.hsm.Hsm.reserve_devices`; allocation is atomic across
  processes anyway, see ``Hsm._store_lock``).
* **the ports**: a child prints its ports one per line; the parent waits for all of them
  (bounded: :func:`start_timeout`) and announces them in terminal order. With
  ``--listen tcp://127.0.0.1:PORT`` terminal n listens on PORT + n - 1, as in one process.
* **supervision**: a child that exits (a terminal died: exit 1) stops the fleet. On stop
  the parent sends SIGTERM to every child, waits at most :data:`STOP_TIMEOUT` seconds in
  all, then SIGKILLs what is left and reaps it. A child stops by itself when its parent
  goes: its stdin (a pipe from the parent) reaches EOF, and on Linux the kernel sends it
  SIGTERM as the parent dies (``PR_SET_PDEATHSIG``). No child outlives the fleet.
* **secrets**: an operator password goes to a child on its stdin, never on its command
  line (``ps`` shows that to every user).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from posterm.errors import ConfigError, PosError, TransportError

PER_PROCESS = 250          # terminals per process by default (a process is one core)
MAX_PROCESSES = 64
STOP_TIMEOUT = 30.0        # seconds for all children to stop after SIGTERM, then SIGKILL
FDS_PER_TERMINAL = 10      # a pty pair or a listener and a connection, a wake-up pipe, journal + WAL, ...


def default_processes(count: int) -> int:
    """1 up to :data:`PER_PROCESS` terminals, then one process per PER_PROCESS (rounded up)."""
    return min(MAX_PROCESSES, max(1, -(-count // PER_PROCESS)))


def shares(count: int, processes: int) -> list[tuple[int, int]]:
    """``(first terminal number, how many)`` per process: contiguous, as equal as can be."""
    base, extra = divmod(count, processes)
    out, first = [], 1
    for k in range(processes):
        n = base + (1 if k < extra else 0)
        out.append((first, n))
        first += n
    return out


def start_timeout(per_process: int) -> float:
    """How long the parent waits for a child's ports: a terminal's first start derives and
    seals keys and an operator password hash (tens of ms each, more on a loaded machine)."""
    return 120.0 + 1.0 * per_process


def ensure_fd_limit(terminals: int) -> None:
    """Raise this process's soft descriptor limit to what ``terminals`` need (up to the hard
    limit). Raises ConfigError when even the hard limit is too low."""
    import resource

    need = FDS_PER_TERMINAL * terminals + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, need)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            raise ConfigError(f"--count {terminals} in one process needs about {need} file descriptors and the "
                              f"limit is {hard}: use more --processes")


def host_connections_share(total: int, processes: int) -> list[int]:
    """Split ``total`` host connections over the processes (each at least 1)."""
    return [max(1, n) for _, n in shares(max(total, processes), processes)]


def server_limits(connections: int):
    """The limits of the host server the parent serves its embedded host on, for children
    holding ``connections`` host connections in all.

    Every one of them may be *pending* (not logged on) at once: a child's worker opens its
    connection on its first request and it stays pending until a logon is accepted on it,
    which at a fleet's start is a whole LogonRequest/LogonConfirm away, with every other
    terminal's logon queued at the same host. With a pending cap below ``connections`` the
    server evicted the oldest pending connection to admit a newer one, dropping the request
    sent on it unread; its worker reconnected (one more pending connection, one more
    eviction), and an AuthRequest dropped on both of its tries left the terminal to ask,
    hear NOT_FOUND and cancel: a warm-up payment of the 1,000-terminal bench came back
    CANCELLED (16 connections per process, 4 processes, 40 pending allowed). The server
    listens on loopback for the fleet's own children only, so the cap can cover them all.
    """
    from posterm.host.server import MAX_CONNECTIONS, MAX_PENDING, ServerLimits

    return ServerLimits(max_connections=max(MAX_CONNECTIONS, connections + 64),
                        max_pending=max(MAX_PENDING, connections + 8))


def die_with_parent(parent_pid: int) -> bool:
    """In a child: SIGTERM when the parent dies (Linux). False when ``parent_pid`` is not
    (or no longer) this process's parent: the child must not start then."""
    if os.getppid() != parent_pid:
        return False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    return os.getppid() == parent_pid   # it may have died just before the prctl


def watch_stdin(stop: threading.Event) -> None:
    """In a child: set ``stop`` when stdin (the pipe from the parent) reaches EOF."""
    def run() -> None:
        try:   # the raw descriptor: a buffered reader's lock would stall the interpreter's shutdown
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()
    threading.Thread(target=run, name="fleet-parent-watch", daemon=True).start()


class ProcessFleet:
    """N terminals over K ``posterm emulate`` child processes (see the module docstring).
    ``.ports`` in terminal order, ``.children`` (the Popen objects), ``.host`` (the parent's
    embedded host, or None), ``.close()``; a context manager."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []
        self.ports: list[str] = []
        self.host = None
        self.server = None

    @classmethod
    def start(cls, count: int, *, processes: int | None = None, host: str = "embedded",
              home: str | Path | None = None, listen: str | None = None, host_connections: int | None = None,
              operator_password: str | None = None, child_args: list[str] | None = None,
              stderr=None, supervisor_password: str | None = None) -> "ProcessFleet":
        """Start the children and wait (bounded) until every terminal is ready. ``child_args``:
        more ``posterm emulate`` options for every child (a scenario, faults, the protocol...).
        Raises ConfigError / TransportError; nothing is left running then."""
        from posterm.home import posterm_home
        from posterm.host.demo import MAX_TERMINALS
        from posterm.safefs import private_dir

        processes = default_processes(count) if processes is None else processes
        if not 1 <= count <= MAX_TERMINALS:
            raise ConfigError(f"--count is 1 to {MAX_TERMINALS}, not {count}")
        if not 1 <= processes <= min(MAX_PROCESSES, count):
            raise ConfigError(f"--processes is 1 to {min(MAX_PROCESSES, count)} for {count} terminals, not {processes}")
        first_port = 0
        where = "127.0.0.1"
        if listen:
            from posterm.transport.tcp import LOOPBACK, parse_address

            try:
                where, first_port = parse_address(listen)
            except PosError as exc:
                raise ConfigError(f"--listen {exc}") from None
            if where not in LOOPBACK:
                raise ConfigError(f"--listen {listen}: the emulator listens on loopback only")
            if first_port and first_port + count - 1 > 65535:
                raise ConfigError(f"--listen {listen}: {count} terminals need ports {first_port}..{first_port + count - 1}")
        home = private_dir(home, own=True) if home else posterm_home()
        total_conns = host_connections or min(count, 16 * processes)
        fleet = cls()
        try:
            url = fleet._host(host, home, total_conns, processes, count)
            fleet._spawn(count, processes, url, home, listen and where, first_port, total_conns,
                         {"operator_password": operator_password, "supervisor_password": supervisor_password},
                         child_args or [], stderr)
        except BaseException:
            fleet.close()
            raise
        return fleet

    def _host(self, host: str, home: Path, connections: int, processes: int, count: int) -> str:
        from posterm.host.demo import TERMINALS

        if host == "embedded":
            from posterm.host import Host
            from posterm.host.server import serve

            self.host = Host.open(home / "host.db")
            self.host.hsm.reserve_devices(TERMINALS[:count])
            self.server = serve(self.host, "127.0.0.1:0", limits=server_limits(connections))
            return self.server.address
        from posterm.crypto.hsm import Hsm
        from posterm.safefs import private_dir

        Hsm.open(private_dir(home / "hsm", own=True)).reserve_devices(TERMINALS[:count])
        return host

    def _spawn(self, count, processes, url, home, listen_host, first_port, total_conns, passwords, extra,
               stderr) -> None:
        conns = host_connections_share(total_conns, processes)
        plan = shares(count, processes)
        for (first, n), c in zip(plan, conns):
            argv = [sys.executable, "-m", "posterm", "emulate", "--count", str(n), "--processes", "1",
                    "--first-terminal", str(first), "--host", url, "--home", str(home),
                    "--host-connections", str(c), "--fleet-parent", str(os.getpid()), *extra]
            if listen_host:
                host_part = f"[{listen_host}]" if ":" in listen_host else listen_host
                argv += ["--listen", f"tcp://{host_part}:{first_port + first - 1 if first_port else 0}"]
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                     start_new_session=False)
            self.children.append(child)
            # The first stdin line: the child's settings that must not be on a command line.
            child.stdin.write((json.dumps(passwords) + "\n").encode())
            child.stdin.flush()
        per_child: list[list[str]] = [[] for _ in plan]
        bufs = [b""] * len(plan)
        deadline = time.monotonic() + start_timeout(max(n for _, n in plan))
        from posterm.transport.fd import wait_ready

        fds = {child.stdout.fileno(): k for k, child in enumerate(self.children)}
        while any(len(per_child[k]) < plan[k][1] for k in range(len(plan))):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"the fleet's processes did not all start within "
                                     f"{start_timeout(max(n for _, n in plan)):g}s")
            waiting = [fd for fd, k in fds.items() if len(per_child[k]) < plan[k][1]]
            ready, _ = wait_ready(waiting, (), min(left, 1.0))
            for fd in ready:
                k = fds[fd]
                data = os.read(fd, 65536)
                if not data:
                    code = self.children[k].wait(10)
                    raise ConfigError(f"fleet process {k + 1} (terminals from T{plan[k][0]:07d}) exited "
                                      f"with {code} before its terminals were ready")
                bufs[k] += data
                *lines, bufs[k] = bufs[k].split(b"\n")
                per_child[k] += [ln.decode() for ln in lines if ln.strip()]
        for ports in per_child:
            self.ports += ports

    def poll(self) -> tuple[int, int] | None:
        """``(child index, exit code)`` of a child that has exited, or None while all run."""
        for k, child in enumerate(self.children):
            code = child.poll()
            if code is not None:
                return k, code
        return None

    def close(self) -> list[int | None]:
        """SIGTERM every child, wait at most STOP_TIMEOUT in all, SIGKILL the rest; then the
        host server and host. Returns the children's exit codes."""
        for child in self.children:
            if child.poll() is None:
                try:
                    child.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT
        codes: list[int | None] = []
        for child in self.children:
            try:
                codes.append(child.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                child.kill()
                codes.append(child.wait(10))
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        self.children = []
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.host is not None:
            self.host.close()
            self.host = None
        return codes

    def __enter__(self) -> "ProcessFleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
