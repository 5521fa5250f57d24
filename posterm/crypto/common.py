"""Payment-crypto primitives both sides of the trust boundary share.

- :class:`Key`: key bytes with their TR-31 usage, algorithm and mode; a key refuses any
  other use (a PIN key cannot MAC, a MAC key cannot encrypt a PIN) and never shows its
  bytes in ``repr``, ``str`` or an exception.
- AES-CMAC and TDES-CMAC (``cryptography``), ANSI X9.19 retail MAC, key check values.
- ISO 9564-1 PIN blocks, formats 0, 3 (TDES, 8 bytes) and 4 (AES, 16 bytes).
- ANSI TR-31 key blocks, versions B (TDES, key derivation binding) and D (AES).
- DUKPT: AES per ANSI X9.24-3-2017, TDES per ANSI X9.24-1-2009 (legacy hardware).

Everything here is checked against the published vectors in ``../shared/vectors``.
"""

from __future__ import annotations

import enum
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from posterm.crypto.verifier import check_verifier, make_verifier  # noqa: F401 - re-exported
from posterm.errors import CryptoError

# ----------------------------------------------------------------------------- keys


class Usage(str, enum.Enum):
    """TR-31 key usage codes we use."""

    BDK = "B0"
    DUKPT_IK = "B1"          # DUKPT initial key (IK / IPEK)
    PIN = "P0"
    MAC = "M6"               # ISO 9797-1 algorithm 5 (CMAC)
    MAC_RETAIL = "M1"        # X9.19 retail MAC
    DATA = "D0"
    KBPK = "K0"              # key-block protection key
    KEY_DERIVATION = "B2"    # an intermediate DUKPT derivation key (internal)


class Algorithm(str, enum.Enum):
    AES = "A"
    TDES = "T"


class Mode(str, enum.Enum):
    ENCRYPT = "E"
    DECRYPT = "D"
    BOTH = "B"
    GENERATE = "G"
    VERIFY = "V"
    CALCULATE = "C"          # MAC generate and verify
    DERIVE = "X"
    ANY = "N"


# What each TR-31 mode of use lets a key do: B is encrypt+decrypt, C is MAC generate+verify.
_MODE_PERMITS: dict[Mode, frozenset[Mode]] = {
    Mode.ANY: frozenset(Mode),
    Mode.BOTH: frozenset({Mode.ENCRYPT, Mode.DECRYPT, Mode.BOTH}),
    Mode.CALCULATE: frozenset({Mode.GENERATE, Mode.VERIFY, Mode.CALCULATE}),
    Mode.ENCRYPT: frozenset({Mode.ENCRYPT}), Mode.DECRYPT: frozenset({Mode.DECRYPT}),
    Mode.GENERATE: frozenset({Mode.GENERATE}), Mode.VERIFY: frozenset({Mode.VERIFY}),
    Mode.DERIVE: frozenset({Mode.DERIVE}),
}


class Key:
    """Key material bound to one usage. ``repr`` shows the usage and KCV, never the key."""

    __slots__ = ("_bytes", "usage", "algorithm", "mode")

    def __init__(self, material: bytes, usage: Usage, algorithm: Algorithm, mode: Mode = Mode.ANY) -> None:
        sizes = (16, 24, 32) if algorithm is Algorithm.AES else (8, 16, 24)
        if len(material) not in sizes:
            raise CryptoError(f"a {algorithm.name} key is {'/'.join(map(str, sizes))} bytes, not {len(material)}")
        self._bytes = bytes(material)
        self.usage = usage
        self.algorithm = algorithm
        self.mode = mode

    def material(self, usage: Usage, *modes: Mode) -> bytes:
        """The bytes, for a use this key allows: ``usage`` must be the key's own and its mode
        must permit one of ``modes``. Raises CryptoError (naming the uses, never the bytes)."""
        if usage is not self.usage:
            raise CryptoError(f"a {self.usage.name} key cannot be used as a {usage.name} key")
        if modes and not _MODE_PERMITS[self.mode] & set(modes):
            raise CryptoError(f"a {self.usage.name} key with mode {self.mode.name} cannot "
                              f"{'/'.join(m.name.lower() for m in modes)}")
        return self._bytes

    @property
    def kcv(self) -> bytes:
        return kcv(self._bytes, self.algorithm)

    def __len__(self) -> int:
        return len(self._bytes)

    def __repr__(self) -> str:
        return f"<Key {self.usage.name} {self.algorithm.name}-{len(self._bytes) * 8} kcv={self.kcv.hex().upper()}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Key) and other.usage is self.usage and other.algorithm is self.algorithm
                and hmac.compare_digest(other._bytes, self._bytes))

    def __hash__(self) -> int:
        return hash((self.usage, self.kcv))

    def __reduce__(self):  # pickling would put the bytes somewhere we do not control
        raise CryptoError("keys cannot be pickled")


# ----------------------------------------------------------------------------- block ciphers


