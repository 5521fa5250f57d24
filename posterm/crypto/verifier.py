"""Salted slow hashes (scrypt) for passwords: the operator's on the terminal, the
customer's payment secret in the host. Opaque bytes: version | salt | hash."""

from __future__ import annotations

import hmac
import os

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from posterm.errors import CryptoError

VERSION = 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


def _hash(secret: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(secret.encode())


def make_verifier(secret: str) -> bytes:
    if not secret:
        raise CryptoError("an empty password cannot be set")
    salt = os.urandom(16)
    return bytes([VERSION]) + salt + _hash(secret, salt)


def check_verifier(secret: str, verifier: bytes) -> bool:
    if len(verifier) != 49 or verifier[0] != VERSION:
        raise CryptoError("password verifier is damaged")
    return hmac.compare_digest(_hash(secret, verifier[1:17]), verifier[17:])
