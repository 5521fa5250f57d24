"""Host messages over TCP: the same frames as the ECR link, DATA frames only.

TCP already delivers in order and retransmits, so there is no ACK/NAK: the terminal
sends one request frame and waits (with a timeout) for one response frame with the
same sequence number. See PROTOCOL.md, "Host link". Both ends read with
:func:`read_message`: the server (:mod:`.server`) and the terminal's client
(:mod:`.client`); this module knows neither.
"""

from __future__ import annotations

import time

from firmware_protocol.native import frame as fr
from firmware_protocol.host import messages as h
from firmware_protocol.errors import ProtocolError
from firmware_protocol.native.tlv import decode as tlv_decode
from posterm.errors import RemoteProtocolError


def read_message(transport, framer: fr.Framer, deadline: float) -> tuple[int, h.HostMessage, bytes] | None:
    """The next whole host message from ``transport`` before ``deadline``, as (seq, message,
    payload bytes); None on timeout. MACs are checked over the payload as received, so a
    newer peer's optional items (skipped by the decoder) stay covered."""
    while True:
        item = framer.pop()
        if isinstance(item, fr.LinkFrame):
            if item.kind is not fr.FrameKind.DATA:
                continue
            try:
                msg = tlv_decode(item.payload)
            except ProtocolError as exc:
                raise RemoteProtocolError(f"undecodable host message: {exc}") from exc
            return item.seq, msg, item.payload
        if item is not None:
            continue  # garbage or a bad frame: TCP should not produce them; skip to the next start byte
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        framer.feed(transport.read(4096, min(remaining, 0.5)))
