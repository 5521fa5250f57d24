"""The host's HSM: base derivation keys, key-block protection keys, PIN verification.

Holds an AES BDK (AES-128, AES-192 or AES-256; and a TDES BDK for legacy PIN pads) and a master from which each
terminal's key-block protection key is derived. It derives a terminal's DUKPT keys from
the KSN alone, verifies request MACs and signs responses, issues initial keys in TR-31
version D blocks, and verifies PINs: a PIN block is decrypted only inside
:meth:`Hsm.verify_pin`, compared with the customer's payment-secret verifier (salted
scrypt), and the call answers match or no match. It never returns a PIN or a key, except
:meth:`kbpk_for_injection`, the key-injection-facility step used by emulators and tests.
This module never imports :mod:`posterm.crypto.pinpad`.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from posterm.crypto import common as c
from posterm.crypto import sealed
from posterm.crypto.verifier import check_verifier, make_verifier
from posterm.errors import CryptoError

PIN_MAX_TRIES = 3
_BDK_SIZES = {"aes128": 16, "aes192": 24, "aes256": 32}
TK_CACHE_SIZE = 4096   # transaction keys kept (about 100 kB): the recent KSNs of a busy fleet
MAC_SIZE = 8
# Another process's hold on the key store (allocating device numbers, a rotation) lasts one
# load-merge-seal; past this many seconds waiting for it, the allocation fails (CryptoError).
LOCK_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class IssuedKey:
    block: str
    ksn: bytes
    kcv: bytes
    key_version: str = "00"     # the TR-31 header's key version (the issue count, see issue_initial_key)

    def __repr__(self) -> str:
        return f"IssuedKey(block=<TR-31 {self.block[:16]}...>, ksn={self.ksn.hex().upper()}, kcv={self.kcv.hex().upper()})"


@dataclass(frozen=True, slots=True)
class PinCheck:
    match: bool
    locked: bool
    tries_left: int


class Hsm:
    """See the module docstring. Create with :meth:`open` (sealed key store) or :meth:`ephemeral`."""

    def __init__(self, keys: dict[str, bytes], path: Path | None = None,
                 retired: dict[bytes, bytes] | None = None, tdes_devices: dict[str, int] | None = None,
                 generations: dict[str, int] | None = None) -> None:
        self._bdk = keys["bdk"]              # the current AES BDK: new terminals get keys under it
        self._bdk_id = keys["bdk_id"]        # 4 bytes; the first 4 bytes of every KSN it issues
        self._tdes_bdk = keys["tdes_bdk"]
        self._kbpk_master = keys["kbpk_master"]
        # The key of the customers' identity hashes (Hsm.identity_hash): its own random key,
        # used for nothing else. A key store made before it existed gets one (see open).
        self._identity_key = keys.get("identity_key") or os.urandom(32)
        # Earlier AES BDKs by id: terminals loaded before a rotation keep working until re-keyed.
        self._retired: dict[bytes, bytes] = dict(retired or {})
        # terminal id -> device number (see _device); the name is historical.
        self._tdes_devices: dict[str, int] = dict(tdes_devices or {})
        # terminal id -> how many times a new initial key was issued to it (issue_initial_key):
        # each issue is a new device number, so a new key id, and the next TR-31 key version.
        self._generations: dict[str, int] = dict(generations or {})
        self._path = path
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._tk_cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._stamp = path.stat().st_mtime_ns if path is not None and path.exists() else None

    @classmethod
    def open(cls, state_dir: str | Path) -> "Hsm":
        """Open (or create on first use) the sealed key store in ``state_dir``. Raises CryptoError if tampered."""
        path = Path(state_dir) / "hsm.keys"
        doc = sealed.load(path)
        if doc is None:
            hsm = cls(cls._fresh_keys(), path)
            with hsm._lock, hsm._store_lock():   # two first openers: one set of keys, the other adopts it
                doc = sealed.load(path)
                if doc is None:
                    hsm._save()
                    return hsm
        retired = {bytes.fromhex(k): bytes.fromhex(v) for k, v in doc.pop("retired", {}).items()}
        devices = {str(k): int(v) for k, v in doc.pop("tdes_devices", {}).items()}
        generations = {str(k): int(v) for k, v in doc.pop("generations", {}).items()}
        hsm = cls({k: bytes.fromhex(v) for k, v in doc.items()}, path, retired, devices, generations)
        if "identity_key" not in doc:
            with hsm._lock:
                hsm._save()   # adopts one another process stored meanwhile (_merge_stored)
        return hsm

    def _save(self) -> None:
        if self._path is None:
            return
        self._merge_stored()   # what another process saved since (a rotation, a device number) survives
        sealed.save(self._path, {"bdk": self._bdk.hex(), "bdk_id": self._bdk_id.hex(),
                                 "tdes_bdk": self._tdes_bdk.hex(), "kbpk_master": self._kbpk_master.hex(),
                                 "identity_key": self._identity_key.hex(),
                                 "retired": {k.hex(): v.hex() for k, v in self._retired.items()},
                                 "tdes_devices": self._tdes_devices, "generations": self._generations})

    @contextmanager
    def _store_lock(self):
        """Under ``self._lock``: the key store's read-allocate-seal, atomic across processes.

        An exclusive ``flock`` on ``hsm.lock`` (0600) beside the store, waited for at most
        :data:`LOCK_TIMEOUT` seconds: two processes allocating device numbers at once (a
        fleet's children injecting keys) must not both take the next free number."""
        if self._path is None:
            yield
            return
        import fcntl

        from posterm import safefs

        fd = safefs.private_file(self._path.with_name("hsm.lock"))
        try:
            deadline, pause = time.monotonic() + LOCK_TIMEOUT, 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CryptoError(f"the HSM key store is locked by another process for over "
                                          f"{LOCK_TIMEOUT:g}s ({self._path.parent})") from None
                    time.sleep(pause)   # a retry pause, bounded by the deadline
                    pause = min(pause * 2, 0.05)
            yield
        finally:
            os.close(fd)   # releases the lock

    def reserve_devices(self, terminal_ids) -> int:
        """Allocate device numbers for every terminal of ``terminal_ids`` that has none, in
        one locked read-allocate-seal (a fleet of a thousand starting: one seal, not one
        per terminal). Returns how many were allocated. Raises CryptoError."""
        with self._lock, self._store_lock():
            self._merge_stored()
            fresh = [t for t in dict.fromkeys(self._device_name(t) for t in terminal_ids)
                     if t not in self._tdes_devices]
            if not fresh:
                return 0
            top = max(self._tdes_devices.values(), default=0)
            if top + len(fresh) >= 1 << 19:
                raise CryptoError("this HSM has no device ids left (2^19 - 1 issued)")
            for n, name in enumerate(fresh, top + 1):
                self._tdes_devices[name] = n
            self._save()
            return len(fresh)

    @property
    def bdk_id(self) -> bytes:
        """The current AES BDK's id (the first 4 bytes of the KSNs it issues)."""
        return self._bdk_id

    @property
    def bdk_type(self) -> str:
        """The current AES BDK's type: ``aes128``, ``aes192`` or ``aes256`` (its initial keys
        and their working keys are of the same type)."""
        return c.aes_dukpt_key_type(self._bdk).name

    def bdk_info(self) -> dict[str, object]:
        """The current BDK's id, type and KCV, and how many retired BDKs are kept. Never key bytes."""
        with self._lock:
            return {"bdk_id": self._bdk_id.hex().upper(), "type": self.bdk_type,
                    "kcv": c.kcv(self._bdk, c.Algorithm.AES).hex().upper(), "retired": len(self._retired)}

    def rotate_bdk(self, key_type: str = "aes128") -> bytes:
        """Make a fresh AES BDK of ``key_type`` (aes128, aes192, aes256) current and return its id.

        Initial keys issued from now on derive from it (and are of its type); the previous
        BDK is kept (retired) so terminals loaded under it keep working until they load a new
        key block. Raises CryptoError for another type.
        """
        size = _BDK_SIZES.get(key_type)
        if size is None:
            raise CryptoError(f"an AES BDK type is one of {', '.join(_BDK_SIZES)}, not {key_type!r}")
        return self._make_current(os.urandom(size), None)

    def import_bdk(self, bdk: bytes, bdk_id: bytes) -> None:
        """Make a known AES BDK (16/24/32 bytes) current under ``bdk_id`` (4 bytes): a key
        ceremony's result, or a published test BDK. The previous one is retired. Raises
        CryptoError for a bad length or an id already in use for another key."""
        c.aes_dukpt_key_type(bdk, "AES BDK")
        if len(bdk_id) != 4:
            raise CryptoError("a BDK id is 4 bytes (the first 4 bytes of its KSNs)")
        self._make_current(bytes(bdk), bytes(bdk_id))

    def _make_current(self, bdk: bytes, bdk_id: bytes | None) -> bytes:
        with self._lock, self._store_lock():
            self._merge_stored()
            if bdk_id is None:
                bdk_id = os.urandom(4)
                while bdk_id == self._bdk_id or bdk_id in self._retired:
                    bdk_id = os.urandom(4)
            elif bdk_id == self._bdk_id or bdk_id in self._retired:
                raise CryptoError(f"BDK id {bdk_id.hex().upper()} is taken: KSNs would name two BDKs")
            self._retired[self._bdk_id] = self._bdk
            self._bdk, self._bdk_id = bdk, bdk_id
            self._tk_cache_clear()
            self._save()
            return bdk_id

    def _tk_cache_clear(self) -> None:
        with self._cache_lock:
            self._tk_cache.clear()

    def _aes_bdk(self, bdk_id: bytes) -> bytes:
        for attempt in (0, 1):
            # Retired first: a BDK is retired before another becomes current, and _bdk is set
            # before _bdk_id, so a lookup racing a rotation never pairs an id with another key.
            key = self._retired.get(bdk_id)
            if key is not None:
                return key
            if bdk_id == self._bdk_id:
                return self._bdk
            if attempt == 0 and not self._reload_if_changed():
                break
        raise CryptoError("KSN names a BDK this HSM does not hold")

    def _reload_if_changed(self) -> bool:
        """Take in a BDK another process made current (``posterm host bdk rotate`` beside a
        running ``host serve``); reads the store only when the file changed. True if it did."""
        if self._path is None:
            return False
        try:
            stamp = self._path.stat().st_mtime_ns
        except OSError:
            return False
        if stamp == self._stamp:
            return False
        with self._lock:
            self._merge_stored()
            self._stamp = stamp
        return True

    @classmethod
    def ephemeral(cls, bdk_type: str = "aes128") -> "Hsm":
        """Keys in memory only (tests); the AES BDK of ``bdk_type`` (aes128, aes192, aes256)."""
        return cls(cls._fresh_keys(bdk_type))

    @staticmethod
    def _fresh_keys(bdk_type: str = "aes128") -> dict[str, bytes]:
        size = _BDK_SIZES.get(bdk_type)
        if size is None:
            raise CryptoError(f"an AES BDK type is one of {', '.join(_BDK_SIZES)}, not {bdk_type!r}")
        return {"bdk": os.urandom(size), "bdk_id": os.urandom(4), "tdes_bdk": os.urandom(16),
                "kbpk_master": os.urandom(32), "identity_key": os.urandom(32)}

    # -- key issue --------------------------------------------------------------

    def _kbpk(self, terminal_id: str) -> bytes:
        return c.aes_cmac(self._kbpk_master[:16], b"KBPK" + terminal_id.encode()) + \
            c.aes_cmac(self._kbpk_master[16:], b"KBPK" + terminal_id.encode())

    def kbpk_for_injection(self, terminal_id: str) -> bytes:
        """The terminal's key-block protection key, for the key injection facility only."""
        return self._kbpk(terminal_id)

    def _device(self, terminal_id: str) -> int:
        """The terminal's device number, allocated on first issue and persisted.

        Allocated, not hashed: a collision would give two PIN pads the same initial key.
        TDES KSNs leave 19 bits for it, so that is the limit for both algorithms.
        """
        with self._lock:
            device = self._tdes_devices.get(terminal_id)
            if device is not None:
                return device
            with self._store_lock():   # across processes: merge, take the next number, seal
                self._merge_stored()
                device = self._tdes_devices.get(terminal_id)
                if device is None:
                    device = max(self._tdes_devices.values(), default=0) + 1
                    if device >= 1 << 19:
                        raise CryptoError("this HSM has no device ids left (2^19 - 1 issued)")
                    self._tdes_devices[terminal_id] = device
                    self._save()
            return device

    def _device_name(self, terminal_id: str) -> str:
        """The name the terminal's current device number is allocated under (one per issue)."""
        gen = self._generations.get(terminal_id, 0)
        return terminal_id if gen == 0 else f"{terminal_id}#{gen}"

    def _merge_stored(self) -> None:
        """Under the lock, before allocating: take in what another process (``posterm host
        terminal key`` beside a running ``host serve``) allocated and saved since we loaded,
        so two terminals never get one device number, hence one initial key."""
        if self._path is None:
            return
        doc = sealed.load(self._path) or {}
        self._merge_bdks(doc)
        if doc.get("identity_key"):
            # once stored, the identity key never changes: every stored hash depends on it
            self._identity_key = bytes.fromhex(doc["identity_key"])
        for k, v in (doc.get("tdes_devices") or {}).items():
            self._tdes_devices.setdefault(str(k), int(v))
        for k, v in (doc.get("generations") or {}).items():
            self._generations[str(k)] = max(int(v), self._generations.get(str(k), 0))

    def _merge_bdks(self, doc: dict) -> None:
        """Adopt the stored current BDK when it is newer than ours (it retired ours), and keep
        every retired BDK either side knows: a rotation by another process is never undone."""
        if not doc.get("bdk_id"):
            return
        for k, v in (doc.get("retired") or {}).items():
            self._retired.setdefault(bytes.fromhex(k), bytes.fromhex(v))
        stored_id, stored = bytes.fromhex(doc["bdk_id"]), bytes.fromhex(doc["bdk"])
        if stored_id != self._bdk_id and self._bdk_id in self._retired and stored_id not in self._retired:
            self._bdk, self._bdk_id = stored, stored_id
        self._retired.pop(self._bdk_id, None)

    def _ikid(self, terminal_id: str) -> bytes:
        return self._bdk_id + self._device(self._device_name(terminal_id)).to_bytes(4, "big")

    def _tdes_initial_ksn(self, terminal_id: str) -> bytes:
        """KSN with counter 0: key set id (FFFF + the TDES BDK's KCV) | 19-bit device id | 0."""
        device = self._device(self._device_name(terminal_id))
        ksi = b"\xFF\xFF" + c.kcv(self._tdes_bdk, c.Algorithm.TDES, 3)
        return ((int.from_bytes(ksi, "big") << 40) | (device << 21)).to_bytes(10, "big")

    def initial_key_block(self, terminal_id: str, algorithm: str = "AES") -> IssuedKey:
        """The terminal's initial DUKPT key in a TR-31 version D block under its KBPK.

        ``algorithm`` "AES" (X9.24-3, default) or "TDES" (X9.24-1, legacy pads). The same
        terminal gets the same key (its current one) until :meth:`issue_initial_key` issues
        a new one or, for AES, a BDK rotation. Raises CryptoError.
        """
        version = f"{self._generations.get(terminal_id, 0):02d}"
        if algorithm == "AES":
            ikid = self._ikid(terminal_id)
            ik = c.aes_dukpt_initial_key(self._bdk, ikid)
            kcv = c.kcv(ik, c.Algorithm.AES, 5)
            opts = (("IK", ikid.hex().upper()), ("KC", "01" + kcv.hex().upper()))
            header = c.TR31Header("D", 0, "B1", "A", "X", version, "N", opts)
            ksn = ikid + bytes(4)
        elif algorithm == "TDES":
            ksn = self._tdes_initial_ksn(terminal_id)
            ik = c.tdes_dukpt_ipek(self._tdes_bdk, ksn)
            kcv = c.kcv(ik, c.Algorithm.TDES, 3)
            opts = (("KS", ksn.hex().upper()), ("KC", "00" + kcv.hex().upper()))
            header = c.TR31Header("D", 0, "B1", "T", "X", version, "N", opts)
        else:
            raise CryptoError(f"unknown DUKPT algorithm {algorithm!r} (AES or TDES)")
        return IssuedKey(c.tr31_wrap(self._kbpk(terminal_id), header, ik), ksn, kcv[:3], version)

    def issue_initial_key(self, terminal_id: str, algorithm: str = "AES") -> IssuedKey:
        """A **new** initial key for the terminal (re-keying, a replaced PIN pad), in a TR-31
        block as :meth:`initial_key_block` gives it.

        Each issue allocates a new device number, so the key has a new key id (AES) or
        initial KSN (TDES): its KSNs start at counter 1 and were never seen by the host,
        whatever the pad used before. The block's key version is the issue count (01, 02,
        ...), so the pad's anti-rollback refuses an older block afterwards. Persisted.
        Raises CryptoError (after 99 issues, or with no device numbers left).
        """
        if algorithm not in ("AES", "TDES"):
            raise CryptoError(f"unknown DUKPT algorithm {algorithm!r} (AES or TDES)")
        with self._lock, self._store_lock():
            self._merge_stored()
            gen = self._generations.get(terminal_id, 0) + 1
            if gen > 99:
                raise CryptoError("this terminal was issued 99 initial keys: the key version is exhausted")
            self._generations[terminal_id] = gen
            self._save()
        return self.initial_key_block(terminal_id, algorithm)

    # -- DUKPT on the host side ------------------------------------------------------

    def _transaction_key(self, ksn: bytes) -> bytes:
        """The KSN's transaction key, from a small LRU cache: a request's MAC check, its
        response MAC and a PIN check all use the same KSN, and derivation is most of the
        host's CPU time per message."""
        ksn = bytes(ksn)
        with self._cache_lock:
            tk = self._tk_cache.get(ksn)
            if tk is not None:
                self._tk_cache.move_to_end(ksn)
                return tk
        if len(ksn) == 12:
            tk = c.aes_dukpt_transaction_key(c.aes_dukpt_initial_key(self._aes_bdk(ksn[:4]), ksn[:8]), ksn)
        elif len(ksn) == 10:
            tk = c.tdes_dukpt_transaction_key(c.tdes_dukpt_ipek(self._tdes_bdk, ksn), ksn)
        else:
            raise CryptoError("a KSN is 10 (TDES) or 12 (AES) bytes")
        with self._cache_lock:
            self._tk_cache[ksn] = tk
            while len(self._tk_cache) > TK_CACHE_SIZE:
                self._tk_cache.popitem(last=False)
        return tk

    def _working(self, ksn: bytes, purpose: str) -> tuple[bytes, bool]:
        if len(ksn) == 12:
            tk = self._transaction_key(ksn)
            return c.aes_dukpt_working_key(tk, ksn, purpose), True
        if len(ksn) == 10:
            tk = self._transaction_key(ksn)
            variant = {"mac_generation": "mac_request", "mac_verification": "mac_response"}.get(purpose, purpose)
            return c.tdes_dukpt_working_key(tk, variant), False
        raise CryptoError("a KSN is 10 (TDES) or 12 (AES) bytes")

    def _mac_key(self, ksn: bytes, purpose: str, mode: c.Mode) -> c.Key:
        # Typed: the host may only verify with the terminal's request key, only sign with the response key.
        key, aes = self._working(ksn, purpose)
        return c.Key(key, c.Usage.MAC, c.Algorithm.AES if aes else c.Algorithm.TDES, mode)

    def verify_request_mac(self, ksn: bytes, data: bytes, mac: bytes | None) -> bool:
        """True when ``mac`` (8 bytes) is the terminal's MAC of ``data`` under ``ksn``; False otherwise
        (wrong MAC or size, unknown BDK, invalid KSN)."""
        if not mac or not ksn or len(mac) != MAC_SIZE:
            return False
        try:
            return c.cmac_verify(self._mac_key(ksn, "mac_generation", c.Mode.VERIFY), data, bytes(mac))
        except CryptoError:
            return False

    def response_mac(self, ksn: bytes, data: bytes) -> bytes:
        """MAC a response to the terminal under the response key of ``ksn`` (8 bytes).

        Raises CryptoError for a KSN this HSM cannot derive (bad length, unknown BDK, invalid counter).
        """
        return c.cmac_for(self._mac_key(ksn, "mac_verification", c.Mode.GENERATE), data, MAC_SIZE)

    # -- payment secrets and PINs ------------------------------------------------------

    @staticmethod
    def payment_verifier(password: str) -> bytes:
        """A salted scrypt verifier of a customer's payment password (opaque bytes)."""
        if not (password.isdigit() and 6 <= len(password) <= 12):
            raise CryptoError("a payment password is 6 to 12 digits")
        return make_verifier(password)

    def identity_hash(self, value: str) -> bytes:
        """A keyed hash (HMAC-SHA256 under the HSM's identity key, 32 bytes) of an identity
        document value (a resident ID number, a name), so the host can compare one given
        again without keeping it: without the key, the hash of a guessable value (an ID
        number) cannot be searched for offline. The key is used for nothing else."""
        return _hmac.new(self._identity_key, b"posterm-identity:" + value.encode(), hashlib.sha256).digest()

    def verify_pin(self, *, ksn: bytes, pin_block: bytes, pin_format: int, pan: str, verifier: bytes,
                   tries_used: int) -> PinCheck:
        """Decrypt the PIN block, compare it with ``verifier``, and forget it.

        Refuses to decrypt at all when ``tries_used`` reached the limit (3). A block that
        does not decode counts as a wrong PIN.
        """
        if tries_used >= PIN_MAX_TRIES:
            return PinCheck(False, True, 0)
        try:
            key, aes = self._working(ksn, "pin")
            if aes and pin_format == 4:
                pin = c.decrypt_pin_block_4(c.Key(key, c.Usage.PIN, c.Algorithm.AES), pin_block, pan)
            elif not aes and pin_format in (0, 3):
                pin = c.decrypt_pin_block_03(c.Key(key, c.Usage.PIN, c.Algorithm.TDES), pin_block, pan)
            else:
                raise CryptoError("PIN block format does not fit the key")
            match = check_verifier(pin, verifier)
            del pin
        except CryptoError:
            match = False
        used = 0 if match else tries_used + 1
        return PinCheck(match, used >= PIN_MAX_TRIES, PIN_MAX_TRIES - used)

    def __repr__(self) -> str:
        return (f"<Hsm bdk_id={self._bdk_id.hex().upper()} {c.aes_dukpt_key_type(self._bdk).name} "
                f"kcv={c.kcv(self._bdk).hex().upper()} "
                f"retired={len(self._retired)}>")

    def __reduce__(self):
        raise CryptoError("the HSM cannot be pickled")
