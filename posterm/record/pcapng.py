"""Write a recording as pcapng (one packet per frame), for tshark and Wireshark.

No dependency: pcapng's blocks are simple (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html).
One Section Header Block, one Interface Description Block with the recorded family's
link type, interface name and description (its
:class:`~posterm.families.interfaces.PcapInterface`: posterm's own protocol is
``DLT_USER0``, 147; each family has its own, so a capture says which protocol it holds)
and microsecond timestamps, then one Enhanced Packet Block per recorded frame (its
redacted bytes) whose ``epb_flags`` option gives the direction: inbound (from the
terminal) or outbound (from the ECR), as seen by the ECR. Link events that are not
frames (control bytes a family records as events) are not packets. In Wireshark, map
the DLT_USER link type in Preferences > Protocols > DLT_USER to a dissector.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from posterm.record.format import Recording
from posterm.safefs import atomic_private

LINKTYPE_USER0 = 147        # DLT_USER0 .. DLT_USER15 are 147 .. 162: link types for private use
LINKTYPE_USER1 = 148
BYTE_ORDER_MAGIC = 0x1A2B3C4D
SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
OPT_ENDOFOPT, OPT_COMMENT, IF_NAME, IF_DESCRIPTION, IF_TSRESOL, EPB_FLAGS = 0, 1, 2, 3, 9, 2
INBOUND, OUTBOUND = 1, 2


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


def write_pcapng(recording: Recording, out: BinaryIO) -> int:
    """Write ``recording``'s frames to ``out``. Returns the number of packets.
    Raises ConfigError if the recording's family cannot be read (see :func:`~posterm.record.load`)."""
    shb_opts = _option(OPT_COMMENT, f"posterm recording {Path(recording.path).name}".encode()) + _option(OPT_ENDOFOPT, b"")
    out.write(_block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + shb_opts))
    iface = recording.support.pcap
    idb_opts = _option(IF_NAME, iface.name.encode())
    if iface.description:
        idb_opts += _option(IF_DESCRIPTION, iface.description.encode())
    idb_opts += _option(IF_TSRESOL, bytes([6])) + _option(OPT_ENDOFOPT, b"")
    out.write(_block(IDB, struct.pack("<HHI", iface.linktype, 0, 0) + idb_opts))
    start = float(recording.header.get("started_wall", 0.0))
    count = 0
    for rec in recording.frames():
        data = bytes.fromhex(rec["hex"])
        ts = int(round((start + rec["t"]) * 1_000_000))
        flags = INBOUND if rec["from"] == "terminal" else OUTBOUND
        opts = _option(EPB_FLAGS, struct.pack("<I", flags))
        if rec.get("msg"):
            opts += _option(OPT_COMMENT, str(rec["msg"].get("type")).encode())
        opts += _option(OPT_ENDOFOPT, b"")
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + _pad(data) + opts
        out.write(_block(EPB, body))
        count += 1
    return count


def read_pcapng(data: bytes) -> Iterator[tuple[int, int, bytes, int]]:
    """A small reader (tests): yields ``(linktype, timestamp_us, packet, flags)`` per EPB.

    Raises ValueError on a malformed block.
    """
    pos, linktype = 0, None
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"truncated block at {pos}")
        kind, total = struct.unpack_from("<II", data, pos)
        if total < 12 or total % 4 or pos + total > len(data):
            raise ValueError(f"bad block length {total} at {pos}")
        if struct.unpack_from("<I", data, pos + total - 4)[0] != total:
            raise ValueError(f"block at {pos}: trailing length differs")
        body = data[pos + 8 : pos + total - 4]
        if kind == SHB and struct.unpack_from("<I", body)[0] != BYTE_ORDER_MAGIC:
            raise ValueError("not little-endian pcapng")
        if kind == IDB:
            linktype = struct.unpack_from("<H", body)[0]
        elif kind == EPB:
            _if, hi, lo, cap, _orig = struct.unpack_from("<IIIII", body)
            packet = body[20 : 20 + cap]
            opts = body[20 + cap + (-cap % 4):]
            flags = 0
            o = 0
            while o + 4 <= len(opts):
                code, length = struct.unpack_from("<HH", opts, o)
                if code == OPT_ENDOFOPT:
                    break
                if code == EPB_FLAGS:
                    flags = struct.unpack_from("<I", opts, o + 4)[0]
                o += 4 + length + (-length % 4)
            yield linktype, (hi << 32) | lo, packet, flags
        pos += total


def write_pcapng_file(recording: Recording, path: str | Path) -> int:
    """Write ``recording`` as pcapng to ``path`` (0600, whole or not at all); return the packet count.

    The file appears only once complete (temp file, fsync, rename); a symlink at ``path``
    is refused with :class:`~posterm.safefs.UnsafePath`. Its directory must exist.
    """
    with atomic_private(path, parent=False) as out:
        return write_pcapng(recording, out)
