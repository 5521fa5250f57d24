"""Encrypted, streamed, verifiable backups of a SQLite ledger (schema-agnostic), or of a
PostgreSQL host database copied into a SQLite file of the host's schema first.

    results = backup("host.db", ["/mnt/a", "/mnt/b"], key)      # one BackupResult per destination
    report = verify(results[0].path, key)                        # decrypt to a temp file, check, discard
    restore(results[0].path, "host.db", key)                     # check everything, then swap atomically

Nothing here knows the host's tables: the ledger hash covers every user table.

File layout (all integers big-endian)::

    magic    8  b"PTBACKUP"
    version  2  1
    hlen     4  length of the header JSON (capped at 64 KiB)
    header   hlen  canonical JSON: format, version, cipher, created_at, host_id, key_id,
                 ledger_hash, chunk_count, chunk_size, plain_size, file_id
    chunk*   nonce (12) | clen (4, <= chunk_size + 16) | AES-256-GCM ciphertext + tag (clen)

Each chunk is sealed with a fresh random 96-bit nonce and associated data
``b"posterm-backup-chunk\\0" | SHA-256(magic..header) | index (8) | final (1)``. So a
changed header byte breaks every chunk, a chunk moved to another index or another file
(every file has a random ``file_id``) fails, a dropped tail is caught by the final flag
and the chunk count, and bytes after the final chunk are refused.

The key (32 bytes: a key file holding raw bytes, hex or base64, or ``POSTERM_BACKUP_KEY``)
is never written to a backup; the header carries only ``key_id``, a one-way fingerprint.
Random nonces are safe up to 2**32 chunks per key (4 PiB at 1 MiB chunks): rotate before.

The plaintext snapshot exists only as a 0600 temp file beside the live database (the
same place the plaintext ledger already lives) and is deleted as soon as it is encrypted.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import struct
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from posterm.errors import ConfigError, CryptoError, PosError
from posterm.safefs import prepare_sqlite, private_file, refuse_symlink

log = logging.getLogger("posterm.backup")

MAGIC = b"PTBACKUP"
VERSION = 1
CHUNK_SIZE = 1 << 20
MAX_HEADER = 64 * 1024
MAX_CHUNK = 64 << 20
NONCE_LEN = 12
TAG_LEN = 16
KEY_ENV = "POSTERM_BACKUP_KEY"
SUFFIX = ".ptbk"
_PREFIX = struct.Struct(">8sHI")
_CHUNK_HEAD = struct.Struct(">12sI")
_AD_LABEL = b"posterm-backup-chunk\0"


class BackupError(PosError):
    """A backup could not be made, read or restored."""


class BackupTampered(BackupError, CryptoError):
    """The backup file is not what was written: damaged, tampered with, or not a backup at all."""


class BackupTruncated(BackupTampered):
    """The backup file ends early: chunks are missing."""


class BackupKeyMismatch(BackupError, CryptoError):
    """The backup was encrypted under a different key."""


class BackupOtherHost(BackupError, ConfigError):
    """The backup was taken on another host: restoring it here needs ``allow_other_host``."""


class BackupTargetNotEmpty(BackupError, ConfigError):
    """The PostgreSQL database to restore into holds a host's data (``force`` replaces it),
    or a host is connected to it (stop it first)."""


def this_host_id() -> str:
    """The host id a backup records by default, and a restore compares with: the host name."""
    return socket.gethostname() or "host"


# ---------------------------------------------------------------- keys

@dataclasses.dataclass(frozen=True, slots=True)
class BackupKey:
    """A 32-byte AES-256 key; its repr shows only the key id."""

    raw: bytes = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, (bytes, bytearray)) or len(self.raw) != 32:
            raise ConfigError("a backup key must be exactly 32 bytes")

    @property
    def key_id(self) -> str:
        return key_id(self.raw)


def key_id(raw: bytes) -> str:
    """A 16-hex-digit fingerprint of a key: identifies it, reveals nothing usable about it."""
    return hashlib.sha256(b"posterm-backup-key-id\0" + bytes(raw)).hexdigest()[:16]


def _decode_key(text: bytes, where: str) -> bytes:
    if len(text) == 32:
        return bytes(text)
    s = text.strip()
    if len(s) == 64:
        try:
            return bytes.fromhex(s.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decoder(s, validate=True) if decoder is base64.b64decode else decoder(s)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    # never echo the content: it may be a key in the wrong format
    raise ConfigError(f"{where}: expected 32 raw bytes, 64 hex digits or base64 of 32 bytes")


def load_key(key: BackupKey | bytes | str | os.PathLike | None = None) -> BackupKey:
    """Resolve a key: a BackupKey, 32 raw bytes, a key-file path, or None for $POSTERM_BACKUP_KEY.

    Raises ConfigError when the file is missing/unreadable or holds no 32-byte key.
    """
    if isinstance(key, BackupKey):
        return key
    if isinstance(key, (bytes, bytearray)):
        return BackupKey(bytes(key))
    if key is None:
        env = os.environ.get(KEY_ENV)
        if not env:
            raise ConfigError(f"no backup key: give --key-file or set {KEY_ENV}")
        return BackupKey(_decode_key(env.encode(), f"${KEY_ENV}"))
    path = Path(key)
    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except OSError as exc:
        raise ConfigError(f"key file {path}: {exc.strerror or exc}") from None
    return BackupKey(_decode_key(data, f"key file {path}"))


def generate_key_file(path: str | os.PathLike) -> BackupKey:
    """Write a new random key (hex) to ``path`` with mode 0600; refuses to overwrite.

    Raises ``FileExistsError`` for an existing file, :class:`~posterm.safefs.UnsafePath`
    for a symlink there (never followed), ``OSError`` otherwise.
    """
    raw = secrets.token_bytes(32)
    fd = private_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, parent=False)
    with os.fdopen(fd, "w") as f:
        f.write(raw.hex() + "\n")
    return BackupKey(raw)


# ---------------------------------------------------------------- ledger hash

def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ledger_hash(conn: sqlite3.Connection) -> str:
    """SHA-256 (hex) over the content of every user table, independent of the schema.

    Tables in name order; for each, its name and column names, then every row as the
    Python ``repr`` of its value tuple (canonical: exact ints, shortest round-trip floats,
    escaped text and bytes; no newline can occur inside one) followed by a newline.
    Rows are ordered by the declared primary key, or by all columns when there is none,
    so the hash depends on content only, not on page layout or rowids.
    """
    h = hashlib.sha256(b"posterm-ledger-hash-v1\n")
    cur = conn.cursor()
    cur.row_factory = None  # the caller's row_factory (e.g. sqlite3.Row) has no canonical repr
    tables = [r[0] for r in cur.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for table in sorted(tables):
        q = _quote_ident(table)
        info = cur.execute(f"PRAGMA table_info({q})").fetchall()  # cid, name, type, notnull, dflt, pk
        cols = [r[1] for r in info]
        pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        order = ", ".join(_quote_ident(c) for c in pk) if pk else ", ".join(str(i + 1) for i in range(len(cols)))
        h.update(repr(("table", table, tuple(cols))).encode() + b"\n")
        rows = conn.cursor()
        rows.row_factory = None
        rows.execute(f"SELECT {', '.join(_quote_ident(c) for c in cols)} FROM {q} ORDER BY {order}")
        while True:
            batch = rows.fetchmany(4096)
            if not batch:
                break
            h.update(("\n".join(map(repr, batch)) + "\n").encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# ---------------------------------------------------------------- format

@dataclasses.dataclass(frozen=True, slots=True)
class BackupHeader:
    """What a backup says about itself (authenticated by every chunk)."""

    created_at: str
    host_id: str
    key_id: str
    ledger_hash: str
    chunk_count: int
    chunk_size: int
    plain_size: int
    file_id: str
    version: int = VERSION
    cipher: str = "AES-256-GCM"
    format: str = "posterm-backup"

    def encode(self) -> bytes:
        body = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode()
        return _PREFIX.pack(MAGIC, self.version, len(body)) + body

    @staticmethod
    def decode(body: bytes, where: str) -> "BackupHeader":
        try:
            d = json.loads(body.decode("utf-8"))
            hdr = BackupHeader(**d)
        except (ValueError, TypeError, UnicodeDecodeError):
            raise BackupTampered(f"{where}: the header is damaged or was tampered with") from None
        ok = (hdr.format == "posterm-backup" and hdr.version == VERSION and hdr.cipher == "AES-256-GCM"
              and all(isinstance(v, int) and not isinstance(v, bool)
                      for v in (hdr.chunk_count, hdr.chunk_size, hdr.plain_size))
              and 1 <= hdr.chunk_size <= MAX_CHUNK and 0 <= hdr.plain_size
              and hdr.chunk_count == max(1, -(-hdr.plain_size // hdr.chunk_size))
              and all(isinstance(v, str) for v in (hdr.key_id, hdr.ledger_hash, hdr.file_id, hdr.host_id)))
        if not ok:
            raise BackupTampered(f"{where}: the header is damaged or was tampered with")
        return hdr


def _ad(header_hash: bytes, index: int, final: bool) -> bytes:
    return _AD_LABEL + header_hash + struct.pack(">QB", index, 1 if final else 0)


def _open_backup(f, where: str, key: BackupKey) -> tuple[BackupHeader, bytes]:
    """Parse the header from ``f``; return it and its hash. Checks the key id."""
    prefix = f.read(_PREFIX.size)
    if not prefix:
        raise BackupTruncated(f"{where}: the file is empty")
    if prefix[:len(MAGIC)] != MAGIC[:len(prefix)]:
        raise BackupTampered(f"{where}: not a posterm backup (bad magic)")
    if len(prefix) < _PREFIX.size:
        raise BackupTruncated(f"{where}: truncated (ends inside the header)")
    _, version, hlen = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise BackupTampered(f"{where}: unsupported backup format version {version} (damaged, or from a newer posterm)")
    if hlen > MAX_HEADER:
        raise BackupTampered(f"{where}: the header is damaged or was tampered with (length {hlen})")
    body = f.read(hlen)
    if len(body) < hlen:
        raise BackupTruncated(f"{where}: truncated (ends inside the header)")
    hdr = BackupHeader.decode(body, where)
    if hdr.key_id != key.key_id:
        raise BackupKeyMismatch(f"{where}: wrong key: the backup was made with key id {hdr.key_id}, "
                                f"this key has id {key.key_id}")
    return hdr, hashlib.sha256(prefix + body).digest()


def _decrypt_chunks(f, hdr: BackupHeader, header_hash: bytes, key: BackupKey, where: str) -> Iterator[bytes]:
    """Yield each authenticated plaintext chunk; raise on any damage, reorder, drop or trailing data."""
    aead = AESGCM(key.raw)
    total = 0
    for i in range(hdr.chunk_count):
        head = f.read(_CHUNK_HEAD.size)
        if len(head) < _CHUNK_HEAD.size:
            raise BackupTruncated(f"{where}: truncated: ends at chunk {i + 1} of {hdr.chunk_count}")
        nonce, clen = _CHUNK_HEAD.unpack(head)
        if not TAG_LEN <= clen <= hdr.chunk_size + TAG_LEN:
            raise BackupTampered(f"{where}: chunk {i + 1} of {hdr.chunk_count} is damaged (length {clen})")
        ct = f.read(clen)
        if len(ct) < clen:
            raise BackupTruncated(f"{where}: truncated: ends inside chunk {i + 1} of {hdr.chunk_count}")
        final = i == hdr.chunk_count - 1
        try:
            pt = aead.decrypt(nonce, ct, _ad(header_hash, i, final))
        except InvalidTag:
            raise BackupTampered(f"{where}: chunk {i + 1} of {hdr.chunk_count} failed authentication: "
                                 f"the file is damaged, was tampered with, or chunks were moved") from None
        if not final and len(pt) != hdr.chunk_size:
            raise BackupTampered(f"{where}: chunk {i + 1} of {hdr.chunk_count} has the wrong size")
        total += len(pt)
        yield pt
    if f.read(1):
        raise BackupTampered(f"{where}: unexpected data after the final chunk")
    if total != hdr.plain_size:
        raise BackupTampered(f"{where}: decrypted size {total} differs from the recorded {hdr.plain_size}")


def read_header(file: str | os.PathLike, key: BackupKey | bytes | str | os.PathLike | None = None) -> BackupHeader:
    """The header of a backup file (unauthenticated until verify(): for display only)."""
    k = load_key(key)
    with open(file, "rb") as f:
        return _open_backup(f, str(file), k)[0]


# ---------------------------------------------------------------- backup

@dataclasses.dataclass(frozen=True, slots=True)
class BackupResult:
    """One destination's outcome: ``path`` of the written file, or ``error`` (one line)."""

    dest: Path
    path: Path | None = None
    error: str | None = None
    size: int = 0
    ledger_hash: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:64] or "host"


