"""Real-name verification that checks something, and the payment-password rules.

A mainland resident identity number (GB 11643-1999) is 18 characters: a 6-digit address
code (its first two digits a province, 11..82), the birth date YYYYMMDD, a 3-digit sequence
number and a check character, ISO 7064 MOD 11-2 over the first 17 digits (``X`` for 10).
:func:`id_problem` says what is wrong with one (None when it is valid: the check character
fits and the birth date is a real day, not before 1900, not in the future).

An account is real-name verified (:func:`verify`) with a valid ID number and the name on
it. The host keeps neither: only keyed hashes (``Hsm.identity_hash``, HMAC-SHA256 under the
HSM's own identity key) of the number, of the name and of the birth date's month-day forms
(for the password rules below), and the number's last 4 characters for display.
:func:`matches` says whether an ID number given again (a payment-password reset) is the
account's. An unverified account pays at most
:data:`~posterm.host.authorise.REAL_NAME_FREE_MAJOR` (200 in major units) per payment.

Payment-password rules (:func:`password_problem`, at registration and at every setting):
6 to 12 digits; not one digit repeated (111111); not a run of consecutive digits up or down
(123456, 654321); and, for a verified account, not containing the birth date's month and
day as MMDD or DDMM, which covers YYMMDD, MMDDYY, DDMMYY and YYYYMMDD. The reason is one
line.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING

from posterm.crypto.password_rules import pattern_problem
from posterm.host.context import HostContext, HostRefused, require_account

if TYPE_CHECKING:
    from posterm.crypto.hsm import Hsm
    from posterm.host.store import Tx

_WEIGHTS = tuple(2 ** (17 - i) % 11 for i in range(17))   # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
_CHECK = "10X98765432"                                     # sum mod 11 -> check character
# The province codes of GB/T 2260 (the first two digits of an address code).
_PROVINCES = frozenset({11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
                        50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82})
NAME_MAX = 64


class PasswordRuleBroken(HostRefused):
    """A payment password that breaks a rule (:func:`password_problem`); the text says which."""


@dataclass(frozen=True, slots=True)
class ResidentId:
    """A valid resident ID number, normalised (upper-case X)."""

    number: str
    birth: date

    @property
    def last4(self) -> str:
        return self.number[-4:]

    def __repr__(self) -> str:      # never the number in clear
        return f"ResidentId(****{self.last4})"


def check_character(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 17 digits."""
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS)) % 11]


def id_problem(number: str, today: date | None = None) -> str | None:
    """What is wrong with ``number`` as a resident ID number (one line), None when it is valid."""
    n = number.strip().upper()
    if len(n) != 18:
        return f"a resident ID number is 18 characters, not {len(n)}"
    if not (n[:17].isascii() and n[:17].isdigit() and (n[17].isdigit() or n[17] == "X") and n[17].isascii()):
        return "a resident ID number is 17 digits and a check digit or X"
    if int(n[:2]) not in _PROVINCES:
        return f"{n[:2]} is not a province code (the first two digits)"
    try:
        birth = datetime.strptime(n[6:14], "%Y%m%d").date()
    except ValueError:
        return "the birth date in the ID number (digits 7 to 14) is not a date"
    today = today or datetime.now(timezone.utc).date()
    if birth.year < 1900 or birth > today:
        return "the birth date in the ID number is not plausible"
    if check_character(n[:17]) != n[17]:
        return "the check digit does not fit (GB 11643, ISO 7064 MOD 11-2)"
    return None


def parse_id(number: str, today: date | None = None) -> ResidentId:
    """The valid resident ID ``number``. Raises HostRefused naming the problem."""
    why = id_problem(number, today)
    if why:
        raise HostRefused(why)
    n = number.strip().upper()
    return ResidentId(n, datetime.strptime(n[6:14], "%Y%m%d").date())


def name_problem(name: str) -> str | None:
    n = name.strip()
    if not n:
        return "the name on the ID is empty"
    if len(n) > NAME_MAX or not n.isprintable():
        return f"the name on the ID is 1 to {NAME_MAX} printable characters"
    return None


def _birth_forms(birth: date) -> tuple[str, str]:
    return f"{birth:%m%d}", f"{birth:%d%m}"


def _birth_hashes(hsm: "Hsm", birth: date) -> bytes:
    return b"".join(hsm.identity_hash("birth:" + f) for f in _birth_forms(birth))


# ---------------------------------------------------------------------- payment passwords

