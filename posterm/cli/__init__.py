"""The ``posterm`` command: a thin click layer over the library.

Subcommands live in their own modules and are imported only when used, so
``posterm --help`` stays fast and one broken optional piece cannot take the
whole tool down.  A command is listed only if its module is importable.

Whatever goes wrong, the user sees one line on stderr (``posterm: error: ...``) and a
documented exit code (:func:`exit_code_for`); ``POSTERM_DEBUG=1`` or ``posterm --debug``
adds the traceback for developers. Bad values are refused earlier, while click parses
them, by the parameter types in :mod:`posterm.cli.common`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sqlite3
import sys
import traceback
from typing import Any

import click

from posterm import __version__

# command name -> "module:attribute"; modules are imported lazily.
COMMANDS: dict[str, str] = {
    "demo": "posterm.cli.demo_cmd:demo",
    "emulate": "posterm.cli.emulate_cmd:emulate",
    "panel": "posterm.cli.panel_cmd:panel",
    "ports": "posterm.cli.driver_cmd:ports",
    "doctor": "posterm.cli.driver_cmd:doctor",
    "status": "posterm.cli.driver_cmd:status",
    "pay": "posterm.cli.driver_cmd:pay",
    "query": "posterm.cli.driver_cmd:query",
    "cancel": "posterm.cli.driver_cmd:cancel",
    "refund": "posterm.cli.driver_cmd:refund",
    "settle": "posterm.cli.driver_cmd:settle",
    "recover": "posterm.cli.driver_cmd:recover",
    "keys": "posterm.cli.keys_cmd:keys",
    "terminal": "posterm.cli.terminal_cmd:terminal",
    "crypto": "posterm.cli.crypto_cmd:crypto",
    "host": "posterm.cli.host_cmd:host",
    "tap": "posterm.cli.record_cmd:tap",
    "replay": "posterm.cli.record_cmd:replay",
    "show": "posterm.cli.record_cmd:show",
    "convert": "posterm.cli.record_cmd:convert",
    "decode": "posterm.cli.decode_cmd:decode",
}


def _available(spec: str) -> bool:
    module = spec.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


EXIT_USAGE, EXIT_DECLINED, EXIT_UNKNOWN, EXIT_TRANSPORT = 2, 1, 3, 4  # as posterm.cli.common (not imported: lazy)
_SECRET_OPTIONS = ("--operator-password", "--pin", "--bdk", "--key", "--kbpk")
_debug = False


def exit_code_for(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an exception that escaped a command.

    Usage 2: a bad value, file or database (ConfigError, LocalProtocolError, CryptoError,
    an OSError on a file, sqlite3.DatabaseError, UnicodeDecodeError, ValueError); 3: no
    answer in time (PosTimeout) or an unexpected error (the outcome of what was under way
    is not known); 4: the port or link failed; 1: the host refused.
    """
    from posterm import errors as e

    name = type(exc).__name__
    if isinstance(exc, e.PosError):
        if type(exc).__name__ == "HostRefused":
            return EXIT_DECLINED, str(exc)
        if isinstance(exc, (e.ConfigError, e.LocalProtocolError, e.CryptoError)):
            return EXIT_USAGE, str(exc)
        if isinstance(exc, e.PosTimeout):
            return EXIT_UNKNOWN, str(exc)
        if isinstance(exc, e.Disconnected):
            return EXIT_TRANSPORT, f"disconnected: {exc}"
        return EXIT_TRANSPORT, f"{name}: {exc}"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return EXIT_TRANSPORT, f"{name}: {exc}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_USAGE, f"{where}{exc.strerror or exc}"
    if isinstance(exc, sqlite3.DatabaseError):
        return EXIT_USAGE, f"database: {exc} (not a posterm database, or damaged)"
    pg = sys.modules.get("psycopg")  # the host on PostgreSQL (only imported when one was opened)
    if pg is not None and isinstance(exc, pg.OperationalError):
        return EXIT_TRANSPORT, f"database: {exc}"
    if pg is not None and isinstance(exc, pg.Error):
        return EXIT_USAGE, f"database: {name}: {exc}"
    if isinstance(exc, UnicodeDecodeError):
        return EXIT_USAGE, f"not UTF-8 text: {exc}"
    if isinstance(exc, ValueError):
        return EXIT_USAGE, str(exc) or name
    return EXIT_UNKNOWN, f"internal error: {name}: {exc} (POSTERM_DEBUG=1 or --debug shows the traceback)"


def _scrub(text: str, argv: list[str]) -> str:
    """One line, and no secret given on the command line or in the environment."""
    secrets = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in _SECRET_OPTIONS]
    secrets += [a.split("=", 1)[1] for a in argv if a.startswith(tuple(o + "=" for o in _SECRET_OPTIONS))]
    if os.environ.get("POSTERM_OPERATOR_PASSWORD"):
        secrets.append(os.environ["POSTERM_OPERATOR_PASSWORD"])
    secrets += _url_passwords([*argv, os.environ.get("POSTERM_HOST_DB", "")])
    for s in sorted((s for s in secrets if len(s) >= 2), key=len, reverse=True):
        text = text.replace(s, "***")
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:400] + "..."


def _url_passwords(values: list[str]) -> list[str]:
    """The passwords inside any database URLs among ``values`` (``postgresql://user:PASSWORD@host``)."""
    import urllib.parse

    out = []
    for v in values:
        for word in v.split("="):  # --db=URL as well as --db URL
            if "://" in word and "@" in word:
                try:
                    pw = urllib.parse.urlsplit(word).password
                except ValueError:
                    continue
                if pw:
                    out += [pw, urllib.parse.quote(pw, safe="")]
    return out


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    global _debug
    _debug = _debug or value
    return value


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use, and whose :meth:`main`
    turns whatever escapes into one line on stderr and the documented exit code."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        global _debug
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        _debug = os.environ.get("POSTERM_DEBUG", "") not in ("", "0")
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:  # pragma: no cover - returned, not raised, by click 8
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("posterm: error: aborted", err=True)
            sys.exit(EXIT_DECLINED)
        except click.ClickException as exc:
            message = exc.format_message()
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and ctx is not None:
                message += f" (see '{ctx.command_path} --help')"
            click.echo(f"posterm: error: {_scrub(message, argv)}", err=True)
            sys.exit(exc.exit_code if isinstance(exc, click.UsageError) else EXIT_USAGE)
        except SystemExit:
            raise
        except BrokenPipeError:
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the reader went away: nothing left to say
            sys.exit(EXIT_USAGE)
        except Exception as exc:  # noqa: BLE001 - the last resort: one line, a documented code
            code, message = exit_code_for(exc)
            if _debug:
                traceback.print_exc()
            click.echo(f"posterm: error: {_scrub(message, argv)}", err=True)
            sys.exit(code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n, spec in COMMANDS.items() if _available(spec))
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        spec = COMMANDS.get(name)
        if spec is None or not _available(spec):
            return None
        module_name, attr = spec.split(":", 1)
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="posterm")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="On an error, also print the traceback (same as POSTERM_DEBUG=1).")
def main() -> None:
    """posterm: drive payment terminals over serial/USB/TCP, emulate terminals and a payment host.

    Quick start: `posterm demo` runs a short trading day against an emulated terminal.

    Any error is one line on stderr, `posterm: error: ...`, with the exit code each
    command's --help lists; POSTERM_DEBUG=1 (or --debug) also prints the traceback.
    """