def _tdes_key(key: bytes) -> bytes:
    if len(key) not in (8, 16, 24):
        raise CryptoError(f"a TDES key is 8, 16 or 24 bytes, not {len(key)}")
    # The same cipher, spelled as the 24-byte keys cryptography will keep supporting.
    return key * 3 if len(key) == 8 else key + key[:8] if len(key) == 16 else key


def aes_ecb(key: bytes, block: bytes, decrypt: bool = False) -> bytes:
    c = Cipher(algorithms.AES(key), modes.ECB())
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(block) + op.finalize()


def tdes_ecb(key: bytes, block: bytes, decrypt: bool = False) -> bytes:
    c = Cipher(TripleDES(_tdes_key(key)), modes.ECB())
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(block) + op.finalize()


def des_ecb(key8: bytes, block: bytes, decrypt: bool = False) -> bytes:
    return tdes_ecb(key8, block, decrypt)  # TripleDES with one 8-byte key is single DES


def cbc(algorithm: Algorithm, key: bytes, iv: bytes, data: bytes, decrypt: bool = False) -> bytes:
    alg = algorithms.AES(key) if algorithm is Algorithm.AES else TripleDES(_tdes_key(key))
    c = Cipher(alg, modes.CBC(iv))
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(data) + op.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------- MACs and KCVs


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (NIST SP 800-38B, RFC 4493): 16 bytes."""
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def tdes_cmac(key: bytes, data: bytes) -> bytes:
    """TDES-CMAC: 8 bytes."""
    c = cmac.CMAC(TripleDES(_tdes_key(key)))
    c.update(data)
    return c.finalize()


def retail_mac(key16: bytes, data: bytes) -> bytes:
    """ANSI X9.19 retail MAC (ISO 9797-1 MAC algorithm 3, padding method 1): 8 bytes."""
    if len(key16) != 16:
        raise CryptoError("the retail MAC needs a double-length TDES key")
    padded = data + b"\x00" * (-len(data) % 8) if data else b"\x00" * 8
    left, right = key16[:8], key16[8:]
    chain = cbc(Algorithm.TDES, left, b"\x00" * 8, padded)[-8:]
    return des_ecb(left, des_ecb(right, chain, decrypt=True))


def kcv(key: bytes, algorithm: Algorithm = Algorithm.AES, length: int = 3) -> bytes:
    """Key check value: AES = CMAC of a zero block (X9.24-3); TDES = encrypt a zero block."""
    if algorithm is Algorithm.AES:
        return aes_cmac(key, b"\x00" * 16)[:length]
    return tdes_ecb(key, b"\x00" * 8)[:length]


def _cmac_any(key: Key, raw: bytes, data: bytes, length: int) -> bytes:
    mac = aes_cmac(raw, data) if key.algorithm is Algorithm.AES else tdes_cmac(raw, data)
    return mac[:length]


def cmac_for(key: Key, data: bytes, length: int = 8) -> bytes:
    """Generate a MAC under a typed MAC key whose mode allows generating. Raises CryptoError otherwise."""
    return _cmac_any(key, key.material(Usage.MAC, Mode.GENERATE), data, length)


def cmac_verify(key: Key, data: bytes, mac: bytes) -> bool:
    """Check ``mac`` (its length is the truncation) under a MAC key whose mode allows verifying.

    Raises CryptoError for a key that may not verify; a wrong MAC is just False.
    """
    if not 4 <= len(mac) <= 16:
        return False
    return hmac.compare_digest(_cmac_any(key, key.material(Usage.MAC, Mode.VERIFY), data, len(mac)), bytes(mac))


# ----------------------------------------------------------------------------- PIN blocks (ISO 9564-1)


def _check_pin(pin: str) -> None:
    if not (pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 12):
        raise CryptoError("a PIN is 4 to 12 digits")


def _check_pan(pan: str) -> None:
    if not (pan.isascii() and pan.isdigit() and 1 <= len(pan) <= 19):
        raise CryptoError("a PAN (or payment code) is 1 to 19 digits")


def _pan_field_0(pan: str) -> bytes:
    _check_pan(pan)
    digits = pan[:-1][-12:].rjust(12, "0")
    return bytes.fromhex("0000" + digits)


def pin_block_0(pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 0 clear PIN block (8 bytes)."""
    _check_pin(pin)
    field = f"0{len(pin):X}{pin}".ljust(16, "F")
    return xor(bytes.fromhex(field), _pan_field_0(pan))


def pin_block_3(pin: str, pan: str, fill: bytes | None = None) -> bytes:
    """ISO 9564-1 format 3 clear PIN block (8 bytes): random fill nibbles A-F."""
    _check_pin(pin)
    rnd = fill if fill is not None else os.urandom(16)
    nibbles = "".join("ABCDEF"[b % 6] for b in rnd)
    field = (f"3{len(pin):X}{pin}" + nibbles)[:16]
    return xor(bytes.fromhex(field), _pan_field_0(pan))


