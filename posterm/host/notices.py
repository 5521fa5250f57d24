"""Security notices the host publishes: security education for the customers.

An administrator publishes short notices (``posterm host notice add TEXT [--until DATE]``,
e.g. "Never tell anyone your payment password."). The host gives the ones in force to every
terminal at logon (``LogonResult.notices``, at most :data:`MAX_SHOWN`), and puts the version
of that set in every answer (``notices_version``): a terminal that holds another version logs
on again before its next request, so a new or removed notice reaches its idle screen and the
foot of its next receipt. The wallet's phone inbox takes them from :func:`inbox_entries`.

Caps: at most :data:`MAX_PUBLISHED` notices in force at once, each 1 to :data:`MAX_CHARS`
characters of one line (at most 240 bytes of UTF-8); terminals get the oldest
:data:`MAX_SHOWN`. A notice with an end (``until``) stops being in force then by itself;
the version changes with it, so terminals drop it at their next request.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

from firmware_protocol.host import messages as h

from posterm.host.context import HostContext, HostRefused
from posterm.host.store import Tx

MAX_PUBLISHED = 20
MAX_SHOWN = h.MAX_NOTICES
MAX_CHARS = 80
MAX_BYTES = 240          # 80 CJK characters; the wire carries up to 256 bytes per notice


@dataclass(frozen=True, slots=True)
class Notice:
    id: int
    text: str
    created_at: float
    until: float | None = None

    def in_force(self, now: float) -> bool:
        return self.until is None or now < self.until

    def to_json(self, now: float | None = None) -> dict:
        out = {"id": self.id, "text": self.text, "created_at": self.created_at,
               "created_at_iso": _iso(self.created_at), "until": self.until,
               "until_iso": _iso(self.until) if self.until is not None else None}
        if now is not None:
            out["in_force"] = self.in_force(now)
        return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _notice(row) -> Notice:
    return Notice(int(row["id"]), row["text"], float(row["created_at"]),
                  float(row["until"]) if row["until"] is not None else None)


def check_text(text: str) -> str:
    """``text`` as a notice: stripped, one line, 1..MAX_CHARS characters. Raises ValueError saying why."""
    text = str(text).strip()
    if not text:
        raise ValueError("a notice needs some text")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("a notice is one line, without control characters")
    if len(text) > MAX_CHARS or len(text.encode("utf-8")) > MAX_BYTES:
        raise ValueError(f"a notice is at most {MAX_CHARS} characters ({MAX_BYTES} bytes of UTF-8)")
    return text


def add(ctx: HostContext, text: str, until: float | None = None) -> Notice:
    """Publish a notice (in force until ``until``, epoch seconds, or until removed).

    Raises ValueError for bad text or an ``until`` already past, HostRefused when
    MAX_PUBLISHED notices are in force."""
    text = check_text(text)
    now = ctx.clock()
    if until is not None and until <= now:
        raise ValueError("the notice's end is already past")
    with ctx.store.transaction() as tx:
        if len(tx.live_notices(now, MAX_PUBLISHED)) >= MAX_PUBLISHED:
            raise HostRefused(f"{MAX_PUBLISHED} notices are in force already: remove one first")
        notice_id = tx.add_notice(text, now, until)
    return Notice(notice_id, text, now, until)


def remove(ctx: HostContext, notice_id: int) -> None:
    """Withdraw a notice. Raises HostRefused when there is none with that id."""
    with ctx.store.transaction() as tx:
        if not tx.remove_notice(notice_id):
            raise HostRefused(f"no notice {notice_id}")


def listing(view: Tx) -> list[Notice]:
    """Every notice published and not removed (those past their end too), oldest first."""
    return [_notice(r) for r in view.notices()]


def current(view: Tx, now: float) -> list[Notice]:
    """The notices in force at ``now`` that terminals show: the oldest MAX_SHOWN."""
    return [_notice(r) for r in view.live_notices(now, MAX_SHOWN)]


def version(notices: list[Notice]) -> int | None:
    """The version terminals compare: None when there are none (nothing is sent), else a
    non-zero 32-bit digest of the ids and texts."""
    return _digest(tuple((n.id, n.text) for n in notices))


# The last set digested and its digest: every answer asks, the set rarely changes.
_last: tuple[tuple, int | None] = ((), None)


def _digest(pairs: tuple[tuple[int, str], ...]) -> int | None:
    global _last
    if not pairs:
        return None
    seen, digest = _last
    if seen == pairs:
        return digest
    digest = zlib.crc32(json.dumps([list(p) for p in pairs], ensure_ascii=False).encode()) or 1
    _last = (pairs, digest)
    return digest


def inbox_entries(view: Tx, now: float) -> list[dict]:
    """The notices in force, as entries for the wallet's phone inbox (oldest first): ``kind``
    "security_notice", ``notice_id``, ``text``, ``created_at`` (epoch) and its ISO form."""
    return [{"kind": "security_notice", "notice_id": n.id, "text": n.text, "created_at": n.created_at,
             "created_at_iso": _iso(n.created_at)}
            for n in (_notice(r) for r in view.live_notices(now, MAX_PUBLISHED))]


_VERSIONED = (h.AuthResponse, h.RefundResponse, h.SettleResponse)


def stamp(view: Tx, reply: h.HostMessage, now: float) -> h.HostMessage:
    """``reply`` with the notices of the moment: their text in an accepted LogonResult, their
    version in it and in every answer a terminal acts on (nothing added when there are none,
    so the answer is what it was before notices existed)."""
    if isinstance(reply, h.LogonResult):
        if not reply.accepted:
            return reply
        shown = current(view, now)
        return dataclasses.replace(reply, notices=tuple(n.text for n in shown), notices_version=version(shown))
    if isinstance(reply, _VERSIONED):
        v = _digest(tuple((r["id"], r["text"]) for r in view.live_notices(now, MAX_SHOWN)))
        return reply if v is None else dataclasses.replace(reply, notices_version=v)
    return reply
