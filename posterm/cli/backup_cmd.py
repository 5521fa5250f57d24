"""`posterm host backup` / `posterm host backup verify` / `posterm host restore`.

Thin layer over :mod:`posterm.host.backup`; every failure is one line on stderr.
Exit codes: 0 done, 1 some destinations failed (the others were written) or a verify
found a problem, 2 bad flag/key/file (tampered, truncated, wrong key), 4 nothing written.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import click

from posterm.cli.common import EXIT_USAGE, DatabaseFile, Directory, IdType, InputFile, OutputFile, fail

EXIT_PARTIAL = 1
EXIT_FAILED = 4

key_option = click.option("--key-file", type=click.Path(dir_okay=False), default=None,
                          help="Backup key: 32 raw bytes, 64 hex digits or base64 (default $POSTERM_BACKUP_KEY). "
                               "Keep it away from the backups.")
db_option = click.option("--db", "db_path", type=DatabaseFile(), default=None, envvar="POSTERM_HOST_DB",
                         help="Host database: a SQLite file or a postgresql:// URL (default $POSTERM_HOST_DB, "
                              "else $POSTERM_HOME/host.db).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _db(db_path: str | None) -> Path | str:
    from posterm.host.store import is_postgres_url

    if is_postgres_url(db_path):
        return db_path
    if db_path:
        return Path(db_path)
    from posterm.home import posterm_home

    return posterm_home() / "host.db"


def backup_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        from posterm.errors import ConfigError, CryptoError, PosError

        try:
            return fn(*args, **kw)
        except (ConfigError, CryptoError) as exc:
            fail(str(exc), EXIT_USAGE, bool(kw.get("as_json")))
        except PosError as exc:
            fail(str(exc), EXIT_FAILED, bool(kw.get("as_json")))
    return wrapper


@click.group(invoke_without_command=True)
@click.option("--to", "dests", multiple=True, type=Directory(),
              help="Destination directory (repeat for several places).")
@key_option
@db_option
@click.option("--keep", type=click.IntRange(1, 100000), default=None,
              help="Keep only the newest N backups of this host in each destination.")
@click.option("--host-id", type=IdType(64), default=None, help="Source host id recorded in the header (default: hostname).")
@json_option
@click.pass_context
@backup_errors
def backup(ctx: click.Context, dests, key_file, db_path, keep, host_id, as_json) -> None:
    """Take an encrypted, consistent backup of the live host database into every --to directory.

    \b
      posterm host backup --to /mnt/a --to /mnt/b --key-file backup.key [--db host.db|postgresql://...] [--keep 24]
      posterm host backup verify FILE --key-file backup.key
      posterm host backup keygen backup.key

    Safe while the host serves. Prints one line per destination: the file written, or why
    not. A destination that fails does not stop the others (exit 1 if any failed, 4 if all).
    """
    if ctx.invoked_subcommand is not None:
        return
    if not dests:
        raise click.UsageError("give at least one --to DIR")
    from posterm.host.backup import backup as run

    results = run(_db(db_path), list(dests), key_file, host_id=host_id, keep=keep)
    for r in results:
        if as_json:
            click.echo(json.dumps({"dest": str(r.dest), "path": str(r.path) if r.path else None,
                                   "error": r.error, "size": r.size, "ledger_hash": r.ledger_hash}))
        elif r.ok:
            click.echo(str(r.path))
        else:
            click.echo(f"posterm: error: {r.error}", err=True)
    good = sum(r.ok for r in results)
    if good == 0:
        ctx.exit(EXIT_FAILED)
    if good < len(results):
        ctx.exit(EXIT_PARTIAL)


@backup.command("verify")
@click.argument("file", type=InputFile())
@key_option
@json_option
@backup_errors
def verify_cmd(file, key_file, as_json) -> None:
    """Decrypt FILE to a temporary place, run integrity_check, recompute the ledger hash. Restores nothing."""
    from posterm.host.backup import verify

    rep = verify(file, key_file)
    h = rep.header
    if as_json:
        click.echo(json.dumps({"file": str(rep.path), "ok": rep.ok, "integrity": rep.integrity,
                               "ledger_hash": rep.ledger_hash, "recorded_ledger_hash": h.ledger_hash,
                               "created_at": h.created_at, "host_id": h.host_id, "key_id": h.key_id,
                               "chunks": h.chunk_count, "size": h.plain_size}))
    else:
        click.echo(f"{rep.path}: {'OK' if rep.ok else 'FAILED'}  created {h.created_at}  host {h.host_id}  "
                   f"key {h.key_id}  {h.chunk_count} chunks  {h.plain_size} bytes")
        click.echo(f"integrity_check: {rep.integrity}")
        click.echo(f"ledger hash: {rep.ledger_hash} ({'matches' if rep.ledger_hash == h.ledger_hash else 'DIFFERS from'}"
                   f" the recorded one)")
    if not rep.ok:
        raise click.exceptions.Exit(EXIT_PARTIAL)


@backup.command("keygen")
@click.argument("key_file", type=OutputFile())
@backup_errors
def keygen_cmd(key_file) -> None:
    """Write a new random backup key (hex, mode 0600) to KEY_FILE; prints its key id, never the key."""
    from posterm.host.backup import generate_key_file

    try:
        k = generate_key_file(key_file)
    except FileExistsError:
        fail(f"{key_file} exists: not overwriting a key", EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot write {key_file}: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(f"key id {k.key_id}")


@click.command()
@click.argument("file", type=InputFile())
@db_option
@key_option
@click.option("--allow-other-host", is_flag=True,
              help="Restore a backup taken on another host (refused by default: its host id must be this host's).")
@click.option("--host-id", type=IdType(64), default=None, help="This host's id, compared with the backup's (default: hostname).")
@click.option("--force", is_flag=True,
              help="PostgreSQL: replace the rows of a database that already holds a host's data (refused without).")
@json_option
@backup_errors
def restore(file, db_path, key_file, allow_other_host, host_id, force, as_json) -> None:
    """Restore the backup FILE into --db: refused (nothing changed) if FILE is tampered, truncated,
    under another key, or taken on another host (unless --allow-other-host); otherwise checked and
    swapped in atomically. Stop the host first; the database it replaces is kept as
    <db>.pre-restore-<time>. Into a postgresql:// --db the rows are loaded in one transaction,
    read back and compared before the commit; a database holding data needs --force."""
    from posterm.host.backup import restore as run

    rep = run(file, _db(db_path), key_file, allow_other_host=allow_other_host, host_id=host_id, force=force)
    if as_json:
        click.echo(json.dumps({"db": str(rep.db_path), "ledger_hash": rep.ledger_hash,
                               "previous": str(rep.previous) if rep.previous else None,
                               "created_at": rep.header.created_at, "host_id": rep.header.host_id}))
    else:
        click.echo(f"restored {rep.db_path} from {file} (taken {rep.header.created_at} on {rep.header.host_id}); "
                   f"ledger hash {rep.ledger_hash} matches")
        if rep.previous:
            click.echo(f"the previous database is kept as {rep.previous}")
