"""The payment host: authorisation, confirmation, query, cancel, refund, settlement.

Requests arrive as :mod:`firmware_protocol.host.messages` messages, MAC'd by the terminal's PIN
pad; :meth:`Host.handle` verifies the MAC and that the KSN counter increases (a replay
is refused), applies account security, limits and risk rules, moves money in a
double-entry ledger exactly once per (merchant, order id), and answers signed by the
HSM. Every state change is one ``BEGIN IMMEDIATE`` transaction, and a terminal request
is exactly one, its KSN bookkeeping included (one commit, one fsync), so a host killed at
any point restarts with consistent books and every request either happened or did not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from firmware_protocol.host import messages as h
from firmware_protocol.currency import CURRENCIES
from firmware_protocol.errors import ProtocolError
from firmware_protocol.host.messages import pin_pan
from firmware_protocol.native.messages import MAX_AMOUNT_MINOR, Outcome, Reason, Totals
from firmware_protocol.native.tlv import encode as tlv_encode

from posterm.crypto.hsm import Hsm
from posterm.errors import CryptoError, PosError, PosTimeout
from posterm.host import risk
from posterm.host.store import Store, check_ledger, local_day

log = logging.getLogger("posterm.host")

CANCEL_WINDOW_S = 24 * 3600
CODE_TTL_S = 60.0
TEST_CODE_PREFIX = "2899000000000000"
REAL_NAME_FREE_MAJOR = 200        # above 200 (in major units of the currency) a payer must be real-name verified
FINAL = ("APPROVED", "DECLINED", "CANCELLED", "REFUNDED")


class HostRefused(PosError):
    """A host operation the caller asked for cannot be done (unknown account, ...)."""


@dataclass(frozen=True, slots=True)
class TradeView:
    trade_no: str
    order_id: str
    merchant_id: str
    terminal_id: str
    account_id: str | None
    amount_minor: int
    currency: str
    status: str
    reason: int
    refunded_minor: int
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"trade_no": self.trade_no, "order_id": self.order_id, "merchant_id": self.merchant_id,
                "terminal_id": self.terminal_id, "account": self.account_id, "amount_minor": self.amount_minor,
                "currency": self.currency, "status": self.status.lower(),
                "reason": Reason(self.reason).name.lower() if self.reason in Reason._value2member_map_ else self.reason,
                "refunded_minor": self.refunded_minor,
                "created_at": iso_time(self.created_at)}


def iso_time(ts: float) -> str:
    """``ts`` (epoch seconds) as ISO 8601 in the machine's time zone, with its offset, to the second."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def code_hash(code: str) -> str:
    return hashlib.sha256(b"posterm-code:" + code.encode()).hexdigest()


