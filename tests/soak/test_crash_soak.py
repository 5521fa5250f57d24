"""kill -9 of the driver, the emulated terminal and the host at random points during pays,
refunds and cancels leaves 0 doubles, 0 losses and 0 unfinished operations after `recover`.

Seeded (POSTERM_SOAK_SEED) and bounded by a number of kills (POSTERM_SOAK_KILLS); each kill
waits for the driver to finish one more operation first, so a loaded machine makes the run
slower, never emptier. For longer runs and the figures as JSON lines:
``python -m posterm.bench crash --seconds 600``.
"""

from __future__ import annotations

import json
import os

import pytest

from posterm.bench.crash import soak
from tests import pgstore

SEED = int(os.environ.get("POSTERM_SOAK_SEED", "2026"))
KILLS = int(os.environ.get("POSTERM_SOAK_KILLS", "15"))   # 4 soaks x 15 in the suite; more by the env or the bench

pytestmark = pytest.mark.slow

# each soak on both stores: the host on a SQLite file, and on a PostgreSQL database of its own
store_kind = pgstore.store_kind


@pytest.fixture
def db(store_kind, tmp_path):
    if store_kind == "sqlite":
        yield None  # the soak's default: a file in its home
        return
    with pgstore.fresh_database() as url:
        yield url


def _assert_clean(fig, tmp_path) -> None:
    where = f"(seed {SEED}, state and logs in {tmp_path})"
    assert fig.doubles == [], f"money moved twice {where}: {json.dumps(fig.doubles[:5])}"
    assert fig.losses == [], f"host moved money the journal does not hold {where}: {json.dumps(fig.losses[:5])}"
    assert fig.mismatches == [], f"journal and host disagree {where}: {json.dumps(fig.mismatches[:5])}"
    assert fig.unfinished == [], f"unfinished after recover {where}: {json.dumps(fig.unfinished[:5])}"
    assert fig.books == [], fig.books
    assert fig.host_net_minor == fig.journal_net_minor


def test_pays_survive_kill_minus_nine_anywhere(tmp_path, db):
    fig = soak(SEED, tmp_path, kills=KILLS, mix="pay", db=db)
    assert all(n > 0 for n in fig.kills.values()), fig.kills  # every process was killed
    assert fig.operations.get("pay:approved", 0) > 0, fig.operations
    _assert_clean(fig, tmp_path)


def test_pays_refunds_and_cancels_survive_kill_minus_nine_anywhere(tmp_path, db):
    fig = soak(SEED + 1, tmp_path, kills=KILLS, mix="full", db=db)
    assert all(n > 0 for n in fig.kills.values()), fig.kills
    assert fig.operations.get("refund", 0) > 0 and fig.operations.get("cancel", 0) > 0, fig.operations
    _assert_clean(fig, tmp_path)
