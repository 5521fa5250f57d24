"""python -m posterm.bench ledger [--seconds S] [--slices N] [--clients 1,8,64] [--db postgresql://URL]:
durably committed authorisations/s against the durable-commit ceiling of the same run.

**SQLite** (always): the ceiling is a loop of one-row ``BEGIN IMMEDIATE; INSERT; COMMIT``
on the same disk with the store's settings (WAL, synchronous=FULL). The authorisations:
C client threads (``--clients``, default 1, 8 and 64), each a terminal of its own (its own
PIN pad, KSNs and session), sending signed AuthRequests through ``Host.handle``: MAC check,
one write transaction (KSN replay guard, limits, risk, capture and the ledger rows), the
signed answer only after its commit. Once with group commit (the default: requests
arriving together share one COMMIT, a lone one commits on its own thread,
:mod:`posterm.host.store.group`; ``mode`` "group"), once with every request handed to the
committer thread ("handoff": group commit before the lone-request path, for comparison), once
without ("single": one COMMIT each, SQLite's busy wait between the writers). The terminals' signing runs in this
process too, so the figure includes a terminal's own cost.

The ceiling and every configuration run in alternating slices (``--slices``), so a disk
whose fsync rate swings from minute to minute (a shared VM's does, tenfold) slows all alike
and the ratios mean something. ``commits_per_auth`` is counted (committed write
transactions, or group COMMITs, over the authorisations), not assumed. The issue's goal:
``ratio_to_ceiling`` >= 0.5 with group commit.

**PostgreSQL** (``--db postgresql://...``): for each worker count W (``--workers``, default
1, 2, 4) a new database on that server (``posterm_bench_<random>_w<W>``, dropped after: the
URL's user needs CREATEDB), served by ``posterm host serve --db URL --workers W`` (the public
command; it seeds the demo data) and driven over TCP by the largest ``--clients`` count of
terminals, twice in alternating slices: every terminal paying from one account
("one_payer": PostgreSQL serialises them on that account's row) and each from its own
("own_payer"). The ceiling: PostgreSQL's own one-row ``INSERT; COMMIT`` loop on one
connection, on a logged table of the same database, in the same slices. The server's
fsync, synchronous_commit, full_page_writes and wal_sync_method are printed first (the
figures mean what those say: measure on a server with fsync on, see docs/benchmarks.md).
Without the PostgreSQL store in this build it stops with ``posterm: error: PostgreSQL store
not available`` (exit 3).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from posterm.bench import emit, start_serve, stop_process

CODE = "289900000000000001"
# SQLite: group commit as the host runs it (a lone request commits on its caller's thread),
# group commit with every request handed to the committer thread (as before that), none
MODES = ("group", "handoff", "single")
MAX_CLIENTS = 256


def _ceiling_step(path: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    """One durable one-row commit per call (the store's WAL + synchronous=FULL), and a close."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")

    def step() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES ('x')")
        db.execute("COMMIT")
    return step, db.close


def _terminal(hsm, client, tid: str):
    """A logged-on signed terminal link with a fresh PIN pad (its own initial key)."""
    from posterm.crypto.pinpad import SecureModule
    from posterm.emulator.hostlink import SignedHostLink

    sm = SecureModule()
    sm.inject_kbpk(hsm.kbpk_for_injection(tid))
    sm.load_key_block(hsm.issue_initial_key(tid).block)
    link = SignedHostLink(sm, client, terminal_id=tid, merchant_id="M100000001", firmware_version="bench")
    link.logon(30)
    return link


class _Clients:
    """``n`` terminals paying as fast as their answers come, each on its own thread, for one
    slice at a time (:meth:`run`). A refused or unanswered authorisation fails the bench."""

    def __init__(self, links: list, prefix: str) -> None:
        self.links = links
        self.prefix = prefix
        self.orders = [0] * len(links)
        self.failures: list[str] = []

    def run(self, clients: int, seconds: float, codes: list[str] | None = None) -> tuple[int, float]:
        """``(authorisations, seconds)`` of ``clients`` threads for about ``seconds``; client k
        pays with ``codes[k]`` (default: every one with :data:`CODE`, one payer account)."""
        from firmware_protocol.host import messages as h

        counts = [0] * clients
        start = threading.Barrier(clients + 1)
        end = [0.0]

        def loop(k: int) -> None:
            link = self.links[k]
            start.wait()
            try:
                while time.perf_counter() < end[0]:
                    self.orders[k] += 1
                    r = link.request(h.AuthRequest(terminal_id=link.terminal_id, amount_minor=1, currency="CNY",
                                                   order_id=f"{self.prefix}{k}-{self.orders[k]}",
                                                   payment_code=codes[k] if codes else CODE), 30)
                    if getattr(r, "status", None) is not h.HostStatus.APPROVED:
                        raise RuntimeError(f"not approved: {r!r}"[:200])
                    counts[k] += 1
            except Exception as exc:  # noqa: BLE001 - reported, fails the benchmark
                self.failures.append(f"{link.terminal_id}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        end[0] = t0 + seconds
        start.wait()
        for t in threads:
            t.join(seconds + 60)
        elapsed = time.perf_counter() - t0
        if self.failures:
            raise RuntimeError(self.failures[0])
        return sum(counts), elapsed


def _slices(ceiling: Callable[[], None], configs: list[tuple[str, Callable[[float], int]]], seconds: float,
            slices: int) -> tuple[tuple[int, float], dict[str, tuple[int, float]]]:
    """The ceiling (a call per commit) and each config (``run(slice seconds) -> calls``), in
    ``slices`` alternating slices of ``seconds / slices`` each; totals ``(calls, seconds)``."""
    per = seconds / slices
    base_n, base_s = 0, 0.0
    totals = {name: (0, 0.0) for name, _ in configs}
    for _ in range(slices):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < per:
            ceiling()
            base_n += 1
        base_s += time.perf_counter() - t0
        for name, run in configs:
            n, s = run(per)
            totals[name] = (totals[name][0] + n, totals[name][1] + s)
    return (base_n, base_s), totals


def sqlite_section(seconds: float, slices: int, clients: list[int], home_dir: str | None) -> int:
    from posterm.host import Host

    with tempfile.TemporaryDirectory(prefix="posterm-bench-ledger-", dir=home_dir) as tmp:
        ceiling, close_ceiling = _ceiling_step(Path(tmp) / "ceiling.db")
        hosts, pools, configs = {}, {}, []
        try:
            for mode in MODES:
                (Path(tmp) / mode).mkdir(mode=0o700)
                host = hosts[mode] = Host.open(Path(tmp) / mode / "host.db", group_commit=mode != "single")
                if mode == "handoff":
                    host.group_commit.direct_path = False
                links = [_terminal(host.hsm, host.client(), f"T{n:07d}") for n in range(1, max(clients) + 1)]
                pools[mode] = _Clients(links, f"B{mode[0]}")
                for c in clients:
                    configs.append((f"{mode}:{c}", lambda s, p=pools[mode], c=c: p.run(c, s)))
            before = {mode: _commits(h) for mode, h in hosts.items()}
            (base_n, base_s), totals = _slices(ceiling, configs, seconds, slices)
            after = {mode: _commits(h) for mode, h in hosts.items()}
            problems = {mode: h.check_books() for mode, h in hosts.items()}
        finally:
            for h in hosts.values():
                h.close()
            close_ceiling()
    base = base_n / base_s
    emit("ledger", "sqlite_durable_commits", round(base), "commits/s", store="sqlite",
         what="one-row BEGIN IMMEDIATE/INSERT/COMMIT, WAL, synchronous=FULL")
    for mode in MODES:
        auths = sum(totals[f"{mode}:{c}"][0] for c in clients)
        for c in clients:
            n, s = totals[f"{mode}:{c}"]
            rate = n / s if s else 0.0
            emit("ledger", "authorisations", round(rate), "auth/s", store="sqlite", mode=mode,
                 group_commit=mode != "single", direct_path=mode == "group", clients=c, n=n, ratio_to_ceiling=round(rate / base, 3),
                 ratio_to_1_client=round(rate / (totals[f"{mode}:{clients[0]}"][0]
                                                 / totals[f"{mode}:{clients[0]}"][1]), 3),
                 books_balanced=not problems[mode])
        emit("ledger", "commits_per_auth", round((after[mode] - before[mode]) / auths, 3) if auths else 0,
             "commits", store="sqlite", mode=mode, group_commit=mode != "single", over_clients=clients)
    return 0


def _commits(host) -> int:
    """Durable commits of ``host`` so far: its group committer's COMMITs, else the store's."""
    gc = getattr(host, "group_commit", None)
    return gc.batches if gc is not None else host.store.commits


# ---------------------------------------------------------------- PostgreSQL

def _pg_available() -> bool:
    """Whether this build has the PostgreSQL store (behind ``posterm.host.store.open_store``)."""
    import posterm.host.store as store

    return callable(getattr(store, "open_store", None))


SETTINGS = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")


def _pg_connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10, options="-c statement_timeout=120000")


def _pg_ceiling(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """One one-row ``INSERT; COMMIT`` per call on a logged table (a temporary or unlogged one
    writes no WAL, so its COMMIT would not wait for the disk), and a close."""
    db = _pg_connect(url)
    db.execute("CREATE TABLE posterm_bench_ceiling (id BIGSERIAL PRIMARY KEY, v TEXT)")

    def step() -> None:
        with db.transaction():
            db.execute("INSERT INTO posterm_bench_ceiling (v) VALUES ('x')")
    return step, db.close


def _with_db(url: str, name: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _serve(url: str, workers: int, home: Path) -> tuple[subprocess.Popen, str]:
    return start_serve(url, workers, home, ["--max-pending", "512", "--max-connections", "1024"], 180)


def _payer_code(k: int) -> str:
    """Client ``k``'s own reusable test code (in the test range, beside the demo's)."""
    return f"289900000001{k:06d}"


def _add_payers(url: str, home: Path, hsm, clients: int) -> list[str]:
    """One account per client (behaviour "test", as the demo's 01: risk allows, no PIN under
    the password-free amount), each with its own reusable code; the codes, in client order."""
    from posterm.host import Host, admin
    from posterm.host.store.postgres import Store

    host = Host(Store(url, pool=1, home=home), hsm)
    try:
        for k in range(clients):
            admin.add_account(host.ctx, f"bench-{k:04d}", f"Bench payer {k}", balance_minor=10 ** 12,
                              daily_limit=10 ** 12, behaviour="test")
            with host.store.transaction() as tx:
                tx.add_code(_payer_code(k), f"bench-{k:04d}", host.ctx.clock(), None, test=True)
    finally:
        host.close()
    return [_payer_code(k) for k in range(clients)]


def _pg_books(url: str) -> bool:
    """Whether the books of the database at ``url`` balance (:func:`check_ledger`)."""
    from posterm.host.store import check_ledger
    from posterm.host.store.postgres import Store

    store = Store(url, pool=1)
    try:
        return not check_ledger(store.read())
    finally:
        store.close()


def _pg_workers(url: str, name: str, workers: int, seconds: float, slices: int, clients: int,
                tmp: Path) -> tuple[float, dict[str, tuple[int, float]], bool]:
    """On a new database ``name`` (dropped after): ``posterm host serve --workers`` against
    the ceiling in alternating slices, the clients paying from one account ("one_payer") and
    each from its own ("own_payer"); ``(ceiling commits/s, {payers: (authorisations,
    seconds)}, books ok)``."""
    from posterm.crypto.hsm import Hsm
    from posterm.host.client import TcpHostClient
    from posterm.safefs import private_dir

    with _pg_connect(url) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db_url = _with_db(url, name)
    try:
        home = tmp / f"w{workers}"
        home.mkdir(mode=0o700)
        proc, address = _serve(db_url, workers, home)   # it seeds the demo data (its terminals) first
        conns = []
        ceiling, close_ceiling = _pg_ceiling(db_url)
        try:
            hsm = Hsm.open(private_dir(home / "hsm", own=True))   # the host's HSM: POSTERM_HOME's
            links = []
            for n in range(1, clients + 1):
                conns.append(TcpHostClient(address))
                links.append(_terminal(hsm, conns[-1], f"T{n:07d}"))
            codes = _add_payers(db_url, home, hsm, clients)
            pool = _Clients(links, f"P{workers}-")
            (base_n, base_s), totals = _slices(ceiling, [("one_payer", lambda s: pool.run(clients, s)),
                                                         ("own_payer", lambda s: pool.run(clients, s, codes))],
                                               seconds, slices)
        finally:
            close_ceiling()
            for c in conns:
                c.close()
            stop_process(proc)
        return base_n / base_s, totals, _pg_books(db_url)
    finally:
        with _pg_connect(url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_section(url: str, seconds: float, slices: int, clients: int, home_dir: str | None,
                     workers_list: tuple[int, ...] = (1, 2, 4)) -> int:
    """The PostgreSQL figures: for each worker count a database of its own on the server at
    ``url`` (``posterm_bench_<random>_w<W>``, created and dropped; the URL's user needs
    CREATEDB), so every count starts from the same demo data."""
    import uuid

    import psycopg

    from posterm.host.store.postgres import redact

    try:
        with _pg_connect(url) as admin:
            settings = {k: admin.execute(f"SHOW {k}").fetchone()[0] for k in SETTINGS}
        emit("ledger", "postgresql_server", os.cpu_count() or 0, "cpus", store="postgresql", **settings,
             same_machine="the server, the host workers and the client terminals share these cpus")
        results = {}
        tag = uuid.uuid4().hex[:10]
        with tempfile.TemporaryDirectory(prefix="posterm-bench-ledger-pg-", dir=home_dir) as tmp:
            for workers in workers_list:
                results[workers] = _pg_workers(url, f"posterm_bench_{tag}_w{workers}", workers, seconds, slices,
                                               clients, Path(tmp))
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(f"PostgreSQL at {redact(url)}: {reason.replace(url, redact(url))}") from None
    first = workers_list[0]
    for workers, (base, totals, books_ok) in results.items():
        emit("ledger", "postgresql_durable_commits", round(base), "commits/s", store="postgresql",
             measured_beside_workers=workers, fsync=settings["fsync"],
             synchronous_commit=settings["synchronous_commit"],
             what="one-row INSERT/COMMIT on a logged table, one connection, same server and database")
        for payers, (n, s) in totals.items():
            rate = n / s if s else 0.0
            n1, s1 = results[first][1][payers]
            one_rate = n1 / s1 if s1 else 0.0
            one_ratio = one_rate / results[first][0]
            emit("ledger", "authorisations", round(rate), "auth/s", store="postgresql", workers=workers,
                 clients=clients, payers=payers, n=n, ratio_to_ceiling=round(rate / base, 3),
                 ratio_to_1_worker=round(rate / one_rate, 3) if one_rate else 0,
                 ceiling_ratio_to_1_worker=round(rate / base / one_ratio, 3) if one_ratio else 0,
                 books_balanced=books_ok, database=f"posterm_bench_{tag}_w{workers}")
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench ledger")
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure (default 3)")
    ap.add_argument("--slices", type=int, default=6, help="alternating slices ceiling/host (default 6)")
    ap.add_argument("--clients", default="1,8,64", help="concurrent client terminals, comma-separated (default 1,8,64)")
    ap.add_argument("--db", default=None, metavar="postgresql://URL",
                    help="also the PostgreSQL section: posterm host serve --db URL --workers 1/2/4")
    ap.add_argument("--workers", default="1,2,4", help="PostgreSQL: host worker counts, comma-separated (default 1,2,4)")
    ap.add_argument("--no-sqlite", action="store_true", help="skip the SQLite section")
    ap.add_argument("--dir", default=None, help="where the SQLite databases live (default: the temp dir)")
    args = ap.parse_args(argv)
    try:
        clients = sorted({int(x) for x in args.clients.split(",") if x.strip()})
    except ValueError:
        ap.error("--clients: whole numbers, comma-separated")
    if not clients or not all(1 <= c <= MAX_CLIENTS for c in clients):
        ap.error(f"--clients: 1 to {MAX_CLIENTS} each")
    try:
        workers = tuple(sorted({int(x) for x in args.workers.split(",") if x.strip()}))
    except ValueError:
        ap.error("--workers: whole numbers, comma-separated")
    if not workers or not all(1 <= w <= 64 for w in workers):
        ap.error("--workers: 1 to 64 each")
    if not (0 < args.seconds <= 3600) or not 1 <= args.slices <= 1000:
        ap.error("--seconds: more than 0, at most 3600; --slices: 1 to 1000")
    if args.db is not None:
        if not args.db.lower().startswith(("postgresql://", "postgres://")):
            ap.error("--db: a postgresql:// URL")
        if not _pg_available():
            print("posterm: error: PostgreSQL store not available (this build has no posterm.host.store.open_store)",
                  file=sys.stderr)
            return 3
    try:
        if not args.no_sqlite:
            sqlite_section(args.seconds, max(1, args.slices), clients, args.dir)
        if args.db is not None:
            postgres_section(args.db, args.seconds, max(1, args.slices), max(clients), args.dir, workers)
    except (RuntimeError, OSError) as exc:
        print(f"posterm: error: ledger benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0
