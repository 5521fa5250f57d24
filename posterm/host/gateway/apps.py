"""Merchant apps registered with the gateway.

An app belongs to a merchant and pays through its own virtual terminal, ``GW-<app_id>``,
registered at the host like any terminal (so its trades are in ``posterm host trades
--terminal GW-<app_id>``). An Alipay app brings the RSA public key its requests are signed
with (kept in the host's database: it is public); a WeChat app brings its merchant id and
API key (kept sealed with the gateway's keys, :mod:`.keys`, never in the database).
"""

from __future__ import annotations

from posterm.host import admin
from posterm.host.context import HostContext, HostRefused
from posterm.host.gateway.core import APP_ID, TERMINAL_PREFIX, App, app_from_row
from posterm.host.gateway.keys import GatewayKeys, normalise_public_pem

WECHAT_KEY_LEN = 32


def add(ctx: HostContext, keys: GatewayKeys, app_id: str, merchant_id: str, *, public_key_pem: str | bytes | None = None,
        wechat_mch_id: str | None = None, wechat_key: str | None = None, location: str = "CN-SH") -> App:
    """Register (or re-register, replacing its key) ``app_id`` for ``merchant_id``: an
    Alipay app with ``public_key_pem``, or a WeChat one with ``wechat_mch_id`` and
    ``wechat_key`` (32 printable ASCII characters, as WeChat Pay issues them).
    Raises HostRefused (unknown merchant, an app id of another merchant or kind, a bad key)."""
    if not isinstance(app_id, str) or not APP_ID.fullmatch(app_id):
        raise HostRefused("app id: 1-29 of A-Z a-z 0-9 _ - .")
    if (public_key_pem is None) == (wechat_mch_id is None):
        raise HostRefused("give either an Alipay public key or a WeChat merchant id and key")
    if public_key_pem is not None:
        kind = "alipay"
        try:
            pem = normalise_public_pem(public_key_pem)
        except (ValueError, TypeError) as exc:
            raise HostRefused(f"app public key: {exc}") from None
    else:
        kind, pem = "wechat", None
        if not wechat_mch_id.isdigit() or not 1 <= len(wechat_mch_id) <= 32:
            raise HostRefused("WeChat merchant id: digits")
        if (wechat_key is None or len(wechat_key) != WECHAT_KEY_LEN or not wechat_key.isascii()
                or not wechat_key.isprintable() or " " in wechat_key):
            raise HostRefused(f"WeChat API key: {WECHAT_KEY_LEN} printable ASCII characters")
    terminal_id = TERMINAL_PREFIX + app_id
    with ctx.store.transaction() as tx:
        old = tx.gateway_app(app_id)
        if old is not None and (old["merchant_id"] != merchant_id or old["kind"] != kind):
            raise HostRefused(f"app {app_id} is registered to {old['merchant_id']} as {old['kind']}")
        if not tx.merchant_exists(merchant_id):
            raise HostRefused(f"unknown merchant {merchant_id}")
        term = tx.terminal(terminal_id)
        if term is not None and term["merchant_id"] != merchant_id:
            raise HostRefused(f"terminal {terminal_id} belongs to another merchant")
        if term is None:
            admin.register_terminal(ctx, terminal_id, merchant_id, location)
        tx.add_gateway_app(app_id, merchant_id, kind, terminal_id, pem, wechat_mch_id, ctx.clock())
        if kind == "wechat":
            # Sealed before the commit: an app row never exists without its key.
            keys.set_wechat_key(app_id, wechat_key)
    return App(app_id, merchant_id, kind, terminal_id, pem, wechat_mch_id,
               wechat_key if kind == "wechat" else None)


def get(ctx: HostContext, keys: GatewayKeys, app_id: str) -> App | None:
    """The app ``app_id`` with its key, or None."""
    row = ctx.store.view().gateway_app(app_id)
    return None if row is None else app_from_row(row, keys)


def all_apps(ctx: HostContext, keys: GatewayKeys) -> list[App]:
    """Every registered app, by id."""
    return [app_from_row(r, keys) for r in ctx.store.view().gateway_apps()]


def by_wechat_mch(ctx: HostContext, keys: GatewayKeys, mch_id: str, app_id: str) -> App | None:
    """The WeChat app ``app_id`` of merchant id ``mch_id`` (WeChat requests name both), or None."""
    app = get(ctx, keys, app_id)
    if app is None or app.kind != "wechat" or app.wechat_mch_id != mch_id:
        return None
    return app


def describe(app: App) -> dict:
    """What ``posterm host app show/list`` print of an app (no secret)."""
    out = {"app_id": app.app_id, "merchant_id": app.merchant_id, "kind": app.kind, "terminal_id": app.terminal_id}
    if app.kind == "wechat":
        out["wechat_mch_id"] = app.wechat_mch_id
        out["wechat_key"] = "set" if app.api_key else "missing"
    return out
