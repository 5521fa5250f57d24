"""``python -m posterm.bench crash``: kill -9 the driver, the emulator and the host at random
points during pays, refunds and cancels; then recover and check the books.

Three processes on loopback, each killed and restarted many times:

* the host: ``posterm host serve --listen 127.0.0.1:HPORT --db HOME/host.db``;
* an emulated terminal (this module's ``emulator`` entry: ``EmulatedTerminal`` listening on
  ``tcp://127.0.0.1:EPORT``, ``--host tcp://127.0.0.1:HPORT``, same home, so same HSM), with
  short host timeouts so a dead host costs seconds, not minutes;
* the driver (this module's ``worker`` entry): a ``Terminal`` with a journal doing a seeded mix
  of pays, refunds and cancels. Each incarnation is told to SIGKILL itself right before or right
  after its N-th journal commit (N drawn by the harness), the kill point that no delay can hit.

The harness waits until the driver has finished one more operation since the last kill (an
event: a line in the driver's operation log), then waits a random delay (the experiment) and
SIGKILLs one of the three, chosen by the seeded RNG; it restarts whatever died and waits for it
to say it is ready (its first stdout line). Ports are fixed for the run, so a restarted host or
terminal is found where the others expect it.

At the end the driver is killed, host and terminal are restarted cleanly, ``posterm recover``
runs until no pay is unfinished (bounded), everything stops, and the driver's journal is
compared with the host's database, opened read-only:

* doubles: a ledger transaction (capture, refund id, cancel) that moved money more than once,
  or an order given back more than it was charged;
* losses: an order the host charged that the journal does not hold approved (or cancelled with
  the money given back), a refund the host paid that the journal does not hold approved;
* mismatches: the journal holds money the host never moved (an approved pay with no capture,
  an approved refund with no host refund, an approved pay the host has given back);
* unfinished: journal rows whose outcome was never learnt.

Every figure is a JSON line (``posterm.bench.emit``); ``--seconds`` or ``--kills`` bound the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CODES = ["289900000000000001"] * 6 + ["289900000000000003", "289900000000000007"]  # plain, PIN, risk reject
OPERATOR_PASSWORD = "246810"
READY_TIMEOUT = 60.0        # a process on a loaded 2-core box takes seconds to import and start
PROGRESS_TIMEOUT = 90.0     # no operation finished in this long: the run is stuck, say so


# ------------------------------------------------------------------ the driver process


def _worker(argv: list[str]) -> int:
    """One driver incarnation; runs until killed (by the harness, or by itself at --die-after)."""
    from posterm import Terminal
    from posterm.errors import PosError
    from posterm.ecr.journal import Journal

    p = argparse.ArgumentParser(prog="crash worker")
    p.add_argument("--port", required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--ops-log", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--die-after", type=int, default=0, help="SIGKILL self at this journal commit (0: never)")
    p.add_argument("--die-before", action="store_true", help="... just before it instead of just after")
    p.add_argument("--mix", choices=["full", "pay"], default="full")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    log = open(a.ops_log, "a", buffering=1)

    class DyingJournal(Journal):
        writes = 0

        def _count(self, write: Callable[[], None]) -> None:
            DyingJournal.writes += 1
            hit = a.die_after and DyingJournal.writes == a.die_after
            if hit and a.die_before:
                os.kill(os.getpid(), signal.SIGKILL)
            write()
            if hit:
                os.kill(os.getpid(), signal.SIGKILL)

        def record_sent(self, *args: Any, **kw: Any) -> None:
            self._count(lambda: Journal.record_sent(self, *args, **kw))

        def record_outcome(self, *args: Any, **kw: Any) -> None:
            self._count(lambda: Journal.record_outcome(self, *args, **kw))

    journal = DyingJournal(a.journal)

    def note(**row: Any) -> None:
        log.write(json.dumps(row) + "\n")

    term = None
    for n in range(1, 1_000_000):
        if term is None:
            try:
                term = Terminal.open(a.port, journal=journal, reconnect=True)
            except PosError as exc:  # the terminal is being restarted: the harness brings it back
                note(op="open", phase="error", error=type(exc).__name__)
                time.sleep(0.2)  # back-off between connection attempts, not synchronisation
                continue
        paid = [e for e in journal.entries() if e.kind == "pay" and e.outcome == "approved"]
        roll = rng.random()
        op = "pay" if a.mix == "pay" or not paid or roll < 0.6 else ("refund" if roll < 0.8 else "cancel")
        order = f"S{a.seed}-{n}" if op == "pay" else rng.choice(paid).order_id
        note(op=op, order=order, phase="start")
        try:
            if op == "pay":
                r = term.pay(rng.randrange(1, 500), "CNY", order_id=order, payment_code=rng.choice(CODES), timeout=15)
                res = r.result
            elif op == "refund":
                r = term.refund(order, rng.randrange(1, 50), f"R{a.seed}-{n}", OPERATOR_PASSWORD, currency="CNY",
                                timeout=15)
                res = r.result
            else:
                res = term.cancel(order, operator_password=OPERATOR_PASSWORD, timeout=15).result
            note(op=op, order=order, phase="end", result=res)
        except PosError as exc:
            note(op=op, order=order, phase="end", result="error", error=type(exc).__name__, detail=str(exc)[:120])
            time.sleep(0.1)  # back-off: a terminal still finishing a killed driver's PIN entry answers BUSY
            try:
                term.close()
            except PosError:
                pass
            term = None
    return 0


# ------------------------------------------------------------------ the terminal process


def _emulator(argv: list[str]) -> int:
    """An emulated terminal on TCP against a remote host, with short host timeouts."""
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal

    p = argparse.ArgumentParser(prog="crash emulator")
    p.add_argument("--home", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--host", required=True)
    a = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cfg = FirmwareConfig(poll_interval=0.2, poll_attempts=10, host_timeout=2.0, reconcile_base=0.2, reconcile_max=1.0)
    with EmulatedTerminal.start(listen=a.listen, host=a.host, home=a.home, config=cfg) as emu:
        print(emu.port, flush=True)
        while not stop.wait(0.5) and emu.error is None:
            pass
    return 0


# ------------------------------------------------------------------ the harness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_line(proc: subprocess.Popen, what: str, timeout: float = READY_TIMEOUT) -> str:
    """The first stdout line of ``proc`` (its readiness line), waiting on the pipe."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what} did not say it was ready within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"{what} exited before it was ready (rc={proc.wait()})")
            buf += chunk
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return buf.split(b"\n", 1)[0].decode().strip()


