"""The security centre's tables and queries (issue 17, sec-factor): the emulated phone's
inbox, verification codes and biometric requests, the security audit, support operators,
and the webhooks with their outbox.

Kept apart from :mod:`.queries`: :class:`SecurityQueries` is a base of
:class:`~posterm.host.store.queries.Tx`. The tables are in :mod:`.schema` (migration 3, the
account columns migration 4), once for SQLite and PostgreSQL; the SQL here runs on both
(``RETURNING id`` rather than ``lastrowid``, ``ON CONFLICT`` rather than SQLite's ``OR IGNORE``).

Nothing secret is kept in clear here: an inbox entry's text is sealed (AES-GCM under a key
of the host's sealed key store, :mod:`posterm.host.security_keys`), a verification code is
kept as a keyed HMAC, a webhook secret sealed, an operator's password as a salted scrypt.
"""

from __future__ import annotations

from typing import Any

# accounts: how a two-factor payment is confirmed on the phone (NULL: 'code'), and the
# amount from which a captured payment alerts the customer (NULL: never). The tables and
# these columns are migrations 3 and 4 of posterm.host.store.schema (both stores).
ACCOUNT_SETTINGS = frozenset({"confirm_pref", "large_payment"})


class SecurityQueries:
    """The security centre's queries (a base of Tx, over its ``_one``/``_all``/``_run``)."""

    __slots__ = ()

    # -- the phone's inbox -----------------------------------------------------------------

    def add_inbox(self, account_id: str, kind: str, ref: str | None, sealed: bytes, now: float, cap: int) -> int:
        """One more inbox entry; the oldest beyond ``cap`` of the account are dropped. Returns its id."""
        new_id = self._one("INSERT INTO phone_inbox (account_id, kind, ref, sealed, created_at) "
                           "VALUES (?, ?, ?, ?, ?) RETURNING id", (account_id, kind, ref, sealed, now))[0]
        self._run("DELETE FROM phone_inbox WHERE account_id = ? AND id <= "
                  "(SELECT id FROM phone_inbox WHERE account_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                  (account_id, account_id, cap))
        return int(new_id)

    def inbox(self, account_id: str, limit: int) -> list:
        return self._all("SELECT * FROM phone_inbox WHERE account_id = ? ORDER BY id DESC LIMIT ?", (account_id, limit))

    def inbox_count(self, account_id: str) -> int:
        return self._one("SELECT COUNT(*) FROM phone_inbox WHERE account_id = ?", (account_id,))[0]

    # -- verification codes and biometric requests -----------------------------------------

    def add_verification(self, account_id: str, purpose: str, ref: str | None, method: str, salt: str | None,
                         code_mac: str | None, now: float, expires_at: float) -> int:
        """A new pending request; the account's earlier pending ones for the same purpose and
        reference are superseded. Returns its id."""
        self._run("UPDATE verification_requests SET state = 'superseded', done_at = ? WHERE account_id = ? "
                  "AND purpose = ? AND COALESCE(ref, '') = COALESCE(?, '') AND state = 'pending'",
                  (now, account_id, purpose, ref))
        return int(self._one("INSERT INTO verification_requests (account_id, purpose, ref, method, salt, code_mac, "
                             "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                             (account_id, purpose, ref, method, salt, code_mac, now, expires_at))[0])

    def verification(self, request_id: int) -> Any:
        return self._one("SELECT * FROM verification_requests WHERE id = ?", (request_id,))

    def pending_verification(self, account_id: str, purpose: str | None, ref: str | None = None,
                             method: str | None = None) -> Any:
        """The account's latest pending request (of ``purpose`` and ``ref`` when given)."""
        sql, args = "SELECT * FROM verification_requests WHERE account_id = ? AND state = 'pending'", [account_id]
        if purpose is not None:
            sql += " AND purpose = ? AND COALESCE(ref, '') = COALESCE(?, '')"
            args += [purpose, ref]
        if method is not None:
            sql += " AND method = ?"
            args.append(method)
        return self._one(sql + " ORDER BY id DESC LIMIT 1", args)

    def asked_verification(self, account_id: str, purpose: str, ref: str) -> bool:
        """Whether the account was ever sent a request of ``purpose`` for ``ref``, in any state."""
        return self._one("SELECT 1 FROM verification_requests WHERE account_id = ? AND purpose = ? AND ref = ? "
                         "LIMIT 1", (account_id, purpose, ref)) is not None

    def count_verification_try(self, request_id: int) -> int:
        """One more wrong code; returns the tries used."""
        self._run("UPDATE verification_requests SET tries = tries + 1 WHERE id = ?", (request_id,))
        return self._one("SELECT tries FROM verification_requests WHERE id = ?", (request_id,))[0]

    def end_verification(self, request_id: int, state: str, now: float) -> None:
        self._run("UPDATE verification_requests SET state = ?, done_at = ? WHERE id = ?", (state, now, request_id))

    def reopen_verification(self, request_id: int) -> None:
        self._run("UPDATE verification_requests SET state = 'pending', done_at = NULL WHERE id = ?", (request_id,))

    def pending_verifications(self, account_id: str) -> int:
        return self._one("SELECT COUNT(*) FROM verification_requests WHERE account_id = ? AND state = 'pending'",
                         (account_id,))[0]

    # -- the security audit and the operators --------------------------------------------

    def audit(self, account_id: str | None, actor: str, action: str, outcome: str, now: float) -> None:
        self._run("INSERT INTO security_audit (account_id, actor, action, outcome, created_at) VALUES (?, ?, ?, ?, ?)",
                  (account_id, actor, action, outcome[:120], now))

    def audit_log(self, *, account_id: str | None = None, actor: str | None = None, limit: int = 100) -> list:
        sql, args = "SELECT * FROM security_audit WHERE 1=1", []
        if account_id is not None:
            sql += " AND account_id = ?"
            args.append(account_id)
        if actor is not None:
            sql += " AND actor = ?"
            args.append(actor)
        return self._all(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])

    def add_operator(self, name: str, verifier: bytes, now: float) -> bool:
        """A new support operator; False when the name is taken."""
        return self._run("INSERT INTO operators (name, verifier, created_at) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO NOTHING",
                         (name, verifier, now)).rowcount == 1

    def operator(self, name: str) -> Any:
        return self._one("SELECT * FROM operators WHERE name = ?", (name,))

    def operators(self) -> list:
        return self._all("SELECT name, tries, created_at FROM operators ORDER BY name")

    def set_operator_tries(self, name: str, tries: int) -> None:
        self._run("UPDATE operators SET tries = ? WHERE name = ?", (tries, name))

    # -- webhooks ------------------------------------------------------------------------

    def set_webhook(self, account_id: str, url: str, sealed_secret: bytes, now: float) -> None:
        self._run("INSERT INTO webhooks VALUES (?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET "
                  "url = excluded.url, sealed_secret = excluded.sealed_secret, created_at = excluded.created_at",
                  (account_id, url, sealed_secret, now))

    def webhook(self, account_id: str) -> Any:
        return self._one("SELECT * FROM webhooks WHERE account_id = ?", (account_id,))

    def remove_webhook(self, account_id: str) -> bool:
        self._run("DELETE FROM webhook_outbox WHERE account_id = ? AND state = 'pending'", (account_id,))
        return self._run("DELETE FROM webhooks WHERE account_id = ?", (account_id,)).rowcount == 1

    def add_outbox(self, event_id: str, account_id: str, kind: str, body: str, now: float, cap: int) -> None:
        """Queue an event; beyond ``cap`` rows of the account the oldest are dropped (delivered first)."""
        self._run("INSERT INTO webhook_outbox (event_id, account_id, kind, body, next_at, created_at) "
                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING", (event_id, account_id, kind, body, now, now))
        over = self._one("SELECT COUNT(*) FROM webhook_outbox WHERE account_id = ?", (account_id,))[0] - cap
        if over > 0:
            self._run("DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox WHERE account_id = ? "
                      "ORDER BY state = 'pending', id LIMIT ?)", (account_id, over))

    def outbox_due(self, now: float, limit: int) -> list:
        return self._all("SELECT * FROM webhook_outbox WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id "
                         "LIMIT ?", (now, limit))

    def outbox_done(self, outbox_id: int, state: str, attempts: int, next_at: float, status: int | None,
                    now: float) -> None:
        self._run("UPDATE webhook_outbox SET state = ?, attempts = ?, next_at = ?, last_status = ?, done_at = ? "
                  "WHERE id = ?", (state, attempts, next_at, status, now if state != "pending" else None, outbox_id))

    def outbox_counts(self, account_id: str) -> dict[str, int]:
        return {r[0]: r[1] for r in self._all("SELECT state, COUNT(*) FROM webhook_outbox WHERE account_id = ? "
                                               "GROUP BY state", (account_id,))}

    def outbox(self, account_id: str, limit: int = 50) -> list:
        return self._all("SELECT * FROM webhook_outbox WHERE account_id = ? ORDER BY id DESC LIMIT ?",
                         (account_id, limit))
