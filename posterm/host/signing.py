"""The MAC/KSN service: check a request's MAC, refuse a replayed KSN, sign the answer.

A request is MAC'd by the terminal's PIN pad under the DUKPT key of its KSN; the host
answers under the same KSN's response key. A KSN whose transaction counter is not above
the last one seen from its initial key is a replay. The HSM holds every key; this module
only says what is covered and remembers the counters (through the store).
"""

from __future__ import annotations

import dataclasses

from firmware_protocol.errors import ProtocolError
from firmware_protocol.host import messages as h
from firmware_protocol.native.tlv import encode as tlv_encode

from posterm.crypto.hsm import Hsm
from posterm.errors import CryptoError
from posterm.host.store import Tx


def request_mac_ok(hsm: Hsm, msg: h.HostMessage, payload: bytes) -> bool:
    """Whether ``msg`` (received as ``payload``) carries a MAC its KSN's key made over it."""
    try:
        covered = h.mac_input(payload)
    except ProtocolError:
        covered = b""
    return bool(msg.mac and covered and hsm.verify_request_mac(msg.ksn or b"", covered, msg.mac))


def sign(hsm: Hsm, reply: h.HostMessage, ksn: bytes) -> h.HostMessage:
    """``reply`` with ``ksn`` and the response MAC; unsigned when there is no KSN or no key
    here derives one from it (forged, a foreign BDK)."""
    if not ksn:
        return reply
    unsigned = dataclasses.replace(reply, ksn=ksn, mac=b"\x00" * h.MAC_SIZE)
    try:
        mac = hsm.response_mac(ksn, h.mac_input(tlv_encode(unsigned)))
    except CryptoError:
        return reply
    return dataclasses.replace(unsigned, mac=mac)


def ksn_parts(ksn: bytes) -> tuple[str, int]:
    """(initial key id in hex, transaction counter) of an AES (12-byte) or TDES (10-byte) KSN."""
    if len(ksn) == 12:
        return ksn[:8].hex(), int.from_bytes(ksn[8:], "big")
    return (ksn[:7] + bytes([ksn[7] & 0xE0])).hex(), int.from_bytes(ksn[-3:], "big") & 0x1FFFFF


def ksn_fresh(tx: Tx, guard: str, ksn: bytes) -> bool:
    """Record ``ksn`` in replay guard ``guard`` ("request" or "pin") if its counter is above
    the last one seen from its initial key; False (nothing recorded) for a replay."""
    ikid, counter = ksn_parts(ksn)
    return tx.ksn_fresh(guard, ikid, counter)
