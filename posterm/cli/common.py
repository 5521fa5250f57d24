"""Options and error handling shared by the posterm commands."""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from posterm.errors import ConfigError, Disconnected, LinkFailed, LocalProtocolError, PosError, PosTimeout, TransportError

EXIT_OK = 0
EXIT_DECLINED = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3
EXIT_TRANSPORT = 4

EXIT_CODES_HELP = """\b
Exit codes:
  0  approved / done
  1  declined or cancelled
  2  usage error (bad flag, value or file)
  3  unknown outcome (no answer in time: run `posterm recover`)
  4  transport or link failure (port missing, busy, cable cut, no ACK)"""

PARITIES = {"N": "N", "E": "E", "O": "O", "M": "M", "S": "S"}


def port_options(fn: Callable) -> Callable:
    """--port and the serial settings, shared by every command that opens a port."""
    options = [
        click.option("--port", "-p", envvar="POSTERM_PORT", metavar="URL",
                     help="Device or pyserial URL: /dev/ttyUSB0, /dev/serial/by-id/..., socket://HOST:PORT, "
                          "rfc2217://HOST:PORT, loop://. [env POSTERM_PORT]"),
        click.option("--protocol", envvar="POSTERM_PROTOCOL", default=None, metavar="NAME",
                     callback=_check_protocol,
                     help="Protocol family: posterm (default) or concert (Ingenico Telium). [env POSTERM_PROTOCOL]"),
        click.option("--baud", envvar="POSTERM_BAUD", type=click.IntRange(50, 4_000_000), default=None,
                     help="Baud rate [default: 115200; concert: 9600]. [env POSTERM_BAUD]"),
        click.option("--bytesize", type=click.Choice(["5", "6", "7", "8"]), default=None,
                     help="Data bits [default: 8; a native RS-232 Telium port: 7 with --parity E]."),
        click.option("--parity", type=click.Choice(sorted(PARITIES), case_sensitive=False), default=None,
                     help="Parity [default: N]."),
        click.option("--stopbits", type=click.Choice(["1", "1.5", "2"]), default=None, help="Stop bits [default: 1]."),
        click.option("--rtscts", is_flag=True, help="RTS/CTS hardware flow control."),
        click.option("--xonxoff", is_flag=True, help="XON/XOFF software flow control."),
        click.option("--no-exclusive", is_flag=True, help="Do not take an exclusive lock on the port."),
        click.option("--pace", is_flag=True, help="Pace writes to the line rate (ptys and TCP are otherwise instant)."),
        click.option("--reconnect", is_flag=True, help="Reopen the port if it goes away mid-operation."),
        click.option("--trace", is_flag=True, help="Log every frame (hex, decoded, secrets masked) to stderr."),
        click.option("--journal", "journal_path", type=click.Path(dir_okay=False), default=None,
                     help="Journal database (default $POSTERM_HOME/driver-journal.db)."),
        click.option("--record", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     help="Record the session (JSON Lines, secrets redacted; see `posterm show`/`replay`)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _check_protocol(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from posterm.protocols import family

    try:
        return family(value).name
    except PosError as exc:
        raise click.BadParameter(str(exc)) from None


def serial_settings(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop the serial options out of a command's kwargs into open_transport settings.

    Settings not given are left out, so the transport's (or the protocol family's) defaults apply.
    """
    stop, bytesize, parity = kw.pop("stopbits"), kw.pop("bytesize"), kw.pop("parity")
    settings = {
        "baudrate": kw.pop("baud"),
        "bytesize": int(bytesize) if bytesize is not None else None,
        "parity": parity.upper() if parity is not None else None,
        "stopbits": (1.5 if stop == "1.5" else int(stop)) if stop is not None else None,
        "rtscts": kw.pop("rtscts"),
        "xonxoff": kw.pop("xonxoff"),
        "exclusive": not kw.pop("no_exclusive"),
        "pace": kw.pop("pace"),
    }
    return {k: v for k, v in settings.items() if v is not None}


def setup_trace(enabled: bool) -> None:
    if not enabled:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(name)s %(message)s", "%H:%M:%S"))
    for name in ("posterm.wire", "posterm.driver"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=True))


def fail(message: str, code: int, as_json: bool = False, **extra: Any) -> None:
    """Print a one-line error (and a JSON object on stdout with --json), exit ``code``."""
    if as_json:
        emit_json({"error": message, **extra})
    click.echo(f"posterm: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Map posterm's typed errors to one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except (ConfigError, LocalProtocolError) as exc:
            fail(str(exc), EXIT_USAGE, as_json)
        except PosTimeout as exc:
            fail(str(exc), EXIT_UNKNOWN, as_json, result="unknown")
        except (TransportError, LinkFailed) as exc:
            kind = "disconnected" if isinstance(exc, Disconnected) else type(exc).__name__
            fail(f"{kind}: {exc}", EXIT_TRANSPORT, as_json, result="unknown")
        except PosError as exc:
            fail(f"{type(exc).__name__}: {exc}", EXIT_TRANSPORT, as_json)

    return wrapper
