from __future__ import annotations

import pytest

from posterm.crypto.pinpad import SecureModule
from posterm.emulator.hostlink import SignedHostLink
from posterm.host import Host
from tests import pgstore

# the store each host test runs on: SQLite and PostgreSQL (tests/pgstore.py)
store_kind, host_db = pgstore.store_kind, pgstore.host_db

CODE = {n: f"28990000000000000{n}" for n in range(1, 9)}
PIN = "147258"


class Clock:
    def __init__(self, now: float = 1_795_000_000.0) -> None:  # 2026-11-18 ~15:46 Asia/Shanghai
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def terminal(host: Host, tid: str = "T0000001", client=None) -> SignedHostLink:
    """A logged-on terminal with a new PIN pad. A new pad gets a new initial key (a new key
    id): the terminal's current key in a pad with no memory of its counter would re-use KSNs
    an earlier pad of this terminal used, and the host refuses them as replays."""
    sm = SecureModule()
    sm.inject_kbpk(host.hsm.kbpk_for_injection(tid))
    sm.load_key_block(host.hsm.issue_initial_key(tid).block)
    link = SignedHostLink(sm, client or host.client(), terminal_id=tid, merchant_id="M100000001",
                          firmware_version="test 1", location="CN-SH")
    link.logon()
    return link


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def host(host_db, clock):
    """A host on each store: SQLite (a file) and PostgreSQL (a database of its own; skipped
    without POSTERM_TEST_PG, failed under CI=true without it)."""
    h = Host.open(host_db, clock=clock, outage_seconds=30.0)
    yield h
    assert h.check_books() == []
    h.close()


@pytest.fixture
def term(host):
    return terminal(host)


SUPPORT_PASSWORD = "support-password-1"


def support(host: Host, name: str = "support"):
    """Support staff's verification for a key operation (the operator is added once per host)."""
    from posterm.host import security

    if host.store.view().operator(name) is None:
        security.add_operator(host.ctx, name, SUPPORT_PASSWORD)
    return security.OperatorProof(name, SUPPORT_PASSWORD)
