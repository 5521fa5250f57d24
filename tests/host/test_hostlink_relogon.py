"""The emulator's host link when the host process it reaches has forgotten (or never had)
its logon: two hosts on one database stand for two `host serve --workers` processes, and a
routing client for a pooled connection that now reaches one, now the other (issue 19).

A lost challenge (the confirm reaching the other process, the line dying mid-logon) and a
"log on first" answer are followed by a fresh logon and the payment is approved, once; a
host that always forgets gives a clean answer after LOGON_ATTEMPTS tries, not a loop."""

from __future__ import annotations

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostStatus as S
from firmware_protocol.native.messages import Reason
from posterm.crypto.pinpad import SecureModule
from posterm.emulator.hostlink import LOGON_ATTEMPTS, HostRefusedLogon, SignedHostLink
from posterm.errors import Disconnected
from posterm.host import Host
from posterm.host.logon import Sessions

from .conftest import CODE, raw_query

TID = "T0000001"


@pytest.fixture
def pair(host, demo_db, clock):
    """Host ``a`` (the fixture's) and host ``b``: another process's memory on the same database."""
    b = Host.open(demo_db, demo=False, clock=clock, outage_seconds=30.0)
    yield host, b
    b.close()


class Router:
    """A host connection that reaches the host ``route(msg, n)`` picks (n: the request's
    number, from 0), recording what it sent where; ``fail(msg, n)`` true: the line died
    before the request got anywhere."""

    def __init__(self, hosts, route, fail=lambda msg, n: False) -> None:
        self.clients = [x.client() for x in hosts]
        self.route, self.fail = route, fail
        self.sent: list[tuple[str, int]] = []

    def request(self, msg, timeout):
        n = len(self.sent)
        if self.fail(msg, n):
            self.sent.append((type(msg).__name__, -1))
            raise Disconnected("the host connection died")
        i = self.route(msg, n)
        self.sent.append((type(msg).__name__, i))
        return self.clients[i].request(msg, timeout)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.sent if k == kind)


def _link(host: Host, client) -> SignedHostLink:
    sm = SecureModule()
    sm.inject_kbpk(host.hsm.kbpk_for_injection(TID))
    sm.load_key_block(host.hsm.issue_initial_key(TID).block)
    return SignedHostLink(sm, client, terminal_id=TID, merchant_id="M100000001", firmware_version="test 1")


def _pay(order: str) -> h.AuthRequest:
    return h.AuthRequest(terminal_id=TID, order_id=order, amount_minor=100, currency="CNY", payment_code=CODE[1])


def _trades(host: Host, order: str) -> list[tuple]:
    db = host.store.path if host.store.dialect == "sqlite" else host.store.url
    return raw_query(db, f"SELECT trade_no FROM trades WHERE order_id = '{order}'")


def test_a_confirm_at_the_process_without_the_challenge_logs_on_again(pair):
    first_confirm = {}

    def route(msg, n):   # the first LogonConfirm reaches b (the line was reopened there), the rest a
        if isinstance(msg, h.LogonConfirm) and not first_confirm:
            first_confirm["n"] = n
            return 1
        return 0
    router = Router(pair, route)
    link = _link(pair[0], router)
    reply = link.request(_pay("RL-1"), 5.0)
    assert reply.status is S.APPROVED
    assert router.count("LogonRequest") == 2 and router.count("LogonConfirm") == 2
    assert router.count("AuthRequest") == 1 and len(_trades(pair[0], "RL-1")) == 1


def test_a_line_dying_mid_logon_logs_on_again_from_a_fresh_request(pair):
    router = Router(pair, lambda msg, n: 0, fail=lambda msg, n: isinstance(msg, h.LogonConfirm) and n < 2)
    link = _link(pair[0], router)
    assert link.logon(5.0)
    assert router.count("LogonRequest") == 2 and link.logged_on
    assert link.request(_pay("RL-2"), 5.0).status is S.APPROVED


def test_log_on_first_after_moving_to_another_process_pays_once(pair):
    a, b = pair
    where = {"i": 0}
    router = Router(pair, lambda msg, n: where["i"])
    link = _link(a, router)
    link.logon(5.0)
    where["i"] = 1                                 # the connection now reaches b: no session there
    reply = link.request(_pay("RL-3"), 5.0)
    assert reply.status is S.APPROVED
    assert [k for k, i in router.sent if i == 1] == ["AuthRequest", "LogonRequest", "LogonConfirm", "AuthRequest"]
    assert len(_trades(a, "RL-3")) == 1


def test_a_session_lost_twice_is_still_paid_once(pair):
    a, b = pair
    router = Router(pair, lambda msg, n: 0)
    link = _link(a, router)
    link.logon(5.0)
    forgets = {"left": LOGON_ATTEMPTS - 1}
    inner = router.clients[0].request

    def forgetful(msg, timeout):   # the process restarts before each of the first two payments
        if isinstance(msg, h.AuthRequest) and forgets["left"]:
            forgets["left"] -= 1
            a.sessions = Sessions()
        return inner(msg, timeout)
    router.clients[0].request = forgetful
    assert link.request(_pay("RL-4"), 5.0).status is S.APPROVED
    assert router.count("AuthRequest") == LOGON_ATTEMPTS and len(_trades(a, "RL-4")) == 1


def test_a_host_that_always_loses_the_challenge_is_refused_after_bounded_tries(pair):
    router = Router(pair, lambda msg, n: n % 2)    # every confirm reaches the other process
    link = _link(pair[0], router)
    with pytest.raises(HostRefusedLogon) as err:
        link.request(_pay("RL-5"), 5.0)
    assert err.value.reason == Reason.REPLAY_DETECTED and not link.logged_on
    assert router.count("LogonRequest") == LOGON_ATTEMPTS and router.count("AuthRequest") == 0
    assert _trades(pair[0], "RL-5") == []


def test_a_host_that_always_forgets_the_session_answers_log_on_first_after_bounded_tries(pair):
    a, b = pair
    router = Router(pair, lambda msg, n: 0)
    link = _link(a, router)
    inner = router.clients[0].request

    def forgetful(msg, timeout):
        if isinstance(msg, h.AuthRequest):
            a.sessions = Sessions()
        return inner(msg, timeout)
    router.clients[0].request = forgetful
    reply = link.request(_pay("RL-6"), 5.0)
    assert isinstance(reply, h.HostError) and reply.reason == Reason.TERMINAL_UNKNOWN
    assert router.count("AuthRequest") == LOGON_ATTEMPTS
    assert router.count("LogonRequest") == LOGON_ATTEMPTS   # the first logon and one before each resend
    assert _trades(a, "RL-6") == []


def test_other_refusals_are_not_retried(pair):
    router = Router(pair, lambda msg, n: 0)
    link = _link(pair[0], router)
    link.merchant_id = "M999999999"                # not this terminal's merchant: TERMINAL_UNKNOWN
    with pytest.raises(HostRefusedLogon) as err:
        link.logon(5.0)
    assert err.value.reason == Reason.TERMINAL_UNKNOWN and router.count("LogonRequest") == 1
