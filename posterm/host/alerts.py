"""Alerts that reach the customer: the alerts row, the phone's inbox, a signed webhook.

Every module raises an alert with ``ctx.alert(tx, account_id, kind, text)``
(:meth:`~posterm.host.context.HostContext.alert`), which calls :func:`fan_out`: in the
caller's transaction it writes the ``alerts`` row, puts the text in the phone's inbox
(:func:`posterm.host.phone.notify`) and, when the account has a webhook, queues the event in
``webhook_outbox`` (so an event is queued if and only if its cause committed).

**Webhooks** (``posterm host webhook set ACCOUNT URL``, :func:`set_webhook`): a loopback
``http://`` URL only (an IP literal in 127.0.0.0/8 or ``[::1]``, or ``localhost``); the
per-account secret is made by the host, shown once and kept sealed. :func:`deliver` drains
what is due: each event is POSTed as JSON with

- ``X-Posterm-Event``: the event id (the same on every retry: the receiver de-duplicates),
- ``X-Posterm-Signature``: ``sha256=`` + hex HMAC-SHA256 of the body under the secret,

and counts as delivered on any 2xx answer. Otherwise it is retried ``1 s * 2**n`` later
(n = attempts made - 1), at most 300 s apart, :data:`MAX_ATTEMPTS` times in all, then marked
failed: at least once while the receiver comes back within those tries. Due times are on
the host's clock (a fake clock in tests). At most :data:`OUTBOX_CAP` events are kept per
account (the oldest delivered ones dropped first). ``posterm host serve`` runs a
:class:`Deliverer` thread; ``posterm host webhook deliver`` drains once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Callable

from posterm import loopback
from posterm.host import phone
from posterm.host.context import HostRefused, iso_time, require_account

if TYPE_CHECKING:  # pragma: no cover
    from posterm.host.context import HostContext
    from posterm.host.store import Tx

log = logging.getLogger("posterm.host.alerts")

OUTBOX_CAP = 500
MAX_ATTEMPTS = 8
BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0
POST_TIMEOUT_S = 5.0
BATCH = 50
MAX_URL = 512
SIGNATURE_HEADER = "X-Posterm-Signature"
EVENT_HEADER = "X-Posterm-Event"


def fan_out(ctx: "HostContext", tx: "Tx", account_id: str, kind: str, text: str) -> None:
    """See the module docstring: the alerts row, the inbox entry, the webhook event (in ``tx``)."""
    now = ctx.clock()
    tx.alert(account_id, kind, text, now)
    phone.notify(ctx, tx, account_id, "alert", f"[{kind}] {text}")
    if tx.webhook(account_id) is not None:
        event_id = "evt_" + secrets.token_hex(16)
        body = json.dumps({"event_id": event_id, "account": account_id, "kind": kind, "text": text,
                           "created_at": iso_time(now), "ts": now}, sort_keys=True, separators=(",", ":"))
        tx.add_outbox(event_id, account_id, kind, body, now, OUTBOX_CAP)


# ---------------------------------------------------------------------- configuration

def loopback_http(url: str) -> bool:
    """Whether ``url`` is ``http://`` on a loopback address (the only place a webhook goes)."""
    return loopback.loopback_url(url, ("http",))


def set_webhook(ctx: "HostContext", account_id: str, url: str) -> str:
    """Send the account's alerts to ``url`` from now on, signed with a new secret, which is
    returned (shown once: the host keeps it sealed). Raises HostRefused for a URL that is
    not loopback http or an unknown account."""
    if len(url) > MAX_URL or not loopback_http(url):
        raise HostRefused("a webhook URL is http:// on a loopback address (127.0.0.1, [::1], localhost)")
    secret = "whsec_" + secrets.token_hex(32)
    with ctx.store.transaction() as tx:
        require_account(tx, account_id)
        tx.set_webhook(account_id, url, ctx.keys.seal("webhook", account_id, secret.encode()), ctx.clock())
        tx.audit(account_id, "customer", "webhook-set", "ok", ctx.clock())
    return secret


def remove_webhook(ctx: "HostContext", account_id: str) -> bool:
    """Stop sending the account's alerts (its pending events are dropped). Returns whether it had one."""
    with ctx.store.transaction() as tx:
        require_account(tx, account_id)
        had = tx.remove_webhook(account_id)
        if had:
            tx.audit(account_id, "customer", "webhook-remove", "ok", ctx.clock())
        return had


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + hex HMAC-SHA256(secret, body)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------- delivery

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None      # a redirect could lead off loopback: not followed


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

Poster = Callable[[str, bytes, dict[str, str]], int]


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to loopback ``url``: the HTTP status, 0 when it could not be delivered."""
    if not loopback_http(url):
        return 0
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with _OPENER.open(req, timeout=POST_TIMEOUT_S) as resp:
            resp.read(4096)
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 1 s * 2**(attempts-1), at most 300 s."""
    return min(MAX_BACKOFF_S, BACKOFF_S * 2 ** max(0, attempts - 1))


def deliver(ctx: "HostContext", *, poster: Poster = post, limit: int = BATCH) -> dict[str, int]:
    """One round: POST every due event (at most ``limit``). Returns counts of delivered,
    retried (due again later) and failed (given up) events. No transaction is held while
    a POST is in flight."""
    counts = {"delivered": 0, "retry": 0, "failed": 0}
    for ev in ctx.store.view().outbox_due(ctx.clock(), limit):
        hook = ctx.store.view().webhook(ev["account_id"])
        status = 0
        if hook is not None:
            secret = ctx.keys.unseal("webhook", ev["account_id"], hook["sealed_secret"]).decode()
            body = ev["body"].encode()
            try:
                status = poster(hook["url"], body, {EVENT_HEADER: ev["event_id"], SIGNATURE_HEADER: sign(secret, body)})
            except Exception as exc:   # a poster's bug must not stop the round
                log.warning("webhook event %s: %s", ev["event_id"], type(exc).__name__)
        attempts = ev["attempts"] + 1
        now = ctx.clock()
        if 200 <= status < 300:
            state, next_at = "delivered", now
        elif attempts >= MAX_ATTEMPTS or hook is None:
            state, next_at = "failed", now
        else:
            state, next_at = "pending", now + backoff(attempts)
        with ctx.store.transaction() as tx:
            tx.outbox_done(ev["id"], state, attempts, next_at, status or None, now)
        counts["delivered" if state == "delivered" else "retry" if state == "pending" else "failed"] += 1
    return counts


def outbox(ctx: "HostContext", account_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The account's webhook events, newest first (body, state, attempts, next try)."""
    view = ctx.store.view()
    require_account(view, account_id)
    return [dict(r) for r in view.outbox(account_id, limit)]


class Deliverer:
    """A thread running :func:`deliver` every ``poll_s`` until :meth:`stop` (``host serve``)."""

    def __init__(self, ctx: "HostContext", poll_s: float = 1.0) -> None:
        self.ctx, self.poll_s = ctx, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="posterm-webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                deliver(self.ctx)
            except Exception as exc:   # the store busy or closed: try again at the next round
                log.warning("webhook delivery round failed: %s", type(exc).__name__)
            self._stop.wait(self.poll_s)