def decode_pin_block_03(block: bytes, pan: str) -> str:
    """Decode a clear format 0 or 3 block, checking it belongs to ``pan``. Raises CryptoError."""
    if len(block) != 8:
        raise CryptoError("a format 0/3 PIN block is 8 bytes")
    field = xor(block, _pan_field_0(pan)).hex().upper()
    fmt, n = field[0], int(field[1], 16)
    if fmt not in "03" or not 4 <= n <= 12:
        raise CryptoError("not a format 0/3 PIN block for this PAN")
    pin, rest = field[2:2 + n], field[2 + n:]
    ok_fill = set(rest) <= ({"F"} if fmt == "0" else set("ABCDEF"))
    if not pin.isdigit() or not ok_fill:
        raise CryptoError("PIN block does not decode for this PAN (wrong PAN or key)")
    return pin


def pin_field_4(pin: str, fill: bytes | None = None) -> bytes:
    _check_pin(pin)
    head = f"4{len(pin):X}{pin}".ljust(16, "A")
    return bytes.fromhex(head) + (fill if fill is not None else os.urandom(8))


def pan_field_4(pan: str) -> bytes:
    _check_pan(pan)
    m = max(len(pan) - 12, 0)
    return bytes.fromhex((f"{m:X}" + pan.rjust(12, "0")).ljust(32, "0"))


def encrypt_pin_block_4(key: Key, pin: str, pan: str, fill: bytes | None = None) -> bytes:
    """ISO 9564-1 format 4 enciphered PIN block (16 bytes) under an AES PIN key."""
    raw = key.material(Usage.PIN, Mode.ENCRYPT)
    if key.algorithm is not Algorithm.AES:
        raise CryptoError("format 4 PIN blocks need an AES PIN key")
    inter = aes_ecb(raw, pin_field_4(pin, fill))
    return aes_ecb(raw, xor(inter, pan_field_4(pan)))


def decrypt_pin_block_4(key: Key, block: bytes, pan: str) -> str:
    """Decipher a format 4 block and return the PIN; the PAN is checked. Raises CryptoError."""
    raw = key.material(Usage.PIN, Mode.DECRYPT)
    if len(block) != 16:
        raise CryptoError("a format 4 PIN block is 16 bytes")
    inter = xor(aes_ecb(raw, block, decrypt=True), pan_field_4(pan))
    field = aes_ecb(raw, inter, decrypt=True).hex().upper()
    n = int(field[1], 16)
    if field[0] != "4" or not 4 <= n <= 12 or not field[2:2 + n].isdigit() or set(field[2 + n:16]) != {"A"}:
        raise CryptoError("PIN block does not decode (wrong key, PAN or format)")
    return field[2:2 + n]


