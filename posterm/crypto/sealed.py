"""Sealed storage: a JSON document encrypted with AES-GCM under a device key file.

This stands in for a secure element's tamper-resistant memory (the PIN pad) and an HSM's
key store (the host): key material is never written in clear. The device key lives in
its own file, created 0600 beside the store, as a real device keeps its storage key in
hardware apart from the memory it protects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from posterm.errors import CryptoError

MAGIC = b"PTSEAL1"


def _private_dir(directory: Path) -> None:
    """Make ``directory`` (and its parents); a new leaf directory is 0700 whatever the umask."""
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)


def _device_key(path: Path) -> bytes:
    key_path = path.with_name(path.name + ".devkey")
    try:
        key = key_path.read_bytes()
    except FileNotFoundError:
        key = AESGCM.generate_key(256)
        _private_dir(key_path.parent)
        # Written under a temporary name and linked into place: a concurrent creator either
        # wins (we then use its key) or loses, and nobody ever reads a half-written key.
        tmp = key_path.with_name(f"{key_path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, key_path)
        except FileExistsError:
            key = key_path.read_bytes()
        finally:
            tmp.unlink()
    if len(key) != 32:
        raise CryptoError(f"{key_path}: device key is damaged")
    return key


def load(path: Path) -> dict[str, Any] | None:
    """The sealed document at ``path``, or None if there is none. Raises CryptoError if tampered."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
        raise CryptoError(f"{path}: not a sealed store")
    nonce = blob[len(MAGIC):len(MAGIC) + 12]
    try:
        clear = AESGCM(_device_key(path)).decrypt(nonce, blob[len(MAGIC) + 12:], MAGIC + path.name.encode())
    except InvalidTag:
        raise CryptoError(f"{path}: sealed store fails authentication (tampered, or the device key changed)") from None
    return json.loads(clear)


def save(path: Path, doc: dict[str, Any]) -> None:
    """Seal ``doc`` into ``path`` atomically (write, fsync, rename)."""
    path = Path(path)
    _private_dir(path.parent)
    nonce = os.urandom(12)
    blob = MAGIC + nonce + AESGCM(_device_key(path)).encrypt(nonce, json.dumps(doc).encode(), MAGIC + path.name.encode())
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")  # concurrent savers never share one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
