"""Files posterm writes are the owner's alone: 0600 files, 0700 directories, no planted symlinks.

Everything posterm keeps at rest (journals, host.db and its HSM key store, sealed
stores, recordings, port files, backups) goes through these helpers, so the rule holds
whatever the umask:

- :func:`private_dir` makes a directory (and missing parents) 0700 and refuses one that
  is a symlink, is not a directory, or belongs to another user.
- :func:`private_file` opens (or creates) a file 0600 with ``O_NOFOLLOW``: a symlink
  planted where the file should be is refused, never followed.
- :func:`prepare_sqlite` readies a database path before ``sqlite3.connect``: the file and
  its ``-wal``/``-shm``/``-journal`` companions must not be symlinks, and a new database
  file is created 0600 so SQLite (which gives its companions the database file's mode)
  never makes anything world-readable.

Errors are :class:`UnsafePath` (a ``ConfigError``: the CLI prints one line, exit 2).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from posterm.errors import ConfigError

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


class UnsafePath(ConfigError):
    """A path posterm would write to is a symlink, the wrong type, or not the owner's."""


def _refuse_link(path: Path) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symlink; posterm does not follow links it did not make")
    return st


def private_dir(path: str | os.PathLike[str], *, own: bool = False) -> Path:
    """Make ``path`` a directory, creating it and missing parents 0700, and return it.

    Raises :class:`UnsafePath` if it (the leaf) is a symlink or not a directory. With
    ``own=True`` (a directory posterm owns: its home, a terminal's state, the HSM) an
    existing one must also be the caller's and is tightened to 0700; without it an
    existing directory the user chose (``/tmp`` for a port file) is left as it is.
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while True:
        try:
            os.lstat(p)
            break
        except FileNotFoundError:
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
            os.chmod(d, DIR_MODE)
        except FileExistsError:
            pass
        except FileNotFoundError as exc:  # pragma: no cover - raced with a delete
            raise UnsafePath(f"cannot create directory {d}: {exc.strerror}") from exc
        except OSError as exc:
            raise UnsafePath(f"cannot create directory {d}: {exc.strerror}") from exc
    st = _refuse_link(path)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory")
    if own:
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise UnsafePath(f"{path} belongs to another user (uid {st.st_uid})")
        if stat.S_IMODE(st.st_mode) != DIR_MODE:
            os.chmod(path, DIR_MODE)
    return path


def private_file(path: str | os.PathLike[str], flags: int = os.O_RDWR | os.O_CREAT,
                 *, parent: bool = True) -> int:
    """Open ``path`` with ``flags`` as a 0600 file of ours and return the fd.

    The parent directory is made with :func:`private_dir` when ``parent`` is true.
    A symlink at ``path`` is refused (``O_NOFOLLOW``); an existing file is tightened
    to 0600. Raises :class:`UnsafePath` on a link or a non-regular file, ``OSError``
    otherwise (e.g. ``FileExistsError`` with ``O_EXCL``).
    """
    path = Path(path)
    if parent:
        private_dir(path.parent)
    _refuse_link(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symlink; posterm does not follow links it did not make") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], data: bytes, *, parent: bool = True) -> None:
    """Write ``data`` to a 0600 file (truncating), refusing a planted symlink."""
    fd = private_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, parent=parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def prepare_sqlite(path: str | os.PathLike[str], *, parent: bool = True) -> Path:
    """Ready a SQLite database path: no symlinks at it or its companions, the file 0600.

    Call before ``sqlite3.connect(path)``. The parent directory is made private when
    ``parent`` is true. Returns the path.
    """
    path = Path(path)
    if parent:
        private_dir(path.parent)
    for suffix in SQLITE_COMPANIONS:
        _refuse_link(Path(str(path) + suffix))
    os.close(private_file(path, os.O_RDWR | os.O_CREAT, parent=False))
    return path
