"""``posterm host bdk``: the host HSM's base derivation key (its type, rotation).

The HSM holds one current AES BDK (AES-128, AES-192 or AES-256: X9.24-3) and keeps the
ones before it (retired) so PIN pads loaded under them keep working. A rotation makes a
fresh BDK of the chosen type current: initial keys issued afterwards (``posterm host
terminal key T...``) are of that type, and so are their working keys. Key bytes are never
printed: the id, type and check value are.
"""

from __future__ import annotations

import click

from posterm.cli.common import DatabaseFile, emit_json

BDK_TYPES = ("aes128", "aes192", "aes256")


def _hsm_errors(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        from posterm.errors import PosError

        try:
            return fn(*args, **kw)
        except PosError as exc:
            raise click.UsageError(f"{type(exc).__name__}: {exc}") from None
    return wrapper


def _open_host(db_path: str | None):
    # Host.open as `posterm host`'s other admin commands open it (no demo data); not through
    # host_cmd, which registers this group (no import cycle).
    from posterm.host import Host

    return Host.open(db_path, demo=False)


def _show(info: dict, as_json: bool) -> None:
    if as_json:
        emit_json(info)
        return
    click.echo(f"BDK {info['bdk_id']}: {info['type']}, KCV {info['kcv']}, {info['retired']} retired")


@click.group()
def bdk() -> None:
    """The HSM's AES base derivation key: show it (id, type, KCV) or rotate to a new one."""


@bdk.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--db", "db_path", type=DatabaseFile(), default=None, envvar="POSTERM_HOST_DB",
              help="Host database (default $POSTERM_HOME/host.db, or a postgresql:// URL); the HSM is "
                                                    "beside it.")
@_hsm_errors
def status(as_json: bool, db_path: str | None) -> None:
    """The current BDK's id (the first 4 bytes of its KSNs), type and KCV. Never key bytes."""
    h = _open_host(db_path)
    try:
        _show(h.hsm.bdk_info(), as_json)
    finally:
        h.close()


@bdk.command("rotate")
@click.option("--type", "bdk_type", type=click.Choice(BDK_TYPES), default="aes128", show_default=True,
              help="AES-128, AES-192 or AES-256 (X9.24-3): the type of every initial key issued from now on.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--db", "db_path", type=DatabaseFile(), default=None, envvar="POSTERM_HOST_DB",
              help="Host database (default $POSTERM_HOME/host.db, or a postgresql:// URL); the HSM is "
                                                    "beside it.")
@_hsm_errors
def rotate(bdk_type: str, as_json: bool, db_path: str | None) -> None:
    """Make a fresh BDK of TYPE current. Terminals keep their keys (the old BDK is retired, not
    forgotten) until they load a new one: `posterm host terminal key T...` then `posterm keys load`."""
    h = _open_host(db_path)
    try:
        h.hsm.rotate_bdk(bdk_type)
        _show(h.hsm.bdk_info(), as_json)
    finally:
        h.close()
