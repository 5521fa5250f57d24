"""The security centre's keys: one to MAC verification codes, one to seal what the phone's
inbox and the webhooks keep.

Kept beside the host's HSM key store, in the same sealed form (:mod:`posterm.crypto.sealed`:
AES-GCM under a device key file; 0600 files in a 0700 directory, no symlink followed), as
``security.keys``; made once, on first use, under a file lock so that two processes opening
one host agree on them. The database and its backups therefore hold a code only as
HMAC-SHA256 under :meth:`SecurityKeys.code_mac`'s key and an inbox text or a webhook secret
only sealed (:meth:`SecurityKeys.seal`, AES-256-GCM with a random nonce, bound to its
purpose and account as associated data). No key ever leaves this object.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from posterm import safefs
from posterm.crypto import sealed
from posterm.errors import CryptoError

KEY_FILE = "security.keys"


class SecurityKeys:
    """See the module docstring. :meth:`open` (sealed file) or :meth:`ephemeral` (in memory)."""

    __slots__ = ("_mac", "_seal")

    def __init__(self, mac_key: bytes, seal_key: bytes) -> None:
        if len(mac_key) != 32 or len(seal_key) != 32:
            raise CryptoError("security keys are 32 bytes each")
        self._mac = mac_key
        self._seal = AESGCM(seal_key)

    @classmethod
    def ephemeral(cls) -> "SecurityKeys":
        return cls(os.urandom(32), os.urandom(32))

    @classmethod
    def open(cls, key_dir: str | os.PathLike[str]) -> "SecurityKeys":
        """Open (creating on first use) ``security.keys`` in ``key_dir``. Raises CryptoError if
        the store is tampered or damaged, :class:`~posterm.safefs.UnsafePath` on a symlink."""
        d = safefs.private_dir(key_dir, own=True)
        path = d / KEY_FILE
        fd = safefs.private_file(d / (KEY_FILE + ".lock"), os.O_RDWR | os.O_CREAT, parent=False)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = sealed.load(path)
            if doc is None:
                doc = {"code_mac": os.urandom(32).hex(), "seal": os.urandom(32).hex()}
                sealed.save(path, doc)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        try:
            return cls(bytes.fromhex(doc["code_mac"]), bytes.fromhex(doc["seal"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise CryptoError(f"{Path(path)}: security key store is damaged") from exc

    def __repr__(self) -> str:
        return "SecurityKeys(<sealed>)"

    def __reduce__(self):
        raise TypeError("SecurityKeys holds keys and is not picklable")

    def code_mac(self, salt: str, account_id: str, purpose: str, code: str) -> str:
        """HMAC-SHA256 of a verification code, bound to its request (salt), account and purpose."""
        msg = "\x00".join(("posterm-code", salt, account_id, purpose, code)).encode()
        return hmac.new(self._mac, msg, hashlib.sha256).hexdigest()

    def seal(self, purpose: str, account_id: str, data: bytes) -> bytes:
        """``data`` encrypted and authenticated for ``purpose`` and ``account_id``: nonce | ciphertext."""
        nonce = os.urandom(12)
        return nonce + self._seal.encrypt(nonce, data, self._ad(purpose, account_id))

    def unseal(self, purpose: str, account_id: str, blob: bytes) -> bytes:
        """What :meth:`seal` sealed. Raises CryptoError if it was changed, moved or sealed under other keys."""
        try:
            return self._seal.decrypt(bytes(blob[:12]), bytes(blob[12:]), self._ad(purpose, account_id))
        except (InvalidTag, ValueError):
            raise CryptoError(f"a sealed {purpose} entry fails authentication") from None

    @staticmethod
    def _ad(purpose: str, account_id: str) -> bytes:
        return f"posterm-seal\x00{purpose}\x00{account_id}".encode()
