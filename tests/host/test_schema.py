"""The one schema and its numbered migrations: a database made by the release before them
(tests/fixtures/host-db-before-migrations.sql: the SQLite dump of a host main made on
2026-12-02, the security centre's tables included, no ``schema_version``) upgrades in place
and keeps working; a new database on either store is at the latest version with every table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from firmware_protocol.host.messages import HostStatus as S
from posterm.host import Host
from posterm.host.store import open_store
from posterm.host.store.schema import LATEST, TABLES, script
from tests.host.conftest import CODE, terminal
from tests.host.test_host import pay

BEFORE = Path(__file__).resolve().parents[1] / "fixtures" / "host-db-before-migrations.sql"


def _old_db(tmp_path: Path) -> Path:
    path = tmp_path / "host.db"
    c = sqlite3.connect(path)
    c.executescript(BEFORE.read_text())
    c.close()
    path.chmod(0o600)
    return path


def _columns(db, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def test_a_database_made_before_the_migrations_upgrades_in_place(tmp_path, clock):
    path = _old_db(tmp_path)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() is None
    before = {t: raw.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("trades", "ledger", "refunds",
                                                                                 "operators", "notices", "accounts")}
    merchant_totals = raw.execute("SELECT COUNT(*) FROM ledger_totals WHERE account NOT LIKE 'customer:%'").fetchone()[0]
    raw.close()
    assert before["trades"] == 3 and before["refunds"] == 1 and merchant_totals > 0   # what the fixture holds

    store = open_store(path)
    db = store.read()
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(LATEST)
    assert {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in before} == before   # nothing lost
    assert {"over_limit", "remind_at", "reminded_day", "confirm_pref", "large_payment"} <= _columns(db, "accounts")
    # the running totals: customers' only now, and each still its entries' sum (check_ledger)
    assert db.execute("SELECT COUNT(*) FROM ledger_totals WHERE account NOT LIKE 'customer:%'").fetchone()[0] == 0
    from posterm.host.store import check_ledger

    assert check_ledger(db) == []
    store.close()

    # and the host works on it: its old trade is found, a new payment books, the books balance
    host = Host.open(path, clock=clock)
    try:
        assert host.order_status("FIX-1") == "APPROVED"
        assert host.store.view().operator("support") is not None
        term = terminal(host)
        assert pay(term, 700, CODE[1], order="AFTER-UPGRADE").status is S.APPROVED
        assert host.check_books() == []
    finally:
        host.close()
    again = open_store(path)   # opened again: nothing left to migrate
    assert again.commits == 0
    again.close()


def test_a_new_database_has_every_table_at_the_latest_version(host):
    db = host.store.read()
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(LATEST)
    for t in TABLES:
        db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()   # exists, on either store


def test_the_script_is_the_migrated_schema(tmp_path):
    """SCHEMA (the script a bench builds a database from) makes what the migrations make."""
    a = sqlite3.connect(tmp_path / "a.db")
    a.executescript(script("sqlite"))
    open_store(tmp_path / "b.db").close()
    b = sqlite3.connect(tmp_path / "b.db")
    for t in TABLES:
        assert _columns(a, t) == _columns(b, t), t
    assert a.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(LATEST)
