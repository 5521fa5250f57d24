from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path

import pytest

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
SECRETS = [b"147258", b"246810", b"Zhang Wei", b"Li Na", KEY, KEY.hex().encode()]
CHUNK = 4096  # small chunks so a small database spans many of them


def make_db(path: Path, rows: int = 300) -> Path:
    """A small generic ledger: accounts with recognisable names, a transfers log, a blob table."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL, "
              "password TEXT)")
    c.execute("CREATE TABLE transfers (id INTEGER PRIMARY KEY, src TEXT, dst TEXT, amount INTEGER, at REAL)")
    c.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    c.execute("CREATE TABLE notes (body TEXT, data BLOB)")  # no primary key
    c.execute("BEGIN")
    names = ["Zhang Wei", "Li Na"]
    c.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?)",
                  [(f"A{i:04d}", f"{names[i % 2]} {i}", 1000, "147258" if i % 7 == 0 else "246810")
                   for i in range(rows)])
    c.execute("INSERT INTO counters VALUES ('moved', 0)")
    c.executemany("INSERT INTO notes VALUES (?, ?)", [(f"note {i} Zhang Wei", os.urandom(8)) for i in range(rows)])
    c.execute("COMMIT")
    c.close()
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    p = tmp_path / "keys" / "backup.key"
    p.parent.mkdir()
    p.write_text(KEY.hex() + "\n")
    return p


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "host.db")


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    """(header bytes, [chunk record bytes]) of a backup file."""
    hlen = struct.unpack(">I", data[10:14])[0]
    head, rest, chunks = data[:14 + hlen], data[14 + hlen:], []
    while rest:
        clen = struct.unpack(">I", rest[12:16])[0]
        chunks.append(rest[:16 + clen])
        rest = rest[16 + clen:]
    return head, chunks


def sums(path: Path) -> tuple[int, int, int]:
    c = sqlite3.connect(path)
    try:
        total = c.execute("SELECT SUM(balance) FROM accounts").fetchone()[0]
        moved = c.execute("SELECT value FROM counters WHERE name='moved'").fetchone()[0]
        logged = c.execute("SELECT COALESCE(SUM(amount), 0) FROM transfers").fetchone()[0]
        return total, moved, logged
    finally:
        c.close()
