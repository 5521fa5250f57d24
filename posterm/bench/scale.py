"""python -m posterm.bench scale [--terminals N] [--workers W] [--db DB] [--seconds S] [--kill-every K]:
a fleet paying against ``posterm host serve --workers W`` while host workers are killed -9.

* the host: ``posterm host serve --workers W --db DB`` on a loopback port (DB: ``--db``,
  default a fresh SQLite file in a temporary directory; a ``postgresql://`` URL is passed
  through untouched), ``POSTERM_HOME`` that directory (the HSM the fleet shares);
* the fleet: N emulated terminals (``--terminals``, default 1000) over several processes
  (:class:`posterm.emulator.fleet.ProcessFleet`, ``--host tcp://127.0.0.1:PORT``);
* the cash registers: D driver threads here (``--drivers``), each owning every D-th
  terminal, paying 1 fen with the password-free test code through each terminal's port,
  every payment journaled (``Terminal.open(..., journal=...)``). Every terminal pays once
  first (its logon), outside the clock;
* the kills: every ``--kill-every`` seconds a random worker (a child of the serve process
  running ``posterm.host.workers``, found in /proc) gets SIGKILL; the next kill waits for
  the supervisor's replacement (a new worker pid). ``--kills`` caps their number (the run
  then lasts until the last replacement is seen, at least ``--seconds``).

A payment whose outcome the driver did not learn (UNKNOWN, or ``pay`` raised: the worker
died mid-authorisation) is resolved by ``Terminal.recover()`` (the terminal queries its
host); after the clock every journal is recovered until nothing is unfinished (bounded).

Then everything stops and the host database is opened (``Host.open``, after serve ended)
and compared with the drivers' journals (:func:`check`): every payment a journal holds
approved is exactly one charged trade at the host, for its amount; no (merchant, order)
has two charged trades; no trade of this run is charged that its journal does not hold
approved; nothing is left unresolved; ``Host.check_books()`` finds nothing. Figures: flows/s,
p50/p99 of one flow, kills, restarts, unknown outcomes resolved, and ``consistent``. Exit 0
only when consistent.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from posterm.bench import emit, percentile, start_serve, stop_process
from posterm.bench.fleet import CODE, _tail, _tree

AMOUNT = 1                 # fen: the demo account's balance lasts a million payments
PAY_TIMEOUT = 60.0
RESOLVE_TIMEOUT = 120.0    # seconds to resolve what is unknown after the clock
SERVE_TIMEOUT = 120.0
RESTART_TIMEOUT = 90.0     # a replacement worker opens the database and says it serves
FINAL = ("approved", "declined", "cancelled")
CHARGED = ("APPROVED", "REFUNDED")


@dataclass(frozen=True)
class DriverPayment:
    """One payment as the driver side knows it (its journal's row)."""

    order_id: str
    terminal: str
    amount_minor: int
    outcome: str | None          # approved / declined / cancelled / unknown / pending / None
    final: bool
    reason: str | None = None    # why it was not approved (the journal's reason code, named)


@dataclass(frozen=True)
class HostTrade:
    merchant_id: str
    order_id: str
    amount_minor: int
    status: str


@dataclass
class Verdict:
    """What :func:`check` found; ``consistent`` when every list is empty."""

    approved: int = 0                                   # payments the driver side holds approved
    charged: int = 0                                    # trades of this run the host charged
    lost: list[str] = field(default_factory=list)       # driver approved, host no (or another) charge
    doubled: list[str] = field(default_factory=list)    # two charged trades for one (merchant, order)
    phantom: list[str] = field(default_factory=list)    # host charged, driver holds it not approved
    unresolved: list[str] = field(default_factory=list)  # the driver never learnt the outcome
    books: list[str] = field(default_factory=list)      # Host.check_books()

    @property
    def consistent(self) -> bool:
        return not (self.lost or self.doubled or self.phantom or self.unresolved or self.books)

    def summary(self) -> dict:
        return {"approved": self.approved, "charged": self.charged, **{
            k: len(getattr(self, k)) for k in ("lost", "doubled", "phantom", "unresolved", "books")}}

    def first_problems(self, n: int = 5) -> list[str]:
        out = []
        for k in ("lost", "doubled", "phantom", "unresolved", "books"):
            out += [f"{k}: {p}" for p in getattr(self, k)[:n]]
        return out[:n]


def check(payments: list[DriverPayment], trades: list[HostTrade], books: list[str]) -> Verdict:
    """Compare the driver side's payments with the host's trades of the same orders (the
    trades of this run: pass only those) and the books' problems."""
    v = Verdict(books=list(books))
    charged: dict[tuple[str, str], list[HostTrade]] = {}
    for t in trades:
        if t.status in CHARGED:
            charged.setdefault((t.merchant_id, t.order_id), []).append(t)
    v.charged = sum(len(ts) for ts in charged.values())
    for (merchant, order), ts in charged.items():
        if len(ts) > 1:
            v.doubled.append(f"{merchant}/{order}: {len(ts)} charged trades")
    by_order: dict[str, list[HostTrade]] = {}
    for ts in charged.values():
        for t in ts:
            by_order.setdefault(t.order_id, []).append(t)
    seen: set[str] = set()
    for p in payments:
        seen.add(p.order_id)
        ts = by_order.get(p.order_id, [])
        if not p.final or p.outcome not in FINAL:
            v.unresolved.append(f"{p.order_id} ({p.terminal}): {p.outcome or 'no answer'}")
        if p.outcome == "approved":
            v.approved += 1
            if len(ts) != 1 or ts[0].amount_minor != p.amount_minor:
                v.lost.append(f"{p.order_id} ({p.terminal}): approved, host charged "
                              + (", ".join(str(t.amount_minor) for t in ts) or "nothing"))
        elif ts:
            v.phantom.append(f"{p.order_id} ({p.terminal}): {p.outcome}, host charged {ts[0].amount_minor}")
    for order, ts in by_order.items():
        if order not in seen:
            v.phantom.append(f"{order}: charged at the host, in no driver journal")
    return v


# ------------------------------------------------------------------ the processes


def _serve(db: str, workers: int, home: Path, connections: int) -> tuple[subprocess.Popen, str]:
    """``posterm host serve --workers W --db DB`` and its address (bounded wait for it)."""
    try:
        return start_serve(db, workers, home, ["--max-connections", str(connections), "--max-pending",
                                               str(connections), "--max-restarts", "100000"],
                           SERVE_TIMEOUT, home / "serve.stderr")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: {_tail(home / 'serve.stderr')}") from None


def workers_of(serve_pid: int) -> list[int]:
    """The live host workers of a serve process: its children running posterm.host.workers
    (a killed one not yet reaped is a zombie with no command line: not counted)."""
    out = []
    for pid in _tree(serve_pid)[1:]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"posterm.host.workers" in cmd:
            out.append(pid)
    return out


class Killer:
    """Every ``every`` seconds SIGKILL a random worker of ``serve``, then wait for the
    supervisor's replacement (a worker pid not seen before) before the next; at most
    ``limit`` kills (None: until stopped). ``done`` is set when it ends."""

    def __init__(self, serve: subprocess.Popen, workers: int, every: float, limit: int | None, seed: int) -> None:
        self.serve, self.count, self.every, self.limit = serve, workers, every, limit
        self.rng = random.Random(seed)
        self.kills = 0
        self.restarts = 0
        self.restart_s: list[float] = []
        self.error: str | None = None
        self.stop = threading.Event()
        self.done = threading.Event()
        self.seen = set(workers_of(serve.pid))
        self._thread = threading.Thread(target=self._run, name="scale-killer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            next_at = time.monotonic() + self.every
            while self.limit is None or self.kills < self.limit:
                if self.stop.wait(max(0.0, next_at - time.monotonic())):
                    return
                live = workers_of(self.serve.pid)
                if not live:
                    self.error = "no live host worker to kill"
                    return
                victim = self.rng.choice(live)
                os.kill(victim, signal.SIGKILL)
                self.kills += 1
                t0 = time.monotonic()
                while True:   # the replacement: polling /proc, bounded
                    if self.serve.poll() is not None:
                        self.error = f"posterm host serve exited with {self.serve.returncode} after kill {self.kills}"
                        return
                    now = workers_of(self.serve.pid)
                    fresh = set(now) - self.seen
                    if fresh and victim not in now and len(now) >= self.count:
                        self.seen |= fresh
                        self.restarts += len(fresh)
                        self.restart_s.append(time.monotonic() - t0)
                        break
                    if time.monotonic() - t0 > RESTART_TIMEOUT:
                        self.error = f"no replacement for worker {victim} within {RESTART_TIMEOUT:g} s"
                        return
                    time.sleep(0.05)
                next_at = max(next_at + self.every, time.monotonic())
        finally:
            self.done.set()


# ------------------------------------------------------------------ the drivers


class Drivers:
    """D threads paying on their terminals (every D-th) until :attr:`stop`; a payment whose
    outcome is not final is resolved by ``recover`` at once (bounded)."""

    def __init__(self, ports: list[str], drivers: int, home: Path, prefix: str) -> None:
        self.ports, self.home, self.prefix = ports, home, prefix
        self.d = min(drivers, len(ports))
        self.lock = threading.Lock()
        self.times: list[float] = []
        self.unknown = 0          # payments whose outcome pay() did not give
        self.resolved = 0         # ... of which recover() learnt the final outcome at once
        self.errors: list[str] = []
        self.flows = 0
        self.counting = False
        self.stop = threading.Event()
        self.go = threading.Event()
        self.warm = threading.Barrier(self.d + 1, timeout=900)
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.d)]
        self.terms: dict[int, object] = {}

    def journal_path(self, n: int) -> Path:
        return self.home / f"driver-{n + 1:04d}.db"

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _pay(self, term, n: int, seq: int) -> None:
        from posterm.errors import PosError

        order = f"{self.prefix}{n + 1:04d}-{seq}"
        t0 = time.perf_counter()
        try:
            outcome = term.pay(AMOUNT, "CNY", order_id=order, payment_code=CODE, timeout=PAY_TIMEOUT).result
        except PosError as exc:
            outcome = f"error {type(exc).__name__}"
        elapsed = time.perf_counter() - t0
        with self.lock:
            if self.counting:
                self.times.append(elapsed)
        if outcome not in FINAL:
            with self.lock:
                self.unknown += 1
            if self._resolve(term, order, time.monotonic() + PAY_TIMEOUT):
                with self.lock:
                    self.resolved += 1

    @staticmethod
    def _resolve(term, order: str, deadline: float) -> bool:
        """``recover`` until the journal holds ``order`` final (or ``deadline``): True if it does."""
        from posterm.errors import PosError

        while time.monotonic() < deadline:
            try:
                term.recover(timeout=10.0)
            except PosError:
                pass
            entry = term._journal.get(order)
            if entry is not None and entry.state == "final":
                return True
            time.sleep(0.5)
        return False

    def _run(self, k: int) -> None:
        from posterm import Terminal

        mine = list(range(k, len(self.ports), self.d))
        terms = []
        try:
            try:
                for n in mine:
                    term = Terminal.open(self.ports[n], journal=str(self.journal_path(n)))
                    terms.append(term)
                    self.terms[n] = term
                    term.hello()
                    self._pay(term, n, 0)      # warm-up: logon, first key use
            finally:
                self.warm.wait()
            self.go.wait(900)
            seq = 1
            while not self.stop.is_set():
                for term, n in zip(terms, mine):
                    if self.stop.is_set():
                        break
                    self._pay(term, n, seq)
                    with self.lock:
                        self.flows += 1
                seq += 1
        except Exception as exc:  # noqa: BLE001 - reported, fails the benchmark
            with self.lock:
                self.errors.append(f"driver {k}: {type(exc).__name__}: {exc}")

    def recover_all(self, deadline: float) -> None:
        """Every terminal's journal recovered until nothing is unfinished (or ``deadline``)."""
        from posterm.errors import PosError

        for term in self.terms.values():
            while term._journal.unfinished() and time.monotonic() < deadline:
                try:
                    term.recover(timeout=10.0)
                except PosError:
                    time.sleep(0.5)
                    continue
                if term._journal.unfinished():
                    time.sleep(0.5)

    def close(self) -> None:
        for term in self.terms.values():
            try:
                term.close()
            except Exception:  # noqa: BLE001 - closing what may be broken
                pass


