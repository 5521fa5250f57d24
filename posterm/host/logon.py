"""Logon: the mutual challenge-response that gives a terminal a session.

    terminal -> host   LogonRequest   (identity, terminal_nonce)
    host -> terminal   LogonChallenge (host_nonce, host_proof = CMAC(key, "H" | tn | hn))
    terminal -> host   LogonConfirm   (terminal_proof = CMAC(key, "T" | hn | tn))
    host -> terminal   LogonResult    (accepted, session_id)

A terminal nonce is accepted once ever (kept in the store); challenges and sessions live
in memory, so a restarted host asks every terminal to log on again.
"""

from __future__ import annotations

import os
import secrets
import threading
from datetime import datetime

from firmware_protocol.host import messages as h
from firmware_protocol.native.messages import Reason

from posterm.host.context import HostContext


class Sessions:
    """The challenges outstanding and the terminals logged on (thread-safe)."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[bytes, bytes, str, int]] = {}  # terminal -> (tn, hn, ksn hex, version)
        self._versions: dict[str, int] = {}   # logged-on terminal -> the host protocol version it speaks
        self._lock = threading.Lock()

    def __contains__(self, terminal_id: str) -> bool:
        with self._lock:
            return terminal_id in self._versions

    def version(self, terminal_id: str, default: int = 1) -> int:
        """The host protocol version ``terminal_id`` stated at logon (``default`` with no session)."""
        with self._lock:
            return self._versions.get(terminal_id, default)

    def logon(self, ctx: HostContext, msg: h.LogonRequest) -> h.HostMessage:
        """Answer a LogonRequest: a challenge, or a refusal (unknown terminal, nonce seen before)."""
        with ctx.store.transaction() as tx:
            t = tx.terminal(msg.terminal_id)
            if t is None or t["merchant_id"] != msg.merchant_id:
                return h.LogonResult(accepted=False, reason=Reason.TERMINAL_UNKNOWN)
            if tx.nonce_seen(msg.terminal_nonce.hex()):
                return h.LogonResult(accepted=False, reason=Reason.REPLAY_DETECTED)
            tx.add_nonce(msg.terminal_nonce.hex(), ctx.clock())
        hn = os.urandom(16)
        with self._lock:
            self._pending[msg.terminal_id] = (msg.terminal_nonce, hn, msg.ksn.hex(), int(msg.protocol_version))
        proof = ctx.hsm.response_mac(msg.ksn, b"H" + msg.terminal_nonce + hn)
        return h.LogonChallenge(host_nonce=hn, host_proof=proof)

    def confirm(self, ctx: HostContext, msg: h.LogonConfirm) -> h.HostMessage:
        """Answer a LogonConfirm: the session when the terminal's proof answers our challenge."""
        with self._lock:
            pending = self._pending.pop(msg.terminal_id, None)
        if pending is None:
            return h.LogonResult(accepted=False, reason=Reason.REPLAY_DETECTED)
        tn, hn, _, version = pending
        if not ctx.hsm.verify_request_mac(msg.ksn, b"T" + hn + tn, msg.terminal_proof):
            return h.LogonResult(accepted=False, reason=Reason.MAC_INVALID)
        with self._lock:
            self._versions[msg.terminal_id] = version
        return h.LogonResult(accepted=True, session_id=secrets.token_hex(8).upper(),
                             host_time=datetime.fromtimestamp(ctx.clock()).astimezone().isoformat(timespec="seconds"))
