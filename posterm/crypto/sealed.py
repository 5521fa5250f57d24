"""Sealed storage: a JSON document encrypted with AES-GCM under a device key file.

This stands in for a secure element's tamper-resistant memory (the PIN pad) and an HSM's
key store (the host): key material is never written in clear. The device key lives in
its own file, created 0600 beside the store, as a real device keeps its storage key in
hardware apart from the memory it protects. Neither file is ever read or written through
a symlink (:mod:`posterm.safefs`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from posterm.errors import CryptoError
from posterm import safefs

MAGIC = b"PTSEAL1"


def _device_key(path: Path) -> bytes:
    key_path = path.with_name(path.name + ".devkey")
    try:
        key = safefs.read_private(key_path, 4096)
    except FileNotFoundError:
        key = AESGCM.generate_key(256)
        safefs.private_dir(key_path.parent)
        # Written under a temporary name and linked into place: a concurrent creator either
        # wins (we then use its key) or loses, and nobody ever reads a half-written key.
        # link() never follows a link at key_path: a planted one is then refused by the read.
        tmp = key_path.with_name(f"{key_path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = safefs.private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, parent=False)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, key_path)
        except FileExistsError:
            key = safefs.read_private(key_path, 4096)
        finally:
            tmp.unlink()
    if len(key) != 32:
        raise CryptoError(f"{key_path}: device key is damaged")
    return key


def load(path: Path) -> dict[str, Any] | None:
    """The sealed document at ``path``, or None if there is none.

    Raises CryptoError if tampered, :class:`~posterm.safefs.UnsafePath` if the store or
    its device key is a symlink (never read through one: it would choose the keys).
    """
    path = Path(path)
    try:
        blob = safefs.read_private(path)
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
    """Seal ``doc`` into ``path`` atomically (a fresh 0600 temp file, fsync, rename).

    Raises :class:`~posterm.safefs.UnsafePath` if the store or its device key is a symlink.
    """
    path = Path(path)
    safefs.private_dir(path.parent)
    safefs.refuse_symlink(path)
    nonce = os.urandom(12)
    blob = MAGIC + nonce + AESGCM(_device_key(path)).encrypt(nonce, json.dumps(doc).encode(), MAGIC + path.name.encode())
    safefs.replace_private(path, blob, parent=False)  # concurrent savers never share a temp file
