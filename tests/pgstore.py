"""The store a test runs on: SQLite (a file in tmp_path) or PostgreSQL (a database of its own).

``POSTERM_TEST_PG`` is an administrator's URL of a PostgreSQL server for tests
(``eval "$(.ci/postgres.sh start)"`` sets it). Without it the PostgreSQL variants skip,
except under ``CI=true``, where they fail: CI must not pass by skipping them.

Each PostgreSQL test gets a new database, dropped when it ends (``DROP DATABASE ... WITH
(FORCE)``, which also ends connections a killed process left), so pytest-xdist workers never
share one. It is a copy of a template (``CREATE DATABASE ... TEMPLATE``, a file copy): one with
the schema migrated (:func:`host_db`), or one with the demo data too (:func:`demo_db`, what the
``host`` fixture opens), each built once per schema and demo version (the name carries a hash of
both) under an advisory lock, so a test does not pay for the migrations or the demo's seeding
(its 4096 terminals, its 16 accounts' scrypt verifiers). Every call is bounded (connect and
statement timeouts).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
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


TEMPLATE_LOCK = 0x706F7375   # pg_advisory_lock key: one process builds a template, the others wait
DEMO_NOW = 1_795_000_000.0   # the demo template's clock: tests.host.conftest.Clock's start
_templates: dict[str, str] = {}


def _template_name(kind: str) -> str:
    from posterm.host import demo
    from posterm.host.store import schema

    h = hashlib.sha256(schema.script("postgresql").encode())
    if kind == "demo":
        h.update(Path(demo.__file__).read_bytes())
        h.update(repr(DEMO_NOW).encode())
    return f"posterm_tpl_{kind}_{h.hexdigest()[:12]}"


def _build(kind: str, url: str) -> None:
    """Fill the new database at ``url``: migrated, and seeded with the demo for ``demo``."""
    from posterm.host import Host
    from posterm.host.store.postgres import Store

    if kind == "schema":
        Store(url, pool=1).close()
        return
    with tempfile.TemporaryDirectory() as home:
        old = os.environ.get("POSTERM_HOME")
        os.environ["POSTERM_HOME"] = home   # the builder's throwaway HSM: the demo data holds no key
        try:
            Host.open(url, demo=True, clock=lambda: DEMO_NOW).close()
        finally:
            if old is None:
                os.environ.pop("POSTERM_HOME", None)
            else:
                os.environ["POSTERM_HOME"] = old


def template(kind: str) -> str:
    """The name of the ``kind`` ("schema" or "demo") template database, built if missing."""
    if kind in _templates:
        return _templates[kind]
    name = _template_name(kind)
    with _admin() as c:
        c.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK,))
        try:
            if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                building = name + "_b"   # renamed once complete: a half-built one is never used
                c.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                c.execute(f'CREATE DATABASE "{building}"')
                _build(kind, _with_db(admin_url(), building))
                c.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        finally:
            c.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK,))
    _templates[kind] = name
    return name


def _create_from(c, name: str, tpl: str) -> None:
    import psycopg

    for attempt in range(20):   # "source database is being accessed": another copy starting from it
        try:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 19:
                raise
            time.sleep(0.05)   # a retry interval, not synchronisation: nothing here to wait on


@contextmanager
def fresh_database(kind: str | None = "schema") -> Iterator[str]:
    """A new database on the test server (its URL), dropped afterwards: a copy of the
    ``kind`` template ("schema": migrated, empty; "demo": with the demo data), or empty (None)."""
    url = admin_url()
    tpl = template(kind) if kind else None
    name = "posterm_t_" + uuid.uuid4().hex[:16]
    with _admin() as c:
        if tpl:
            _create_from(c, name, tpl)
        else:
            c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(url, name)
    finally:
        with _admin() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def store_db(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             template_kind: str | None = "schema") -> Iterator[str | Path]:
    """What names the host's database for ``kind``: a file path, or a new database's URL, a
    copy of the ``template_kind`` template (POSTERM_HOME is then tmp_path's, where the host
    keeps its HSM for a URL)."""
    if kind == "sqlite":
        yield tmp_path / "host.db"
        return
    home = tmp_path / "home"
    monkeypatch.setenv("POSTERM_HOME", str(home))
    with fresh_database(template_kind) as url:
        yield url


@pytest.fixture(params=STORES)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def host_db(store_kind, tmp_path, monkeypatch):
    """The host database for this test: ``tmp_path / "host.db"`` or a PostgreSQL URL."""
    with store_db(store_kind, tmp_path, monkeypatch) as db:
        yield db


@pytest.fixture
def demo_db(store_kind, tmp_path, monkeypatch):
    """As :func:`host_db`, the PostgreSQL database with the demo data already in (seeded at
    :data:`DEMO_NOW`); the SQLite file is new (the host seeds it as it opens)."""
    with store_db(store_kind, tmp_path, monkeypatch, "demo") as db:
        yield db