def password_problem(password: str, *, birth: date | None = None, birth_hashes: bytes | None = None,
                     hsm: "Hsm | None" = None) -> str | None:
    """Why ``password`` may not be a payment password (one line), None when it may.

    The birth date is known either in clear (``birth``: at registration, from the ID given)
    or as the account's stored ``birth_hashes`` (with the ``hsm`` that made them)."""
    if not (password.isascii() and password.isdigit() and 6 <= len(password) <= 12):
        return "a payment password is 6 to 12 digits"
    why = pattern_problem(password, "a payment password")
    if why:
        return why
    windows = {password[i:i + 4] for i in range(len(password) - 3)}
    if birth is not None and windows & set(_birth_forms(birth)):
        return "a payment password may not contain the birth date in the ID (MMDD or DDMM)"
    if birth_hashes and hsm is not None:
        stored = {birth_hashes[i:i + 32] for i in range(0, len(birth_hashes), 32)}
        if any(hsm.identity_hash("birth:" + w) in stored for w in windows):
            return "a payment password may not contain the birth date in the ID (MMDD or DDMM)"
    return None


def check_password(ctx: HostContext, tx: "Tx", account_id: str | None, password: str,
                   birth: date | None = None) -> None:
    """Raise PasswordRuleBroken (a HostRefused) when ``password`` breaks a rule for the account (its stored birth
    date, when verified; ``birth`` at registration)."""
    row = tx.identity(account_id) if account_id else None
    why = password_problem(password, birth=birth, birth_hashes=row["birth_hashes"] if row else None, hsm=ctx.hsm)
    if why:
        raise PasswordRuleBroken(why)


# ---------------------------------------------------------------------- verification

def verify(ctx: HostContext, tx: "Tx", account_id: str, id_number: str, name: str) -> ResidentId:
    """Verify the account's real name with a resident ID number and the name on it, in
    ``tx``: keyed hashes and the last 4 kept, ``real_name`` set. Raises HostRefused (an
    invalid number or name, naming why)."""
    require_account(tx, account_id)
    why = name_problem(name)
    if why:
        raise HostRefused(why)
    rid = parse_id(id_number, datetime.fromtimestamp(ctx.clock(), timezone.utc).date())
    _register(tx, ctx.hsm)
    tx.put_identity(account_id, ctx.hsm.identity_hash("id:" + rid.number), rid.last4,
                    ctx.hsm.identity_hash("name:" + " ".join(name.split())), _birth_hashes(ctx.hsm, rid.birth),
                    ctx.clock())
    tx.set_account(account_id, "real_name", True)
    ctx.alert(tx, account_id, "real_name", f"real-name verified with ID number ****{rid.last4}")
    return rid


def verify_account(ctx: HostContext, account_id: str, id_number: str, name: str) -> str:
    """:func:`verify` in a transaction of its own. Returns the ID's last 4 characters."""
    with ctx.store.transaction() as tx:
        return verify(ctx, tx, account_id, id_number, name).last4


# The HSM of each open host database, so that :func:`matches` can be given a view or a
# transaction alone (its caller has no HSM at hand). Filled by every function here that has
# the host's context, and by :func:`bind` (``Host`` calls it when it opens).
_HSMS: "weakref.WeakValueDictionary[str, Hsm]" = weakref.WeakValueDictionary()


def _db_key(tx: "Tx") -> str:
    return tx.database_path()


def _register(tx: "Tx", hsm: "Hsm") -> None:
    _HSMS[_db_key(tx)] = hsm


def bind(ctx: HostContext) -> None:
    """Make ``ctx``'s HSM the one :func:`matches` uses for ``ctx``'s database."""
    _register(ctx.store.view(), ctx.hsm)


def matches(view_or_tx: "Tx", account_id: str, id_number: str, hsm: "Hsm | None" = None) -> bool:
    """Whether ``id_number`` is the resident ID number the account was verified with
    (False for an unverified account or an invalid number). ``hsm``: the host's HSM
    (default: the one bound to this database, :func:`bind`)."""
    row = view_or_tx.identity(account_id)
    if row is None or id_problem(id_number) is not None:
        return False
    hsm = hsm or _HSMS.get(_db_key(view_or_tx))
    if hsm is None:
        raise HostRefused("no HSM bound to this host database (posterm.host.identity.bind)")
    import hmac

    return hmac.compare_digest(hsm.identity_hash("id:" + id_number.strip().upper()), row["id_hash"])


def state(view: "Tx", account_id: str) -> dict:
    """The account's identity state for the security centre: verified, last 4, when."""
    row = view.identity(account_id)
    if row is None:
        return {"identity_verified": False, "id_last4": None, "identity_verified_at": None}
    return {"identity_verified": True, "id_last4": row["id_last4"], "identity_verified_at": row["verified_at"]}