def encrypt_pin_block_0(key: Key, pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 0 enciphered under a TDES PIN key (8 bytes). Raises CryptoError."""
    raw = key.material(Usage.PIN, Mode.ENCRYPT)
    if key.algorithm is not Algorithm.TDES:
        raise CryptoError("format 0 PIN blocks need a TDES PIN key")
    return tdes_ecb(raw, pin_block_0(pin, pan))


def encrypt_pin_block_3(key: Key, pin: str, pan: str, fill: bytes | None = None) -> bytes:
    """ISO 9564-1 format 3 enciphered under a TDES PIN key (8 bytes). Raises CryptoError."""
    raw = key.material(Usage.PIN, Mode.ENCRYPT)
    if key.algorithm is not Algorithm.TDES:
        raise CryptoError("format 3 PIN blocks need a TDES PIN key")
    return tdes_ecb(raw, pin_block_3(pin, pan, fill))


def decrypt_pin_block_03(key: Key, block: bytes, pan: str) -> str:
    """Decipher a format 0 or 3 block under a TDES PIN key and return the PIN (PAN checked). Raises CryptoError."""
    raw = key.material(Usage.PIN, Mode.DECRYPT)
    if key.algorithm is not Algorithm.TDES or len(block) != 8:
        raise CryptoError("format 0/3 PIN blocks are 8 bytes under a TDES PIN key")
    return decode_pin_block_03(tdes_ecb(raw, block, decrypt=True), pan)


# ----------------------------------------------------------------------------- TR-31 key blocks


@dataclass(frozen=True, slots=True)
class TR31Header:
    version: str
    length: int
    usage: str
    algorithm: str
    mode: str
    key_version: str
    exportability: str
    optional_blocks: tuple[tuple[str, str], ...] = ()

    def text(self, length: int) -> str:
        opt = "".join(f"{bid}{len(data) + 4:02X}{data}" for bid, data in self.optional_blocks)
        return (f"{self.version}{length:04d}{self.usage}{self.algorithm}{self.mode}{self.key_version}"
                f"{self.exportability}{len(self.optional_blocks):02d}00{opt}")


def parse_tr31_header(block: str) -> tuple[TR31Header, int]:
    """Parse the clear header of a TR-31 block. Returns (header, header length). Raises CryptoError."""
    if not block.isascii() or len(block) < 16:
        raise CryptoError("TR-31 block too short or not ASCII")
    version = block[0]
    if version not in "ABCD":
        raise CryptoError(f"TR-31 version {version!r} is not supported (A, B, C, D)")
    try:
        length = int(block[1:5])
        count = int(block[12:14])
    except ValueError:
        raise CryptoError("TR-31 header has a non-numeric length or block count") from None
    if length != len(block):
        raise CryptoError(f"TR-31 length field says {length} but the block is {len(block)} characters")
    pos, opts = 16, []
    for _ in range(count):
        bid = block[pos:pos + 2]
        try:
            blen = int(block[pos + 2:pos + 4], 16)
        except ValueError:
            raise CryptoError("TR-31 optional block length is not hex") from None
        if blen < 4 or pos + blen > len(block):
            raise CryptoError("TR-31 optional block overruns the key block")
        opts.append((bid, block[pos + 4:pos + blen]))
        pos += blen
    # PB is padding for the cipher, not information: dropped here, re-added by tr31_wrap when needed.
    header = TR31Header(version, length, block[5:7], block[7], block[8], block[9:11], block[11],
                        tuple(o for o in opts if o[0] != "PB"))
    _check_tr31_header(header, block[14:16])
    return header, pos


# Header field values ANSI X9.143 / TR-31:2018 define; anything else is a malformed block.
TR31_ALGORITHMS = frozenset("ADEHRST")      # AES, DEA, elliptic curve, HMAC, RSA, DSA, TDES
TR31_MODES = frozenset("BCDEGNSTVX")
TR31_EXPORTABILITY = frozenset("ENS")


def _check_tr31_header(header: TR31Header, reserved: str) -> None:
    """Refuse a header whose fields are not TR-31 values. Raises CryptoError naming the field."""
    if not (len(header.usage) == 2 and header.usage.isalnum() and header.usage == header.usage.upper()):
        raise CryptoError(f"TR-31 key usage {header.usage!r} is not a usage code")
    if header.algorithm not in TR31_ALGORITHMS:
        raise CryptoError(f"TR-31 algorithm {header.algorithm!r} is not an algorithm code")
    if header.mode not in TR31_MODES:
        raise CryptoError(f"TR-31 mode of use {header.mode!r} is not a mode code")
    if not (len(header.key_version) == 2 and header.key_version.isalnum()):
        raise CryptoError(f"TR-31 key version {header.key_version!r} is not two alphanumerics")
    if header.exportability not in TR31_EXPORTABILITY:
        raise CryptoError(f"TR-31 exportability {header.exportability!r} is not E, N or S")
    if reserved != "00":
        raise CryptoError("TR-31 reserved field is not 00")


# What the header fields mean (ANSI X9.143 / TR-31:2018), for people reading a block.
TR31_VERSION_NAMES = {"A": "key variant binding (TDES, deprecated)", "B": "TDES key derivation binding",
                      "C": "TDES key variant binding", "D": "AES key derivation binding"}
TR31_USAGE_NAMES = {
    "B0": "base derivation key", "B1": "initial DUKPT key", "B2": "base key variant key",
    "C0": "CVK (card verification key)", "D0": "data encryption (symmetric)", "D1": "data encryption (asymmetric)",
    "E0": "EMV/chip issuer master key: application cryptograms", "E1": "EMV/chip issuer master key: secure "
    "messaging for confidentiality", "E2": "EMV/chip issuer master key: secure messaging for integrity",
    "E3": "EMV/chip issuer master key: data authentication code", "E4": "EMV/chip issuer master key: dynamic numbers",
    "E5": "EMV/chip issuer master key: card personalisation", "E6": "EMV/chip issuer master key: other",
    "I0": "initialisation vector", "K0": "key encryption or wrapping", "K1": "TR-31 key block protection key",
    "K2": "TR-34 asymmetric key", "K3": "asymmetric key for key agreement/wrapping",
    "M0": "ISO 16609 MAC algorithm 1 (TDES)", "M1": "ISO 9797-1 MAC algorithm 1", "M2": "ISO 9797-1 MAC algorithm 2",
    "M3": "ISO 9797-1 MAC algorithm 3", "M4": "ISO 9797-1 MAC algorithm 4", "M5": "ISO 9797-1:1999 MAC algorithm 5",
    "M6": "ISO 9797-1:2011 MAC algorithm 5 (CMAC)", "M7": "HMAC", "M8": "ISO 9797-1:2011 MAC algorithm 6",
    "P0": "PIN encryption", "S0": "asymmetric key pair for digital signature", "S1": "asymmetric key pair, CA",
    "S2": "asymmetric key pair, non-X9.24", "V0": "PIN verification, KPV, other algorithm",
    "V1": "PIN verification, IBM 3624", "V2": "PIN verification, VISA PVV", "V3": "PIN verification, X9.132 "
    "algorithm 1", "V4": "PIN verification, X9.132 algorithm 2",
}
TR31_ALGORITHM_NAMES = {"A": "AES", "D": "DEA", "E": "elliptic curve", "H": "HMAC", "R": "RSA", "S": "DSA",
                        "T": "TDES"}
TR31_MODE_NAMES = {"B": "encrypt/wrap and decrypt/unwrap", "C": "MAC generate and verify", "D": "decrypt/unwrap only",
                   "E": "encrypt/wrap only", "G": "MAC generate only", "N": "no special restrictions",
                   "S": "signature only", "T": "sign and decrypt", "V": "MAC verify only",
                   "X": "key derivation only"}
TR31_EXPORTABILITY_NAMES = {"E": "exportable under a trusted key", "N": "non-exportable",
                            "S": "sensitive: exportable under an untrusted key"}
TR31_OPTIONAL_BLOCK_NAMES = {"CT": "asymmetric key certificate", "DA": "derivation(s) allowed",
                             "HM": "HMAC hash algorithm", "IK": "initial key identifier (AES DUKPT)",
                             "KC": "key check value of the wrapped key", "KP": "key check value of the KBPK",
                             "KS": "initial key serial number (TDES DUKPT)", "KV": "key block values version",
                             "PB": "padding block", "TS": "time stamp"}


def describe_tr31_header(header: TR31Header) -> list[tuple[str, str]]:
    """Every header field with its meaning, as (name, text) pairs in header order (key bytes never)."""
    def named(code: str, names: dict[str, str]) -> str:
        return f"{code} ({names.get(code, 'not a defined value')})"

    kv = header.key_version
    version_text = ("00 (no version)" if kv == "00" else f"{kv} (key component {kv[1]})" if kv[0] == "c"
                    else kv)
    rows = [("version", named(header.version, TR31_VERSION_NAMES)), ("length", str(header.length)),
            ("usage", named(header.usage, TR31_USAGE_NAMES)),
            ("algorithm", named(header.algorithm, TR31_ALGORITHM_NAMES)),
            ("mode", named(header.mode, TR31_MODE_NAMES)), ("key version", version_text),
            ("exportability", named(header.exportability, TR31_EXPORTABILITY_NAMES)),
            ("optional blocks", str(len(header.optional_blocks)))]
    for bid, data in header.optional_blocks:
        rows.append((f"  {bid}", f"{data} ({TR31_OPTIONAL_BLOCK_NAMES.get(bid, 'proprietary or unknown')})"))
    return rows


def _tr31_keys(version: str, kbpk: bytes) -> tuple[bytes, bytes]:
    if version == "D":
        if len(kbpk) not in (16, 24, 32):
            raise CryptoError("a version D KBPK is an AES key")
        alg, bits, calls = {16: (2, 128, 1), 24: (3, 192, 2), 32: (4, 256, 2)}[len(kbpk)]
        out = []
        for usage in (0, 1):
            material = b"".join(aes_cmac(kbpk, bytes([i, 0, usage, 0, 0, alg]) + bits.to_bytes(2, "big"))
                                for i in range(1, calls + 1))
            out.append(material[:len(kbpk)])
        return out[0], out[1]
    if version == "B":
        if len(kbpk) not in (16, 24):
            raise CryptoError("a version B KBPK is a double or triple length TDES key")
        alg, bits, calls = (0, 128, 2) if len(kbpk) == 16 else (1, 192, 3)
        out = []
        for usage in (0, 1):
            out.append(b"".join(tdes_cmac(kbpk, bytes([i, 0, usage, 0, 0, alg]) + bits.to_bytes(2, "big"))
                                for i in range(1, calls + 1)))
        return out[0], out[1]
    raise CryptoError(f"TR-31 version {version} is read-only or unsupported here (use B or D)")


def _with_padding_block(header: TR31Header, bs: int) -> TR31Header:
    """TR-31 wants the header (with optional blocks) to be a whole number of cipher blocks:
    add a PB (padding) optional block of '0' characters when it is not."""
    opts = tuple(o for o in header.optional_blocks if o[0] != "PB")
    if not opts:
        return TR31Header(header.version, header.length, header.usage, header.algorithm, header.mode,
                          header.key_version, header.exportability, ())
    base = len(TR31Header(header.version, 0, header.usage, header.algorithm, header.mode, header.key_version,
                          header.exportability, opts).text(0))
    if base % bs == 0:
        pad = ()
    else:
        pad = (("PB", "0" * ((-(base + 4)) % bs)),)
    return TR31Header(header.version, header.length, header.usage, header.algorithm, header.mode,
                      header.key_version, header.exportability, opts + pad)


def tr31_wrap(kbpk: bytes, header: TR31Header, key: bytes, pad: bytes | None = None) -> str:
    """Wrap ``key`` in a TR-31 version B or D block under ``kbpk``. Raises CryptoError."""
    _check_tr31_header(header, "00")
    bs, maclen = (16, 16) if header.version == "D" else (8, 8)
    header = _with_padding_block(header, bs)
    kbek, kbak = _tr31_keys(header.version, kbpk)
    pad_len = bs - ((2 + len(key)) % bs)
    clear = (len(key) * 8).to_bytes(2, "big") + key + (pad if pad is not None else os.urandom(pad_len))[:pad_len]
    htext_len = len(header.text(0))
    total = htext_len + 2 * len(clear) + 2 * maclen
    htext = header.text(total)
    alg = Algorithm.AES if header.version == "D" else Algorithm.TDES
    mac = (aes_cmac if header.version == "D" else tdes_cmac)(kbak, htext.encode() + clear)[:maclen]
    enc = cbc(alg, kbek, mac, clear)
    return htext + enc.hex().upper() + mac.hex().upper()


def _cbc_mac_tdes(key: bytes, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 1 with TDES, padding method 1 (zeros): the last CBC block."""
    padded = data + b"\x00" * (-len(data) % 8)
    return cbc(Algorithm.TDES, key, b"\x00" * 8, padded)[-8:]


def _tr31_unwrap_variant(kbpk: bytes, block: str, header: TR31Header, hlen: int) -> tuple[TR31Header, bytes]:
    """Versions A and C (key variant binding): read-only, for keys already in the field.

    KBEK = KBPK xor 45..., KBAK = KBPK xor 4D...; the 4-byte TDES CBC-MAC covers the header
    and the *encrypted* key data; the IV is the first 8 header characters.
    """
    if len(kbpk) not in (8, 16, 24):
        raise CryptoError(f"a version {header.version} KBPK is a TDES key")
    try:
        body = bytes.fromhex(block[hlen:])
    except ValueError:
        raise CryptoError("TR-31 key data is not hex") from None
    enc, mac = body[:-4], body[-4:]
    if len(enc) < 8 or len(enc) % 8:
        raise CryptoError("TR-31 encrypted key data is malformed")
    kbek, kbak = xor(kbpk, b"\x45" * len(kbpk)), xor(kbpk, b"\x4D" * len(kbpk))
    if not hmac.compare_digest(_cbc_mac_tdes(kbak, block[:hlen].encode() + enc)[:4], mac):
        raise CryptoError("TR-31 block authentication failed (wrong KBPK or tampered block)")
    clear = cbc(Algorithm.TDES, kbek, block[:8].encode(), enc, decrypt=True)
    return header, _tr31_key_from_clear(clear)


def _tr31_key_from_clear(clear: bytes) -> bytes:
    bits = int.from_bytes(clear[:2], "big")
    if bits == 0 or bits % 8 or 2 + bits // 8 > len(clear):
        raise CryptoError("TR-31 key length is invalid")
    return clear[2:2 + bits // 8]


def tr31_unwrap(kbpk: bytes, block: str) -> tuple[TR31Header, bytes]:
    """Check and unwrap a TR-31 block (B and D; A and C read-only). Raises CryptoError (no key bytes in it)."""
    header, hlen = parse_tr31_header(block)
    if header.version in "AC":
        return _tr31_unwrap_variant(kbpk, block, header, hlen)
    if hlen % (16 if header.version == "D" else 8):
        raise CryptoError(f"TR-31 version {header.version} header is not a whole number of cipher blocks "
                          "(missing PB padding block)")
    maclen = 16 if header.version == "D" else 8
    kbek, kbak = _tr31_keys(header.version, kbpk)
    try:
        body = bytes.fromhex(block[hlen:])
    except ValueError:
        raise CryptoError("TR-31 key data is not hex") from None
    bs = 16 if header.version == "D" else 8
    enc, mac = body[:-maclen], body[-maclen:]
    if len(enc) < bs or len(enc) % bs:
        raise CryptoError("TR-31 encrypted key data is malformed")
    alg = Algorithm.AES if header.version == "D" else Algorithm.TDES
    clear = cbc(alg, kbek, mac, enc, decrypt=True)
    expect = (aes_cmac if header.version == "D" else tdes_cmac)(kbak, block[:hlen].encode() + clear)[:maclen]
    if not hmac.compare_digest(expect, mac):
        raise CryptoError("TR-31 block authentication failed (wrong KBPK or tampered block)")
    return header, _tr31_key_from_clear(clear)


# ----------------------------------------------------------------------------- AES DUKPT (X9.24-3)
#
# Every key is derived by AES-ECB under its parent key of 16-byte *derivation data*
# (ANSI X9.24-3-2017 6.3.2, tables 2 and 3):
#
#   byte 0      version                01
#   byte 1      key block counter      01, 02 for the second block of a 192/256-bit key
#   bytes 2-3   key usage indicator    8001 initial key, 8000 intermediate derivation key,
#                                      0002 KEK, 1000 PIN, 2000/2001/2002 MAC, 3000/3001/3002 data
#   bytes 4-5   algorithm indicator    0000 TDES2, 0001 TDES3, 0002 AES-128, 0003 AES-192, 0004 AES-256
#   bytes 6-7   length in bits         0080, 00C0, 0100
#   bytes 8-15  the initial key id (initial key), or its right half + the 32-bit counter
#
# A key longer than one AES block takes two encryptions (counter 01, 02), truncated to the
# length. The intermediate derivation keys have the BDK's type; a working key may be of any
# type no stronger than them (6.1.3: an AES-128 BDK cannot give an AES-256 working key).

AES_USAGE = {"key_encryption": 0x0002, "pin": 0x1000, "mac_generation": 0x2000, "mac_verification": 0x2001,
             "mac_both": 0x2002, "data_encrypt": 0x3000, "data_decrypt": 0x3001, "data_both": 0x3002}
AES_USAGE_KEY_DERIVATION = 0x8000
AES_USAGE_INITIAL_KEY = 0x8001
AES_MAX_ONES = 16
AES_LAST_COUNTER = 0xFFFF0000


@dataclass(frozen=True, slots=True)
class DukptKeyType:
    """One X9.24-3 key type: its algorithm indicator, length, and TR-31 algorithm."""

    name: str
    indicator: int
    bits: int
    algorithm: Algorithm
    strength: int        # order only: a derived key may not be stronger than its parent

    @property
    def size(self) -> int:
        return self.bits // 8


AES_KEY_TYPES: dict[str, DukptKeyType] = {t.name: t for t in (
    DukptKeyType("tdes2", 0x0000, 128, Algorithm.TDES, 1),
    DukptKeyType("tdes3", 0x0001, 192, Algorithm.TDES, 2),
    DukptKeyType("aes128", 0x0002, 128, Algorithm.AES, 3),
    DukptKeyType("aes192", 0x0003, 192, Algorithm.AES, 4),
    DukptKeyType("aes256", 0x0004, 256, Algorithm.AES, 5),
)}
_AES_BY_SIZE = {16: AES_KEY_TYPES["aes128"], 24: AES_KEY_TYPES["aes192"], 32: AES_KEY_TYPES["aes256"]}


def aes_dukpt_key_type(key: bytes, what: str = "AES DUKPT key") -> DukptKeyType:
    """The AES key type of a BDK, initial or derivation key, by its length. Raises CryptoError."""
    try:
        return _AES_BY_SIZE[len(key)]
    except KeyError:
        raise CryptoError(f"an {what} is 16, 24 or 32 bytes (AES-128/192/256), not {len(key)}") from None


def _working_type(name: str | DukptKeyType | None, parent: DukptKeyType) -> DukptKeyType:
    if name is None:
        return parent
    kt = name if isinstance(name, DukptKeyType) else AES_KEY_TYPES.get(name)
    if kt is None:
        raise CryptoError(f"unknown AES DUKPT working key type {name!r} (one of {', '.join(AES_KEY_TYPES)})")
    if kt.strength > parent.strength:
        raise CryptoError(f"a working key of type {kt.name} is stronger than its {parent.name} derivation key "
                          "(X9.24-3 6.1.3 forbids it)")
    return kt


def _aes_dd(usage: int, ikid_or_tail: bytes, counter: int | None, key_type: DukptKeyType | None = None,
            block: int = 1) -> bytes:
    """Derivation data (see the table above) for one block of a key of ``key_type`` (AES-128 if None)."""
    kt = key_type or AES_KEY_TYPES["aes128"]
    tail = ikid_or_tail if counter is None else ikid_or_tail[4:8] + counter.to_bytes(4, "big")
    return (bytes([1, block]) + usage.to_bytes(2, "big") + kt.indicator.to_bytes(2, "big")
            + kt.bits.to_bytes(2, "big") + tail)


def _aes_derive(key: bytes, usage: int, key_type: DukptKeyType, tail: bytes, counter: int | None) -> bytes:
    blocks = -(-key_type.bits // 128)
    data = b"".join(_aes_dd(usage, tail, counter, key_type, i) for i in range(1, blocks + 1))
    return aes_ecb(key, data)[:key_type.size]   # ECB: each block encrypted alone, in one call


def aes_dukpt_initial_key(bdk: bytes, initial_key_id: bytes) -> bytes:
    """The terminal's initial key (of the BDK's type) from a 16/24/32-byte BDK and an 8-byte
    initial key id (X9.24-3 6.3.1). Raises CryptoError for other lengths."""
    kt = aes_dukpt_key_type(bdk, "AES DUKPT BDK")
    if len(initial_key_id) != 8:
        raise CryptoError("an AES DUKPT initial key id is 8 bytes")
    return _aes_derive(bdk, AES_USAGE_INITIAL_KEY, kt, initial_key_id, None)


def aes_dukpt_valid_counter(counter: int) -> bool:
    return 0 < counter <= AES_LAST_COUNTER and bin(counter).count("1") <= AES_MAX_ONES


def aes_dukpt_transaction_key(initial_key: bytes, ksn: bytes) -> bytes:
    """Derive the transaction (intermediate derivation) key for a 12-byte KSN: one derivation
    per one-bit of the counter, from the highest, each of the initial key's type. Raises CryptoError."""
    kt = aes_dukpt_key_type(initial_key, "AES DUKPT initial key")
    if len(ksn) != 12:
        raise CryptoError("an AES DUKPT KSN is 12 bytes")
    counter = int.from_bytes(ksn[8:], "big")
    if not aes_dukpt_valid_counter(counter):
        raise CryptoError("KSN counter is not a valid DUKPT counter")
    key, working = initial_key, 0
    for bit in range(31, -1, -1):
        if counter & (1 << bit):
            working |= 1 << bit
            key = _aes_derive(key, AES_USAGE_KEY_DERIVATION, kt, ksn[:8], working)
    return key


def aes_dukpt_working_key(transaction_key: bytes, ksn: bytes, purpose: str,
                          key_type: str | DukptKeyType | None = None) -> bytes:
    """A working key (``pin``, ``mac_generation``, ... see AES_USAGE) for this transaction.

    ``key_type`` is one of AES_KEY_TYPES (``aes128`` ... ``tdes3``); None means the
    transaction key's own type. Returns the key bytes (16/24/32 for AES, 16/24 for TDES).
    Raises CryptoError for an unknown purpose or type, a type stronger than the
    transaction key, or a KSN that is not 12 bytes.
    """
    parent = aes_dukpt_key_type(transaction_key, "AES DUKPT derivation key")
    if purpose not in AES_USAGE:
        raise CryptoError(f"unknown AES DUKPT key usage {purpose!r} (one of {', '.join(AES_USAGE)})")
    kt = _working_type(key_type, parent)
    if len(ksn) != 12:
        raise CryptoError("an AES DUKPT KSN is 12 bytes")
    counter = int.from_bytes(ksn[8:], "big")
    return _aes_derive(transaction_key, AES_USAGE[purpose], kt, ksn[:8], counter)


def aes_dukpt_next_counter(counter: int) -> int:
    """The next valid counter after ``counter``. Raises CryptoError at exhaustion."""
    nxt = counter + 1
    while nxt <= AES_LAST_COUNTER and not aes_dukpt_valid_counter(nxt):
        nxt += 1 << ((nxt & -nxt).bit_length() - 1)  # skip the whole run that has too many one-bits
    if nxt > AES_LAST_COUNTER:
        raise CryptoError("DUKPT counter exhausted: this PIN pad needs a new initial key")
    return nxt


# ----------------------------------------------------------------------------- TDES DUKPT (X9.24-1)

_C0 = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")
TDES_VARIANTS = {"pin": bytes.fromhex("00000000000000FF00000000000000FF"),
                 "mac_request": bytes.fromhex("000000000000FF00000000000000FF00"),
                 "mac_response": bytes.fromhex("00000000FF00000000000000FF000000")}


def tdes_dukpt_ipek(bdk: bytes, ksn: bytes) -> bytes:
    """Initial PIN encryption key from a double-length BDK and a 10-byte KSN."""
    if len(ksn) != 10:
        raise CryptoError("a TDES DUKPT KSN is 10 bytes")
    base = (int.from_bytes(ksn, "big") & ~0x1FFFFF).to_bytes(10, "big")[:8]
    return tdes_ecb(bdk, base) + tdes_ecb(xor(bdk, _C0), base)


def _nrkgp(key: bytes, data: bytes) -> bytes:
    def half(k: bytes) -> bytes:
        return xor(des_ecb(k[:8], xor(data, k[8:])), k[8:])
    return half(xor(key, _C0)) + half(key)


def tdes_dukpt_transaction_key(ipek: bytes, ksn: bytes) -> bytes:
    """The current transaction key for a 10-byte KSN (X9.24-1 non-reversible key generation). Raises CryptoError."""
    if len(ksn) != 10 or len(ipek) != 16:
        raise CryptoError("TDES DUKPT needs a 10-byte KSN and a double-length initial key")
    counter = int.from_bytes(ksn[-3:], "big") & 0x1FFFFF
    if counter == 0 or bin(counter).count("1") > 10:
        raise CryptoError("KSN counter is not a valid TDES DUKPT counter")
    reg = int.from_bytes(ksn[-8:], "big") & ~0x1FFFFF
    key = ipek
    bit = 1 << 20
    while bit:
        if counter & bit:
            reg |= bit
            key = _nrkgp(key, reg.to_bytes(8, "big"))
        bit >>= 1
    return key


def tdes_dukpt_working_key(transaction_key: bytes, purpose: str) -> bytes:
    """The variant of the transaction key for ``pin``, ``mac_request`` or ``mac_response``. Raises CryptoError."""
    if purpose not in TDES_VARIANTS:
        raise CryptoError(f"unknown TDES DUKPT variant {purpose!r} (one of {', '.join(TDES_VARIANTS)})")
    return xor(transaction_key, TDES_VARIANTS[purpose])


def tdes_dukpt_next_counter(counter: int) -> int:
    nxt = counter + 1
    while nxt <= 0x1FFFFF and bin(nxt).count("1") > 10:
        nxt += nxt & -nxt
    if nxt > 0x1FFFFF:
        raise CryptoError("DUKPT counter exhausted: this PIN pad needs a new initial key")
    return nxt
