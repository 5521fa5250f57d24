"""Seven data bits with a parity bit, done in software where the port cannot (a pty).

On the wire a 7E1 character and an 8N1 character are both ten bit times long:
start, seven data bits, the parity bit, stop versus start, eight data bits, stop.
So 7E1 over an 8N1 channel is exact when the eighth data bit *is* the parity bit.
Linux ptys refuse parity (``tcsetattr`` fails with EINVAL, measured here), so a
pty opened as 7E1 or 7O1 gets this codec: written bytes gain their parity bit, and
read bytes are checked and stripped; a byte with a parity error arrives as NUL,
as a UART with ``IGNPAR`` and ``PARMRK`` off delivers it. An ECR opened 8N1 against
a 7E1 terminal therefore sees bytes with the top bit set, as on a real cable.
"""

from __future__ import annotations

_EVEN = bytes(((b & 0x7F) | (0x80 if bin(b & 0x7F).count("1") % 2 else 0)) for b in range(256))
_ODD = bytes(((b & 0x7F) | (0x00 if bin(b & 0x7F).count("1") % 2 else 0x80)) for b in range(256))


def _strip_table(add: bytes) -> bytes:
    # a received byte is good when it equals the encoding of its low seven bits
    return bytes((b & 0x7F) if add[b & 0x7F] == b else 0 for b in range(256))


_STRIP = {"E": _strip_table(_EVEN), "O": _strip_table(_ODD)}
_ADD = {"E": _EVEN, "O": _ODD}


class SoftParity:
    """Adds (``encode``) and checks/strips (``decode``) a parity bit on 7-bit bytes."""

    def __init__(self, parity: str) -> None:
        parity = parity.upper()[:1]
        if parity not in _ADD:
            raise ValueError(f"software parity is E or O, not {parity!r}")
        self.parity = parity
        self._add = _ADD[parity]
        self._strip = _STRIP[parity]
        self.errors = 0

    def encode(self, data: bytes) -> bytes:
        return data.translate(self._add)

    def decode(self, data: bytes) -> bytes:
        out = data.translate(self._strip)
        if 0 in out:
            self.errors += sum(1 for a, b in zip(data, out) if b == 0 and a not in (0x00, self._add[0]))
        return out


def is_pty(path: str) -> bool:
    """True when ``path`` (after symlinks) is a pty slave."""
    import os

    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return False
    return real.startswith("/dev/pts/") or real.startswith("/dev/pty")


class SoftParityTransport:
    """A transport carrying 7-bit characters with software parity over an 8N1 channel
    (the emulator's pty master: see the module docstring)."""

    def __init__(self, inner, parity: str = "E") -> None:
        self._inner = inner
        self.codec = SoftParity(parity)

    def read(self, max_bytes: int, timeout: float) -> bytes:
        return self.codec.decode(self._inner.read(max_bytes, timeout))

    def write(self, data: bytes) -> None:
        self._inner.write(self.codec.encode(data))

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def parse_line_format(text: str) -> tuple[int, str, float]:
    """``"8N1"`` / ``"7E1"`` / ``"7O1"`` -> (bytesize, parity, stopbits). Raises ValueError."""
    t = text.strip().upper()
    if len(t) != 3 or t[0] not in "78" or t[1] not in "NEO" or t[2] not in "12" or (t[0] == "8") != (t[1] == "N"):
        raise ValueError(f"line format is 8N1, 7E1 or 7O1 (or with 2 stop bits), not {text!r}")
    return int(t[0]), t[1], float(t[2])
