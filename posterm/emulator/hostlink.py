"""The terminal's side of the host link: sign every request in the PIN pad's secure
module, verify every answer's MAC, and log on with a mutual challenge-response.

Works over any client with ``request(msg, timeout)`` (the in-process host or TCP).
Imports the terminal's crypto only, never the host's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

from firmware_protocol.host import messages as h
from firmware_protocol.errors import ProtocolError
from firmware_protocol.native.messages import Reason
from firmware_protocol.native.tlv import encode as tlv_encode

from posterm.crypto.pinpad import SecureModule
from posterm.errors import Disconnected, PosError, PosTimeout, RemoteProtocolError

log = logging.getLogger("posterm.emulator.hostlink")

MAX_NOTICE_CHARS = 80     # a notice longer than the host's cap is cut (a receipt has little room)
# A logon whose challenge was lost (the confirm reached a host process that never issued it,
# or the line died mid-logon) starts again from a fresh LogonRequest, at most this many times
# in all; a request answered "log on first" is sent again after a new logon, as many times.
LOGON_ATTEMPTS = 3


class HostRefusedLogon(PosError):
    """The host refused this terminal's logon (unknown terminal, bad proof, replay).

    ``reason`` is the :class:`~firmware_protocol.native.messages.Reason` the host gave
    (``MAC_INVALID`` when the host's own proof was wrong). The request that needed the
    logon was not processed by the host.
    """

    def __init__(self, text: str, reason: int = Reason.OTHER) -> None:
        super().__init__(text)
        self.reason = int(reason) or int(Reason.OTHER)


class _ChallengeLost(HostRefusedLogon):
    """The confirm was refused as a replay: the host process that got it never issued (or
    has forgotten) the challenge. Nothing was granted; a fresh LogonRequest may succeed."""


class SignedHostLink:
    """``request(msg, timeout)`` with MACs both ways; ``logon()`` before the first request."""

    def __init__(self, module: SecureModule, client, *, terminal_id: str, merchant_id: str,
                 firmware_version: str, location: str = "") -> None:
        self.module = module
        self.client = client
        self.terminal_id = terminal_id
        self.merchant_id = merchant_id
        self.firmware_version = firmware_version
        self.location = location
        self.logged_on = False
        self.session_id: str | None = None
        # The host's security notices (LogonResult) and their version (0: none). An answer
        # naming another version means they changed: log on again before the next request.
        # ``on_notices(notices)`` is called (on this link's thread) with each new set.
        self.notices: tuple[str, ...] = ()
        self.notices_version = 0
        self.notices_stale = False
        self.on_notices = None
        self._lock = threading.Lock()

    def sign(self, msg: h.HostMessage) -> h.HostMessage:
        ksn = self.module.next_ksn()
        unsigned = dataclasses.replace(msg, ksn=ksn, mac=b"\x00" * h.MAC_SIZE)
        mac = self.module.request_mac(ksn, h.mac_input(tlv_encode(unsigned)))
        return dataclasses.replace(unsigned, mac=mac)

    def _exchange(self, msg: h.HostMessage, timeout: float) -> h.HostMessage:
        signed = self.sign(msg)
        reply, payload = self._request(signed, timeout)
        if reply.ksn != signed.ksn or not reply.mac or not self.module.verify_response_mac(
                signed.ksn, _covered(reply, payload), reply.mac):
            raise RemoteProtocolError(f"host answer to {type(msg).__name__} has a bad MAC: ignored")
        return reply

    def logon(self, timeout: float = 5.0) -> str:
        """Mutual challenge-response (see firmware_protocol.host.messages). Returns the session id.

        A challenge lost on the way (the confirm refused as a replay by a host process that
        never issued it, or the line dying or falling silent mid-logon) starts again from a
        fresh LogonRequest, at most LOGON_ATTEMPTS times in all and only while ``timeout``
        (for the whole logon) lasts; then the last error is raised. Other refusals raise at once.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            attempt = 1
            while True:
                try:
                    return self._logon_once(timeout if attempt == 1 else deadline - time.monotonic())
                except (_ChallengeLost, Disconnected, PosTimeout) as exc:
                    if attempt >= LOGON_ATTEMPTS or deadline - time.monotonic() <= 0:
                        raise
                    log.info("%s: logon attempt %d lost its challenge (%s): logging on again",
                             self.terminal_id, attempt, exc)
                    attempt += 1

    def _logon_once(self, timeout: float) -> str:
        """One challenge-response, from a fresh terminal nonce."""
        tn = os.urandom(16)
        challenge = self._exchange(h.LogonRequest(
            terminal_id=self.terminal_id, merchant_id=self.merchant_id, firmware_version=self.firmware_version,
            location=self.location, terminal_nonce=tn,
            protocol_version=h.HOST_PROTOCOL_VERSION), timeout)
        if isinstance(challenge, h.LogonResult):
            raise HostRefusedLogon(f"host refused logon of {self.terminal_id}: {_reason_name(challenge.reason)}",
                                   challenge.reason)
        if isinstance(challenge, h.HostError) and challenge.reason:
            raise HostRefusedLogon(f"host refused logon of {self.terminal_id}: {_reason_name(challenge.reason)}"
                                   f" ({challenge.text})", challenge.reason)
        if not isinstance(challenge, h.LogonChallenge):
            raise RemoteProtocolError(f"expected LogonChallenge, got {type(challenge).__name__}")
        # The challenge came under the LogonRequest's KSN: that answer's MAC already proved
        # the host holds our keys; its proof binds both nonces.
        ksn = challenge.ksn
        if not self.module.verify_response_mac(ksn, b"H" + tn + challenge.host_nonce, challenge.host_proof):
            raise HostRefusedLogon("the host's logon proof is wrong: not our host", Reason.MAC_INVALID)
        confirm = h.LogonConfirm(terminal_id=self.terminal_id, terminal_proof=b"\x00" * 8)
        signed_ksn = self.module.next_ksn()
        proof = self.module.request_mac(signed_ksn, b"T" + challenge.host_nonce + tn)
        unsigned = dataclasses.replace(confirm, terminal_proof=proof, ksn=signed_ksn, mac=b"\x00" * 8)
        signed = dataclasses.replace(unsigned, mac=self.module.request_mac(
            signed_ksn, h.mac_input(tlv_encode(unsigned))))
        result, payload = self._request(signed, timeout)
        if not (result.mac and self.module.verify_response_mac(signed_ksn, _covered(result, payload),
                                                               result.mac)):
            raise RemoteProtocolError("logon result has a bad MAC")
        if not isinstance(result, h.LogonResult) or not result.accepted:
            reason = int(getattr(result, "reason", 0) or Reason.OTHER)
            if isinstance(result, h.LogonResult) and reason == Reason.REPLAY_DETECTED:
                raise _ChallengeLost(f"host refused logon of {self.terminal_id}: {_reason_name(reason)}"
                                     " (the challenge was lost)", reason)
            raise HostRefusedLogon(f"host refused logon of {self.terminal_id}: {_reason_name(reason)}", reason)
        self.logged_on, self.session_id = True, result.session_id
        self._take_notices(result)
        return result.session_id or ""

    def _take_notices(self, result: h.LogonResult) -> None:
        notices = tuple(str(n)[:MAX_NOTICE_CHARS] for n in result.notices[:h.MAX_NOTICES])
        self.notices_version = int(result.notices_version or 0)
        self.notices_stale = False
        if notices != self.notices:
            self.notices = notices
            if self.on_notices is not None:
                self.on_notices(notices)

    def _note_notices_version(self, reply: h.HostMessage) -> None:
        """An answer says which notices the host publishes now; another set than ours is
        fetched by logging on again before the next request (never in the middle of this one)."""
        if isinstance(reply, (h.AuthResponse, h.RefundResponse, h.SettleResponse)):
            if int(reply.notices_version or 0) != self.notices_version:
                self.notices_stale = True

    def _request(self, msg: h.HostMessage, timeout: float) -> tuple[h.HostMessage, bytes | None]:
        """The client's answer, with its payload as received when the client has it (TCP)."""
        with_payload = getattr(self.client, "request_with_payload", None)
        if with_payload is not None:
            return with_payload(msg, timeout)
        return self.client.request(msg, timeout), None

    def request(self, msg: h.HostMessage, timeout: float) -> h.HostMessage:
        """Signed request, verified answer. Raises PosTimeout when the host is silent.

        An answer "log on first" (the host process that got the request has no session for
        us: it restarted, or the connection now reaches another one) means the host did not
        process the request, so it is sent again after a new logon: at most LOGON_ATTEMPTS
        times in all, a retry only begun within ``timeout`` of the first send (its logon gets
        what is left, its send a whole ``timeout``); then that answer is returned. A request is never sent again after an answer or a lost line here (the
        TCP client resends only what the host answers idempotently; the firmware queries).
        """
        if not self.logged_on or self.notices_stale:
            self.logon(timeout)   # (stale: the host's notices changed; logging on fetches them)
        deadline = time.monotonic() + timeout
        reply = self._exchange(msg, timeout)
        for _ in range(LOGON_ATTEMPTS - 1):
            remaining = deadline - time.monotonic()
            if not _told_to_log_on(reply) or remaining <= 0:
                break
            self.logged_on = False  # no session there: log on again (a fresh challenge), then resend
            log.info("%s: host asked for a logon before %s: logging on again", self.terminal_id,
                     type(msg).__name__)
            self.logon(remaining)
            reply = self._exchange(msg, timeout)   # (a whole timeout: a short one would leave it unknown)
        self._note_notices_version(reply)
        return reply


def _told_to_log_on(reply: h.HostMessage) -> bool:
    """The host's "log on first": it has no session for this terminal and did nothing."""
    return isinstance(reply, h.HostError) and reply.reason == h.Reason.TERMINAL_UNKNOWN and "log on" in reply.text


def _reason_name(code: int) -> str:
    try:
        return Reason(code).name
    except ValueError:
        return f"reason {code}"


def _covered(reply: h.HostMessage, payload: bytes | None) -> bytes:
    """What the answer's MAC covers: its payload as received (a newer host's optional items
    included), or, from an in-process host, the message encoded again."""
    try:
        return h.mac_input(payload if payload is not None else tlv_encode(reply))
    except ProtocolError:
        return b""

