"""What the `posterm host` command modules share: the --db and --json options, the error
wrapper, opening the host, money and table output. Imported by posterm.cli.host_cmd and by
each module it registers (never the other way round: no import cycle)."""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable
from typing import Any

import click

from posterm.cli.common import EXIT_USAGE, AmountType, DatabaseFile, fail, minor_units

MONEY = AmountType(allow_zero=True)

db_option = click.option("--db", "db_path", type=DatabaseFile(), default=None, envvar="POSTERM_HOST_DB",
                         help="Host database: a file (SQLite; default $POSTERM_HOME/host.db) or a "
                              "postgresql://USER@HOST:PORT/DATABASE URL (env POSTERM_HOST_DB).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def host_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        from posterm.errors import PosError
        from posterm.host import HostRefused

        try:
            return fn(*args, **kw)
        except HostRefused as exc:
            fail(str(exc), 1, bool(kw.get("as_json")))
        except PosError as exc:
            fail(f"{type(exc).__name__}: {exc}", EXIT_USAGE, bool(kw.get("as_json")))
    return wrapper


def open_host(db_path: str | None, demo: bool = False, **kw: Any):
    """The host for one command. Only ``serve`` loads the demo data (see the group's help):
    an administrative command on a new database must not fill it with demo accounts."""
    from posterm.host import Host
    from posterm.host.demo import seed

    h = Host.open(db_path, demo=False, **kw)
    if demo:
        try:
            h.store.run(seed, h.ctx)
        except BaseException:
            h.close()
            raise
    return h


def money(amount, currency: str, param_hint: str = "amount") -> int:
    """A decimal amount (from MONEY) in minor units of ``currency``: exponent and wire cap checked."""
    return minor_units(MONEY.convert(amount, None, None), currency, param_hint, allow_zero=True)


def _iso_text(row: dict) -> dict:
    """For text output: each time shown as its ISO 8601 form (JSON keeps both fields)."""
    out = dict(row)
    for key in [k for k in out if k.endswith("_iso")]:
        out[key[:-4]] = out.pop(key)
    return out


def _table(rows: list[dict], as_json: bool, as_csv: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    if not rows:
        click.echo("nothing")
        return
    if as_csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    click.echo("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))




class IdNumberType(click.ParamType):
    """A mainland resident ID number: 18 characters, GB 11643 check digit, a real birth date."""

    name = "id_number"

    def convert(self, value, param, ctx):
        from posterm.host.identity import id_problem

        text = str(value).strip().upper()
        why = id_problem(text[:40])
        if why:
            self.fail(why, param, ctx)
        return text

    def __repr__(self) -> str:
        return "ID_NUMBER"


ID_NUMBER = IdNumberType()
