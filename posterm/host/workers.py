"""Several host processes on one database: ``posterm host serve --workers N``.

A :class:`Supervisor` binds the listening socket and spawns N worker processes
(``python -m posterm.host.workers``), each given that socket (``pass_fds``): every worker
accepts on it, so the kernel spreads connections over them, and none of them is a single
point the others wait on. Each worker is a whole host (:class:`~posterm.host.service.Host`
with its own group committer, and a :class:`~posterm.host.server.HostServer`) on the
shared database, so everything that must hold across them holds in the database: the KSN
replay guard, the PIN try counters, one-time payment codes, one trade per (merchant, order
id), the logon nonces, each inside a write transaction the database serialises (SQLite:
``BEGIN IMMEDIATE`` in WAL mode; PostgreSQL: the store's own locking). What lives in a
worker's memory is per worker: logon sessions (a terminal that reconnects to another
worker is told to log on again and does, by itself) and the outage timer of test code
``...006``.

The supervisor restarts a worker that dies, at most ``max_restarts`` times within
``restart_window`` seconds (more: it stops every worker and :meth:`Supervisor.check`
raises :class:`TooManyRestarts`: ``serve`` exits 3). A worker reads its standard input
until end of file: the supervisor holds the other end, so a supervisor that is itself
killed takes its workers with it. SIGINT is ignored by workers (Ctrl-C reaches the whole
process group: the supervisor decides); SIGTERM stops one. :meth:`Supervisor.stop` sends
SIGTERM to each, waits at most ``stop_timeout`` seconds in all, then SIGKILLs the rest.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace

from posterm.errors import PosError

__all__ = ["Supervisor", "TooManyRestarts", "WorkerConfig"]

log = logging.getLogger("posterm.host.workers")
MAX_WORKERS = 64
READY_TIMEOUT = 60.0     # seconds a new worker has to open the database and say it serves
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
STOP_TIMEOUT = 10.0


class TooManyRestarts(PosError):
    """Workers died more often than the restart cap allows: the supervisor gave up."""


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker opens and serves with (JSON on its command line)."""

    db: str | None = None                 # the database (None: the default, from the environment)
    group_commit: bool = True
    risk_rules: str | None = None
    outage_seconds: float = 30.0
    allow_remote: bool = False
    limits: dict = field(default_factory=dict)   # ServerLimits fields


class _Worker:
    __slots__ = ("index", "proc")

    def __init__(self, index: int, proc: subprocess.Popen) -> None:
        self.index, self.proc = index, proc


