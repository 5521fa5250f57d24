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

import pytest

from firmware_protocol import host as h
from firmware_protocol.host import HostStatus as S, pin_pan
from posterm.host import Host
from tests.host.conftest import CODE, PIN, terminal

KILLS = int(os.environ.get("POSTERM_KILL_POINTS", "200"))


def child(db_path, seed: int, report_fd: int) -> None:
    """Runs in a forked process until killed: pays, confirms by PIN, cancels, refunds."""
    rng = random.Random(seed)
    host = Host.open(db_path, demo=False)
    term = terminal(host, f"T{rng.randrange(1, 65):07d}")
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


def _read_lines(fd: int, n: int, bound: float = 60.0) -> str:
    """Read from the child's pipe until ``n`` whole lines came (at most ``bound`` s: a stuck
    child fails the test instead of hanging it)."""
    buf = b""
    deadline = time.monotonic() + bound
    while buf.count(b"\n") < n:
        left = deadline - time.monotonic()
        assert left > 0, f"the child reported {len(buf.splitlines())} of {n} approvals in {bound} s"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, "the child died before reporting"
            buf += chunk
    return buf.decode()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_minus_nine_at_random_points(tmp_path):
    db_path = tmp_path / "host.db"
    Host.open(db_path).close()  # demo data
    rng = random.Random(2026)
    approved: set[str] = set()
    waited = 0
    for k in range(KILLS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child dies by SIGKILL
            os.close(r)
            try:
                child(db_path, k, w)
            finally:
                os._exit(1)
        os.close(w)
        # Kill after the child has reported a chosen number of approvals (it did real work,
        # however slow the machine), then at a random instant of the request that follows.
        want = rng.randrange(0, 3)
        got = _read_lines(r, want)
        waited += want
        time.sleep(rng.uniform(0.0, 0.03))   # where in the next request the kill lands, not a wait for it
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(r) as fh:
            rest = fh.read()
        approved.update(line.strip() for line in (got + rest).splitlines() if line.strip())
    host = Host.open(db_path, demo=False)
    try:
        assert host.check_books() == []
        db = sqlite3.connect(db_path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        status = dict(db.execute("SELECT order_id, status FROM trades"))
        lost = [o for o in approved if status.get(o) not in ("APPROVED", "REFUNDED")]
        assert not lost, f"approved payments lost after a kill: {lost[:5]}"
        assert len(approved) >= waited     # the children did real work between kills
    finally:
        host.close()