def snapshot(db_path: str | os.PathLike, into: str | os.PathLike) -> tuple[str, int]:
    """Copy a live database to ``into`` with SQLite's online backup API; return (ledger hash, size).

    One backup step (pages=-1) runs inside a single read transaction: in WAL mode writers
    keep committing and the copy is the database as of one instant. The copy is switched
    to a rollback journal so it is one self-contained file, then checked.
    Raises BackupError when the source cannot be read or the copy fails its integrity check.
    """
    db_path = Path(db_path)
    prepare_sqlite(db_path, parent=False, create=False)  # a planted link at it or its -wal is refused
    if not db_path.is_file():
        raise BackupError(f"no database at {db_path}")
    prepare_sqlite(into, parent=False)  # the copy (and its -journal) 0600, through no link
    try:
        # a plain connection that only reads: a read-only one cannot open a WAL database without its -shm
        src = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
        dst = sqlite3.connect(into, isolation_level=None)
        try:
            src.execute("PRAGMA busy_timeout=30000")
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the database {db_path} fails its integrity check: {check}")
            digest = ledger_hash(dst)
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot snapshot {db_path}: {exc}") from None
    return digest, os.path.getsize(into)


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(("postgresql://", "postgres://"))


def _private_tmp_dir() -> Path:
    """Where a PostgreSQL host's plaintext snapshot lives while it is encrypted or loaded:
    ``$POSTERM_HOME`` (0700, the owner's alone; the host's HSM lives there too)."""
    from posterm.home import posterm_home

    return posterm_home()