class Supervisor:
    """N worker processes serving one host database on one listening socket (see the module
    docstring). ``start()``, then ``check()`` now and then (restarts the dead), ``stop()``."""

    def __init__(self, config: WorkerConfig, workers: int, listen: str = "127.0.0.1:0", *,
                 max_restarts: int = MAX_RESTARTS, restart_window: float = RESTART_WINDOW,
                 stop_timeout: float = STOP_TIMEOUT, ready_timeout: float = READY_TIMEOUT) -> None:
        from posterm.transport.tcp import TcpTransport, parse_address

        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers: 1..{MAX_WORKERS}")
        self.config, self.count = config, workers
        self.max_restarts, self.restart_window = max_restarts, restart_window
        self.stop_timeout, self.ready_timeout = stop_timeout, ready_timeout
        addr, port = parse_address(listen)
        self._listener = TcpTransport.listen(addr, port, allow_remote=config.allow_remote)
        self.address = self._listener.address
        self._workers: list[_Worker] = []
        self._restarts: collections.deque[float] = collections.deque(maxlen=max_restarts + 1)
        self.restarts = 0          # workers restarted so far
        self._lock = threading.Lock()
        self._stopped = False

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Supervisor:
        """Spawn every worker and wait until each serves (bounded). Raises PosError if one cannot."""
        try:
            for i in range(self.count):
                self._workers.append(self._spawn(i))
        except BaseException:
            self.stop()
            raise
        return self

    def pids(self) -> list[int]:
        """The workers' process ids, in worker order."""
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def _spawn(self, index: int) -> _Worker:
        fd = self._listener.fileno()
        conf, env = asdict(self.config), None
        if isinstance(conf["db"], str) and conf["db"].lower().startswith(("postgresql://", "postgres://")):
            # a URL may carry a password: never on the command line (anyone may read it in ps),
            # in the worker's environment instead (its owner's alone to read)
            env = {**os.environ, DB_ENV: conf["db"]}
            conf["db"] = "env:" + DB_ENV
        cmd = [sys.executable, "-m", "posterm.host.workers", str(fd), json.dumps(conf)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(fd,),
                                close_fds=True, env=env)
        try:
            line = _read_line(proc, self.ready_timeout)
        except BaseException:
            _kill(proc)
            raise
        if line != "ready":
            _kill(proc)
            raise PosError(f"host worker {index} did not start ({line or 'no answer'}): see its log above")
        proc.stdout.close()
        log.info("host worker %d serving (pid %d)", index, proc.pid)
        return _Worker(index, proc)

    def check(self) -> None:
        """Restart every worker that has died; raises TooManyRestarts (after stopping the
        rest) once more than ``max_restarts`` died within ``restart_window`` seconds."""
        with self._lock:
            if self._stopped:
                return
            dead = [w for w in self._workers if w.proc.poll() is not None]
        for w in dead:
            code = w.proc.returncode
            why = f"signal {-code}" if code < 0 else f"exit {code}"
            now = time.monotonic()
            self._restarts.append(now)
            recent = [t for t in self._restarts if now - t <= self.restart_window]
            if len(recent) > self.max_restarts:
                log.error("host worker %d (pid %d) died (%s): %d restarts within %g s, giving up",
                          w.index, w.proc.pid, why, self.max_restarts, self.restart_window)
                self.stop()
                raise TooManyRestarts(f"host workers died {len(recent)} times within {self.restart_window:g} s")
            log.warning("host worker %d (pid %d) died (%s): restarting it", w.index, w.proc.pid, why)
            _close_pipes(w.proc)
            fresh = self._spawn(w.index)
            with self._lock:
                self._workers[self._workers.index(w)] = fresh
                self.restarts += 1

    def stop(self) -> None:
        """SIGTERM to every worker, at most ``stop_timeout`` s for all to end, SIGKILL the rest."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            workers = list(self._workers)
        for w in workers:
            if w.proc.poll() is None:
                try:
                    w.proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        end = time.monotonic() + self.stop_timeout
        for w in workers:
            try:
                w.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("host worker %d (pid %d) did not stop in time: killed", w.index, w.proc.pid)
                _kill(w.proc)
            _close_pipes(w.proc)
        self._listener.close()

    close = stop


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The worker's first stdout line (bounded); '' if it ended or said nothing in time."""
    end = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf and len(buf) < 4096:
        left = end - time.monotonic()
        if left <= 0:
            return ""
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    _close_pipes(proc)


def _close_pipes(proc: subprocess.Popen) -> None:
    for f in (proc.stdin, proc.stdout):
        if f is not None and not f.closed:
            try:
                f.close()
            except OSError:
                pass


# ---------------------------------------------------------------------- the worker process


DB_ENV = "POSTERM_WORKER_DB"   # a PostgreSQL URL handed to a worker (see Supervisor._spawn)


def worker_main(fd: int, config: WorkerConfig) -> int:
    """Serve the host on inherited listening socket ``fd`` until SIGTERM or the supervisor is gone."""
    from posterm.host import Host
    from posterm.host.server import HostServer, ServerLimits
    from posterm.transport.tcp import TcpListener

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the supervisor's to act on
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=logging.WARNING, format=f"posterm host worker {os.getpid()}: %(message)s")
    if config.db == "env:" + DB_ENV:
        config = replace(config, db=os.environ.pop(DB_ENV, None))
    host = Host.open(config.db, demo=False, risk_config=config.risk_rules, outage_seconds=config.outage_seconds,
                     group_commit=config.group_commit)
    try:
        listener = TcpListener.adopt(fd, allow_remote=config.allow_remote)
        server = HostServer(host, limits=ServerLimits(**config.limits), listener=listener)
        try:
            def lifeline() -> None:
                try:
                    while os.read(0, 4096):   # the raw descriptor: no buffer lock held at exit
                        pass
                except OSError:
                    pass
                stop.set()   # the supervisor is gone (or closed our stdin): stop
            threading.Thread(target=lifeline, name="host-worker-lifeline", daemon=True).start()
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            while not stop.wait(1.0):
                pass
        finally:
            server.close()
    finally:
        host.close()
    return 0


if __name__ == "__main__":
    code = worker_main(int(sys.argv[1]), WorkerConfig(**json.loads(sys.argv[2])))
    sys.stderr.flush()
    os._exit(code)   # the lifeline thread may still sit in read(): no interpreter teardown around it