class Host:
    """See the module docstring. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, store: Store, hsm: Hsm, *, clock: Callable[[], float] = time.time,
                 rules: dict | None = None, outage_seconds: float = 30.0, phone_delay: float = 2.0) -> None:
        self.store = store
        self.hsm = hsm
        self.clock = clock
        self.rules = risk.load_rules(rules)
        self.outage_seconds = outage_seconds
        self.phone_delay = phone_delay
        self._outage_until: dict[str, float] = {}
        self._logons: dict[str, tuple[bytes, bytes, str, int]] = {}  # terminal -> (tn, hn, ksn hex, version)
        self._sessions: dict[str, int] = {}     # logged-on terminal -> the host protocol version it speaks
        self._lock = threading.Lock()
        self.require_logon = True

    @classmethod
    def open(cls, db_path: str | Path | None = None, *, hsm: Hsm | None = None, demo: bool = True,
             clock: Callable[[], float] = time.time, risk_config: str | Path | dict | None = None,
             outage_seconds: float = 30.0, phone_delay: float = 2.0) -> "Host":
        """Open the host database (default ``$POSTERM_HOME/host.db``).

        With ``demo`` (the default, as the emulator wants) the demo data is loaded into a
        database with no merchant yet; ``posterm host`` commands other than ``serve`` pass False.
        """
        from posterm.home import posterm_home
        from posterm.safefs import private_dir

        path = Path(db_path) if db_path else posterm_home() / "host.db"
        store = Store(path)
        rules = risk.load_rules(risk_config)
        if hsm is None:
            # Key material: the directory is the owner's alone whatever the umask (the sealed
            # files in it are 0600 too); one that exists is tightened, a symlink refused.
            hsm = Hsm.open(private_dir(path.parent / "hsm", own=True))
        host = cls(store, hsm, clock=clock, rules=rules, outage_seconds=outage_seconds, phone_delay=phone_delay)
        if demo and store.read().execute("SELECT COUNT(*) FROM merchants").fetchone()[0] == 0:
            from posterm.host.demo import load_demo

            load_demo(host)
        return host

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ admin API

    def add_merchant(self, merchant_id: str, name: str) -> None:
        with self.store.write() as db:
            db.execute("INSERT OR IGNORE INTO merchants VALUES (?, ?)", (merchant_id, name))

    def register_terminal(self, terminal_id: str, merchant_id: str, location: str) -> None:
        with self.store.write() as db:
            if not db.execute("SELECT 1 FROM merchants WHERE id = ?", (merchant_id,)).fetchone():
                raise HostRefused(f"unknown merchant {merchant_id}")
            db.execute("INSERT OR REPLACE INTO terminals VALUES (?, ?, ?, ?)",
                       (terminal_id, merchant_id, location, self.clock()))

    def issue_terminal_key(self, terminal_id: str, algorithm: str = "AES"):
        """A new initial DUKPT key for a registered terminal, as a TR-31 block under its KBPK
        (:meth:`posterm.crypto.hsm.Hsm.issue_initial_key`: a new key id, so no KSN the host
        has seen). Returns the IssuedKey (block, initial KSN, KCV). Raises HostRefused for a
        terminal the host does not know, CryptoError from the HSM."""
        if self.store.read().execute("SELECT 1 FROM terminals WHERE id = ?", (terminal_id,)).fetchone() is None:
            raise HostRefused(f"unknown terminal {terminal_id}: register it first")
        return self.hsm.issue_initial_key(terminal_id, algorithm)

    def add_account(self, account_id: str, name: str, *, currency: str = "CNY", balance_minor: int = 0,
                    real_name: bool = True, password: str | None = None, per_tx_limit: int = 500000,
                    daily_limit: int = 2000000, password_free: int = 100000, confirm: str = "pin",
                    home_region: str = "CN-SH", two_factor: bool = False, tz: str = "Asia/Shanghai",
                    behaviour: str = "normal") -> None:
        """Open an account, funding it with ``balance_minor`` issued into the ledger."""
        for v in (balance_minor, per_tx_limit, daily_limit, password_free):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_AMOUNT_MINOR:
                raise HostRefused(f"amounts and limits are whole minor units, 0 to {MAX_AMOUNT_MINOR}")
        if confirm not in ("pin", "phone"):
            raise HostRefused("confirmation is 'pin' or 'phone'")
        try:
            ZoneInfo(tz)
        except Exception:
            raise HostRefused(f"unknown time zone {tz!r}") from None
        verifier = self.hsm.payment_verifier(password) if password else None
        now = self.clock()
        with self.store.write() as db:
            if db.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                raise HostRefused(f"account {account_id} exists")
            db.execute("""INSERT INTO accounts (id, name, real_name, verifier, balance_minor, currency, per_tx_limit,
                          daily_limit, password_free, confirm, home_region, two_factor, tz, behaviour, created_at)
                          VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                       (account_id, name, int(real_name), verifier, currency, per_tx_limit, daily_limit,
                        password_free, confirm, home_region, int(two_factor), tz, behaviour, now))
            if balance_minor:
                self._move(db, f"I:{account_id}:{now}", "issuance", f"customer:{account_id}", balance_minor,
                           currency, "issue")

    def account(self, account_id: str) -> dict[str, Any]:
        row = self.store.read().execute("SELECT * FROM accounts WHERE id = ?", (account_id,)).fetchone()
        if row is None:
            raise HostRefused(f"no account {account_id}")
        out = {k: row[k] for k in row.keys() if k != "verifier"}
        out["password_set"] = row["verifier"] is not None
        out["created_at_iso"] = iso_time(row["created_at"])
        return out

    def set_limits(self, account_id: str, **limits: int) -> None:
        allowed = {"per_tx_limit", "daily_limit", "password_free"}
        if not limits or set(limits) - allowed:
            raise HostRefused(f"limits are {sorted(allowed)}")
        with self.store.write() as db:
            self._require_account(db, account_id)
            for k, v in limits.items():
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_AMOUNT_MINOR:
                    raise HostRefused(f"{k} must be a whole number of minor units, 0 to {MAX_AMOUNT_MINOR}")
                db.execute(f"UPDATE accounts SET {k} = ? WHERE id = ?", (v, account_id))

    def set_password(self, account_id: str, new: str, old: str | None = None) -> None:
        """Set the payment password; changing it needs the old one."""
        with self.store.write() as db:
            row = self._require_account(db, account_id)
            if row["verifier"] is not None:
                from posterm.crypto.verifier import check_verifier

                if not old or not check_verifier(old, row["verifier"]):
                    raise HostRefused("the old payment password is wrong")
            db.execute("UPDATE accounts SET verifier = ?, pin_tries = 0 WHERE id = ?",
                       (self.hsm.payment_verifier(new), account_id))

    def freeze(self, account_id: str, frozen: bool = True, why: str = "") -> None:
        with self.store.write() as db:
            self._require_account(db, account_id)
            db.execute("UPDATE accounts SET frozen = ? WHERE id = ?", (int(frozen), account_id))
            self._alert(db, account_id, "frozen" if frozen else "unfrozen", why or ("account frozen" if frozen
                                                                                     else "account unfrozen"))

    def set_flags(self, account_id: str, *, real_name: bool | None = None, two_factor: bool | None = None,
                  confirm: str | None = None) -> None:
        with self.store.write() as db:
            self._require_account(db, account_id)
            if real_name is not None:
                db.execute("UPDATE accounts SET real_name = ? WHERE id = ?", (int(real_name), account_id))
            if two_factor is not None:
                db.execute("UPDATE accounts SET two_factor = ? WHERE id = ?", (int(two_factor), account_id))
            if confirm is not None:
                if confirm not in ("pin", "phone"):
                    raise HostRefused("confirmation is 'pin' or 'phone'")
                db.execute("UPDATE accounts SET confirm = ? WHERE id = ?", (confirm, account_id))

    def security(self, account_id: str) -> dict[str, Any]:
        """The account security centre."""
        acct = self.account(account_id)
        db = self.store.read()
        alerts = [dict(r) for r in db.execute(
            "SELECT kind, text, created_at FROM alerts WHERE account_id = ? ORDER BY id DESC LIMIT 10",
            (account_id,))]
        return {"account": account_id, "real_name_verified": bool(acct["real_name"]),
                "payment_password_set": acct["password_set"], "two_factor": bool(acct["two_factor"]),
                "per_tx_limit_minor": acct["per_tx_limit"], "daily_limit_minor": acct["daily_limit"],
                "password_free_minor": acct["password_free"], "currency": acct["currency"],
                "frozen": bool(acct["frozen"]), "pin_locked": acct["pin_tries"] >= 3,
                "recent_alerts": alerts,
                "open_cases": [dict(r) for r in db.execute(
                    "SELECT id, trade_no, reason, status FROM cases WHERE account_id = ? AND status = 'open'",
                    (account_id,))]}

    def issue_code(self, account_id: str) -> str:
        """A one-time payment code: 18 digits, prefix 25-30, valid 60 s, single use."""
        now = self.clock()
        with self.store.write() as db:
            acct = self._require_account(db, account_id)
            if acct["frozen"]:
                raise HostRefused("account is frozen: no payment codes")
            while True:
                code = f"{secrets.choice(range(25, 31))}{secrets.randbelow(10 ** 16):016d}"
                if not code.startswith("2899"):
                    break
            db.execute("INSERT INTO payment_codes VALUES (?, ?, ?, ?, ?, NULL, 0)",
                       (code_hash(code), code[-4:], account_id, now, now + CODE_TTL_S))
        return code

    def report(self, trade_no: str, reason: str) -> int:
        """Open a case on a trade and freeze its account pending review. Returns the case id."""
        with self.store.write() as db:
            t = db.execute("SELECT * FROM trades WHERE trade_no = ? OR order_id = ?", (trade_no, trade_no)).fetchone()
            if t is None:
                raise HostRefused(f"no trade {trade_no}")
            cur = db.execute("INSERT INTO cases (trade_no, account_id, reason, created_at) VALUES (?, ?, ?, ?)",
                             (t["trade_no"], t["account_id"], reason, self.clock()))
            if t["account_id"]:
                db.execute("UPDATE accounts SET frozen = 1 WHERE id = ?", (t["account_id"],))
                self._alert(db, t["account_id"], "report", f"case {cur.lastrowid} opened on {t['trade_no']}: "
                            f"{reason}; account frozen pending review")
            return int(cur.lastrowid)

    def close_case(self, case_id: int, resolution: str, *, unfreeze: bool = False) -> None:
        """Close an open case with its resolution; ``unfreeze``: also lift the account's freeze
        (only when no other case on that account is still open). Raises HostRefused."""
        resolution = resolution.strip()
        if not resolution:
            raise HostRefused("a case is closed with a resolution")
        with self.store.write() as db:
            c = db.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
            if c is None:
                raise HostRefused(f"no case {case_id}")
            if c["status"] != "open":
                raise HostRefused(f"case {case_id} is already {c['status']}")
            db.execute("UPDATE cases SET status = 'closed', resolution = ?, closed_at = ? WHERE id = ?",
                       (resolution[:200], self.clock(), case_id))
            account = c["account_id"]
            if not account:
                return
            self._alert(db, account, "case_closed", f"case {case_id} closed: {resolution}")
            if unfreeze:
                still_open = db.execute("SELECT COUNT(*) FROM cases WHERE account_id = ? AND status = 'open'",
                                        (account,)).fetchone()[0]
                if still_open:
                    raise HostRefused(f"account {account} has {still_open} other open case(s): it stays frozen")
                db.execute("UPDATE accounts SET frozen = 0 WHERE id = ?", (account,))
                self._alert(db, account, "unfrozen", f"case {case_id} closed: {resolution}")

    def cases(self) -> list[dict[str, Any]]:
        """Every case, oldest first: the table's columns (times in epoch seconds) and
        ``created_at_iso`` / ``closed_at_iso`` (ISO 8601 with the machine's offset)."""
        return [dict(r) | {"created_at_iso": iso_time(r["created_at"]),
                           "closed_at_iso": iso_time(r["closed_at"]) if r["closed_at"] is not None else None}
                for r in self.store.read().execute("SELECT * FROM cases ORDER BY id")]

    def trades(self, *, terminal: str | None = None, date: str | None = None, account: str | None = None,
               month: str | None = None) -> list[TradeView]:
        sql, args = "SELECT * FROM trades WHERE 1=1", []
        if terminal:
            sql += " AND terminal_id = ?"
            args.append(terminal)
        if account:
            sql += " AND account_id = ?"
            args.append(account)
        rows = self.store.read().execute(sql + " ORDER BY created_at, trade_no", args).fetchall()
        out = []
        for r in rows:
            local = datetime.fromtimestamp(r["created_at"], ZoneInfo("Asia/Shanghai"))
            if date and local.strftime("%Y-%m-%d") != date:
                continue
            if month and local.strftime("%Y-%m") != month:
                continue
            out.append(TradeView(r["trade_no"], r["order_id"], r["merchant_id"], r["terminal_id"], r["account_id"],
                                 r["amount_minor"], r["currency"], r["status"], r["reason"], r["refunded_minor"],
                                 r["created_at"]))
        return out

    def bill(self, account_id: str, month: str) -> list[dict[str, Any]]:
        """Every payment, refund and cancel of an account in a month (YYYY-MM, account's time zone)."""
        acct = self.account(account_id)
        tz = ZoneInfo(acct["tz"])
        try:
            datetime.strptime(month, "%Y-%m")
        except ValueError:
            raise HostRefused("--month is YYYY-MM") from None
        rows = self.store.read().execute(
            """SELECT l.txn, l.delta, l.currency, l.kind, l.created_at, t.order_id, t.merchant_id, t.status
               FROM ledger l LEFT JOIN trades t ON t.trade_no = COALESCE(
                   (SELECT trade_no FROM refunds WHERE 'R:' || refund_id = l.txn), REPLACE(l.txn, 'C:', ''))
               WHERE l.account = ? ORDER BY l.id""", (f"customer:{account_id}",)).fetchall()
        out = []
        for r in rows:
            when = datetime.fromtimestamp(r["created_at"], tz)
            if when.strftime("%Y-%m") == month:
                out.append({"time": when.isoformat(timespec="seconds"), "kind": r["kind"], "amount_minor": r["delta"],
                            "currency": r["currency"], "order_id": r["order_id"], "merchant": r["merchant_id"],
                            "reference": r["txn"]})
        return out

    def check_books(self) -> list[str]:
        return check_ledger(self.store.read())

    def order_status(self, order_id: str, merchant_id: str = "M100000001") -> str | None:
        row = self.store.read().execute("SELECT status FROM trades WHERE merchant_id = ? AND order_id = ?",
                                        (merchant_id, order_id)).fetchone()
        return row["status"] if row else None

    # ------------------------------------------------------------------ wallet (the customer's phone)

    def wallet_scan(self, qr_data: str, account_id: str) -> str:
        """The customer scans a merchant's dynamic QR and pays from ``account_id``. Returns the status."""
        with self.store.write() as db:
            t = db.execute("SELECT * FROM trades WHERE qr_data = ?", (qr_data,)).fetchone()
            if t is None:
                raise HostRefused("this QR code is not a payable order")
            if t["status"] != "SHOW_QR":
                return t["status"]
            acct = self._require_account(db, account_id)
            db.execute("UPDATE trades SET account_id = ? WHERE trade_no = ?", (account_id, t["trade_no"]))
            t = db.execute("SELECT * FROM trades WHERE trade_no = ?", (t["trade_no"],)).fetchone()
            terminal = db.execute("SELECT * FROM terminals WHERE id = ?", (t["terminal_id"],)).fetchone()
            refusal = self._checks(db, acct, t["amount_minor"], t["currency"], terminal, t["trade_no"])
            if refusal is not None and refusal[0] != "confirm":
                self._decline(db, t["trade_no"], refusal[1], refusal[2])
            else:
                self._capture(db, t["trade_no"])  # confirmed on the phone by scanning and paying
            return db.execute("SELECT status FROM trades WHERE trade_no = ?", (t["trade_no"],)).fetchone()[0]

    def account_for_code(self, code: str) -> str:
        """The account a payment code belongs to (the wallet that shows it)."""
        row = self.store.read().execute("SELECT account_id FROM payment_codes WHERE code_hash = ?",
                                        (code_hash(code),)).fetchone()
        if row is None:
            raise HostRefused("unknown payment code")
        return row[0]

    def wallet_confirm(self, order_id: str, merchant_id: str = "M100000001") -> str:
        """The customer confirms a waiting payment on the phone."""
        with self.store.write() as db:
            t = db.execute("SELECT * FROM trades WHERE merchant_id = ? AND order_id = ?",
                           (merchant_id, order_id)).fetchone()
            if t is None:
                raise HostRefused(f"no order {order_id}")
            if t["status"] == "WAIT_BUYER":
                self._capture(db, t["trade_no"])
            return db.execute("SELECT status FROM trades WHERE trade_no = ?", (t["trade_no"],)).fetchone()[0]

    # ------------------------------------------------------------------ the message interface

    def client(self) -> "InProcessHostClient":
        return InProcessHostClient(self)

    def handle(self, msg: h.HostMessage, raw: bytes | None = None) -> h.HostMessage | None:
        """Answer one terminal request (signed), or None when the host stays silent.

        ``raw``: the payload as it came off the wire; the MAC is checked over it (a newer
        terminal's optional items are covered though this host skips them). Without it
        (in process) the message is encoded again.

        The KSN bookkeeping and everything the request changes are one write transaction:
        one commit per request, and a request either happened with its KSN consumed or
        not at all. The answer is signed after the commit, so nothing is answered that a
        crash could still undo.
        """
        payload = raw if raw is not None else tlv_encode(msg)
        ksn = msg.ksn or b""
        try:
            covered = h.mac_input(payload)
        except ProtocolError:
            covered = b""
        if not msg.mac or not covered or not self.hsm.verify_request_mac(ksn, covered, msg.mac):
            log.warning("refused %s: bad or missing MAC", type(msg).__name__)
            return self._sign(h.HostError(code=1, reason=Reason.MAC_INVALID, text="MAC check failed"), ksn)
        with self.store.write() as db:
            if not self._ksn_fresh(db, "ksn_seen", ksn):
                log.warning("refused %s: KSN counter did not increase (replay)", type(msg).__name__)
                reply = h.HostError(code=2, reason=Reason.REPLAY_DETECTED, text="replayed request")
            else:
                terminal_id = getattr(msg, "terminal_id", None)
                if terminal_id and self._outage_until.get(terminal_id, 0.0) > self.clock():
                    reply = None
                else:
                    try:
                        reply = self._dispatch(msg)
                    except HostRefused as exc:  # its own changes are rolled back; the KSN stays consumed
                        reply = h.HostError(code=3, reason=Reason.OTHER, text=str(exc)[:60])
        if reply is None:
            return None
        return self._sign(reply, ksn)

    def has_session(self, terminal_id: str) -> bool:
        """Whether ``terminal_id`` has logged on to this host (since it started)."""
        with self._lock:
            return terminal_id in self._sessions

    def _sign(self, reply: h.HostMessage, ksn: bytes) -> h.HostMessage:
        if not ksn:
            return reply
        import dataclasses

        unsigned = dataclasses.replace(reply, ksn=ksn, mac=b"\x00" * h.MAC_SIZE)
        try:
            mac = self.hsm.response_mac(ksn, h.mac_input(tlv_encode(unsigned)))
        except CryptoError:  # a KSN no key here derives (forged, foreign BDK): answer unsigned
            return reply
        return dataclasses.replace(unsigned, mac=mac)

    @staticmethod
    def _ksn_parts(ksn: bytes) -> tuple[str, int]:
        """(initial key id in hex, transaction counter) of an AES (12-byte) or TDES (10-byte) KSN."""
        if len(ksn) == 12:
            return ksn[:8].hex(), int.from_bytes(ksn[8:], "big")
        return (ksn[:7] + bytes([ksn[7] & 0xE0])).hex(), int.from_bytes(ksn[-3:], "big") & 0x1FFFFF

    def _ksn_fresh(self, db, table: str, ksn: bytes) -> bool:
        """Record ``ksn`` in ``table`` if its counter is above the last one seen from its
        initial key; False (nothing recorded) for a replay."""
        ikid, counter = self._ksn_parts(ksn)
        cur = db.execute(f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT (ikid) DO UPDATE "
                         f"SET counter = excluded.counter WHERE excluded.counter > counter", (ikid, counter))
        return cur.rowcount == 1

    def _dispatch(self, msg: h.HostMessage) -> h.HostMessage | None:
        if isinstance(msg, h.LogonRequest):
            return self._logon(msg)
        if isinstance(msg, h.LogonConfirm):
            return self._logon_confirm(msg)
        tid = getattr(msg, "terminal_id", "")
        if self.require_logon and tid not in self._sessions:
            return h.HostError(code=4, reason=Reason.TERMINAL_UNKNOWN, text="log on first")
        if isinstance(msg, h.AuthRequest):
            return self._authorise(msg)
        if isinstance(msg, h.PinVerify):
            return self._pin(msg)
        if isinstance(msg, (h.ConfirmPoll, h.HostQuery)):
            return self._query(msg.terminal_id, msg.order_id)
        if isinstance(msg, (h.HostCancel, h.ReversalAdvice)):
            return self._cancel(msg.terminal_id, msg.order_id, isinstance(msg, h.ReversalAdvice),
                                int(getattr(msg, "reason", 0) or 0))
        if isinstance(msg, h.HostRefund):
            return self._refund(msg)
        if isinstance(msg, h.SettleRequest):
            return self._settle(msg)
        return h.HostError(code=5, reason=Reason.OTHER, text=f"unexpected {type(msg).__name__}")

    # -- logon: mutual challenge-response --------------------------------------------------

    def _logon(self, msg: h.LogonRequest) -> h.HostMessage:
        with self.store.write() as db:
            t = db.execute("SELECT * FROM terminals WHERE id = ?", (msg.terminal_id,)).fetchone()
            if t is None or t["merchant_id"] != msg.merchant_id:
                return h.LogonResult(accepted=False, reason=Reason.TERMINAL_UNKNOWN)
            if db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (msg.terminal_nonce.hex(),)).fetchone():
                return h.LogonResult(accepted=False, reason=Reason.REPLAY_DETECTED)
            db.execute("INSERT INTO nonces VALUES (?, ?)", (msg.terminal_nonce.hex(), self.clock()))
        hn = os.urandom(16)
        with self._lock:
            self._logons[msg.terminal_id] = (msg.terminal_nonce, hn, msg.ksn.hex(), int(msg.protocol_version))
        proof = self.hsm.response_mac(msg.ksn, b"H" + msg.terminal_nonce + hn)
        return h.LogonChallenge(host_nonce=hn, host_proof=proof)

    def _logon_confirm(self, msg: h.LogonConfirm) -> h.HostMessage:
        with self._lock:
            pending = self._logons.pop(msg.terminal_id, None)
        if pending is None:
            return h.LogonResult(accepted=False, reason=Reason.REPLAY_DETECTED)
        tn, hn, _, version = pending
        if not self.hsm.verify_request_mac(msg.ksn, b"T" + hn + tn, msg.terminal_proof):
            return h.LogonResult(accepted=False, reason=Reason.MAC_INVALID)
        with self._lock:
            self._sessions[msg.terminal_id] = version
        return h.LogonResult(accepted=True, session_id=secrets.token_hex(8).upper(),
                             host_time=datetime.fromtimestamp(self.clock()).astimezone().isoformat(timespec="seconds"))

    # -- authorisation ---------------------------------------------------------------

    def _params_hash(self, msg: h.AuthRequest) -> str:
        who = code_hash(msg.payment_code) if msg.payment_code else ("qr" if msg.dynamic_qr else "-")
        return hashlib.sha256(f"{msg.amount_minor}|{msg.currency}|{who}".encode()).hexdigest()

    def _authorise(self, msg: h.AuthRequest) -> h.HostMessage | None:
        now = self.clock()
        with self.store.write() as db:
            term = db.execute("SELECT * FROM terminals WHERE id = ?", (msg.terminal_id,)).fetchone()
            if term is None:
                return h.AuthResponse(order_id=msg.order_id, status=h.HostStatus.DECLINED,
                                      reason=Reason.TERMINAL_UNKNOWN)
            params_hash = self._params_hash(msg)
            existing = db.execute("SELECT trade_no, params_hash, terminal_id FROM trades "
                                  "WHERE merchant_id = ? AND order_id = ?",
                                  (term["merchant_id"], msg.order_id)).fetchone()
            if existing is not None:
                owner = existing["terminal_id"]
                if existing["params_hash"] != params_hash:
                    return h.AuthResponse(order_id=msg.order_id, status=h.HostStatus.DECLINED,
                                          reason=Reason.ORDER_CONFLICT,
                                          reason_text="order id reused with other parameters",
                                          owner_terminal_id=owner)
                if owner != msg.terminal_id and self._sessions.get(msg.terminal_id, 1) < 2:
                    # A terminal before host protocol 2 cannot read owner_terminal_id and would
                    # count the owner's stored answer as its own sale: it gets a decline instead.
                    return h.AuthResponse(order_id=msg.order_id, status=h.HostStatus.DECLINED,
                                          reason=Reason.ORDER_CONFLICT,
                                          reason_text="order taken on another terminal", owner_terminal_id=owner)
                return self._answer(db, existing["trade_no"])
            trade_no = f"{datetime.fromtimestamp(now):%Y%m%d}{secrets.randbelow(10 ** 12):012d}"
            acct = code_reason = None
            if msg.payment_code and not msg.dynamic_qr:
                acct, code_reason = self._resolve_code(db, msg.payment_code, now)
            # The trade is stored once with what is known so far; only its outcome is updated below.
            db.execute("""INSERT INTO trades (trade_no, merchant_id, order_id, terminal_id, account_id, amount_minor,
                          currency, status, params_hash, code_last4, created_at, asked_at, qr_data, description)
                          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                       (trade_no, term["merchant_id"], msg.order_id, msg.terminal_id, acct["id"] if acct else None,
                        msg.amount_minor, msg.currency, "SHOW_QR" if msg.dynamic_qr else "PROCESSING", params_hash,
                        msg.payment_code[-4:] if msg.payment_code and not msg.dynamic_qr else None, now,
                        now if msg.dynamic_qr else None,
                        f"https://qr.posterm.test/p/{trade_no}" if msg.dynamic_qr else None, msg.description))
            if msg.dynamic_qr:
                return self._answer(db, trade_no)
            if not msg.payment_code:
                self._decline(db, trade_no, Reason.CODE_INVALID, "no payment code")
                return self._answer(db, trade_no)
            if acct is None:
                self._decline(db, trade_no, code_reason, code_reason.name.lower())
                return self._answer(db, trade_no)
            if acct["behaviour"] == "outage":
                self._outage_until[msg.terminal_id] = now + self.outage_seconds
            spent = self._spent_today(db, acct)
            refusal = self._checks(db, acct, msg.amount_minor, msg.currency, term, trade_no, spent)
            if refusal is not None and refusal[0] == "decline":
                self._decline(db, trade_no, refusal[1], refusal[2])
            elif refusal is not None or msg.amount_minor > acct["password_free"] or \
                    acct["behaviour"] in ("always_pin", "phone", "phone_never"):
                # Two-factor accounts give the password first, then confirm on the phone (_pin).
                status = "WAIT_BUYER" if acct["confirm"] == "phone" and not acct["two_factor"] else "NEED_PIN"
                db.execute("UPDATE trades SET status = ?, asked_at = ? WHERE trade_no = ?", (status, now, trade_no))
            else:
                # Nothing in this transaction has changed the account or today's spending since
                # _checks read them: capture with those values instead of reading them again.
                self._capture_trade(db, trade_no, term["merchant_id"], msg.amount_minor, msg.currency, acct, spent)
            answer = self._answer(db, trade_no)
        if acct is not None and acct["behaviour"] == "outage":
            return None  # processed, but the answer is lost in the outage
        return answer

    def _resolve_code(self, db, code: str, now: float):
        row = db.execute("SELECT * FROM payment_codes WHERE code_hash = ?", (code_hash(code),)).fetchone()
        if row is None or not (len(code) == 18 and code.isdigit() and 25 <= int(code[:2]) <= 30):
            return None, Reason.CODE_INVALID
        if not row["test"]:
            if row["used_at"] is not None:
                return None, Reason.CODE_USED
            if row["expires_at"] is not None and now > row["expires_at"]:
                return None, Reason.CODE_EXPIRED
            db.execute("UPDATE payment_codes SET used_at = ? WHERE code_hash = ?", (now, row["code_hash"]))
        return self._require_account(db, row["account_id"]), Reason.NONE

    def _checks(self, db, acct, amount: int, currency: str, term, trade_no: str, spent: int | None = None):
        """None to approve, ('confirm', ...) to ask the customer, ('decline', reason, text) to refuse.

        ``spent``: the account's spending today, when the caller already has it."""
        if acct["frozen"]:
            return "decline", Reason.ACCOUNT_FROZEN, "account frozen"
        if currency != acct["currency"]:
            return "decline", Reason.CURRENCY_MISMATCH, f"account is in {acct['currency']}"
        if not acct["real_name"] and amount > REAL_NAME_FREE_MAJOR * 10 ** CURRENCIES.get(acct["currency"], (0, 2))[1]:
            return "decline", Reason.NOT_REAL_NAME_VERIFIED, "real-name verification needed"
        if amount > acct["per_tx_limit"]:
            return "decline", Reason.OVER_TRANSACTION_LIMIT, "over the per-transaction limit"
        if (self._spent_today(db, acct) if spent is None else spent) + amount > acct["daily_limit"]:
            return "decline", Reason.OVER_DAILY_LIMIT, "over the daily limit"
        decision = self._risk(db, acct, amount, term, trade_no)
        if decision.action == "reject":
            return "decline", Reason.RISK_REJECTED, "rejected by risk control"
        if amount > acct["balance_minor"]:
            return "decline", Reason.INSUFFICIENT_BALANCE, "insufficient balance"
        if decision.action == "confirm":
            return "confirm", Reason.NONE, "; ".join(decision.reasons)
        return None

    def _spent_today(self, db, acct) -> int:
        row = db.execute("SELECT spent_minor FROM daily_spend WHERE account_id = ? AND day = ?",
                         (acct["id"], local_day(self.clock(), acct["tz"]))).fetchone()
        return row[0] if row else 0

    def _add_spent(self, db, account_id: str, paid_at: float, delta: int, tz: str | None = None) -> None:
        """Count ``delta`` in the account's daily total of the day ``paid_at`` falls on (its time zone)."""
        if tz is None:
            tz = db.execute("SELECT tz FROM accounts WHERE id = ?", (account_id,)).fetchone()[0]
        db.execute("INSERT INTO daily_spend VALUES (?, ?, ?) ON CONFLICT (account_id, day) DO UPDATE "
                   "SET spent_minor = spent_minor + excluded.spent_minor", (account_id, local_day(paid_at, tz), delta))

    def _risk(self, db, acct, amount: int, term, trade_no: str) -> risk.Decision:
        now = self.clock()
        if acct["behaviour"] == "risk_reject":
            decision = risk.Decision("reject", ("test account 289900000000000007: always rejected by risk control",))
        elif acct["behaviour"] != "normal":
            decision = risk.Decision("allow", ())  # test codes pick their outcome deterministically
        else:
            recent = tuple(r[0] for r in db.execute(
                "SELECT amount_minor FROM trades WHERE account_id = ? AND status = 'APPROVED' ORDER BY paid_at DESC "
                "LIMIT 20", (acct["id"],)))
            window = self.rules["velocity"]["window_s"]
            velocity = db.execute("SELECT COUNT(*) FROM trades WHERE account_id = ? AND created_at >= ? "
                                  "AND trade_no != ?", (acct["id"], now - window, trade_no)).fetchone()[0]
            seen_here = db.execute("SELECT 1 FROM trades WHERE account_id = ? AND terminal_id = ? AND trade_no != ? "
                                   "LIMIT 1", (acct["id"], term["id"], trade_no)).fetchone()
            wrong = db.execute("SELECT COUNT(*) FROM pin_failures WHERE account_id = ? AND created_at >= ?",
                               (acct["id"], now - self.rules["wrong_pins"]["window_s"])).fetchone()[0]
            decision = risk.evaluate(self.rules, risk.RiskInput(
                amount_minor=amount, local_time=datetime.fromtimestamp(now, ZoneInfo(acct["tz"])),
                terminal_region=term["location"], home_region=acct["home_region"], recent_amounts=recent,
                payments_in_window=velocity, new_terminal=seen_here is None, wrong_pins_in_window=wrong))
        db.execute("INSERT INTO risk_decisions (trade_no, account_id, decision, reasons, created_at) "
                   "VALUES (?, ?, ?, ?, ?)", (trade_no, acct["id"], decision.action, json.dumps(decision.reasons), now))
        if decision.action != "allow" and decision.reasons:
            self._alert(db, acct["id"], f"risk:{decision.action}", f"{trade_no}: " + "; ".join(decision.reasons))
        return decision

    # -- money ---------------------------------------------------------------------------

    def _move(self, db, txn: str, debit: str, credit: str, amount: int, currency: str, kind: str) -> None:
        now = self.clock()
        db.execute("INSERT INTO ledger (txn, account, delta, currency, kind, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (txn, debit, -amount, currency, kind, now))
        db.execute("INSERT INTO ledger (txn, account, delta, currency, kind, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (txn, credit, amount, currency, kind, now))
        for account, delta in ((debit, -amount), (credit, amount)):
            if account.startswith("customer:"):
                db.execute("UPDATE accounts SET balance_minor = balance_minor + ? WHERE id = ?",
                           (delta, account.split(":", 1)[1]))

    def _capture(self, db, trade_no: str) -> None:
        """Charge the customer once. Re-checks the balance and limits at capture time."""
        t = db.execute("SELECT * FROM trades WHERE trade_no = ?", (trade_no,)).fetchone()
        if t["status"] in FINAL:
            return
        acct = self._require_account(db, t["account_id"])
        self._capture_trade(db, trade_no, t["merchant_id"], t["amount_minor"], t["currency"], acct,
                            self._spent_today(db, acct))

    def _capture_trade(self, db, trade_no: str, merchant_id: str, amount: int, currency: str, acct,
                       spent: int) -> None:
        """Capture a trade not yet final: ``acct`` and ``spent`` (today's spending) as read
        in this transaction."""
        if acct["frozen"]:
            return self._decline(db, trade_no, Reason.ACCOUNT_FROZEN, "account frozen")
        if amount > acct["balance_minor"]:
            return self._decline(db, trade_no, Reason.INSUFFICIENT_BALANCE, "insufficient balance")
        if spent + amount > acct["daily_limit"]:
            return self._decline(db, trade_no, Reason.OVER_DAILY_LIMIT, "over the daily limit")
        self._move(db, trade_no, f"customer:{acct['id']}", f"merchant:{merchant_id}", amount, currency, "payment")
        now = self.clock()
        db.execute("UPDATE trades SET status = 'APPROVED', reason = 0, reason_text = '', paid_at = ? WHERE trade_no = ?",
                   (now, trade_no))
        self._add_spent(db, acct["id"], now, amount, acct["tz"])

    def _decline(self, db, trade_no: str, reason: int, text: str) -> None:
        db.execute("UPDATE trades SET status = 'DECLINED', reason = ?, reason_text = ? WHERE trade_no = ?",
                   (int(reason), text[:60], trade_no))

    def _alert(self, db, account_id: str, kind: str, text: str) -> None:
        db.execute("INSERT INTO alerts (account_id, kind, text, created_at) VALUES (?, ?, ?, ?)",
                   (account_id, kind, text[:200], self.clock()))

    def _require_account(self, db, account_id: str):
        row = db.execute("SELECT * FROM accounts WHERE id = ?", (account_id,)).fetchone()
        if row is None:
            raise HostRefused(f"no account {account_id}")
        return row

    def _answer(self, db, trade_no: str) -> h.AuthResponse:
        t = db.execute("SELECT * FROM trades WHERE trade_no = ?", (trade_no,)).fetchone()
        status = h.HostStatus[t["status"]]
        tries = None
        if status is h.HostStatus.NEED_PIN and t["account_id"]:
            used = db.execute("SELECT pin_tries FROM accounts WHERE id = ?", (t["account_id"],)).fetchone()[0]
            tries = max(0, 3 - used)
        paid = datetime.fromtimestamp(t["paid_at"]).astimezone().isoformat(timespec="seconds") if t["paid_at"] else None
        return h.AuthResponse(order_id=t["order_id"], status=status, reason=t["reason"],
                              reason_text=t["reason_text"] or "",
                              trade_no=t["trade_no"] if status in (h.HostStatus.APPROVED, h.HostStatus.REFUNDED)
                              else None, amount_minor=t["amount_minor"], currency=t["currency"],
                              qr_data=t["qr_data"] if status is h.HostStatus.SHOW_QR else None,
                              code_last4=t["code_last4"], paid_at=paid, refunded_minor=t["refunded_minor"],
                              pin_tries_left=tries,
                              poll_interval_ms=None, owner_terminal_id=t["terminal_id"])

    def _trade_for(self, db, terminal_id: str, order_id: str):
        term = db.execute("SELECT merchant_id FROM terminals WHERE id = ?", (terminal_id,)).fetchone()
        if term is None:
            return None
        return db.execute("SELECT * FROM trades WHERE merchant_id = ? AND order_id = ?",
                          (term["merchant_id"], order_id)).fetchone()

    @staticmethod
    def _foreign(t, terminal_id: str, what: str) -> bool:
        """True (and logged) when ``t`` is owned by a terminal other than ``terminal_id``: only the
        owner changes an order; the others get its answer unchanged, which names the owner."""
        if t["terminal_id"] == terminal_id:
            return False
        log.warning("refused %s of order %s from %s: it is %s's order", what, t["order_id"], terminal_id,
                    t["terminal_id"])
        return True

    def _not_found(self, order_id: str) -> h.AuthResponse:
        return h.AuthResponse(order_id=order_id, status=h.HostStatus.NOT_FOUND, reason=Reason.ORDER_NOT_FOUND)

    def _pin(self, msg: h.PinVerify) -> h.HostMessage:
        now = self.clock()
        with self.store.write() as db:
            t = self._trade_for(db, msg.terminal_id, msg.order_id)
            if t is None:
                return self._not_found(msg.order_id)
            if t["status"] != "NEED_PIN" or self._foreign(t, msg.terminal_id, "PinVerify"):
                return self._answer(db, t["trade_no"])
            acct = self._require_account(db, t["account_id"])
            if acct["verifier"] is None:
                self._decline(db, t["trade_no"], Reason.WRONG_PIN, "no payment password set")
                return self._answer(db, t["trade_no"])
            refused = self._pin_ksn_refusal(db, msg)
            if refused is not None:
                return refused
            check = self.hsm.verify_pin(ksn=msg.pin_ksn, pin_block=msg.pin_block, pin_format=msg.pin_format,
                                        pan=self._pan_for(t), verifier=acct["verifier"], tries_used=acct["pin_tries"])
            if check.match:
                db.execute("UPDATE accounts SET pin_tries = 0 WHERE id = ?", (acct["id"],))
                if acct["two_factor"]:
                    # Two-factor: the payment password is one factor, the phone bound to the
                    # account the other; the payment waits for the customer's confirmation there.
                    db.execute("UPDATE trades SET status = 'WAIT_BUYER', asked_at = ? WHERE trade_no = ?",
                               (now, t["trade_no"]))
                    return self._answer(db, t["trade_no"])
                self._capture(db, t["trade_no"])
                return self._answer(db, t["trade_no"])
            db.execute("UPDATE accounts SET pin_tries = MIN(pin_tries + 1, 3) WHERE id = ?", (acct["id"],))
            db.execute("INSERT INTO pin_failures (account_id, created_at) VALUES (?, ?)", (acct["id"], now))
            if check.locked:
                self._decline(db, t["trade_no"], Reason.PIN_LOCKED, "payment password locked")
                self._alert(db, acct["id"], "pin_locked", "payment password locked after 3 wrong tries")
                return self._answer(db, t["trade_no"])
            return h.AuthResponse(order_id=t["order_id"], status=h.HostStatus.NEED_PIN, reason=Reason.WRONG_PIN,
                                  reason_text="wrong payment password", amount_minor=t["amount_minor"],
                                  currency=t["currency"], code_last4=t["code_last4"],
                                  pin_tries_left=check.tries_left)

    def _pin_ksn_refusal(self, db, msg: h.PinVerify) -> h.HostError | None:
        """Refuse a PIN block that is not fresh from the requesting terminal's own PIN pad.

        Its KSN must share the request's initial key (same device) and its counter must be
        above the last PIN block accepted from that device, which is then recorded; the
        request KSN guard cannot serve, as a PIN block's counter comes before its request's.
        A refusal uses no PIN try and leaves the trade waiting for a PIN.
        """
        pin_ksn, req_ksn = bytes(msg.pin_ksn), bytes(msg.ksn or b"")
        if len(pin_ksn) != len(req_ksn) or self._ksn_parts(pin_ksn)[0] != self._ksn_parts(req_ksn)[0]:
            log.warning("refused PinVerify from %s: PIN block KSN is not this terminal's device", msg.terminal_id)
            return h.HostError(code=6, reason=Reason.KEY_ERROR, text="PIN block from another device")
        if not self._ksn_fresh(db, "pin_ksn_seen", pin_ksn):
            log.warning("refused PinVerify from %s: PIN block KSN counter did not increase (replay)", msg.terminal_id)
            return h.HostError(code=2, reason=Reason.REPLAY_DETECTED, text="replayed PIN block")
        return None

    def _pan_for(self, t) -> str:
        """The PIN block is bound to the payment code; we keep only its hash, so the terminal's
        PIN block binds to the code's last 4 digits padded (see PROTOCOL.md, PIN block PAN)."""
        return pin_pan(t["code_last4"] or "0000")

    def _query(self, terminal_id: str, order_id: str) -> h.HostMessage:
        now = self.clock()
        with self.store.write() as db:
            t = self._trade_for(db, terminal_id, order_id)
            if t is None:
                return self._not_found(order_id)
            if t["status"] == "WAIT_BUYER" and t["account_id"]:
                acct = self._require_account(db, t["account_id"])
                # Test account 004 confirms on its phone after phone_delay; real customers call wallet_confirm.
                delay = self.phone_delay if acct["behaviour"] == "phone" else None
                if delay is not None and now - (t["asked_at"] or now) >= delay:
                    self._capture(db, t["trade_no"])
            return self._answer(db, t["trade_no"])

    def _cancel(self, terminal_id: str, order_id: str, reversal: bool, reason: int = 0) -> h.HostMessage:
        now = self.clock()
        with self.store.write() as db:
            t = self._trade_for(db, terminal_id, order_id)
            if t is None:
                return self._not_found(order_id)
            if self._foreign(t, terminal_id, "ReversalAdvice" if reversal else "HostCancel"):
                return self._answer(db, t["trade_no"])
            if t["status"] in ("PROCESSING", "NEED_PIN", "WAIT_BUYER", "SHOW_QR"):
                # The terminal says why (customer cancelled, aborted by the ECR, ...); none given:
                # the customer did not confirm in time.
                db.execute("UPDATE trades SET status = 'CANCELLED', reason = ? WHERE trade_no = ?",
                           (reason or int(Reason.CONFIRMATION_TIMEOUT), t["trade_no"]))
            elif t["status"] == "APPROVED":
                if not reversal and now - (t["paid_at"] or now) > CANCEL_WINDOW_S:
                    return h.AuthResponse(order_id=order_id, status=h.HostStatus.APPROVED,
                                          reason=Reason.CANCEL_WINDOW_EXPIRED, trade_no=t["trade_no"],
                                          amount_minor=t["amount_minor"], currency=t["currency"])
                back = t["amount_minor"] - t["refunded_minor"]
                if back:
                    self._move(db, f"C:{t['trade_no']}", f"merchant:{t['merchant_id']}", f"customer:{t['account_id']}",
                               back, t["currency"], "reversal" if reversal else "cancel")
                db.execute("UPDATE trades SET status = 'REFUNDED', refunded_minor = amount_minor WHERE trade_no = ?",
                           (t["trade_no"],))
                self._add_spent(db, t["account_id"], t["paid_at"], -back)
            return self._answer(db, t["trade_no"])

    def _refund(self, msg: h.HostRefund) -> h.HostMessage:
        with self.store.write() as db:
            done = db.execute("SELECT r.*, t.refunded_minor, t.order_id FROM refunds r JOIN trades t USING (trade_no) "
                              "WHERE refund_id = ?", (msg.refund_id,)).fetchone()
            if done is not None:
                if done["order_id"] != msg.order_id or done["amount_minor"] != msg.amount_minor:
                    return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.DECLINED,
                                            reason=Reason.ORDER_CONFLICT)
                return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.APPROVED,
                                        amount_minor=done["amount_minor"], refunded_total_minor=done["refunded_minor"],
                                        currency=done["currency"])
            t = self._trade_for(db, msg.terminal_id, msg.order_id)
            if t is None:
                return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.DECLINED,
                                        reason=Reason.ORDER_NOT_FOUND)
            if t["status"] not in ("APPROVED",):
                return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.DECLINED,
                                        reason=Reason.NOT_PAID, refunded_total_minor=t["refunded_minor"])
            if msg.currency != t["currency"]:
                return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.DECLINED,
                                        reason=Reason.CURRENCY_MISMATCH)
            if t["refunded_minor"] + msg.amount_minor > t["amount_minor"]:
                return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.DECLINED,
                                        reason=Reason.REFUND_EXCEEDS_PAID, refunded_total_minor=t["refunded_minor"],
                                        currency=t["currency"])
            db.execute("INSERT INTO refunds (refund_id, trade_no, amount_minor, currency, created_at) "
                       "VALUES (?, ?, ?, ?, ?)", (msg.refund_id, t["trade_no"], msg.amount_minor, t["currency"],
                                                  self.clock()))
            self._move(db, f"R:{msg.refund_id}", f"merchant:{t['merchant_id']}", f"customer:{t['account_id']}",
                       msg.amount_minor, t["currency"], "refund")
            total = t["refunded_minor"] + msg.amount_minor
            db.execute("UPDATE trades SET refunded_minor = ? WHERE trade_no = ?", (total, t["trade_no"]))
            self._add_spent(db, t["account_id"], t["paid_at"], -msg.amount_minor)
            return h.RefundResponse(order_id=msg.order_id, refund_id=msg.refund_id, outcome=Outcome.APPROVED,
                                    amount_minor=msg.amount_minor, refunded_total_minor=total, currency=t["currency"])

    def _settle(self, msg: h.SettleRequest) -> h.HostMessage:
        with self.store.write() as db:
            done = db.execute("SELECT * FROM settlements WHERE terminal_id = ? AND batch_no = ?",
                              (msg.terminal_id, msg.batch_no)).fetchone()
            if done is not None:
                totals = tuple(Totals(**x) for x in json.loads(done["totals"]))
                return h.SettleResponse(batch_no=msg.batch_no, totals=totals, agrees=bool(done["agrees"]))
            per: dict[str, list[int]] = {}
            for t in db.execute("SELECT * FROM trades WHERE terminal_id = ? AND settled_batch IS NULL "
                                "AND status IN ('APPROVED', 'REFUNDED', 'CANCELLED')", (msg.terminal_id,)):
                b = per.setdefault(t["currency"], [0, 0, 0, 0, 0])
                if t["status"] in ("APPROVED",) or (t["status"] == "REFUNDED" and t["paid_at"]):
                    if t["status"] == "APPROVED":
                        b[0] += 1
                        b[1] += t["amount_minor"]
                    else:
                        b[4] += 1
                else:
                    b[4] += 1
            for r in db.execute("SELECT r.* FROM refunds r JOIN trades t USING (trade_no) WHERE t.terminal_id = ? "
                                "AND r.settled_batch IS NULL", (msg.terminal_id,)):
                b = per.setdefault(r["currency"], [0, 0, 0, 0, 0])
                b[2] += 1
                b[3] += r["amount_minor"]
            mine = tuple(Totals(cur, *v) for cur, v in sorted(per.items()))
            agrees = mine == tuple(sorted(msg.totals, key=lambda x: x.currency))
            db.execute("UPDATE trades SET settled_batch = ? WHERE terminal_id = ? AND settled_batch IS NULL "
                       "AND status IN ('APPROVED', 'REFUNDED', 'CANCELLED', 'DECLINED')",
                       (msg.batch_no, msg.terminal_id))
            db.execute("UPDATE refunds SET settled_batch = ? WHERE settled_batch IS NULL AND trade_no IN "
                       "(SELECT trade_no FROM trades WHERE terminal_id = ?)", (msg.batch_no, msg.terminal_id))
            db.execute("INSERT INTO settlements (terminal_id, batch_no, totals, agrees, created_at) VALUES (?, ?, ?, ?, ?)",
                       (msg.terminal_id, msg.batch_no, json.dumps([vars_totals(x) for x in mine]), int(agrees),
                        self.clock()))
            return h.SettleResponse(batch_no=msg.batch_no, totals=mine, agrees=agrees,
                                    settled_at=datetime.fromtimestamp(self.clock()).astimezone().isoformat(
                                        timespec="seconds"))


def vars_totals(t: Totals) -> dict[str, Any]:
    return {k: getattr(t, k) for k in ("currency", "approved_count", "approved_minor", "refunded_count",
                                        "refunded_minor", "cancelled_count")}


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
