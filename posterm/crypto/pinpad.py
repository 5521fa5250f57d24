"""The PIN pad's secure module: the only place on the terminal that holds keys or a PIN.

It holds the DUKPT initial key (AES DUKPT per ANSI X9.24-3 by default, an AES-128,
AES-192 or AES-256 initial key, whose working keys are of the same type; TDES DUKPT per
X9.24-1 when the loaded key block says so) and the key-block protection key the key
injection facility gave it. Digits typed on the PIN pad go straight in here; only an
encrypted PIN block and its KSN come out. Host messages are MAC'd here with the
transaction's MAC key. The clear PIN and every key stay inside: ``repr`` and exceptions
never carry them. This module never imports :mod:`posterm.crypto.hsm`.

The DUKPT counter advances before every use and is persisted (sealed) before the KSN
leaves the module, so a crash can never make a KSN be used twice: the module reserves
``KSN_RESERVE`` counters per sealed write and, after a restart, continues after the
reservation (skipping unused counters is allowed, reusing one never is). Counters with
too many one-bits are skipped; at exhaustion the module refuses to work and says so.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from posterm.crypto import common as c
from posterm.crypto import sealed
from posterm.crypto.verifier import check_verifier, make_verifier
from posterm.errors import CryptoError

MAC_SIZE = 8
OPERATOR_MAX_TRIES = 5
SUPERVISOR_MAX_TRIES = 3            # wrong supervisor passwords in a row before the lock
SUPERVISOR_LOCK_SECONDS = 30 * 60   # how long the lock lasts (then each wrong try locks again)


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    loaded: bool
    ksn: bytes | None
    counters_left: int
    kcv: bytes | None
    algorithm: str
    key_bits: int = 0        # the initial key's length: 128/192/256 (AES), 128/192 (TDES); 0 when none


@dataclass(frozen=True, slots=True)
class EncryptedPin:
    block: bytes
    ksn: bytes
    format: int

    def __repr__(self) -> str:
        return f"EncryptedPin(block=<{len(self.block)} bytes>, ksn={self.ksn.hex().upper()}, format={self.format})"


def _count_valid_upto(limit: int, max_ones: int, bits: int) -> int:
    """How many values v with 1 <= v <= limit have at most ``max_ones`` one-bits."""
    from math import comb

    total, ones = 0, 0
    for bit in range(bits - 1, -1, -1):
        if limit & (1 << bit):
            # put 0 here, choose any bits below
            total += sum(comb(bit, k) for k in range(0, max_ones - ones + 1) if k <= bit)
            ones += 1
            if ones > max_ones:
                break
    if ones <= max_ones:
        total += 1  # limit itself
    return total - 1  # drop zero


KSN_RESERVE = 16   # counters reserved per sealed write (next_ksn)
KEYS_REMEMBERED = 64   # initial key ids whose last counter the pad keeps (oldest forgotten first)


class _PinDigits(bytearray):
    """The digits typed so far: a bytearray that never shows them (repr, vars(), a debugger's
    locals view, a traceback's frame dump)."""

    def __repr__(self) -> str:
        return f"<{len(self)} PIN digits>"

    __str__ = __repr__


class SecureModule:
    """The PIN pad's secure module. See the module docstring."""

    def __init__(self, state_path: str | Path | None = None) -> None:
        self._path = Path(state_path) if state_path else None
        self._lock = threading.RLock()
        self._kbpk: bytes | None = None
        self._ik: c.Key | None = None
        self._ikid: bytes = b""      # AES: 8-byte initial key id; TDES: the KSN with counter 0
        self._counter = 0
        self._reserved = 0           # persisted high-water mark: no counter up to it is ever used again
        self._algorithm = "AES"
        self._key_version = "00"
        self._tk_cache: tuple[bytes, bytes] | None = None   # (current KSN, its transaction key)
        # Initial key id (hex) -> the highest counter reserved under it: loading a key the
        # pad held before continues after it instead of from 0 (a KSN is never used twice).
        self._high_water: dict[str, int] = {}
        self._pan: str | None = None
        self._digits = _PinDigits()
        if self._path is not None:
            self._restore()

    # -- persistence --------------------------------------------------------

    def _restore(self) -> None:
        doc = sealed.load(self._path)  # type: ignore[arg-type]
        if not doc:
            return
        self._kbpk = bytes.fromhex(doc["kbpk"]) if doc.get("kbpk") else None
        if doc.get("ik"):
            alg = c.Algorithm.AES if doc["algorithm"] == "AES" else c.Algorithm.TDES
            self._ik = c.Key(bytes.fromhex(doc["ik"]), c.Usage.DUKPT_IK, alg, c.Mode.DERIVE)
            self._ikid = bytes.fromhex(doc["ikid"])
            # The stored counter is a high-water mark: counters up to it may have been used
            # before the module stopped, so it continues after it (see next_ksn).
            self._counter = self._reserved = doc["counter"]
            self._algorithm = doc["algorithm"]
            self._key_version = doc.get("key_version", "00")
        self._high_water = {str(k): int(v) for k, v in (doc.get("high_water") or {}).items()}

    def _persist(self) -> None:
        if self._path is None:
            return
        sealed.save(self._path, {
            "kbpk": self._kbpk.hex() if self._kbpk else None,
            "ik": self._ik.material(c.Usage.DUKPT_IK).hex() if self._ik else None,
            "ikid": self._ikid.hex(), "counter": max(self._counter, self._reserved), "algorithm": self._algorithm,
            "key_version": self._key_version, "high_water": self._high_water})

    # -- key loading --------------------------------------------------------

    def inject_kbpk(self, kbpk: bytes) -> None:
        """Key injection facility step: store the key-block protection key (AES)."""
        if len(kbpk) not in (16, 24, 32):
            raise CryptoError("a KBPK is an AES-128/192/256 key")
        with self._lock:
            self._kbpk = bytes(kbpk)
            self._persist()

    def load_key_block(self, block: str) -> ModuleStatus:
        """Unwrap a TR-31 version D block holding a DUKPT initial key (usage B1) and store it.

        Checks the header (usage B1, mode X or N, non-exportable), the initial key id
        (optional block ``IK`` for AES, ``KS`` for TDES) and the key check value (``KC``).
        Raises CryptoError, never with key bytes in the message.
        """
        with self._lock:
            if self._kbpk is None:
                raise CryptoError("no key-block protection key in this PIN pad: it was never injected")
            if not isinstance(block, str) or block[:1] != "D":
                raise CryptoError("a PIN pad loads TR-31 version D key blocks only")
            header, key = c.tr31_unwrap(self._kbpk, block)
            if header.usage != c.Usage.DUKPT_IK.value:
                raise CryptoError(f"key block usage is {header.usage}, a PIN pad loads only B1 (DUKPT initial key)")
            if header.algorithm not in ("A", "T"):
                raise CryptoError(f"key block algorithm {header.algorithm} is not AES (A) or TDES (T)")
            if header.mode not in ("X", "N"):
                raise CryptoError(f"key block mode {header.mode} is not a derivation mode (X)")
            if header.exportability != "N":
                raise CryptoError("a DUKPT initial key must be non-exportable (N)")
            if header.key_version.startswith("c"):
                raise CryptoError("key block holds a key component; a PIN pad loads whole keys only")
            alg = c.Algorithm.AES if header.algorithm == "A" else c.Algorithm.TDES
            if len(key) not in ((16, 24, 32) if alg is c.Algorithm.AES else (16, 24)):
                raise CryptoError(f"key block says {alg.name} but holds a {len(key) * 8}-bit key")
            if alg is c.Algorithm.AES and len(key) > len(self._kbpk):
                # X9.24-1 / TR-31: a key travels under a key at least as strong as itself.
                raise CryptoError(f"an AES-{len(key) * 8} key under an AES-{len(self._kbpk) * 8} key-block "
                                  "protection key is weaker protected than it is strong: refused")
            # Anti-rollback: once a versioned key is loaded, an older version is refused.
            if (header.key_version.isdigit() and self._ik is not None and self._key_version.isdigit()
                    and int(header.key_version) < int(self._key_version)):
                raise CryptoError(f"key block version {header.key_version} is older than the loaded "
                                  f"version {self._key_version}: refused (rollback)")
            opts = dict(header.optional_blocks)
            if "KC" not in opts:
                raise CryptoError("key block carries no key check value (KC block): refused")
            if alg is c.Algorithm.AES:
                ikid = bytes.fromhex(opts.get("IK", ""))
                if len(ikid) != 8:
                    raise CryptoError("AES DUKPT key block lacks its 8-byte initial key id (IK block)")
            else:
                ikid = bytes.fromhex(opts.get("KS", ""))
                if len(ikid) != 10:
                    raise CryptoError("TDES DUKPT key block lacks its initial KSN (KS block)")
            want = opts["KC"][2:].upper()
            if not 2 <= len(want) // 2 <= 5 or c.kcv(key, alg, len(want) // 2).hex().upper() != want:
                raise CryptoError("key check value does not match: the key block is corrupt or not for this pad")
            if self._ik is not None:
                self._remember(self._ikid, max(self._counter, self._reserved))
            self._ik = c.Key(key, c.Usage.DUKPT_IK, alg, c.Mode.DERIVE)
            self._tk_cache = None
            self._key_version = header.key_version
            self._ikid = ikid
            # The same initial key loaded again (the host's block for this terminal, a retry)
            # continues after the last counter it reserved: a reset to 0 re-used KSNs, and the
            # host refused every payment as a replay until the counter climbed back.
            self._counter = self._reserved = self._high_water.get(self._key_id(ikid, alg), 0)
            self._algorithm = alg.name
            self._persist()
            return self.status()

    @staticmethod
    def _key_id(ikid: bytes, alg: c.Algorithm | str) -> str:
        """The initial key's identity in a KSN: AES the 8-byte id; TDES the KSN without its counter."""
        name = alg.name if isinstance(alg, c.Algorithm) else alg
        if name == "AES":
            return "A" + ikid.hex()
        return "T" + (int.from_bytes(ikid, "big") & ~0x1FFFFF).to_bytes(10, "big").hex()

    def _remember(self, ikid: bytes, counter: int) -> None:
        key = self._key_id(ikid, self._algorithm)
        self._high_water[key] = max(counter, self._high_water.pop(key, 0))   # re-inserted: now the newest
        while len(self._high_water) > KEYS_REMEMBERED:
            self._high_water.pop(next(iter(self._high_water)))

    # -- status -------------------------------------------------------------

    def _ksn(self) -> bytes:
        if self._algorithm == "AES":
            return self._ikid + self._counter.to_bytes(4, "big")
        base = int.from_bytes(self._ikid, "big") & ~0x1FFFFF
        return (base | self._counter).to_bytes(10, "big")

    def status(self) -> ModuleStatus:
        """Loaded or not, the current KSN (the initial KSN, counter 0, before the first
        transaction), valid counters left, the initial key's KCV and the algorithm. Never key bytes."""
        with self._lock:
            if self._ik is None:
                return ModuleStatus(False, None, 0, None, self._algorithm)
            if self._algorithm == "AES":
                left = _count_valid_upto(c.AES_LAST_COUNTER, c.AES_MAX_ONES, 32) - \
                    _count_valid_upto(self._counter, c.AES_MAX_ONES, 32)
            else:
                left = _count_valid_upto(0x1FFFFF, 10, 21) - _count_valid_upto(self._counter, 10, 21)
            return ModuleStatus(True, self._ksn(), left, self._ik.kcv, self._algorithm, len(self._ik) * 8)

    # -- DUKPT --------------------------------------------------------------

    def _require_key(self) -> c.Key:
        if self._ik is None:
            raise CryptoError("no DUKPT key loaded in the PIN pad (posterm keys load)")
        return self._ik

    def next_ksn(self) -> bytes:
        """Advance to the next valid counter and return its KSN. Raises CryptoError at exhaustion."""
        with self._lock:
            self._require_key()
            step = c.aes_dukpt_next_counter if self._algorithm == "AES" else c.tdes_dukpt_next_counter
            nxt = step(self._counter)
            if nxt > self._reserved:
                # Reserve the next KSN_RESERVE counters in one sealed write, before any of them
                # leaves: a crash then skips what was reserved and unused (skipping is allowed;
                # reusing never is), and the pad writes its state once per KSN_RESERVE KSNs.
                high = nxt
                for _ in range(KSN_RESERVE - 1):
                    try:
                        high = step(high)
                    except CryptoError:
                        break
                self._reserved = high
                self._counter = nxt
                self._persist()
            self._counter = nxt
            return self._ksn()

    def _working(self, ksn: bytes, purpose: str) -> bytes:
        ik = self._require_key()
        if ksn != self._ksn() or self._counter == 0:
            raise CryptoError("this KSN is not the PIN pad's current one")
        raw = ik.material(c.Usage.DUKPT_IK)
        # One transaction's request MAC, response check and PIN block share a KSN: derive once.
        if self._tk_cache is not None and self._tk_cache[0] == ksn:
            tk = self._tk_cache[1]
        else:
            derive = c.aes_dukpt_transaction_key if self._algorithm == "AES" else c.tdes_dukpt_transaction_key
            tk = derive(raw, ksn)
            self._tk_cache = (ksn, tk)
        if self._algorithm == "AES":
            return c.aes_dukpt_working_key(tk, ksn, purpose)
        return c.tdes_dukpt_working_key(tk, {"mac_generation": "mac_request", "mac_verification": "mac_response"}
                                        .get(purpose, purpose))

    def _mac_key(self, ksn: bytes, purpose: str, mode: c.Mode) -> c.Key:
        # Typed: the request key may only generate, the response key may only verify.
        alg = c.Algorithm.AES if self._algorithm == "AES" else c.Algorithm.TDES
        return c.Key(self._working(ksn, purpose), c.Usage.MAC, alg, mode)

    def request_mac(self, ksn: bytes, data: bytes) -> bytes:
        """MAC ``data`` with the MAC-generation key of the current ``ksn`` (8 bytes).

        Raises CryptoError when ``ksn`` is not the module's current KSN (``next_ksn``).
        """
        with self._lock:
            return c.cmac_for(self._mac_key(ksn, "mac_generation", c.Mode.GENERATE), data, MAC_SIZE)

    def verify_response_mac(self, ksn: bytes, data: bytes, mac: bytes) -> bool:
        """Check a host response MAC'd with the response key of ``ksn`` (our current KSN).

        Returns False for a wrong MAC, a MAC of the wrong size or a KSN that is not current.
        """
        with self._lock:
            if not mac or len(mac) != MAC_SIZE:
                return False
            try:
                return c.cmac_verify(self._mac_key(ksn, "mac_verification", c.Mode.VERIFY), data, bytes(mac))
            except CryptoError:
                return False

    # -- PIN entry ----------------------------------------------------------

    def begin_pin_entry(self, pan: str) -> None:
        """Start PIN entry for ``pan`` (here: the customer's payment code)."""
        with self._lock:
            self._require_key()
            if not (pan.isascii() and pan.isdigit() and 1 <= len(pan) <= 19):
                raise CryptoError("PIN entry needs a numeric PAN / payment code")
            self._pan = pan
            self._wipe()

    def press(self, digit: str) -> None:
        with self._lock:
            if self._pan is None:
                raise CryptoError("no PIN entry in progress")
            if len(digit) != 1 or not digit.isdigit():
                raise CryptoError("the PIN pad has digit keys only")
            if len(self._digits) >= 12:
                raise CryptoError("a PIN is at most 12 digits")
            self._digits.append(ord(digit))

    def cancel_pin_entry(self) -> None:
        with self._lock:
            self._pan = None
            self._wipe()

    def _wipe(self) -> None:
        for i in range(len(self._digits)):
            self._digits[i] = 0
        self._digits.clear()

    def finish(self) -> EncryptedPin:
        """Encrypt the typed PIN under a fresh transaction's PIN key (format 4 AES, 0 TDES)."""
        with self._lock:
            if self._pan is None:
                raise CryptoError("no PIN entry in progress")
            pan, self._pan = self._pan, None
            if not 4 <= len(self._digits) <= 12:
                self._wipe()  # checked before the counter moves: a short PIN wastes no KSN
                raise CryptoError("PIN entry failed: a PIN is 4 to 12 digits")
            try:
                pin = self._digits.decode()
                ksn = self.next_ksn()
                raw = self._working(ksn, "pin")
                if self._algorithm == "AES":
                    block = c.encrypt_pin_block_4(c.Key(raw, c.Usage.PIN, c.Algorithm.AES), pin, pan)
                    return EncryptedPin(block, ksn, 4)
                block = c.encrypt_pin_block_0(c.Key(raw, c.Usage.PIN, c.Algorithm.TDES), pin, pan)
                return EncryptedPin(block, ksn, 0)
            except CryptoError as exc:
                raise CryptoError(f"PIN entry failed: {exc}") from None
            finally:
                self._wipe()

    def __repr__(self) -> str:
        return f"<SecureModule {self._algorithm} loaded={self._ik is not None} counter={self._counter}>"

    def __reduce__(self):
        raise CryptoError("the secure module cannot be pickled")


class OperatorPassword:
    """The terminal's operator transaction password (refund, void, settlement, key load).

    Stored as a salted scrypt hash (sealed when ``state_path`` is given); locked after
    5 wrong tries in a row until reset by ``change`` with the right old password is
    impossible, so a locked terminal needs ``reset`` (a supervisor action).
    """

    def __init__(self, state_path: str | Path | None = None, password: str | None = None) -> None:
        self._path = Path(state_path) if state_path else None
        self._lock = threading.Lock()
        doc = sealed.load(self._path) if self._path else None
        if doc:
            self._verifier = bytes.fromhex(doc["verifier"])
            self.failures = int(doc["failures"])
        else:
            if password is None:
                raise CryptoError("no operator password set")
            self._verifier = make_verifier(password)
            self.failures = 0
            self._save()

    def _save(self) -> None:
        if self._path:
            sealed.save(self._path, {"verifier": self._verifier.hex(), "failures": self.failures})

    @property
    def locked(self) -> bool:
        return self.failures >= OPERATOR_MAX_TRIES

    def verify(self, password: str | None) -> bool:
        with self._lock:
            if self.locked or not password:
                if password is not None and not self.locked:
                    self.failures += 1
                    self._save()
                return False
            ok = check_verifier(password, self._verifier)
            self.failures = 0 if ok else self.failures + 1
            self._save()
            return ok

    def matches(self, password: str) -> bool:
        """Whether ``password`` is this one, neither counting a wrong try nor clearing the
        count: for whoever holds the state itself (the emulator checking what it was
        started with), never for an answer to a keypad prompt (that is :meth:`verify`)."""
        return bool(password) and check_verifier(password, self._verifier)

    def change(self, old: str, new: str) -> None:
        if not self.verify(old):
            raise CryptoError("operator password change refused: the old password is wrong" +
                              (" (now locked)" if self.locked else ""))
        with self._lock:
            self._verifier = make_verifier(new)
            self._save()

    def reset(self, new: str) -> None:
        """Supervisor reset (unlock with a new password)."""
        with self._lock:
            self._verifier, self.failures = make_verifier(new), 0
            self._save()

    def __repr__(self) -> str:
        return f"<OperatorPassword locked={self.locked} failures={self.failures}>"


@dataclass(frozen=True, slots=True)
class SupervisorCheck:
    """What :meth:`SupervisorPassword.verify` found. ``locked_until``: wall-clock seconds
    (epoch) until which the supervisor password is refused unchecked; ``tries_left``:
    wrong tries before the lock (0 once it is locked)."""

    ok: bool
    tries_left: int
    locked_until: float | None = None


class SupervisorPassword:
    """The terminal's supervisor password: the one that resets (and unlocks) the operator
    password. Stored like the operator password (a salted scrypt hash, sealed when
    ``state_path`` is given) with its own try limit: ``SUPERVISOR_MAX_TRIES`` (3) wrong
    tries in a row lock it for ``SUPERVISOR_LOCK_SECONDS`` (30 minutes); while locked it is
    not even checked. After the lock, until a right one, each wrong try locks it again at
    once. A right one clears the count. The count and the lock survive a restart (wall
    clock, ``clock``)."""

    def __init__(self, state_path: str | Path | None = None, password: str | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = Path(state_path) if state_path else None
        self._lock = threading.Lock()
        self._clock = clock
        doc = sealed.load(self._path) if self._path else None
        if doc:
            self._verifier = bytes.fromhex(doc["verifier"])
            self.failures = int(doc["failures"])
            self.locked_until: float | None = doc.get("locked_until")
        else:
            if password is None:
                raise CryptoError("no supervisor password set")
            self._verifier = make_verifier(password)
            self.failures, self.locked_until = 0, None
            self._save()

    def _save(self) -> None:
        if self._path:
            sealed.save(self._path, {"verifier": self._verifier.hex(), "failures": self.failures,
                                     "locked_until": self.locked_until})

    @property
    def locked(self) -> bool:
        return self.locked_until is not None and self._clock() < self.locked_until

    @property
    def tries_left(self) -> int:
        return 0 if self.locked else max(1, SUPERVISOR_MAX_TRIES - self.failures)

    def verify(self, password: str | None) -> SupervisorCheck:
        """Check ``password`` (counting a wrong one); refused unchecked while locked."""
        with self._lock:
            if self.locked:
                return SupervisorCheck(False, 0, self.locked_until)
            if password and check_verifier(password, self._verifier):
                self.failures, self.locked_until = 0, None
                self._save()
                return SupervisorCheck(True, SUPERVISOR_MAX_TRIES)
            self.failures += 1
            if self.failures >= SUPERVISOR_MAX_TRIES:
                self.locked_until = self._clock() + SUPERVISOR_LOCK_SECONDS
            self._save()
            if self.locked_until is not None and self._clock() < self.locked_until:
                return SupervisorCheck(False, 0, self.locked_until)
            return SupervisorCheck(False, SUPERVISOR_MAX_TRIES - self.failures)

    def matches(self, password: str) -> bool:
        """Whether ``password`` is this one, counting nothing: for whoever holds the state
        (the emulator checking what it was started with), never for a keypad answer."""
        return bool(password) and check_verifier(password, self._verifier)

    def __repr__(self) -> str:
        return f"<SupervisorPassword locked={self.locked} failures={self.failures}>"
