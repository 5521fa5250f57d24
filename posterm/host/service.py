"""The payment host: one façade over its service modules.

Requests arrive as :mod:`firmware_protocol.host.messages` messages, MAC'd by the terminal's PIN
pad; :meth:`Host.handle` verifies the MAC and that the KSN counter increases (a replay
is refused, :mod:`.signing`), requires a logon (:mod:`.logon`), and hands the request to
its module: :mod:`.authorise` (payment, PIN, query), :mod:`.after_sales` (cancel, reversal,
refund), :mod:`.settlement`. Money moves in a double-entry ledger exactly once per
(merchant, order id) (:mod:`.ledger`), and the answer is signed by the HSM. Every state
change is one ``BEGIN IMMEDIATE`` transaction, and a terminal request is exactly one, its
KSN bookkeeping included (one commit, one fsync), so a host killed at any point restarts
with consistent books and every request either happened or did not.

The administrator's API (:mod:`.admin`) and the customer's wallet (:mod:`.wallet`) are
methods of the same façade. None of this knows where a request came from: the TCP server
(:mod:`.server`) and the in-process client call :meth:`Host.handle` alike.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Callable, Mapping

from firmware_protocol.host import messages as h
from firmware_protocol.host.messages import HostErrorCode
from firmware_protocol.native.messages import Reason
from firmware_protocol.native.tlv import encode as tlv_encode

from posterm.crypto.hsm import Hsm
from posterm.errors import PosTimeout
from posterm.host import admin, after_sales, alerts, authorise, demo, identity, notices, risk, settlement, wallet
from posterm.host.context import Behaviour, HostContext, HostRefused
from posterm.host.logon import Sessions
from posterm.host.security_keys import SecurityKeys
from posterm.host.signing import ksn_fresh, request_mac_ok, sign
from posterm.host.store import Store, is_postgres_url, open_store
from posterm.host.store.group import GroupCommit

log = logging.getLogger("posterm.host")


def _on_ctx(fn: Callable) -> Callable:
    """``fn(ctx, ...)`` as a method of the façade: one unit of work (``Store.run``: run again,
    bounded, if a PostgreSQL transaction in it lost a conflict; once on SQLite)."""
    @functools.wraps(fn)
    def method(self: "Host", *args, **kw):
        return self.ctx.store.run(fn, self.ctx, *args, **kw)
    return method


class Host:
    """See the module docstring. Open with :meth:`open`; close with :meth:`close`.

    ``behaviours``: account behaviour name -> :class:`~posterm.host.context.Behaviour`
    (default: the demo's test accounts, :data:`posterm.host.demo.BEHAVIOURS`).
    """

    def __init__(self, store: Store, hsm: Hsm, *, clock: Callable[[], float] = time.time,
                 rules: dict | None = None, outage_seconds: float = 30.0, phone_delay: float = 2.0,
                 behaviours: Mapping[str, Behaviour] | None = None, security_keys: SecurityKeys | None = None,
                 group_commit: bool = False) -> None:
        self.ctx = HostContext(store=store, hsm=hsm, clock=clock, rules=risk.load_rules(rules),
                               behaviours=demo.BEHAVIOURS if behaviours is None else behaviours,
                               outage_seconds=outage_seconds, phone_delay=phone_delay,
                               reserved_code_prefixes=(demo.TEST_CODE_RANGE,),
                               keys=security_keys if security_keys is not None else SecurityKeys.ephemeral(),
                               fan_out=alerts.fan_out)
        self.sessions = Sessions()
        self.require_logon = True
        identity.bind(self.ctx)   # identity.matches(tx, ...) finds this host's HSM
        # Terminal requests share durable commits (posterm.host.store.group): SQLite only.
        self.group_commit: GroupCommit | None = GroupCommit(store) if group_commit and isinstance(store, Store) else None

    @classmethod
    def open(cls, db_path: str | Path | None = None, *, hsm: Hsm | None = None, demo: bool = True,
             clock: Callable[[], float] = time.time, risk_config: str | Path | dict | None = None,
             outage_seconds: float = 30.0, phone_delay: float = 2.0, group_commit: bool = True) -> "Host":
        """Open the host database (default ``$POSTERM_HOME/host.db``): a file path (SQLite), or a
        ``postgresql://`` URL (:mod:`posterm.host.store.postgres`; the HSM then lives in
        ``$POSTERM_HOME/hsm``, shared by every host process of the machine).

        With ``demo`` (the default, as the emulator wants) the demo data is loaded into a
        database with no merchant yet (:func:`posterm.host.demo.seed`); ``posterm host``
        commands pass False (``serve`` seeds it itself unless ``--no-demo``).

        ``group_commit`` (SQLite): terminal requests arriving together share one durable
        commit (:mod:`posterm.host.store.group`); an answer still leaves only after its commit.
        """
        from posterm.home import posterm_home
        from posterm.host.demo import seed
        from posterm.safefs import private_dir

        store = open_store(db_path if is_postgres_url(db_path) else
                           Path(db_path) if db_path else posterm_home() / "host.db")
        try:
            rules = risk.load_rules(risk_config)
            if hsm is None:
                # Key material: the directory is the owner's alone whatever the umask (the sealed
                # files in it are 0600 too); one that exists is tightened, a symlink refused.
                hsm = Hsm.open(private_dir(store.home / "hsm", own=True))
            # The security centre's keys (code MACs, the inbox's seal) beside the HSM's, sealed alike.
            keys = SecurityKeys.open(private_dir(store.home / "hsm", own=True))
        except BaseException:
            store.close()
            raise
        host = cls(store, hsm, clock=clock, rules=rules, outage_seconds=outage_seconds, phone_delay=phone_delay,
                   security_keys=keys, group_commit=group_commit)
        if demo:
            try:
                store.run(seed, host.ctx)
            except BaseException:
                host.close()
                raise
        return host

    def close(self) -> None:
        if self.group_commit is not None:
            self.group_commit.close()
        self.ctx.store.close()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ its parts

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def hsm(self) -> Hsm:
        return self.ctx.hsm

    @property
    def clock(self) -> Callable[[], float]:
        return self.ctx.clock

    @property
    def rules(self) -> dict:
        return self.ctx.rules

    @property
    def outage_seconds(self) -> float:
        return self.ctx.outage_seconds

    @outage_seconds.setter
    def outage_seconds(self, value: float) -> None:
        self.ctx.outage_seconds = value

    @property
    def phone_delay(self) -> float:
        return self.ctx.phone_delay

    @phone_delay.setter
    def phone_delay(self, value: float) -> None:
        self.ctx.phone_delay = value

    # ------------------------------------------------------------------ admin API (posterm.host.admin)

    add_merchant = _on_ctx(admin.add_merchant)
    register_terminal = _on_ctx(admin.register_terminal)
    issue_terminal_key = _on_ctx(admin.issue_terminal_key)
    add_account = _on_ctx(admin.add_account)
    account = _on_ctx(admin.account)
    set_limits = _on_ctx(admin.set_limits)
    set_password = _on_ctx(admin.set_password)
    freeze = _on_ctx(admin.freeze)
    set_flags = _on_ctx(admin.set_flags)
    security = _on_ctx(admin.security)
    issue_code = _on_ctx(admin.issue_code)
    report = _on_ctx(admin.report)
    close_case = _on_ctx(admin.close_case)
    cases = _on_ctx(admin.cases)
    trades = _on_ctx(admin.trades)
    bill = _on_ctx(admin.bill)
    check_books = _on_ctx(admin.check_books)

    def order_status(self, order_id: str, merchant_id: str = demo.DEMO_MERCHANT) -> str | None:
        """See :func:`posterm.host.admin.order_status` (merchant: the demo's by default)."""
        return self.ctx.store.run(admin.order_status, self.ctx, order_id, merchant_id)

    # ------------------------------------------------------------------ the customer's phone (posterm.host.wallet)

    wallet_scan = _on_ctx(wallet.scan)
    account_for_code = _on_ctx(wallet.account_for_code)

    def wallet_confirm(self, order_id: str, merchant_id: str = demo.DEMO_MERCHANT, code: str | None = None) -> str:
        """See :func:`posterm.host.wallet.confirm` (merchant: the demo's by default)."""
        return self.ctx.store.run(wallet.confirm, self.ctx, order_id, merchant_id, code)

    # ------------------------------------------------------------------ the message interface

    def client(self) -> "InProcessHostClient":
        return InProcessHostClient(self)

    def handle(self, msg: h.HostMessage, raw: bytes | None = None) -> h.HostMessage | None:
        """Answer one terminal request (signed), or None when the host stays silent.

        ``raw``: the payload as it came off the wire; the MAC is checked over it (a newer
        terminal's optional items are covered though this host skips them). Without it
        (in process) the message is encoded again.

        The KSN bookkeeping and everything the request changes are one write transaction
        (with group commit, a savepoint of a batch's: one commit for the requests arriving
        together), and a request either happened with its KSN consumed or not at all. The
        answer is signed after the commit, so nothing is answered that a crash could still
        undo (a failed group COMMIT raises :class:`~posterm.host.store.group.CommitFailed`).
        """
        ctx = self.ctx
        payload = raw if raw is not None else tlv_encode(msg)
        ksn = msg.ksn or b""
        if not request_mac_ok(ctx.hsm, msg, payload):
            log.warning("refused %s: bad or missing MAC", type(msg).__name__)
            return sign(ctx.hsm, h.HostError(code=HostErrorCode.MAC_INVALID, reason=Reason.MAC_INVALID,
                                             text="MAC check failed"), ksn)

        def transact(tx) -> h.HostMessage | None:
            if not ksn_fresh(tx, "request", ksn):
                log.warning("refused %s: KSN counter did not increase (replay)", type(msg).__name__)
                return h.HostError(code=HostErrorCode.REPLAY_DETECTED, reason=Reason.REPLAY_DETECTED,
                                   text="replayed request")
            terminal_id = getattr(msg, "terminal_id", None)
            if terminal_id and ctx.outage_until.get(terminal_id, 0.0) > ctx.clock():
                return None
            try:
                reply = self._dispatch(msg)
            except HostRefused as exc:  # its own changes are rolled back; the KSN stays consumed
                reply = h.HostError(code=HostErrorCode.REFUSED, reason=Reason.OTHER, text=str(exc)[:60])
            if reply is not None:   # the security notices of the moment (posterm.host.notices)
                reply = notices.stamp(tx, reply, ctx.clock())
            return reply

        if self.group_commit is not None:
            reply = self.group_commit.run(transact)   # returns once its batch has committed
        else:   # PostgreSQL (or group commit off): one transaction, run again whole on a conflict
            reply = ctx.store.run(self._in_transaction, transact)
        if reply is None:
            return None
        return sign(ctx.hsm, reply, ksn)

    def _in_transaction(self, fn: Callable) -> object:
        with self.ctx.store.transaction() as tx:
            return fn(tx)

    def has_session(self, terminal_id: str) -> bool:
        """Whether ``terminal_id`` has logged on to this host (since it started)."""
        return terminal_id in self.sessions

    def _dispatch(self, msg: h.HostMessage) -> h.HostMessage | None:
        ctx = self.ctx
        if isinstance(msg, h.LogonRequest):
            return self.sessions.logon(ctx, msg)
        if isinstance(msg, h.LogonConfirm):
            return self.sessions.confirm(ctx, msg)
        tid = getattr(msg, "terminal_id", "")
        if self.require_logon and tid not in self.sessions:
            return h.HostError(code=HostErrorCode.NOT_LOGGED_ON, reason=Reason.TERMINAL_UNKNOWN, text="log on first")
        if isinstance(msg, h.AuthRequest):
            return authorise.authorise(ctx, msg, self.sessions.version(msg.terminal_id))
        if isinstance(msg, h.PinVerify):
            return authorise.pin(ctx, msg)
        if isinstance(msg, (h.ConfirmPoll, h.HostQuery)):
            return authorise.query(ctx, msg.terminal_id, msg.order_id)
        if isinstance(msg, (h.HostCancel, h.ReversalAdvice)):
            return after_sales.cancel(ctx, msg.terminal_id, msg.order_id, isinstance(msg, h.ReversalAdvice),
                                      int(getattr(msg, "reason", 0) or 0))
        if isinstance(msg, h.HostRefund):
            return after_sales.refund(ctx, msg)
        if isinstance(msg, h.SettleRequest):
            return settlement.settle(ctx, msg)
        return h.HostError(code=HostErrorCode.UNEXPECTED_MESSAGE, reason=Reason.OTHER,
                           text=f"unexpected {type(msg).__name__}")


class InProcessHostClient:
    """The embedded host behind the same interface as a TCP client: ``request(msg, timeout)``."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def request(self, msg: h.HostMessage, timeout: float) -> h.HostMessage:
        """The host's signed answer. Raises PosTimeout when the host stays silent."""
        reply = self.host.handle(msg)
        if reply is None:
            raise PosTimeout(f"host did not answer {type(msg).__name__} (outage)")
        return reply

    def close(self) -> None:
        pass
