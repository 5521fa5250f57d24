"""posterm.safefs on its own: the rules every write site relies on."""

from __future__ import annotations

import os

import pytest

from posterm.errors import ConfigError
from posterm.safefs import (UnsafePath, atomic_private, prepare_sqlite, private_dir, private_file, read_private,
                            replace_private)
from tests.files.conftest import mode, umask


def test_private_dir_makes_missing_parents_0700_and_tightens_only_owned_ones(tmp_path):
    with umask(0):
        private_dir(tmp_path / "a" / "b" / "c")
        loose = tmp_path / "loose"
        loose.mkdir(mode=0o777)
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    private_dir(loose)
    assert mode(loose) == 0o777            # the user's directory: left as it is
    private_dir(loose, own=True)
    assert mode(loose) == 0o700            # ours: tightened


def test_private_dir_refuses_an_owned_link_but_accepts_a_users(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath, match="symlink") as exc:
        private_dir(tmp_path / "link", own=True)
    assert isinstance(exc.value, ConfigError)
    assert private_dir(tmp_path / "link") == tmp_path / "link"   # e.g. /tmp on macOS
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafePath, match="not a directory"):
        private_dir(tmp_path / "file")


def test_private_file_read_private_and_links(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"v")
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link", "dangling"):
        with pytest.raises(UnsafePath):
            os.close(private_file(tmp_path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        with pytest.raises(UnsafePath):
            read_private(tmp_path / name)
    assert victim.read_bytes() == b"v" and not (tmp_path / "nowhere").exists()
    with pytest.raises(FileNotFoundError):
        read_private(tmp_path / "missing")
    victim.chmod(0o644)
    assert read_private(victim) == b"v" and mode(victim) == 0o600   # an existing file of ours is tightened


def test_atomic_private_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_private(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["out"]
    with umask(0):
        replace_private(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o600 and sorted(os.listdir(tmp_path)) == ["out"]
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafePath):
        replace_private(tmp_path / "link", b"through the link")
    assert target.read_bytes() == b"new" and (tmp_path / "link").is_symlink()


def test_prepare_sqlite_checks_companions_and_create_false_creates_nothing(tmp_path):
    db = tmp_path / "x.db"
    assert prepare_sqlite(db, create=False) == db and not db.exists()
    with umask(0):
        prepare_sqlite(db)
    assert mode(db) == 0o600
    wal = tmp_path / "x.db-wal"
    wal.write_bytes(b"")
    wal.chmod(0o644)
    prepare_sqlite(db, create=False)
    assert mode(wal) == 0o600                                       # left loose by an older version
    wal.unlink()
    wal.symlink_to(tmp_path / "victim")
    with pytest.raises(UnsafePath, match="x.db-wal"):
        prepare_sqlite(db)


def test_a_shared_sticky_directory_is_never_taken_as_posterms_own(tmp_path):
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UnsafePath, match="shared directory"):
        private_dir(shared, own=True)
    assert mode(shared) == 0o1777
    private_dir(shared)                    # as a user's directory (a port file in /tmp) it is fine
