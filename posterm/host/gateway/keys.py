"""The gateway's own keys: its RSA-2048 signing key pair and the WeChat merchants' API keys.

Kept beside the host's HSM key store, in the same sealed form (:mod:`posterm.crypto.sealed`:
AES-GCM under a device key file; files 0600 in a 0700 directory, no symlink followed), as
``gateway.keys``. The key pair is made once, on first use, under a file lock so that two
processes opening one host at once agree on it. Only the public half ever leaves this
module in clear (:meth:`GatewayKeys.public_pem`); the WeChat API keys are handed to the
code that signs with them and never printed (:class:`~posterm.host.gateway.core.App` keeps
them out of its repr).
"""

from __future__ import annotations

import base64
import fcntl
import functools
import os
import threading
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from posterm import safefs
from posterm.crypto import sealed
from posterm.errors import CryptoError

KEY_FILE = "gateway.keys"
RSA_BITS = 2048


def key_dir_for(db_path: str | os.PathLike[str]) -> Path:
    """Where a host database's keys live: the ``hsm`` directory beside it (as Host.open has it)."""
    return Path(db_path).parent / "hsm"


class GatewayKeys:
    """See the module docstring. Open with :meth:`open`; thread-safe."""

    def __init__(self, path: Path, private_pem: bytes, wechat: dict[str, str]) -> None:
        self._path = path
        self._private = serialization.load_pem_private_key(private_pem, password=None)
        self._wechat = dict(wechat)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None   # of the store file when _wechat was read

    @classmethod
    def open(cls, key_dir: str | os.PathLike[str]) -> "GatewayKeys":
        """Open (creating on first use) the gateway's keys in ``key_dir``. Raises CryptoError
        if the store is tampered, :class:`~posterm.safefs.UnsafePath` on a symlink."""
        d = safefs.private_dir(key_dir, own=True)
        path = d / KEY_FILE
        with _locked(d):
            doc = sealed.load(path)
            if doc is None:
                key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
                pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
                doc = {"rsa_private_pem": pem, "wechat": {}}
                sealed.save(path, doc)
        try:
            return cls(path, doc["rsa_private_pem"].encode(), doc.get("wechat", {}))
        except (KeyError, ValueError, TypeError) as exc:
            raise CryptoError(f"{path}: gateway key store is damaged") from exc

    def __repr__(self) -> str:
        return f"GatewayKeys({self._path}, wechat apps={sorted(self._wechat)})"

    def __reduce__(self):
        raise TypeError("GatewayKeys holds private keys and is not picklable")

    # ------------------------------------------------------------------ RSA (Alipay)

    def public_pem(self) -> str:
        """The gateway's public key (SubjectPublicKeyInfo PEM), that apps verify responses with."""
        return self._private.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign_rsa2(self, data: bytes) -> str:
        """SHA256withRSA (PKCS#1 v1.5) over ``data``, base64: Alipay's RSA2."""
        return base64.b64encode(self._private.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()

    # ------------------------------------------------------------------ WeChat API keys

    def wechat_key(self, app_id: str) -> str | None:
        """The API key kept for ``app_id``. Another process (``posterm host app add`` beside
        a running server) may have changed the store: it is read again when its file has."""
        with self._lock:
            self._reload_if_changed()
            return self._wechat.get(app_id)

    def _reload_if_changed(self) -> None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        doc = sealed.load(self._path) or {}
        self._wechat = dict(doc.get("wechat", {}))
        self._stamp = stamp

    def set_wechat_key(self, app_id: str, api_key: str) -> None:
        """Keep ``api_key`` for ``app_id`` (replacing one it had), sealed on disk at once."""
        with _locked(self._path.parent), self._lock:
            doc = sealed.load(self._path) or {}
            wechat = dict(doc.get("wechat", {}))
            wechat[app_id] = api_key
            doc["wechat"] = wechat
            sealed.save(self._path, doc)
            self._wechat = wechat
            self._stamp = None


@functools.lru_cache(maxsize=256)
def load_public_key(pem: str | bytes):
    """An RSA public key from PEM (SubjectPublicKeyInfo or PKCS#1), or bare base64 of the DER
    (as Alipay's console shows it). Raises ValueError for anything else."""
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    text = data.strip()
    if not text.startswith(b"-----"):
        try:
            der = base64.b64decode(b"".join(text.split()), validate=True)
        except ValueError as exc:
            raise ValueError("not a PEM or base64 public key") from exc
        key = serialization.load_der_public_key(der)
    else:
        key = serialization.load_pem_public_key(text)   # SubjectPublicKeyInfo or PKCS#1 "RSA PUBLIC KEY"
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise ValueError("not an RSA public key of at least 2048 bits")
    return key


def normalise_public_pem(pem: str | bytes) -> str:
    """The key as SubjectPublicKeyInfo PEM (see :func:`load_public_key`)."""
    return load_public_key(pem).public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def verify_rsa2(public_pem: str, data: bytes, signature_b64: str) -> bool:
    """Whether ``signature_b64`` is a valid SHA256withRSA signature of ``data`` under the key."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        return False
    try:
        load_public_key(public_pem).verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


class _locked:
    """An exclusive lock on ``<dir>/gateway.keys.lock`` (between processes) while in the block."""

    def __init__(self, d: Path) -> None:
        self._d = d
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = safefs.private_file(self._d / (KEY_FILE + ".lock"), os.O_RDWR | os.O_CREAT, parent=False)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
