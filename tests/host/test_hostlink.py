"""The terminal's signed host link against answers a hostile host could send."""

from __future__ import annotations

import pytest

from firmware_protocol.host import messages as h
from firmware_protocol.native.tlv import encode as tlv_encode
from posterm.errors import RemoteProtocolError

from .conftest import terminal


class TwoMacs:
    """A host whose answer carries two MAC items (mac_input refuses it): the link must call it
    a bad MAC, a typed error, not fail with a NameError."""

    def __init__(self, host) -> None:
        self.host = host

    def request_with_payload(self, msg, timeout):
        reply = self.host.handle(msg)
        payload = tlv_encode(reply)
        return reply, payload + bytes([h.MAC_TAG, 0, h.MAC_SIZE]) + bytes(h.MAC_SIZE)


def test_an_answer_with_two_macs_is_a_bad_mac(host):
    link = terminal(host)
    link.client = TwoMacs(host)
    with pytest.raises(RemoteProtocolError, match="bad MAC"):
        link.request(h.HostQuery(terminal_id="T0000001", order_id="X-1"), 5.0)
