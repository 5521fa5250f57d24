"""kill -9 the host at random points in pay, confirm, cancel and refund: after every
restart the books balance, nothing is charged twice, and every payment whose approval
reached the terminal is still approved (or refunded by a later cancel)."""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostStatus as S, pin_pan
from posterm.host import Host
from tests.host.conftest import CODE, PIN, terminal

KILLS = int(os.environ.get("POSTERM_KILL_POINTS", "200"))


def child(db_path, seed: int, report_fd: int) -> None:
    """Runs in a forked process until killed: pays, confirms by PIN, cancels, refunds."""
    rng = random.Random(seed)
    host = Host.open(db_path, demo=False)
    # A terminal of its own: a fresh secure module starts its KSN counter at 0, and the host
    # refuses a counter it has seen from that terminal before (replay), so a child that drew
    # a terminal id an earlier child had used did nothing until killed.
    tid = f"T9{seed:06d}"
    host.register_terminal(tid, "M100000001", "CN-SH")
    term = terminal(host, tid)
    os.write(report_fd, b"ready\n")  # the parent's random delay starts from here, not from fork()
    n = 0
    while True:
        n += 1
        order = f"K{seed}-{n}"
        code = CODE[rng.choice([1, 1, 3])]
        r = term.request(h.AuthRequest(terminal_id=term.terminal_id, order_id=order, amount_minor=rng.randrange(1, 500),
                                       currency="CNY", payment_code=code), 5)
        if r.status is S.NEED_PIN:
            sm = term.module
            sm.begin_pin_entry(pin_pan(code[-4:]))
            for d in PIN:
                sm.press(d)
            e = sm.finish()
            r = term.request(h.PinVerify(terminal_id=term.terminal_id, order_id=order, pin_block=e.block, pin_ksn=e.ksn,
                                         pin_format=e.format), 5)
        if r.status is S.APPROVED:
            os.write(report_fd, f"{order}\n".encode())
            action = rng.random()
            if action < 0.3:
                term.request(h.HostCancel(terminal_id=term.terminal_id, order_id=order), 5)
            elif action < 0.6:
                term.request(h.HostRefund(terminal_id=term.terminal_id, order_id=order, refund_id=f"R{order}",
                                          amount_minor=1, currency="CNY"), 5)


class Reports:
    """The child's lines, read as they come; waits are on the pipe, bounded."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf, self.lines, self.eof = fd, b"", [], False

    def _pump(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [x.decode() for x in done if x]
        return True

    def wait_for(self, pred, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred(self.lines):
            left = deadline - time.monotonic()
            assert left > 0, f"child did not report in {timeout:g} s (lines so far: {self.lines[-3:]})"
            assert not self.eof, f"child exited before reporting (lines so far: {self.lines[-3:]})"
            self._pump(left)

    def drain(self) -> list[str]:
        while self._pump(0):
            pass
        return self.lines


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_minus_nine_at_random_points(host_db):
    db_path = host_db  # a file (SQLite) or a database of its own (PostgreSQL): tests/pgstore.py
    Host.open(db_path).close()  # demo data
    rng = random.Random(2026)
    approved: set[str] = set()
    kills = KILLS if isinstance(db_path, Path) else max(8, KILLS // 5)   # PostgreSQL: fewer, its run kept short
    for k in range(kills):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child dies by SIGKILL
            os.close(r)
            try:
                child(db_path, k, w)
            except BaseException:
                import traceback

                traceback.print_exc()  # the reason the parent will give up waiting for this child
            finally:
                os._exit(1)
        os.close(w)
        reports = Reports(r)
        try:
            # Every fourth child gets to report an approval before its kill, so the run does
            # real work however loaded the machine is; the others die anywhere after start.
            if k % 4 == 0:
                reports.wait_for(lambda lines: len(lines) >= 2)
            else:
                reports.wait_for(lambda lines: "ready" in lines)
            time.sleep(rng.uniform(0.0, 0.06))  # the kill point: the experiment, not synchronisation
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        approved.update(x for x in reports.drain() if x != "ready")
        os.close(r)
    host = Host.open(db_path, demo=False)
    try:
        assert host.check_books() == []
        if host.store.dialect == "sqlite":
            assert sqlite3.connect(db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        status = {r[0]: r[1] for r in host.store.read().execute("SELECT order_id, status FROM trades")}
        lost = [o for o in approved if status.get(o) not in ("APPROVED", "REFUNDED")]
        assert not lost, f"approved payments lost after a kill: {lost[:5]}"
        assert len(approved) >= kills // 4  # every fourth child reported an approval before its kill
    finally:
        host.close()