def _driver_payments(drivers: Drivers, prefix: str) -> list[DriverPayment]:
    from posterm.ecr.journal import Journal
    from posterm.ecr.results import as_reason, reason_name

    out = []
    for n in range(len(drivers.ports)):
        path = drivers.journal_path(n)
        if not path.exists():
            continue
        with Journal(path) as j:
            for e in j.entries():
                if e.kind == "pay" and e.order_id.startswith(prefix):
                    out.append(DriverPayment(e.order_id, e.terminal_id or f"terminal {n + 1}", e.amount_minor,
                                             e.outcome, e.state == "final",
                                             reason_name(as_reason(e.reason)) if e.reason else None))
    return out


def _host_side(db: str, prefix: str) -> tuple[list[HostTrade], list[str]]:
    """This run's trades and the books' problems, from the database (serve has stopped)."""
    from posterm.host import Host

    h = Host.open(db, demo=False)
    try:
        trades = [HostTrade(t.merchant_id, t.order_id, t.amount_minor, t.status) for t in h.trades()
                  if t.order_id.startswith(prefix)]
        return trades, h.check_books()
    finally:
        h.close()


def run(terminals: int, workers: int, db: str | None, seconds: float, kill_every: float, *,
        kills: int | None = None, drivers: int = 100, processes: int | None = None, home_dir: str | None = None,
        seed: int | None = None) -> dict:
    """One run (see the module docstring). Returns the figures and ``verdict`` (a :class:`Verdict`).
    Raises RuntimeError when the run cannot be made (nothing left running then)."""
    from posterm.emulator.fleet import ProcessFleet

    seed = secrets.randbits(32) if seed is None else seed
    prefix = f"SC{secrets.token_hex(4).upper()}-"
    with tempfile.TemporaryDirectory(prefix="posterm-bench-scale-", dir=home_dir) as tmp:
        home = Path(tmp)
        os.chmod(home, 0o700)
        db = db or str(home / "host.db")
        old_home = os.environ.get("POSTERM_HOME")
        os.environ["POSTERM_HOME"] = str(home)   # the HSM the fleet, serve and the check share
        serve = fleet = killer = None
        pool = None
        try:
            serve, address = _serve(db, workers, home, max(256, min(4096, terminals + 64)))
            err = os.open(home / "fleet.stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                fleet = ProcessFleet.start(terminals, processes=processes, host=address, home=home,
                                           listen="tcp://127.0.0.1:0", stderr=err)
            except Exception as exc:
                raise RuntimeError(f"the fleet did not start: {exc}: {_tail(home / 'fleet.stderr')}") from None
            finally:
                os.close(err)
            pool = Drivers(fleet.ports, drivers, home, prefix)
            pool.start()
            pool.warm.wait()
            if pool.errors:
                raise RuntimeError(pool.errors[0])
            killer = Killer(serve, workers, kill_every, kills, seed)
            with pool.lock:
                pool.counting = True
            flows0 = pool.flows
            t0 = time.perf_counter()
            pool.go.set()
            killer.start()
            if kills is not None:
                killer.done.wait(seconds + kills * (kill_every + RESTART_TIMEOUT))
            left = seconds - (time.perf_counter() - t0)
            if left > 0 and not killer.done.is_set():
                killer.done.wait(left)   # the clock, cut short by a kill that went wrong
            elif left > 0 and not killer.error:
                time.sleep(left)   # the kills are done: the clock runs out
            killer.stop.set()
            pool.stop.set()
            elapsed = time.perf_counter() - t0
            with pool.lock:
                pool.counting = False
                flows = pool.flows - flows0
            for t in pool.threads:
                t.join(PAY_TIMEOUT * 3)
            killer.join(RESTART_TIMEOUT)
            pool.recover_all(time.monotonic() + RESOLVE_TIMEOUT)
            if killer.error:
                raise RuntimeError(f"{killer.error}: {_tail(home / 'serve.stderr', 1500)}")
            if pool.errors:
                raise RuntimeError(pool.errors[0])
        finally:
            if pool is not None:
                pool.close()
            if killer is not None:
                killer.stop.set()
            if fleet is not None:
                fleet.close()
            if serve is not None:
                stop_process(serve)
        try:
            payments = _driver_payments(pool, prefix)
            trades, books = _host_side(db, prefix)
        finally:
            if old_home is None:
                os.environ.pop("POSTERM_HOME", None)
            else:
                os.environ["POSTERM_HOME"] = old_home
    verdict = check(payments, trades, books)
    times_ms = [t * 1000 for t in pool.times] or [0.0]
    return {"terminals": terminals, "workers": workers, "flows": flows, "seconds": elapsed,
            "flows_per_s": flows / elapsed if elapsed else 0.0, "flow_median": percentile(times_ms, 50),
            "flow_p99": percentile(times_ms, 99), "kills": killer.kills, "restarts": killer.restarts,
            "restart_s_max": max(killer.restart_s, default=0.0), "unknown": pool.unknown,
            "resolved_at_once": pool.resolved, "payments": len(payments),
            "outcomes": _count(p.outcome for p in payments),
            "not_approved": _count(f"{p.outcome}:{p.reason}" for p in payments if p.outcome != "approved"),
            "seed": seed, "verdict": verdict,
            "store": "postgresql" if db.startswith(("postgresql://", "postgres://")) else "sqlite"}


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x or "none"] = out.get(x or "none", 0) + 1
    return out


