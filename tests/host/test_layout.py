"""The host's shape, checked by machine: no import cycles, SQL only in the store, the wire's
HostError codes named once (DESIGN.md, "Rules that keep the shape")."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import grimp
import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostErrorCode
from firmware_protocol.native.messages import Reason

import posterm.host

from .conftest import terminal

HOST = Path(posterm.host.__file__).parent
# The service modules: the host's logic, which must reach the database only through the store.
SERVICE = ("service", "context", "signing", "logon", "authorise", "orders", "ledger", "after_sales", "settlement",
           "admin", "wallet", "risk", "demo")
SQL = re.compile(r"\bSELECT\b|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bPRAGMA\b"
                 r"|\.execute(many|script)?\(")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("posterm")


def cycles_through(graph, modules: set[str]) -> list[tuple[str, ...]]:
    """Every import cycle through one of ``modules``, as a chain m -> ... -> m (one per
    direct import that closes one), wherever the cycle goes on the way."""
    found = []
    for m in sorted(modules):
        for imported in sorted(graph.find_modules_directly_imported_by(m)):
            back = graph.find_shortest_chain(importer=imported, imported=m)
            if back is not None:
                found.append((m, *back))
    return found


def test_the_host_package_has_no_import_cycle(graph):
    host = {"posterm.host"} | graph.find_descendants("posterm.host")
    assert "posterm.host.service" in host and "posterm.host.store.queries" in host
    assert cycles_through(graph, host) == []


def test_the_cycle_check_finds_a_cycle(graph):
    """The check above can fail: an import back from the store to the service is a cycle."""
    g = grimp.build_graph("posterm")
    g.add_import(importer="posterm.host.store.queries", imported="posterm.host.service")
    assert any(c[0] == "posterm.host.service" and c[-1] == "posterm.host.service"
               for c in cycles_through(g, {"posterm.host.service"}))


def test_terminal_client_and_wire_do_not_import_each_other(graph):
    assert graph.find_shortest_chain("posterm.host.wire", "posterm.host.client") is None
    assert graph.find_shortest_chain("posterm.host.wire", "posterm.host.server") is None
    assert graph.find_shortest_chain("posterm.host.demo", "posterm.host.service") is None


@pytest.mark.parametrize("name", SERVICE)
def test_no_sql_outside_the_store(name):
    source = (HOST / f"{name}.py").read_text()
    hits = [line.strip() for line in source.splitlines() if SQL.search(line)]
    assert hits == [], f"posterm/host/{name}.py runs SQL itself (put it in posterm/host/store/queries.py)"


def test_the_sql_pattern_sees_sql():
    assert SQL.search('db.execute("SELECT 1")') and SQL.search("UPDATE trades SET status = ?")
    assert SQL.search("INSERT OR IGNORE INTO merchants") and not SQL.search("update the trade's status")


def test_host_error_codes_keep_their_wire_values():
    assert {c.name: int(c) for c in HostErrorCode} == {
        "MAC_INVALID": 1, "REPLAY_DETECTED": 2, "REFUSED": 3, "NOT_LOGGED_ON": 4, "UNEXPECTED_MESSAGE": 5,
        "KEY_ERROR": 6}


def test_host_errors_carry_the_named_codes(host):
    term = terminal(host)
    bad = dataclasses.replace(term.sign(h.HostQuery(terminal_id=term.terminal_id, order_id="X")), order_id="Y")
    assert host.handle(bad).code == HostErrorCode.MAC_INVALID
    host.require_logon = False   # a host-to-terminal message gets that far only without the logon check
    r = host.handle(term.sign(h.SettleResponse(batch_no=1, totals=(), agrees=True)))
    assert r.code == HostErrorCode.UNEXPECTED_MESSAGE
    host.require_logon = True
    host.sessions = type(host.sessions)()     # as after a restart: no terminal is logged on
    r = host.handle(term.sign(h.HostQuery(terminal_id=term.terminal_id, order_id="X")))
    assert (r.code, r.reason) == (HostErrorCode.NOT_LOGGED_ON, Reason.TERMINAL_UNKNOWN)
