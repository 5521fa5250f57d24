"""Asynchronous payment notifications: the gateway tells the merchant's notify_url.

A precreated trade (:meth:`Gateway.precreate`) with a loopback ``notify_url`` is
notified once it is paid, whichever process paid it (``posterm host wallet scan`` may run
beside the server): :class:`Notifier` is one worker thread that looks in the store for due
notifications every ``poll_s`` (or at once when :meth:`Notifier.wake` is called), at most
``batch`` at a time, and hands each to the protocol's sender (``NOTIFY`` of the app's
kind's module, :mod:`.http`). Not delivered (the receiver did not answer its protocol's
"success"): retried after ``backoff_s * 2**attempt`` seconds, capped at ``max_backoff_s``,
at most ``max_attempts`` times, then given up (the merchant queries). Due times are on the
host's clock, so a test with a fake clock retries by advancing it.

:func:`post` is the one HTTP client the senders use: loopback only, no proxy, no redirect,
a timeout and a cap on the answer read.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Callable

from posterm.host.gateway.core import GatewayError, loopback_url

if TYPE_CHECKING:  # pragma: no cover
    from posterm.host.gateway.core import App, Gateway, Trade

log = logging.getLogger("posterm.host.gateway")

Sender = Callable[["Gateway", "App", "Trade", str], bool]


class Notifier:
    """See the module docstring. ``senders``: app kind -> sender (default: each protocol
    module's ``NOTIFY``)."""

    def __init__(self, gateway: "Gateway", senders: dict[str, Sender] | None = None, *, poll_s: float = 0.5,
                 batch: int = 16, max_attempts: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 60.0) -> None:
        if senders is None:
            from posterm.host.gateway.http import protocol_modules
            senders = {m.__name__.rsplit(".", 1)[-1]: m.NOTIFY for m in protocol_modules() if hasattr(m, "NOTIFY")}
        self.gateway = gateway
        self.senders = dict(senders)
        self.poll_s, self.batch, self.max_attempts = poll_s, batch, max_attempts
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0                      # polling rounds done (tests wait on rounds_done)
        self._round_done = threading.Condition()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="posterm-gateway-notify", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Look for due notifications now rather than at the next poll."""
        self._wake.set()

    def wait_rounds(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until ``n`` polling rounds have completed in all (for tests). Returns whether they did."""
        with self._round_done:
            return self._round_done.wait_for(lambda: self.rounds >= n, timeout)

    def run_once(self) -> int:
        """One round: send what is due. Returns how many were delivered."""
        delivered = 0
        for app, trade, url, attempts in self.gateway.notifications_due(self.batch):
            sender = self.senders.get(app.kind)
            ok = False
            if sender is not None and loopback_url(url):
                try:
                    ok = bool(sender(self.gateway, app, trade, url))
                except Exception as exc:  # a sender's bug must not stop the worker
                    log.warning("notification of %s failed: %s", trade.trade_no, type(exc).__name__)
            attempts += 1
            next_at = None
            if not ok and attempts < self.max_attempts and sender is not None:
                next_at = self.gateway.ctx.clock() + min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
            try:
                self.gateway.notification_done(trade.trade_no, ok, attempts, next_at)
            except GatewayError:
                log.warning("notification state of %s not saved (store unavailable)", trade.trade_no)
            delivered += ok
        return delivered

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except GatewayError:
                pass     # the store is unavailable: try again at the next round
            with self._round_done:
                self.rounds += 1
                self._round_done.notify_all()
            self._wake.wait(self.poll_s)
            self._wake.clear()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None      # a redirect could lead off loopback: not followed


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def post(url: str, body: bytes, content_type: str, *, timeout: float = 5.0, max_answer: int = 4096) -> tuple[int, bytes]:
    """POST ``body`` to a loopback ``url``: (HTTP status, the first ``max_answer`` bytes of
    the answer), or (0, b"") when it could not be delivered. Never leaves loopback."""
    if not loopback_url(url):
        return 0, b""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(max_answer)
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError, ValueError):
        return 0, b""
