"""The store a test runs on: SQLite (a file in tmp_path) or PostgreSQL (a database of its own).

``POSTERM_TEST_PG`` is an administrator's URL of a PostgreSQL server for tests
(``eval "$(.ci/postgres.sh start)"`` sets it). Without it the PostgreSQL variants skip,
except under ``CI=true``, where they fail: CI must not pass by skipping them.

Each PostgreSQL test gets a new database (``CREATE DATABASE``), dropped when it ends
(``DROP DATABASE ... WITH (FORCE)``, which also ends connections a killed process left), so
pytest-xdist workers never share one. Every call is bounded (connect and statement timeouts).
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

STORES = ["sqlite", "postgresql"]


def admin_url() -> str:
    """The test server's URL; skips (fails under CI=true) when there is none."""
    url = os.environ.get("POSTERM_TEST_PG", "").strip()
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("POSTERM_TEST_PG is not set under CI=true: .ci/run starts PostgreSQL "
                        "(.ci/postgres.sh) so the store tests run on it too")
        pytest.skip("no PostgreSQL for tests: eval \"$(.ci/postgres.sh start)\" sets POSTERM_TEST_PG")
    return url


def _with_db(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _admin():
    import psycopg

    return psycopg.connect(admin_url(), autocommit=True, connect_timeout=10,
                           options="-c statement_timeout=60000")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the test server (its URL), dropped afterwards."""
    url = admin_url()
    name = "posterm_t_" + uuid.uuid4().hex[:16]
    with _admin() as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(url, name)
    finally:
        with _admin() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def store_db(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str | Path]:
    """What names the host's database for ``kind``: a file path, or a new database's URL
    (POSTERM_HOME is then tmp_path's, where the host keeps its HSM for a URL)."""
    if kind == "sqlite":
        yield tmp_path / "host.db"
        return
    home = tmp_path / "home"
    monkeypatch.setenv("POSTERM_HOME", str(home))
    with fresh_database() as url:
        yield url


@pytest.fixture(params=STORES)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def host_db(store_kind, tmp_path, monkeypatch):
    """The host database for this test: ``tmp_path / "host.db"`` or a PostgreSQL URL."""
    with store_db(store_kind, tmp_path, monkeypatch) as db:
        yield db
