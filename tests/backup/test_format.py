"""Every way of damaging a backup file is refused, and nothing of the plaintext is in it."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from posterm.errors import ConfigError, CryptoError
from posterm.host.backup import (BackupError, BackupKeyMismatch, BackupTampered, BackupTruncated, backup, key_id, ledger_hash,
                                 load_key, restore, verify)
from tests.backup.conftest import CHUNK, KEY, OTHER_KEY, SECRETS, make_db, split


@pytest.fixture
def pair(tmp_path: Path, db: Path) -> tuple[Path, Path]:
    """The same snapshot written to two destinations: identical headers but for the file id."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    results = backup(db, [a, b], KEY, chunk_size=CHUNK, host_id="H1")
    assert [r.ok for r in results] == [True, True]
    return results[0].path, results[1].path


def refused(tmp_path: Path, data: bytes, exc: type = BackupTampered) -> BaseException:
    p = tmp_path / "bad.ptbk"
    p.write_bytes(data)
    with pytest.raises(exc) as info:
        verify(p, KEY, tmp_dir=tmp_path)
    assert "\n" not in str(info.value)
    return info.value


def test_round_trip_and_header(pair, db, tmp_path):
    rep = verify(pair[0], KEY)
    assert rep.ok and rep.integrity == "ok"
    c = sqlite3.connect(db)
    assert rep.ledger_hash == rep.header.ledger_hash == ledger_hash(c)
    c.close()
    assert rep.header.chunk_count > 10
    assert rep.header.key_id == key_id(KEY) and rep.header.host_id == "H1"
    assert verify(pair[1], KEY).ok


