"""Files posterm writes are the owner's alone: 0600 files, 0700 directories, no planted symlinks.

Everything posterm keeps at rest (journals, host.db and its HSM key store, sealed
stores, recordings, port files, backups) goes through these helpers, so the rule holds
whatever the umask:

- :func:`private_dir` makes a directory (and missing parents) 0700. A directory posterm
  owns (``own=True``: its home, a terminal's state, the HSM) must not be a symlink, must be
  the caller's, and is tightened to 0700; a directory the user named is used as it is.
- :func:`private_file` opens (or creates) a file 0600 with ``O_NOFOLLOW``: a symlink
  planted where the file should be is refused, never followed.
- :func:`read_private` reads one of posterm's own files (a sealed store, a device key)
  without following a link: a linked key file would let someone else choose the keys.
- :func:`replace_private` / :func:`atomic_private` write a whole file under a fresh,
  unpredictable temporary name (``O_EXCL``) and rename it into place (port files,
  sealed stores, pcapng output); a symlink at the destination is refused.
- :func:`prepare_sqlite` readies a database path before ``sqlite3.connect``: the file and
  its ``-wal``/``-shm``/``-journal`` companions must not be symlinks, and a new database
  file is created 0600 so SQLite (which gives its companions the database file's mode)
  never makes anything world-readable.

Errors are :class:`UnsafePath` (a ``ConfigError``: the CLI prints one line, exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from posterm.errors import ConfigError

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


class UnsafePath(ConfigError):
    """A path posterm would write to is a symlink, the wrong type, or not the owner's."""


def _link_error(path: Path) -> UnsafePath:
    return UnsafePath(f"{path} is a symlink; posterm does not follow links it did not make")


def _refuse_link(path: Path) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(path)
    return st


def refuse_symlink(path: str | os.PathLike[str]) -> bool:
    """Raise :class:`UnsafePath` if ``path`` is a symlink; return whether something is there."""
    return _refuse_link(Path(path)) is not None


def private_dir(path: str | os.PathLike[str], *, own: bool = False) -> Path:
    """Make ``path`` a directory, creating it and missing parents 0700, and return it.

    With ``own=True`` (a directory posterm owns: its home, a terminal's state, the HSM)
    the leaf must not be a symlink, must be the caller's, must not be a shared (sticky)
    directory such as ``/tmp``, and is tightened to 0700.
    Without it an existing directory the user chose (``/tmp`` for a port file) is left as
    it is, a symlink to a directory included (``/tmp`` itself is one on macOS): the files
    posterm makes in it are still refused through links. Raises :class:`UnsafePath` if
    the leaf is not a directory (or, owned, is a symlink or another user's).
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
    if own:
        st = _refuse_link(path)
    else:
        try:
            st = os.stat(path)
        except OSError:
            st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory")
    if own:
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise UnsafePath(f"{path} belongs to another user (uid {st.st_uid})")
        if st.st_mode & stat.S_ISVTX:  # /tmp itself as POSTERM_HOME: never chmod a shared directory
            raise UnsafePath(f"{path} is a shared directory (sticky bit): give posterm a directory of its own")
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
            raise _link_error(path) from exc
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


def read_private(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of one of posterm's own files, never read through a symlink.

    Raises ``FileNotFoundError`` when there is none, :class:`UnsafePath` on a link or
    a non-regular file. ``limit`` caps what is read.
    """
    fd = private_file(path, os.O_RDONLY, parent=False)
    with os.fdopen(fd, "rb") as f:
        return f.read() if limit is None else f.read(limit)


@contextlib.contextmanager
def atomic_private(path: str | os.PathLike[str], *, parent: bool = True) -> Iterator[BinaryIO]:
    """Write a whole 0600 file: yields a binary file under a fresh temporary name beside
    ``path``; on a clean exit it is fsynced and renamed over ``path``, else removed.

    A symlink at ``path`` is refused (:class:`UnsafePath`) before anything is written; the
    temporary name is random and created with ``O_EXCL``, so no planted link is followed.
    """
    path = Path(path)
    if parent:
        private_dir(path.parent)
    st = _refuse_link(path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is a directory")
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
        try:
            fd = private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, parent=False)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise UnsafePath(f"cannot create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _refuse_link(path)  # planted while we wrote: rename would replace it, but say so
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_private(path: str | os.PathLike[str], data: bytes, *, parent: bool = True) -> Path:
    """Atomically replace ``path`` with a 0600 file holding ``data`` (see :func:`atomic_private`)."""
    with atomic_private(path, parent=parent) as f:
        f.write(data)
    return Path(path)


def prepare_sqlite(path: str | os.PathLike[str], *, parent: bool = True, create: bool = True) -> Path:
    """Ready a SQLite database path: no symlinks at it or its companions, all of them 0600.

    Call before ``sqlite3.connect(path)``. The parent directory is made private when
    ``parent`` is true. With ``create=False`` a missing database is not created (a
    backup reads a live one; a restore replaces one). Existing companions left loose by
    an older version are tightened. Returns the path.
    """
    path = Path(path)
    if parent:
        private_dir(path.parent)
    for suffix in SQLITE_COMPANIONS:
        companion = Path(str(path) + suffix)
        st = _refuse_link(companion)
        if st is not None and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.chmod(companion, FILE_MODE)
    if create or _refuse_link(path) is not None:
        os.close(private_file(path, os.O_RDWR | os.O_CREAT if create else os.O_RDONLY, parent=False))
    return path