def pg_snapshot(url: str, into: str | os.PathLike) -> tuple[str, int]:
    """Copy the PostgreSQL host database at ``url`` into the SQLite file ``into`` in one
    consistent snapshot (:func:`posterm.host.store.dump.dump`); return (ledger hash, size).

    Raises BackupError when the database cannot be read or the copy fails its check.
    """
    from posterm.host.store.dump import DumpError, dump

    try:
        dump(url, into)
        c = sqlite3.connect(into, isolation_level=None)
        try:
            check = c.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the snapshot fails its integrity check: {check}")
            digest = ledger_hash(c)
        finally:
            c.close()
    except DumpError as exc:
        raise BackupError(str(exc)) from None
    except sqlite3.Error as exc:
        raise BackupError(f"cannot check the snapshot: {exc}") from None
    return digest, os.path.getsize(into)


def _write_one(plain: Path, dest: Path, name: str, hdr_fields: dict, key: BackupKey, chunk_size: int) -> Path:
    hdr = BackupHeader(file_id=secrets.token_hex(16), **hdr_fields)
    encoded = hdr.encode()
    header_hash = hashlib.sha256(encoded).digest()
    aead = AESGCM(key.raw)
    if not dest.is_dir():
        raise BackupError(f"destination {dest} is not a directory (missing?)")
    _sweep(dest, ".posterm-backup-*.tmp")
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(plain, "rb") as src:
            out.write(encoded)
            for i in range(hdr.chunk_count):
                pt = src.read(chunk_size)
                nonce = os.urandom(NONCE_LEN)
                ct = aead.encrypt(nonce, pt, _ad(header_hash, i, i == hdr.chunk_count - 1))
                out.write(_CHUNK_HEAD.pack(nonce, len(ct)))
                out.write(ct)
            if src.read(1):
                raise BackupError("the snapshot of the database changed while it was encrypted")
            out.flush()
            os.fsync(out.fileno())
        final = dest / name
        refuse_symlink(final)
        os.replace(tmp, final)
        _fsync_dir(dest)
        return final
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def backup(db_path: str | os.PathLike, dests: Sequence[str | os.PathLike],
           key: BackupKey | bytes | str | os.PathLike | None, *, host_id: str | None = None,
           chunk_size: int = CHUNK_SIZE, keep: int | None = None) -> list[BackupResult]:
    """Snapshot ``db_path`` once and write an encrypted copy into every destination directory.

    ``db_path`` is a SQLite file, or a ``postgresql://`` URL: its tables are copied in one
    consistent snapshot into a SQLite file of the same schema (:func:`pg_snapshot`, a 0600
    temp file in ``$POSTERM_HOME``), which is then encrypted exactly as a SQLite one.

    Returns one BackupResult per destination, in order; a destination that is missing,
    unwritable or full gets ``error`` set and the others are still written. Each file is
    written to a temp name, fsynced and renamed into place. With ``keep``, older backups of
    the same host beyond the newest ``keep`` are removed from each destination written.
    Raises ConfigError for a bad key or no destinations, BackupError when the database
    itself cannot be snapshotted (then no destination could be written).
    """
    k = load_key(key)
    if not dests:
        raise ConfigError("no backup destination given")
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ConfigError(f"chunk size must be 1..{MAX_CHUNK}")
    pg = _is_url(db_path)
    if not pg:
        db_path = Path(db_path)
    host_id = host_id or this_host_id()
    now = _dt.datetime.now(_dt.timezone.utc)
    name = f"posterm-backup-{_safe_name(host_id)}-{now.strftime('%Y%m%dT%H%M%S.%fZ')}{SUFFIX}"
    if pg:
        parent = _private_tmp_dir()
    else:
        parent = db_path.parent if db_path.parent.is_dir() else Path(tempfile.gettempdir())
    _sweep(parent, ".posterm-snapshot-*.db*")  # plaintext left by a killed backup
    fd, plain = tempfile.mkstemp(dir=parent, prefix=".posterm-snapshot-", suffix=".db")
    os.close(fd)
    plain = Path(plain)
    try:
        digest, size = pg_snapshot(db_path, plain) if pg else snapshot(db_path, plain)
        fields = dict(created_at=now.isoformat(timespec="microseconds"), host_id=host_id, key_id=k.key_id,
                      ledger_hash=digest, chunk_count=max(1, -(-size // chunk_size)), chunk_size=chunk_size,
                      plain_size=size)
        results = []
        for d in dests:
            dest = Path(d)
            try:
                path = _write_one(plain, dest, name, fields, k, chunk_size)
                results.append(BackupResult(dest, path, None, path.stat().st_size, digest))
            except (OSError, BackupError) as exc:
                msg = str(exc) if isinstance(exc, BackupError) else f"cannot write to {dest}: {exc.strerror or exc}"
                results.append(BackupResult(dest, None, msg, 0, digest))
        if keep is not None:
            for r in results:
                if r.ok:
                    prune(r.dest, keep, host_id=host_id)
        return results
    finally:
        for p in (plain, Path(f"{plain}-journal")):
            try:
                p.unlink()
            except OSError:
                pass


STALE_SECONDS = 86400.0


def _sweep(directory: Path, pattern: str) -> None:
    """Remove leftovers of a crashed run (a killed backup cannot clean up): older than a day."""
    import time

    try:
        for p in directory.glob(pattern):
            try:
                if time.time() - p.stat().st_mtime > STALE_SECONDS:
                    p.unlink()
                    log.info("removed stale %s", p)
            except OSError:
                pass
    except OSError:
        pass


def prune(dest: str | os.PathLike, keep: int, *, host_id: str | None = None) -> list[Path]:
    """Remove all but the newest ``keep`` backups (of ``host_id``, if given) in ``dest``; return those removed."""
    if keep < 1:
        raise ConfigError("--keep must be at least 1")
    pattern = f"posterm-backup-{_safe_name(host_id)}-*{SUFFIX}" if host_id else f"posterm-backup-*{SUFFIX}"
    try:
        files = sorted(Path(dest).glob(pattern), key=lambda p: p.name[-len(SUFFIX) - 23:])
    except OSError:
        return []
    removed = []
    for p in files[:-keep]:
        try:
            p.unlink()
            removed.append(p)
        except OSError as exc:
            log.warning("cannot remove old backup %s: %s", p, exc)
    return removed


# ---------------------------------------------------------------- verify / restore

@dataclasses.dataclass(frozen=True, slots=True)
class VerifyReport:
    """What verify found. ``ok`` only if every chunk authenticated, integrity_check said ok
    and the recomputed ledger hash equals the recorded one."""

    path: Path
    header: BackupHeader
    integrity: str
    ledger_hash: str

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and self.ledger_hash == self.header.ledger_hash


def _decrypt_to(file: Path, key: BackupKey, out_dir: Path) -> tuple[BackupHeader, Path]:
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".posterm-restore-", suffix=".db")
    try:
        with os.fdopen(fd, "wb") as out, open(file, "rb") as f:
            hdr, hh = _open_backup(f, str(file), key)
            for pt in _decrypt_chunks(f, hdr, hh, key, str(file)):
                out.write(pt)
            out.flush()
            os.fsync(out.fileno())
        return hdr, Path(tmp)
    except BaseException:
        _unlink_db(Path(tmp))
        raise


def _unlink_db(p: Path) -> None:
    for q in (p, Path(f"{p}-journal"), Path(f"{p}-wal"), Path(f"{p}-shm")):
        try:
            q.unlink()
        except OSError:
            pass


def _check(db: Path) -> tuple[str, str]:
    try:
        c = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = c.execute("PRAGMA integrity_check").fetchall()
            return "; ".join(r[0] for r in rows), ledger_hash(c)
        finally:
            c.close()
    except sqlite3.Error as exc:
        return f"not a database: {exc}", ""


def verify(file: str | os.PathLike, key: BackupKey | bytes | str | os.PathLike | None,
           *, tmp_dir: str | os.PathLike | None = None) -> VerifyReport:
    """Decrypt ``file`` to a temp file, run integrity_check, recompute the ledger hash; restore nothing.

    Raises BackupTampered / BackupTruncated / BackupKeyMismatch (CryptoError), ConfigError for
    a bad key, BackupError when the file cannot be read.
    """
    k = load_key(key)
    file = Path(file)
    try:
        hdr, tmp = _decrypt_to(file, k, Path(tmp_dir) if tmp_dir else Path(tempfile.gettempdir()))
    except OSError as exc:
        raise BackupError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        integrity, digest = _check(tmp)
    finally:
        _unlink_db(tmp)
    return VerifyReport(file, hdr, integrity, digest)


@dataclasses.dataclass(frozen=True, slots=True)
class RestoreReport:
    """A finished restore: the database now at ``db_path``; the one it replaced kept at ``previous``."""

    db_path: Path | str        # the file, or the PostgreSQL URL without its password
    header: BackupHeader
    ledger_hash: str
    previous: Path | None


def _refuse_other_host(file: Path, key: BackupKey, here: str) -> None:
    """Raise BackupOtherHost if ``file`` was taken on another host than ``here``.

    Runs before anything is decrypted to disk. The header's host id is believed only once
    the first chunk authenticates (every chunk's associated data covers the header), so
    a tampered header is still named as tampered, not as another host's.
    """
    try:
        with open(file, "rb") as f:
            hdr, hh = _open_backup(f, str(file), key)
            if hdr.host_id == here:
                return
            next(_decrypt_chunks(f, hdr, hh, key, str(file)))
    except OSError as exc:
        raise BackupError(f"cannot read {file}: {exc.strerror or exc}") from None
    raise BackupOtherHost(f"{file} was taken on host {hdr.host_id!r}, this is host {here!r}: nothing changed "
                          f"(to restore it here anyway: --allow-other-host, or allow_other_host=True)")


def restore(file: str | os.PathLike, db_path: str | os.PathLike,
            key: BackupKey | bytes | str | os.PathLike | None, *, allow_other_host: bool = False,
            host_id: str | None = None, force: bool = False) -> RestoreReport:
    """Restore ``file`` into ``db_path``: decrypt beside it, check, then swap in with os.replace.

    A backup taken on another host (its header's ``host_id`` is not ``host_id``, by
    default this host's name) is refused with :class:`BackupOtherHost` unless
    ``allow_other_host``: restoring one host's ledger over another's is never an accident.
    Until every chunk authenticated, integrity_check said ok and the ledger hash matched,
    nothing at ``db_path`` is touched. A database already there is checkpointed and kept as
    ``<db>.pre-restore-<time>``; it must not be open by a running host (stop it first).
    ``db_path`` may be a ``postgresql://`` URL: the backup (of either store) is checked the
    same way, then its rows are loaded in one transaction (:func:`posterm.host.store.dump.load`);
    a target that holds a host's data is refused (:class:`BackupTargetNotEmpty`) unless
    ``force``, one a host is connected to always. ``previous`` is then None.
    Raises BackupTampered / BackupTruncated / BackupKeyMismatch, BackupOtherHost,
    ConfigError (UnsafePath for a symlink at ``db_path`` or its companions), BackupError.
    """
    k = load_key(key)
    file = Path(file)
    if _is_url(db_path):
        return _restore_postgres(file, str(db_path), k, allow_other_host=allow_other_host, host_id=host_id,
                                 force=force)
    db_path = Path(db_path)
    target_dir = db_path.parent
    if not target_dir.is_dir():
        raise BackupError(f"cannot restore into {db_path}: directory {target_dir} does not exist")
    prepare_sqlite(db_path, parent=False, create=False)
    if not allow_other_host:
        _refuse_other_host(file, k, host_id or this_host_id())
    try:
        hdr, tmp = _decrypt_to(file, k, target_dir)
    except OSError as exc:
        raise BackupError(f"cannot restore {file} into {target_dir}: {exc.strerror or exc}") from None
    try:
        digest = _checked(file, tmp, hdr)
        previous, lock = None, None
        if db_path.exists():
            lock, previous = _retire(db_path)
        try:
            os.replace(tmp, db_path)
        finally:
            if lock is not None:
                lock.close()
                # the old WAL was folded in; a stale -wal/-shm must never be applied to the new file
                for q in (Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
                    try:
                        q.unlink()
                    except OSError:
                        pass
        _fsync_dir(target_dir)
    except BaseException:
        _unlink_db(tmp)
        raise
    return RestoreReport(db_path, hdr, digest, previous)


def _checked(file: Path, tmp: Path, hdr) -> str:
    """The ledger hash of the decrypted copy ``tmp`` of ``file``, once it passes SQLite's
    integrity check and matches the header's hash (else BackupError: nothing changed)."""
    integrity, digest = _check(tmp)
    if integrity != "ok":
        raise BackupError(f"{file}: the restored database fails integrity_check ({integrity}); nothing changed")
    if digest != hdr.ledger_hash:
        raise BackupError(f"{file}: ledger hash {digest[:16]}... differs from the recorded "
                          f"{hdr.ledger_hash[:16]}...; nothing changed")
    return digest


def _restore_postgres(file: Path, url: str, k: BackupKey, *, allow_other_host: bool, host_id: str | None,
                      force: bool) -> RestoreReport:
    from posterm.host.store.dump import DumpError, TargetInUse, load
    from posterm.host.store.postgres import redact

    if not allow_other_host:
        _refuse_other_host(file, k, host_id or this_host_id())
    tmp_dir = _private_tmp_dir()
    _sweep(tmp_dir, ".posterm-restore-*.db*")
    try:
        hdr, tmp = _decrypt_to(file, k, tmp_dir)
    except OSError as exc:
        raise BackupError(f"cannot decrypt {file} into {tmp_dir}: {exc.strerror or exc}") from None
    try:
        digest = _checked(file, tmp, hdr)
        try:
            load(tmp, url, force=force)
        except TargetInUse as exc:
            raise BackupTargetNotEmpty(str(exc)) from None
        except DumpError as exc:
            raise BackupError(str(exc)) from None
    finally:
        _unlink_db(tmp)
    return RestoreReport(redact(url), hdr, digest, None)


def _retire(db_path: Path) -> tuple[sqlite3.Connection, Path]:
    """Lock the old database against every other connection, fold its WAL in, keep it as a hard link.

    Returns the connection holding the lock (close it after the swap) and the kept path.
    Raises BackupError when another connection (a running host) has the database open.
    """
    try:
        c = sqlite3.connect(db_path, timeout=1.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot restore over {db_path}: {exc}; nothing changed") from None
    try:
        # exclusive locking mode keeps the lock after COMMIT; in WAL mode it is refused while
        # any other connection has the database open, which is how a running host is detected
        c.execute("PRAGMA locking_mode=EXCLUSIVE")
        c.execute("BEGIN EXCLUSIVE")
        c.execute("COMMIT")
        busy = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            raise BackupError(f"{db_path} is in use (stop the host first); nothing changed")
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        keep = db_path.with_name(f"{db_path.name}.pre-restore-{stamp}")
        os.link(db_path, keep)
        return c, keep
    except sqlite3.OperationalError as exc:
        c.close()
        raise BackupError(f"{db_path} is in use or unreadable ({exc}): stop the host first; nothing changed") from None
    except BaseException:
        c.close()
        raise


# ---------------------------------------------------------------- schedule

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_interval(text: str | float) -> float:
    """'1h', '15m', '30s', '0.2s', '90' -> seconds. Raises ConfigError."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
        if not m:
            raise ConfigError(f"bad interval {text!r}: use e.g. 1h, 15m, 30s")
        value = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0.05 <= value <= 366 * 86400:
        raise ConfigError(f"interval {text!r} out of range (0.05 s .. 366 d)")
    return value


class BackupScheduler:
    """Take a backup now and then every ``every_seconds`` in a daemon thread.

    ``last_results`` holds the latest run's BackupResult list (``last_error`` a failure
    that hit every destination, e.g. the database unreadable). A failing run is logged and
    retried at the next tick; it never raises into the host.
    """

    def __init__(self, db_path: str | os.PathLike, dests: Sequence[str | os.PathLike],
                 key_file: BackupKey | bytes | str | os.PathLike | None, every_seconds: float, keep: int = 24,
                 *, host_id: str | None = None) -> None:
        self.db_path = db_path if _is_url(db_path) else Path(db_path)   # a file, or a postgresql:// URL
        self.dests = [Path(d) for d in dests]
        self._key = load_key(key_file)
        if not self.dests:
            raise ConfigError("no backup destination given")
        if isinstance(key_file, (str, os.PathLike)):
            kf = Path(key_file).resolve()
            for d in self.dests:
                if kf.is_relative_to(d.resolve()):
                    raise ConfigError(f"the key file must not be kept with the backups (it is inside {d})")
        self.every = parse_interval(every_seconds)
        if keep < 1:
            raise ConfigError("--keep must be at least 1")
        self.keep = keep
        self.host_id = host_id
        self.last_results: list[BackupResult] = []
        self.last_error: str | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[BackupResult]:
        try:
            results = backup(self.db_path, self.dests, self._key, host_id=self.host_id, keep=self.keep)
            self.last_error = None
        except PosError as exc:
            self.last_error = str(exc)
            results = [BackupResult(d, None, str(exc)) for d in self.dests]
            log.error("scheduled backup failed: %s", exc)
        except Exception as exc:  # a backup must never take the host down
            self.last_error = f"{type(exc).__name__}: {exc}"
            results = [BackupResult(d, None, self.last_error) for d in self.dests]
            log.exception("scheduled backup failed")
        for r in results:
            if not r.ok and self.last_error is None:
                log.warning("scheduled backup to %s failed: %s", r.dest, r.error)
        self.last_results = results
        self.runs += 1
        return results

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            if self._stop.wait(self.every):
                break

    def start(self) -> "BackupScheduler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="posterm-backup", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the backup in progress, if any (waits at most ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "BackupScheduler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