def test_one_byte_changed_anywhere_is_refused(pair, tmp_path):
    data = pair[0].read_bytes()
    head, chunks = split(data)
    positions = list(range(len(head)))  # every header byte
    off = len(head)
    for ch in chunks:  # each chunk: nonce, length, ciphertext start/middle/end, tag
        n = len(ch)
        positions += [off + i for i in (0, 11, 12, 13, 14, 15, 16, n // 2, n - 17, n - 16, n - 8, n - 1)]
        off += n
    rnd = random.Random(7)
    positions += rnd.sample(range(len(data)), 100)
    for pos in sorted(set(positions)):
        bad = bytearray(data)
        bad[pos] ^= 1 << rnd.randrange(8)
        refused(tmp_path, bytes(bad), CryptoError)  # tampered, truncated or key-id mismatch: all refused


def test_header_swapped_between_files_is_refused(pair, tmp_path, db):
    ha, ca = split(pair[0].read_bytes())
    hb, cb = split(pair[1].read_bytes())
    assert ha != hb and len(ca) == len(cb)
    refused(tmp_path, ha + b"".join(cb))
    refused(tmp_path, hb + b"".join(ca))
    # and with a backup of another database entirely
    other = make_db(tmp_path / "other.db", rows=310)
    (tmp_path / "c").mkdir()
    hc, cc = split(backup(other, [tmp_path / "c"], KEY, chunk_size=CHUNK)[0].path.read_bytes())
    refused(tmp_path, hc + b"".join(ca))


def test_chunk_swapped_between_files_is_refused(pair, tmp_path):
    ha, ca = split(pair[0].read_bytes())
    _, cb = split(pair[1].read_bytes())
    for i in (0, len(ca) // 2, len(ca) - 1):
        mixed = list(ca)
        mixed[i] = cb[i]
        refused(tmp_path, ha + b"".join(mixed))


def test_chunks_dropped_reordered_or_duplicated_are_refused(pair, tmp_path):
    head, ch = split(pair[0].read_bytes())
    n = len(ch)
    refused(tmp_path, head + b"".join(ch[:3] + ch[4:]))                  # a middle chunk dropped
    refused(tmp_path, head + b"".join(ch[1:]))                           # the first dropped
    refused(tmp_path, head + b"".join(ch[:-1]), BackupTruncated)         # the last dropped
    refused(tmp_path, head + b"".join(ch[:2] + [ch[3], ch[2]] + ch[4:]))  # two swapped
    refused(tmp_path, head + b"".join([ch[-1]] + ch[1:-1] + [ch[0]]))     # first and final swapped
    refused(tmp_path, head + b"".join(ch + [ch[-1]]))                    # final chunk repeated
    refused(tmp_path, head + b"".join(ch) + b"\0")                       # trailing byte
    assert n > 5


def test_truncated_anywhere_is_refused(pair, tmp_path):
    data = pair[0].read_bytes()
    head, ch = split(data)
    cuts = {0, 1, 7, 8, 13, 14, len(head) - 1, len(head), len(data) - 1, len(data) - 16}
    cuts |= set(range(len(head), len(data), 997))
    for cut in sorted(cuts):
        refused(tmp_path, data[:cut], BackupTampered)


def test_wrong_key_is_refused(pair, tmp_path):
    with pytest.raises(BackupKeyMismatch, match="wrong key"):
        verify(pair[0], OTHER_KEY)
    # a header forged to carry the other key's id still fails: the header is authenticated
    data = pair[0].read_bytes()
    forged = data.replace(key_id(KEY).encode(), key_id(OTHER_KEY).encode())
    p = tmp_path / "forged.ptbk"
    p.write_bytes(forged)
    with pytest.raises(BackupTampered, match="failed authentication"):
        verify(p, OTHER_KEY)


def test_not_a_backup(tmp_path, db):
    with pytest.raises(BackupTampered, match="not a posterm backup"):
        verify(db, KEY)
    e = tmp_path / "empty.ptbk"
    e.write_bytes(b"")
    with pytest.raises(BackupTruncated):
        verify(e, KEY)


def test_no_plaintext_in_backup_files(pair, tmp_path, db):
    raw = sqlite3.connect(db).execute("SELECT data FROM notes LIMIT 1").fetchone()[0]
    for f in pair:
        data = f.read_bytes()
        for secret in SECRETS + [raw, b"SQLite format 3", b"accounts", b"transfers"]:
            assert secret not in data, secret
    # the plaintext snapshot is gone from beside the database, and nothing was left in the destinations
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith(".")) == []
    assert [p.name for p in pair[0].parent.iterdir()] == [pair[0].name]


def test_restore_refusal_changes_nothing(pair, tmp_path):
    target = make_db(tmp_path / "live.db", rows=5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    data = pair[0].read_bytes()
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x40
    cases = [(bytes(bad), KEY, BackupTampered), (data[:-100], KEY, BackupTruncated), (data, OTHER_KEY, BackupKeyMismatch)]
    for i, (blob, key, exc) in enumerate(cases):
        p = tmp_path / "in" / f"{i}.ptbk"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(blob)
        with pytest.raises(exc):
            restore(p, target, key, host_id="H1")
        after = {q.name: q.read_bytes() for q in tmp_path.iterdir() if q.is_file()}
        assert after == before


def test_restore_swaps_in_and_keeps_previous(pair, tmp_path, db):
    target = make_db(tmp_path / "live.db", rows=5)
    rep = restore(pair[1], target, KEY, host_id="H1")
    assert rep.previous is not None and rep.previous.exists()
    c = sqlite3.connect(target)
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert ledger_hash(c) == rep.header.ledger_hash == ledger_hash(sqlite3.connect(db))
    assert c.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 300
    assert sqlite3.connect(rep.previous).execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 5


def test_ledger_hash_is_content_only(db, tmp_path):
    c = sqlite3.connect(db, isolation_level=None)
    h0 = ledger_hash(c)
    c.row_factory = sqlite3.Row  # the host's connections use Row; the hash must not see it
    assert ledger_hash(c) == h0
    c.execute("DELETE FROM notes WHERE rowid = 1")
    h1 = ledger_hash(c)
    assert h1 != h0
    c.execute("VACUUM")  # may renumber rowids of tables without an INTEGER PRIMARY KEY
    assert ledger_hash(c) == h1
    c.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 'A0001'")
    assert ledger_hash(c) != h1


def test_key_formats(tmp_path, monkeypatch):
    import base64

    for i, blob in enumerate([KEY, KEY.hex().encode(), KEY.hex().upper().encode() + b"\n",
                              base64.b64encode(KEY), base64.urlsafe_b64encode(KEY) + b"\n"]):
        p = tmp_path / f"k{i}"
        p.write_bytes(blob)
        assert load_key(p).raw == KEY
    monkeypatch.setenv("POSTERM_BACKUP_KEY", KEY.hex())
    assert load_key(None).raw == KEY
    assert KEY.hex() not in repr(load_key(None)) and str(KEY) not in repr(load_key(None))
    bad = tmp_path / "bad"
    bad.write_text("147258 is not a key")
    with pytest.raises(ConfigError) as info:
        load_key(bad)
    assert "147258" not in str(info.value)
    with pytest.raises(ConfigError):
        load_key(tmp_path / "missing")
    monkeypatch.delenv("POSTERM_BACKUP_KEY")
    with pytest.raises(ConfigError, match="POSTERM_BACKUP_KEY"):
        load_key(None)


def test_restore_over_a_database_in_use_is_refused(pair, tmp_path):
    target = make_db(tmp_path / "live.db", rows=5)
    live = sqlite3.connect(target, isolation_level=None)  # a running host
    live.execute("SELECT COUNT(*) FROM accounts").fetchone()
    before = target.read_bytes()
    try:
        with pytest.raises(BackupError, match="stop the host first"):
            restore(pair[0], target, KEY, host_id="H1")
        assert target.read_bytes() == before
        assert not [p for p in tmp_path.iterdir() if "pre-restore" in p.name or p.name.startswith(".")]
    finally:
        live.close()
    restore(pair[0], target, KEY, host_id="H1")  # once it is closed
    assert sqlite3.connect(target).execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 300


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400), st.binary(max_size=40))
def test_fuzz_only_typed_errors(tmp_path_factory, body, pos, junk):
    """Garbage, with or without a valid prefix: refused with our typed errors, never anything else."""
    import struct as _s

    tmp = tmp_path_factory.mktemp("fz")
    for data in (body, b"PTBACKUP" + body, b"PTBACKUP" + _s.pack(">HI", 1, len(body)) + body + junk):
        p = tmp / "f.ptbk"
        p.write_bytes(data[:pos] + junk + data[pos:])
        with pytest.raises(BackupError):
            verify(p, KEY, tmp_dir=tmp)


def test_bench_smoke(capsys):
    import json

    from posterm.bench.backup import main

    assert main(["--trades", "200", "--no-memory"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["metric"] for r in rows} >= {"backup", "restore", "db_size"}


def test_ledger_hash_matches_its_documented_definition():
    import hashlib

    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE b (k TEXT PRIMARY KEY, v REAL, x BLOB)")
    c.execute("CREATE TABLE a (n INTEGER, s TEXT)")  # no primary key: ordered by every column
    c.executemany("INSERT INTO b VALUES (?, ?, ?)", [("z", 0.1, b"\x00\n"), ("y", None, None)])
    c.executemany("INSERT INTO a VALUES (?, ?)", [(2, "line\nbreak"), (1, "Zhang Wei"), (-(2**63), "")])
    want = hashlib.sha256(b"posterm-ledger-hash-v1\n")
    want.update(repr(("table", "a", ("n", "s"))).encode() + b"\n")
    for row in [(-(2**63), ""), (1, "Zhang Wei"), (2, "line\nbreak")]:
        want.update(repr(row).encode() + b"\n")
    want.update(repr(("table", "b", ("k", "v", "x"))).encode() + b"\n")
    for row in [("y", None, None), ("z", 0.1, b"\x00\n")]:
        want.update(repr(row).encode() + b"\n")
    assert ledger_hash(c) == want.hexdigest()


def test_every_single_byte_of_a_small_backup_is_protected(tmp_path):
    """Exhaustive: flip each byte of a whole (two-chunk) backup file; every one is refused."""
    import io

    from posterm.host.backup import _decrypt_chunks, _open_backup, load_key

    small = tmp_path / "small.db"
    c = sqlite3.connect(small)
    c.execute("CREATE TABLE t (name TEXT)")
    c.execute("INSERT INTO t VALUES ('Zhang Wei 147258')")
    c.commit()
    c.close()
    (tmp_path / "o").mkdir()
    data = backup(small, [tmp_path / "o"], KEY, chunk_size=4096)[0].path.read_bytes()
    assert len(split(data)[1]) >= 2
    key = load_key(KEY)

    def check(blob: bytes) -> None:
        f = io.BytesIO(blob)
        hdr, hh = _open_backup(f, "x", key)
        for _ in _decrypt_chunks(f, hdr, hh, key, "x"):
            pass

    check(data)  # intact: accepted
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(CryptoError):
            check(bytes(bad))


def test_verify_leaves_no_plaintext_behind(pair, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert verify(pair[0], KEY, tmp_dir=scratch).ok
    bad = tmp_path / "bad.ptbk"
    bad.write_bytes(pair[0].read_bytes()[:-1])
    with pytest.raises(BackupTruncated):
        verify(bad, KEY, tmp_dir=scratch)
    assert list(scratch.iterdir()) == []