def _drain(pipe) -> None:
    try:
        while pipe.read(4096):
            pass
    except (OSError, ValueError):
        pass


@dataclass
class Figures:
    kills: dict[str, int] = field(default_factory=lambda: {"driver": 0, "emulator": 0, "host": 0})
    triggers: dict[str, int] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)
    doubles: list[dict] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)
    mismatches: list[dict] = field(default_factory=list)
    unfinished: list[dict] = field(default_factory=list)
    host_net_minor: int = 0
    journal_net_minor: int = 0
    books: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.doubles or self.losses or self.mismatches or self.unfinished or self.books)


class Soak:
    """The three processes, their restarts, and the kills. A context manager: everything it
    started is killed on exit."""

    def __init__(self, workdir: Path, seed: int, mix: str = "full", db: str | None = None) -> None:
        self.dir = Path(workdir)
        self.home = self.dir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.db = db or str(self.home / "host.db")   # the host's --db: a file, or a postgresql:// URL
        self.journal = self.dir / "driver-journal.db"
        self.ops_log = self.dir / "ops.jsonl"
        self.rng = random.Random(seed)               # delays and targets
        self.plan_rng = random.Random(seed + 1)      # the drivers' journal kill points
        self._targets: list[str] = []
        self.seed = seed
        self.mix = mix
        self.hport, self.eport = free_port(), free_port()
        self.env = {**os.environ, "POSTERM_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.incarnation = 0
        self.figures = Figures()

    # -- processes

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        err = open(self.dir / f"{name}.log", "ab")
        try:
            return subprocess.Popen([sys.executable, *args], env=self.env, stdout=subprocess.PIPE, stderr=err,
                                    stdin=subprocess.DEVNULL)
        finally:
            err.close()

    def start_host(self) -> None:
        p = self._spawn("host", ["-m", "posterm", "host", "serve", "--listen", f"127.0.0.1:{self.hport}",
                                 "--db", self.db])
        self.procs["host"] = p
        _first_line(p, "host")

    def start_emulator(self) -> None:
        p = self._spawn("emulator", ["-m", "posterm.bench.crash", "emulator", "--home", str(self.home),
                                     "--listen", f"tcp://127.0.0.1:{self.eport}",
                                     "--host", f"tcp://127.0.0.1:{self.hport}"])
        self.procs["emulator"] = p
        _first_line(p, "emulator")

    def start_driver(self) -> None:
        self.incarnation += 1
        # Half the incarnations die at a journal commit (somewhere in their first ~40 operations).
        die_after = self.plan_rng.randrange(1, 120) if self.plan_rng.random() < 0.5 else 0
        args = ["-m", "posterm.bench.crash", "worker", "--port", f"tcp://127.0.0.1:{self.eport}",
                "--journal", str(self.journal), "--ops-log", str(self.ops_log), "--mix", self.mix,
                "--seed", str(self.seed * 1000 + self.incarnation), "--die-after", str(die_after)]
        if self.plan_rng.random() < 0.5:
            args.append("--die-before")
        self.procs["driver"] = self._spawn("driver", args)

    def start(self, name: str) -> None:
        {"host": self.start_host, "emulator": self.start_emulator, "driver": self.start_driver}[name]()

    def kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            p.kill()
        if p is not None:
            p.wait(30)

    def stop(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(30)

    def __enter__(self) -> Soak:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.kill(name)

    # -- the experiment

    def _ops_done(self) -> int:
        try:
            text = self.ops_log.read_text()
        except FileNotFoundError:
            return 0
        return text.count('"phase": "end"')

    def _wait_progress(self, since: int) -> None:
        """Until the driver has finished one more operation (restarting a driver that killed
        itself meanwhile): each kill then lands in a run that did work, whatever the load."""
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        while self._ops_done() <= since:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no operation finished in {PROGRESS_TIMEOUT:g} s; see {self.dir}/*.log")
            self._reap_driver(timeout=0.1)

    def _reap_driver(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the driver to kill itself; count and restart it if so."""
        p = self.procs["driver"]
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        del self.procs["driver"]
        if p.returncode == -signal.SIGKILL:
            self.figures.kills["driver"] += 1
            self.figures.triggers["driver:journal"] = self.figures.triggers.get("driver:journal", 0) + 1
        else:
            raise RuntimeError(f"the driver exited with {p.returncode}; see {self.dir}/driver.log")
        self.start_driver()
        return True

    def run(self, kills: int | None, seconds: float | None, on_kill: Callable[[int], None] | None = None) -> None:
        self.start_host()
        self.start_emulator()
        self.start_driver()
        began = time.monotonic()
        while True:
            total = sum(self.figures.kills.values())
            if kills is not None and total >= kills:
                break
            if seconds is not None and time.monotonic() - began >= seconds:
                break
            self._wait_progress(self._ops_done())
            delay = self.rng.uniform(0.0, 1.0)  # where in the next operations the kill lands
            if self._reap_driver(timeout=delay):
                continue
            if not self._targets:  # each of the three once per round, in a seeded order
                self._targets = self.rng.sample(["driver", "emulator", "host"], 3)
            target = self._targets.pop()
            self.kill(target)
            self.figures.kills[target] += 1
            key = f"{target}:delay"
            self.figures.triggers[key] = self.figures.triggers.get(key, 0) + 1
            self.start(target)
            if on_kill:
                on_kill(sum(self.figures.kills.values()))

    def finish(self, recover_timeout: float = 120.0) -> Figures:
        """Kill the driver, restart everything, recover, stop, and compare journal and host."""
        self.kill("driver")
        self.stop("emulator")
        self.stop("host")
        self.start_host()
        self.start_emulator()
        deadline = time.monotonic() + recover_timeout
        while True:
            r = subprocess.run([sys.executable, "-m", "posterm", "recover", "--port", f"tcp://127.0.0.1:{self.eport}",
                                "--journal", str(self.journal), "--json", "--password-stdin"], env=self.env,
                               input=f"{OPERATOR_PASSWORD}\n".encode(), capture_output=True,
                               timeout=recover_timeout, check=False)
            with open(self.dir / "recover.log", "ab") as fh:
                fh.write(r.stdout + r.stderr)
            if not [e for e in _journal_rows(self.journal) if e["state"] != "final"]:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)  # poll interval: the terminal settles its own unfinished orders with the host
        self.stop("emulator")
        self.stop("host")
        self._count_operations()
        check(self.journal, self.db, self.figures)
        return self.figures

    def _count_operations(self) -> None:
        ops = self.figures.operations
        for line in self.ops_log.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the half line a kill cut
            if row.get("phase") == "start":
                ops[row["op"]] = ops.get(row["op"], 0) + 1
            elif row.get("phase") == "end":
                key = f"{row['op']}:{row.get('result')}"
                ops[key] = ops.get(key, 0) + 1


# ------------------------------------------------------------------ the checks


def _ro(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def _journal_rows(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    db = _ro(path)
    try:
        return [dict(r) for r in db.execute("SELECT * FROM orders ORDER BY created_at")]
    finally:
        db.close()


def check(journal_path: Path, host_db: Path | str, fig: Figures) -> Figures:
    """Compare the driver's journal with the host's books (both read-only). Fills ``fig``."""
    rows = _journal_rows(journal_path)
    pays = {r["order_id"]: r for r in rows if r["kind"] == "pay"}
    refunds = {r["ref_id"]: r for r in rows if r["kind"] == "refund"}
    # A cancel has a row of its own: the pay row keeps the approval the host gave, and the
    # cancel row says whether it was then given back.
    cancelled = {r["order_id"] for r in rows if r["kind"] == "cancel" and r["outcome"] == "cancelled"}
    fig.unfinished = [{k: r[k] for k in ("order_id", "kind", "ref_id", "outcome", "amount_minor")}
                      for r in rows if r["state"] != "final"]
    from posterm.host.store import is_postgres_url, open_store

    pg = open_store(host_db) if is_postgres_url(host_db) else None
    db = pg.read() if pg is not None else _ro(Path(host_db))
    try:
        trades = {t["order_id"]: dict(t) for t in db.execute("SELECT * FROM trades WHERE merchant_id='M100000001'")}
        moves = {}
        for m in db.execute("SELECT txn, kind, COUNT(*) n, "
                            "CAST(SUM(CASE WHEN delta > 0 THEN delta ELSE 0 END) AS BIGINT) amount"
                            " FROM ledger GROUP BY txn, kind"):
            moves[m["txn"]] = dict(m)
        host_refunds = {r["refund_id"]: dict(r) for r in db.execute(
            "SELECT r.*, t.order_id FROM refunds r JOIN trades t USING (trade_no)")}
    finally:
        (pg or db).close()
    for txn, m in moves.items():
        if m["n"] > 2:  # one move is a debit row and a credit row
            fig.doubles.append({"txn": txn, "kind": m["kind"], "ledger_rows": m["n"], "amount": m["amount"]})
    for order, t in trades.items():
        if order not in pays:
            continue  # not this driver's (demo data, another terminal)
        j = pays[order]
        captured = moves.get(t["trade_no"], {}).get("amount", 0)
        back_cancel = moves.get(f"C:{t['trade_no']}", {}).get("amount", 0)
        back_refunds = sum(r["amount_minor"] for r in host_refunds.values() if r["order_id"] == order)
        if back_cancel + back_refunds > captured:
            fig.doubles.append({"order_id": order, "captured": captured, "given_back": back_cancel + back_refunds})
        host_row = {"status": t["status"], "amount": t["amount_minor"], "refunded": t["refunded_minor"],
                    "captured": captured, "cancel_back": back_cancel}
        if captured and j["outcome"] != "approved" and not (j["outcome"] == "cancelled" and back_cancel):
            fig.losses.append({"order_id": order, "journal": j["outcome"], "journal_state": j["state"], "host": host_row})
        if j["outcome"] == "approved" and not captured:
            fig.mismatches.append({"order_id": order, "what": "approved in the journal, never captured",
                                   "host": host_row})
        if back_cancel and order not in cancelled and j["outcome"] != "cancelled":
            fig.mismatches.append({"order_id": order, "what": "cancelled at the host, not in the journal",
                                   "journal": j["outcome"], "host": host_row})
        if order in cancelled and captured and not back_cancel:
            fig.mismatches.append({"order_id": order, "what": "cancelled in the journal, not at the host",
                                   "host": host_row})
        host_net = captured - back_cancel - back_refunds
        fig.host_net_minor += host_net
        journal_net = 0
        if j["outcome"] == "approved" and order not in cancelled:
            journal_net = j["amount_minor"] - sum(r["amount_minor"] for r in refunds.values()
                                                  if r["order_id"] == order and r["outcome"] == "approved")
        if journal_net != host_net:
            fig.mismatches.append({"order_id": order, "what": "money held differs", "journal_net": journal_net,
                                   "host_net": host_net, "journal": j["outcome"], "host": host_row,
                                   "journal_refunds": {k: (r["outcome"], r["amount_minor"]) for k, r in refunds.items()
                                                       if r["order_id"] == order}})
    for order, j in pays.items():
        if j["outcome"] == "approved" and order not in trades:
            fig.mismatches.append({"order_id": order, "what": "approved in the journal, unknown to the host"})
    for rid, r in host_refunds.items():
        if r["order_id"] not in pays:
            continue
        j = refunds.get(rid)
        if j is None or j["outcome"] != "approved":
            fig.losses.append({"refund_id": rid, "order_id": r["order_id"], "amount": r["amount_minor"],
                               "journal": None if j is None else j["outcome"],
                               "journal_state": None if j is None else j["state"]})
    for rid, j in refunds.items():
        if j["outcome"] == "approved" and rid not in host_refunds:
            fig.mismatches.append({"refund_id": rid, "order_id": j["order_id"],
                                   "what": "approved in the journal, no refund at the host"})
    for order, j in pays.items():
        if j["outcome"] == "approved" and order not in cancelled:  # a cancelled or declined order holds nothing
            fig.journal_net_minor += j["amount_minor"] - sum(
                r["amount_minor"] for r in refunds.values() if r["order_id"] == order and r["outcome"] == "approved")
    from posterm.host import Host

    host = Host.open(host_db, demo=False)
    try:
        fig.books = host.check_books()
    finally:
        host.close()
    return fig


def soak(seed: int, workdir: Path, *, kills: int | None = None, seconds: float | None = None, mix: str = "full",
         on_kill: Callable[[int], None] | None = None, db: str | None = None) -> Figures:
    """Run one soak in ``workdir`` and return its figures (see the module docstring). ``db``:
    the host's database (default a file in the run's home; a postgresql:// URL: on PostgreSQL)."""
    with Soak(workdir, seed, mix, db) as s:
        s.run(kills, seconds, on_kill)
        return s.finish()


def main(argv: list[str]) -> int:
    from posterm.bench import emit

    if argv and argv[0] == "worker":
        return _worker(argv[1:])
    if argv and argv[0] == "emulator":
        return _emulator(argv[1:])
    p = argparse.ArgumentParser(prog="python -m posterm.bench crash")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to keep killing (default 60)")
    p.add_argument("--kills", type=int, default=None, help="stop after this many kills instead")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mix", choices=["full", "pay"], default="full", help="pays, refunds and cancels; or pays only")
    p.add_argument("--dir", default=None, help="keep the run's state and logs here (default: a temporary one)")
    p.add_argument("--db", default=None, help="the host's database: a postgresql:// URL of an empty database "
                                              "(default: a SQLite file in the run's home)")
    a = p.parse_args(argv)
    workdir = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="posterm-crash-"))
    began = time.monotonic()
    fig = soak(a.seed, workdir, kills=a.kills, seconds=None if a.kills else a.seconds, mix=a.mix, db=a.db)
    ctx = {"seed": a.seed, "mix": a.mix, "dir": str(workdir)}
    for target, n in fig.kills.items():
        emit("crash", f"kills_{target}", n, "kills", **ctx)
    emit("crash", "kills", sum(fig.kills.values()), "kills", triggers=fig.triggers, **ctx)
    emit("crash", "operations", sum(v for k, v in fig.operations.items() if ":" not in k), "ops",
         detail=fig.operations, **ctx)
    for name in ("doubles", "losses", "mismatches", "unfinished"):
        rows = getattr(fig, name)
        emit("crash", name, len(rows), "count", rows=rows[:20], **ctx)
    emit("crash", "net_minor", fig.host_net_minor, "minor", journal=fig.journal_net_minor, **ctx)
    emit("crash", "books", len(fig.books), "problems", rows=fig.books[:20], **ctx)
    emit("crash", "seconds", time.monotonic() - began, "s", **ctx)
    return 0 if fig.ok() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