def report(res: dict) -> None:
    """The figures as JSON lines (posterm.bench.emit)."""
    common = {"terminals": res["terminals"], "workers": res["workers"], "store": res["store"]}
    emit("scale", "flows_per_s", res["flows_per_s"], "flows/s", n=res["flows"], seconds=round(res["seconds"], 1),
         cores=os.cpu_count(), **common)
    emit("scale", "flow_median", res["flow_median"], "ms", **common)
    emit("scale", "flow_p99", res["flow_p99"], "ms", **common)
    emit("scale", "kills", res["kills"], "SIGKILLs", restarts=res["restarts"],
         slowest_restart_s=round(res["restart_s_max"], 2), **common)
    emit("scale", "unknown_resolved", res["unknown"], "payments", resolved_at_once=res["resolved_at_once"],
         **common)
    v: Verdict = res["verdict"]
    emit("scale", "consistent", v.consistent, "verdict", payments=res["payments"], outcomes=res["outcomes"],
         not_approved=res["not_approved"], **v.summary(), problems=v.first_problems(), **common)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench scale")
    ap.add_argument("--terminals", type=int, default=1000, help="emulated terminals (default 1000)")
    ap.add_argument("--workers", type=int, default=4, help="posterm host serve --workers (default 4)")
    ap.add_argument("--db", default=None, help="the host database: a file, or a postgresql:// URL passed to serve "
                    "untouched (default: a fresh SQLite file in the temporary directory)")
    ap.add_argument("--seconds", type=float, default=30.0, help="paying time (default 30)")
    ap.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills of a worker (default 5)")
    ap.add_argument("--kills", type=int, default=None, help="at most this many kills (the run lasts until the last "
                    "replacement serves, at least --seconds)")
    ap.add_argument("--drivers", type=int, default=100, help="driver threads in this process (at most N)")
    ap.add_argument("--processes", type=int, default=None, help="the fleet's processes (default: one per 250)")
    ap.add_argument("--seed", type=int, default=None, help="which worker each kill picks")
    ap.add_argument("--dir", default=None, help="where the state lives (default: the temp dir)")
    args = ap.parse_args(argv)
    if not 1 <= args.terminals <= 4096:
        ap.error("--terminals: 1 to 4096")
    if not 2 <= args.workers <= 64:
        ap.error("--workers: 2 to 64 (a kill needs another worker to carry on)")
    if not (0 < args.seconds <= 86400) or not (0.1 <= args.kill_every <= 3600):
        ap.error("--seconds: more than 0; --kill-every: 0.1 to 3600")
    if args.kills is not None and args.kills < 0:
        ap.error("--kills: 0 or more")
    if not 1 <= args.drivers <= 4096:
        ap.error("--drivers: 1 to 4096")
    try:
        res = run(args.terminals, args.workers, args.db, args.seconds, args.kill_every, kills=args.kills,
                  drivers=args.drivers, processes=args.processes, home_dir=args.dir, seed=args.seed)
    except (RuntimeError, OSError) as exc:
        print(f"posterm: error: scale benchmark failed: {exc}", file=sys.stderr)
        return 1
    report(res)
    v = res["verdict"]
    if not v.consistent:
        for line in v.first_problems(20):
            print(f"posterm: inconsistent: {line}", file=sys.stderr)
        return 1
    return 0
