"""The driver journal: never downgrades what the host did, keeps the first request, is private."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posterm.ecr.journal import MAX_ATTEMPTS_PER_OP, OUTCOME_RANK, Journal
from posterm.safefs import UnsafePath

OUTCOMES = ["approved", "declined", "cancelled", "unknown", "pending"]


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "j.db") as j:
        yield j


def test_approved_is_never_overwritten_by_a_conflict(journal):
    journal.record_sent("ORD-Y", "pay", "p", 300, "CNY")
    journal.record_outcome("ORD-Y", "pay", "approved", 0, {"trade_no": "T1", "amount_minor": 300}, final=True)
    journal.record_sent("ORD-Y", "pay", "p", 400, "CNY")
    journal.record_outcome("ORD-Y", "pay", "declined", 16, {"reason": "order_conflict", "amount_minor": 400},
                           final=True)
    e = journal.get("ORD-Y")
    assert (e.state, e.outcome, e.amount_minor, e.result["trade_no"]) == ("final", "approved", 300, "T1")
    whats = [(a.what, a.amount_minor) for a in journal.attempts("ORD-Y")]
    assert whats == [("sent", 400), ("ignored", 400)]


def test_resend_of_unfinished_order_keeps_first_amount(journal):
    journal.record_sent("ORD-Z", "pay", "p", 300, "CNY")
    journal.record_sent("ORD-Z", "pay", "p", 350, "EUR")
    e = journal.get("ORD-Z")
    assert (e.state, e.amount_minor, e.currency) == ("sent", 300, "CNY")
    assert journal.attempts("ORD-Z")[0].currency == "EUR"


def test_approved_refund_kept_when_refund_id_reused(journal):
    journal.record_sent("O", "refund", "p", 100, "CNY", ref_id="RF")
    journal.record_outcome("O", "refund", "approved", 0, {}, final=True, ref_id="RF")
    journal.record_sent("O", "refund", "p", 200, "CNY", ref_id="RF")
    journal.record_outcome("O", "refund", "declined", 16, {}, final=True, ref_id="RF")
    e = journal.get("O", "refund", "RF")
    assert (e.outcome, e.amount_minor) == ("approved", 100)


def test_moves_up_only(journal):
    journal.record_sent("O", "pay", "p", 1, "CNY")
    journal.record_outcome("O", "pay", "unknown", 0, {}, final=False)
    journal.record_outcome("O", "pay", "declined", 17, {}, final=True)
    journal.record_outcome("O", "pay", "approved", 0, {}, final=True)  # the host charged it after all
    journal.record_outcome("O", "pay", "pending", 0, {}, final=False)
    assert journal.get("O").outcome == "approved" and journal.get("O").state == "final"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sent", "outcome"]), st.sampled_from(OUTCOMES),
                          st.integers(1, 10**6), st.booleans()), max_size=25))
def test_property_never_downgrades_a_final_row(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("j") / "j.db"
    with Journal(path) as j:
        j.record_sent("P", "pay", "p", 42, "CNY")
        best = None  # the highest final outcome written so far
        for op, outcome, amount, flag in ops:
            if op == "sent":
                j.record_sent("P", "pay", "p", amount, "CNY" if flag else "EUR")
            else:
                final = outcome in ("approved", "declined", "cancelled") and flag
                j.record_outcome("P", "pay", outcome, 0, {"amount_minor": amount}, final=final)
                if final and (best is None or OUTCOME_RANK[outcome] > OUTCOME_RANK[best]):
                    best = outcome
            e = j.get("P")
            assert (e.amount_minor, e.currency) == (42, "CNY")
            if best is not None:
                assert e.state == "final" and OUTCOME_RANK[e.outcome] >= OUTCOME_RANK[best]
                if best == "approved":
                    assert e.outcome == "approved"
        assert len(j.attempts("P")) <= MAX_ATTEMPTS_PER_OP


def test_attempts_are_capped(journal):
    journal.record_sent("C", "pay", "p", 1, "CNY")
    for i in range(MAX_ATTEMPTS_PER_OP + 20):
        journal.record_attempt("C", "pay", "rejected", f"n{i}")
    notes = [a.note for a in journal.attempts("C")]
    assert len(notes) == MAX_ATTEMPTS_PER_OP and notes[-1] == f"n{MAX_ATTEMPTS_PER_OP + 19}"


def test_version_1_file_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
    CREATE TABLE orders (order_id TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('pay', 'refund', 'cancel')),
      ref_id TEXT NOT NULL DEFAULT '', port TEXT NOT NULL, terminal_id TEXT,
      amount_minor INTEGER NOT NULL CHECK (amount_minor >= 0), currency TEXT NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('sent', 'final')), outcome TEXT, reason INTEGER, result_json TEXT,
      created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (order_id, kind, ref_id));
    INSERT INTO orders VALUES ('OLD', 'pay', '', 'p', NULL, 5, 'CNY', 'sent', NULL, NULL, NULL, 1, 1);
    """)
    db.commit()
    db.close()
    with Journal(path) as j:
        assert [e.order_id for e in j.unfinished()] == ["OLD"]
        j.record_attempt("OLD", "pay", "rejected", "x")
        assert j.attempts("OLD")[0].what == "rejected"
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_journal_file_is_private_and_refuses_symlink(tmp_path):
    with Journal(tmp_path / "home" / "j.db"):
        pass
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "j.db").st_mode) == 0o600
    target = tmp_path / "elsewhere.db"
    target.write_bytes(b"")
    os.symlink(target, tmp_path / "link.db")
    with pytest.raises(UnsafePath):
        Journal(tmp_path / "link.db")
