"""``posterm host notice add|list|remove``: the security notices the host publishes.

Terminals show the notices in force on their idle screen and at the foot of every receipt
(they get them at logon, and log on again when the set changes); the wallet shows them in
its inbox. See posterm.host.notices and docs/host.md, "Security notices".
"""

from __future__ import annotations

import datetime as dt

import click

from posterm.cli.common import DATE, TZ
from posterm.cli.host_common import _table, db_option, host_errors, json_option, open_host


class NoticeText(click.ParamType):
    """A notice: one line of 1..80 characters (240 bytes of UTF-8)."""

    name = "text"

    def convert(self, value, param, ctx):
        from posterm.host.notices import check_text

        try:
            return check_text(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _end_of_day(date: str, tz: str) -> float:
    """The end of ``date`` (YYYY-MM-DD) in zone ``tz``: the first instant of the next day, epoch seconds."""
    import zoneinfo

    day = dt.date.fromisoformat(date) + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=zoneinfo.ZoneInfo(tz)).timestamp()


def _local(t: float | None, tz: str) -> str:
    if t is None:
        return "-"
    import zoneinfo

    return dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(tz)).isoformat(timespec="minutes")


@click.group("notice")
def notice() -> None:
    """Security notices: shown on every terminal's idle screen, at the foot of its receipts,
    and in the wallet's inbox (e.g. "Never tell anyone your payment password.").

    At most 20 in force at once, each one line of at most 80 characters; terminals show
    the oldest 5.
    """


@notice.command("add")
@click.argument("text", type=NoticeText())
@click.option("--until", type=DATE, default=None,
              help="YYYY-MM-DD: shown through the end of that day (in --tz), then no more. [default: until removed]")
@click.option("--tz", type=TZ, default="Asia/Shanghai", show_default=True, help="The time zone of --until.")
@json_option
@db_option
@host_errors
def add(text, until, tz, as_json, db_path):
    """Publish TEXT as a security notice; prints its id."""
    from posterm.host import notices

    h = open_host(db_path)
    try:
        end = _end_of_day(until, tz) if until else None
        if end is not None and end <= h.clock():
            raise click.BadParameter(f"{until} is already past (in {tz})", param_hint="--until")
        n = notices.add(h.ctx, text, end)
    finally:
        h.close()
    if as_json:
        from posterm.cli.common import emit_json

        emit_json(n.to_json())
    else:
        click.echo(f"notice {n.id} published" + (f", until {_local(n.until, tz)} ({tz})" if n.until else ""))


@notice.command("list")
@click.option("--tz", type=TZ, default="Asia/Shanghai", show_default=True, help="The time zone of the times shown.")
@json_option
@db_option
@host_errors
def list_(tz, as_json, db_path):
    """List the notices (those past their end too: in_force says which terminals show)."""
    from posterm.host import notices

    h = open_host(db_path)
    try:
        now = h.clock()
        rows = notices.listing(h.store.view())
    finally:
        h.close()
    if as_json:
        _table([n.to_json(now) for n in rows], True, False)
        return
    _table([{"id": n.id, "in_force": "yes" if n.in_force(now) else "no", "published": _local(n.created_at, tz),
             "until": _local(n.until, tz), "text": n.text} for n in rows], False, False)


@notice.command("remove")
@click.argument("notice_id", metavar="ID", type=click.IntRange(1, 2**63 - 1))
@db_option
@host_errors
def remove(notice_id, db_path):
    """Withdraw notice ID (terminals drop it at their next host request)."""
    from posterm.host import notices

    h = open_host(db_path)
    try:
        notices.remove(h.ctx, notice_id)
    finally:
        h.close()
    click.echo(f"notice {notice_id} removed")


def register(host: click.Group) -> None:
    host.add_command(notice)
