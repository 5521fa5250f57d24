"""Options and error handling shared by the posterm commands."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import os
import re
import stat
import sys
import urllib.parse
from decimal import Decimal
from typing import Any, Callable

import click

from posterm.errors import (
    ConfigError,
    Disconnected,
    LinkFailed,
    LocalProtocolError,
    PosError,
    PosTimeout,
    TransportError,
)

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
        click.option("--port", "-p", envvar="POSTERM_PORT", metavar="URL", type=PORT,
                     help="Device or pyserial URL: /dev/ttyUSB0, /dev/serial/by-id/..., socket://HOST:PORT, "
                          "rfc2217://HOST:PORT, loop://. [env POSTERM_PORT]"),
        click.option("--protocol", envvar="POSTERM_PROTOCOL", type=FAMILY, default=None,
                     cls=LazyHelpOption, help_text=lambda: protocol_help(env=True)),
        click.option("--baud", envvar="POSTERM_BAUD", type=click.IntRange(50, 4_000_000), default=None,
                     cls=LazyHelpOption, help_text=lambda: baud_help("protocol family's") + " [env POSTERM_BAUD]"),
        click.option("--bytesize", type=click.Choice(["5", "6", "7", "8"]), default=None,
                     help="Data bits [default: the protocol family's, 8; some RS-232 terminal ports: 7 with --parity E]."),
        click.option("--parity", type=click.Choice(sorted(PARITIES), case_sensitive=False), default=None,
                     help="Parity [default: N]."),
        click.option("--stopbits", type=click.Choice(["1", "1.5", "2"]), default=None, help="Stop bits [default: 1]."),
        click.option("--rtscts", is_flag=True, help="RTS/CTS hardware flow control."),
        click.option("--xonxoff", is_flag=True, help="XON/XOFF software flow control."),
        click.option("--no-exclusive", is_flag=True, help="Do not take an exclusive lock on the port."),
        click.option("--pace", is_flag=True, help="Pace writes to the line rate (ptys and TCP are otherwise instant)."),
        click.option("--reconnect", is_flag=True, help="Reopen the port if it goes away mid-operation."),
        click.option("--trace", is_flag=True, help="Log every frame (hex, decoded, secrets masked) to stderr."),
        click.option("--journal", "journal_path", type=DatabaseFile(), default=None,
                     help="Journal database (default $POSTERM_HOME/driver-journal.db)."),
        click.option("--record", type=OutputFile(), default=None, metavar="FILE",
                     help="Record the session (JSON Lines, secrets redacted; see `posterm show`/`replay`)."),
        # The driver's own options (driver_settings): given to a family's driver only when set.
        click.option("--terminal-password", envvar="POSTERM_TERMINAL_PASSWORD", type=PASSWORD, default=None,
                     help="The terminal's password (ZVT: registration, 6 digits; also the operator password"
                          " when none is given). No default. [env POSTERM_TERMINAL_PASSWORD]"),
        click.option("--terminal-password-stdin", is_flag=True,
                     help="Read the terminal's password from stdin (after the operator password's line"
                          " with --password-stdin)."),
        click.option("--zvt-config", type=CONFIG_BYTE, default=None, metavar="BYTE",
                     help="ZVT registration config byte, hex (0xDE) or decimal [default: 0xDE: the ECR prints"
                          " the receipts, which come as print lines / text blocks; intermediate status on]."),
        click.option("--zvt-framing", type=click.Choice(["serial", "tcp"]), default=None,
                     help="ZVT transport [default: tcp (bare APDUs) for tcp:// and socket://, serial"
                          " (DLE STX ... CRC, ACK bytes) otherwise; serial for a ser2net bridge on socket://]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


#: CLI option -> (the driver's ``open`` keyword, the option as typed): what :func:`driver_settings` passes.
DRIVER_OPTIONS = {
    "terminal_password": ("password", "--terminal-password"),
    "zvt_config": ("config_byte", "--zvt-config"),
    "zvt_framing": ("framing", "--zvt-framing"),
}


def driver_settings(kw: dict[str, Any], protocol: str | None) -> dict[str, Any]:
    """Pop the driver's own options (:data:`DRIVER_OPTIONS`, and ``--terminal-password-stdin``,
    read here) out of a command's kwargs into keywords for the ``protocol`` family's driver
    ``open``. Only options given are passed; one the driver's ``open`` does not name is a
    usage error naming the option and the family (never silently dropped). The password is
    never shown."""
    from posterm.families import family

    if kw.pop("terminal_password_stdin", False):
        if kw.get("terminal_password"):
            raise click.UsageError("give --terminal-password or --terminal-password-stdin, not both")
        kw["terminal_password"] = check_password(sys.stdin.readline().strip(), "--terminal-password-stdin")
    given = {name: kw.pop(name) for name in DRIVER_OPTIONS if name in kw}
    given = {name: value for name, value in given.items() if value is not None}
    if not given:
        return {}
    import inspect

    fam = family(protocol)
    params = inspect.signature(fam.driver_class().open).parameters
    ctx = click.get_current_context(silent=True)
    out = {}
    for name, value in given.items():
        keyword, option = DRIVER_OPTIONS[name]
        if keyword not in params:
            if ctx is not None and ctx.get_parameter_source(name) is click.core.ParameterSource.ENVIRONMENT:
                continue    # $POSTERM_TERMINAL_PASSWORD set for one family must not break the others
            raise click.UsageError(f"{option} is not an option of protocol family {fam.name!r}")
        out[keyword] = value
    return out


def _check_protocol(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback that checks a family name as :data:`FAMILY` does (for options declared
    without the type)."""
    return None if value is None else FAMILY.convert(value, param, ctx)


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
    for name in ("posterm.wire", "posterm.ecr"):
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


# ------------------------------------------------------------------ validated parameter types
#
# Every command takes its values through these, so a bad value is refused while click
# parses the command line (exit 2, one line naming the option) and never reaches a port,
# a database or the wire. The limits are the wire contract's (firmware_protocol.native.messages).

_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,6})?")
ID_PATTERN = re.compile(r"[A-Za-z0-9_\-.:]+")   # ORDER_ID / ID32 on the wire
PASSWORD_PATTERN = re.compile(r"[0-9A-Za-z]{4,32}")  # PASSWORD on the wire


class AmountType(click.ParamType):
    """A decimal amount in the currency's unit ("12.34"), as a :class:`Decimal`; never a float.

    Only plain digits with an optional fraction: no exponent, sign, nan/inf or separators.
    The currency's exponent and the wire's cap are checked by :func:`minor_units`.
    """

    name = "amount"

    def __init__(self, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        if isinstance(value, Decimal):
            return value
        text = str(value).strip()
        if not _DECIMAL.fullmatch(text):
            self.fail(f"{_shown(text)} is not a decimal amount like 12.34 (digits, an optional fraction)", param, ctx)
        d = Decimal(text)
        if d == 0 and not self.allow_zero:
            self.fail("must be more than zero", param, ctx)
        return d


def minor_units(amount: Decimal, currency: str, param_hint: str, allow_zero: bool = False) -> int:
    """``amount`` (from :class:`AmountType`) in minor units of ``currency``, exactly.

    Raises :class:`click.BadParameter` for more decimals than the currency has, or an
    amount above what the wire's amount field carries (``MAX_AMOUNT_MINOR``).
    """
    from firmware_protocol.currency import exponent
    from firmware_protocol.native.messages import MAX_AMOUNT_MINOR

    exp = exponent(currency)
    scaled = amount.scaleb(exp)
    if scaled != scaled.to_integral_value():
        raise click.BadParameter(f"{amount} has more than {exp} decimals, the exponent of {currency}",
                                 param_hint=param_hint)
    minor = int(scaled)
    if minor > MAX_AMOUNT_MINOR:
        raise click.BadParameter(f"more than the largest amount the protocol carries ({MAX_AMOUNT_MINOR} minor units)",
                                 param_hint=param_hint)
    if minor <= 0 and not allow_zero:
        raise click.BadParameter("must be more than zero", param_hint=param_hint)
    return minor


class AmountMinorType(click.ParamType):
    """A whole number of minor units, 1 .. the wire's cap (``MAX_AMOUNT_MINOR``)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from firmware_protocol.native.messages import MAX_AMOUNT_MINOR

        if isinstance(value, int):
            text = str(value)
        else:
            text = str(value).strip()
        if not _DIGITS.fullmatch(text) or len(text) > 19:
            self.fail(f"{_shown(text)} is not a whole number of minor units", param, ctx)
        n = int(text)
        if not 1 <= n <= MAX_AMOUNT_MINOR:
            self.fail(f"must be 1..{MAX_AMOUNT_MINOR}", param, ctx)
        return n


class IntType(click.ParamType):
    """A plain whole number in ``lo..hi`` (digits only: no nan, exponent or Unicode digits)."""

    name = "integer"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            text = str(value).strip()
            if not re.fullmatch(r"-?[0-9]{1,20}", text):
                self.fail(f"{_shown(text)} is not a whole number", param, ctx)
            n = int(text)
        if not self.lo <= n <= self.hi:
            self.fail(f"{n} is not in {self.lo}..{self.hi}", param, ctx)
        return n


class SecondsType(click.ParamType):
    """A finite number of seconds in ``lo..hi`` (nan, inf, 0 and negatives are refused)."""

    name = "seconds"

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            self.fail(f"{_shown(str(value))} is not a number of seconds", param, ctx)
        if not math.isfinite(f) or not self.lo <= f <= self.hi:
            self.fail(f"must be a number of seconds in {self.lo:g}..{self.hi:g}", param, ctx)
        return f


class IdType(click.ParamType):
    """An id as the protocol carries it: 1..``max_len`` of A-Z a-z 0-9 _ - . :"""

    name = "id"

    def __init__(self, max_len: int = 64) -> None:
        self.max_len = max_len

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not (1 <= len(text) <= self.max_len and ID_PATTERN.fullmatch(text)):
            self.fail(f"{_shown(text)}: an id is 1..{self.max_len} characters of A-Z a-z 0-9 _ - . :", param, ctx)
        return text


class PaymentCodeType(click.ParamType):
    """A customer's payment code: 18 digits."""

    name = "code"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not (len(text) == 18 and text.isascii() and text.isdigit()):
            self.fail("a payment code is 18 digits", param, ctx)
        return text


def check_password(value: str, param_hint: str = "--operator-password") -> str:
    """``value`` if it is a password the protocol carries (4..32 letters or digits).

    Raises :class:`click.BadParameter` that never shows the value.
    """
    if not PASSWORD_PATTERN.fullmatch(value):
        raise click.BadParameter("a password is 4..32 letters or digits (not shown)", param_hint=param_hint)
    return value


class ByteType(click.ParamType):
    """One byte, 0..255: hex with ``0x`` (``0xDE``) or decimal."""

    name = "byte"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            text = str(value).strip()
            if re.fullmatch(r"0[xX][0-9A-Fa-f]{1,2}", text):
                n = int(text, 16)
            elif re.fullmatch(r"[0-9]{1,3}", text):
                n = int(text)
            else:
                self.fail(f"{_shown(text)} is not a byte (0xDE or 222)", param, ctx)
        if not 0 <= n <= 255:
            self.fail(f"{n} is not a byte (0..255)", param, ctx)
        return n


class PasswordType(click.ParamType):
    """An operator password: 4..32 letters or digits. Error messages never show it."""

    name = "password"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not PASSWORD_PATTERN.fullmatch(str(value)):
            self.fail("a password is 4..32 letters or digits (not shown)", param, ctx)
        return str(value)


class TextType(click.ParamType):
    """Free text of at most ``max_bytes`` bytes of UTF-8, no control characters."""

    name = "text"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            n = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            self.fail("not valid text (UTF-8)", param, ctx)
        if n > self.max_bytes:
            self.fail(f"{n} bytes; at most {self.max_bytes}", param, ctx)
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            self.fail("control characters are not allowed", param, ctx)
        return text


class CurrencyType(click.ParamType):
    """An ISO 4217 alphabetic code posterm knows (upper-cased)."""

    name = "currency"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from firmware_protocol.currency import CURRENCIES

        text = str(value).strip().upper()
        if text not in CURRENCIES:
            self.fail(f"unknown ISO 4217 currency {_shown(text)}", param, ctx)
        return text


class DateType(click.ParamType):
    """A calendar date ``YYYY-MM-DD`` (or a month ``YYYY-MM`` with ``month=True``), kept as text."""

    name = "date"

    def __init__(self, month: bool = False) -> None:
        self.month = month

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        shape = r"[0-9]{4}-[0-9]{2}" if self.month else r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
        try:
            if not re.fullmatch(shape, text):
                raise ValueError
            datetime.date.fromisoformat(text + "-01" if self.month else text)
        except ValueError:
            self.fail(f"{_shown(text)} is not a {'month YYYY-MM' if self.month else 'date YYYY-MM-DD'}", param, ctx)
        return text


class TimeZoneType(click.ParamType):
    """An IANA time zone name (Asia/Shanghai) that this system knows."""

    name = "zone"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        import zoneinfo

        text = str(value).strip()
        try:
            if not re.fullmatch(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*", text):
                raise ValueError
            zoneinfo.ZoneInfo(text)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError, OSError):
            self.fail(f"{_shown(text)} is not a known time zone (e.g. Asia/Shanghai)", param, ctx)
        return text


class FaultsType(click.ParamType):
    """A line-fault spec (drop=0.01,corrupt=0.01,...,seed=7), parsed now so a bad one is named."""

    name = "spec"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from posterm.transport.faults import FaultSpec

        text = str(value)
        try:
            FaultSpec.parse(text)
        except (PosError, ValueError) as exc:
            self.fail(str(exc), param, ctx)
        return text


def _host_port(text: str, allow_zero: bool) -> tuple[str, int] | None:
    """(host, port) of ``[tcp://]HOST:PORT``, or None when it is not one."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text if "://" in text else f"tcp://{text}")
        port = parts.port
    except ValueError:
        return None
    if port is None or not parts.hostname or (port == 0 and not allow_zero):
        return None
    if parts.path not in ("", "/") and not parts.query:
        return None
    return parts.hostname, port


_PYSERIAL_SCHEMES = ("socket", "rfc2217", "loop", "hwgrep", "alt", "spy", "cp2110")


class PortType(click.ParamType):
    """A device path or a port URL whose form is right (the port is opened later).

    ``tcp://``, ``socket://`` and ``rfc2217://`` need HOST:PORT with PORT 1..65535; the
    scheme must be ours, pyserial's or a registered ``posterm.transports`` backend.
    """

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not text or "\x00" in text:
            self.fail("no port given", param, ctx)
        if "://" not in text:
            return text  # a device path: whether it exists is the transport's to say (exit 4)
        scheme = text.split("://", 1)[0].lower()
        if scheme in ("tcp", "socket", "rfc2217"):
            if _host_port(text.split("?", 1)[0] if scheme != "tcp" else text, allow_zero=False) is None:
                self.fail(f"{_shown(text)}: expected {scheme}://HOST:PORT with PORT 1..65535", param, ctx)
            return text
        if scheme in ("pty", "virtual", "loop") or scheme in _PYSERIAL_SCHEMES:
            return text
        from importlib.metadata import entry_points

        if any(ep.name == scheme for ep in entry_points(group="posterm.transports")):
            return text
        self.fail(f"{_shown(text)}: unknown port scheme {scheme!r}", param, ctx)


class FamilyType(click.ParamType):
    """The name of a protocol family the registry (:mod:`posterm.families`) knows: a built-in
    one or one an installed package registers through the ``posterm.protocols`` entry point.
    Case does not matter; the canonical name is returned. An unknown name, or a plug-in that
    does not load, is refused with one line naming the known families. Only the named
    family is loaded, and only when the option is given: listing the choices in help
    imports no family."""

    name = "family"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from posterm.families import family, names

        text = str(value).strip()
        if not text:
            self.fail(f"no protocol family given (known: {', '.join(names())})", param, ctx)
        try:
            return family(text).name
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        from posterm.families import names

        return "[" + "|".join(names()) + "]"

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
        from click.shell_completion import CompletionItem
        from posterm.families import names

        return [CompletionItem(n) for n in names() if n.startswith(incomplete.lower())]


class LazyHelpOption(click.Option):
    """An option whose help text is made when help is shown (``help_text()``), not when the
    command's module is imported: texts that list the protocol families ask the registry,
    and ``posterm --help`` must not load every family to list the commands."""

    def __init__(self, *args: Any, help_text: Callable[[], str], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._help_text = help_text

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self._help_text()
        return super().get_help_record(ctx)


def protocol_help(env: bool = False, what: str = "Protocol family on the line") -> str:
    """``--protocol``'s help: every family the registry knows, with its description."""
    from posterm.families import known

    listed = "; ".join(f"{f.name}: {f.description}" for f in known())
    return f"{what} ({listed})." + (" [env POSTERM_PROTOCOL]" if env else "")


def baud_help(whose: str = "protocol family's") -> str:
    """``--baud``'s help: the default line rate of each family the registry knows."""
    from posterm.families import known

    rates = ", ".join(f"{f.name} {f.baudrate}" for f in known())
    return f"Baud rate [default: the {whose}: {rates}]."


class HostUrlType(click.ParamType):
    """``embedded`` or ``tcp://HOST:PORT`` (a remote host)."""

    name = "host"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if text == "embedded":
            return text
        if not text.startswith("tcp://") or _host_port(text, allow_zero=False) is None:
            self.fail(f"{_shown(text)}: expected 'embedded' or tcp://HOST:PORT with PORT 1..65535", param, ctx)
        return text


class ListenType(click.ParamType):
    """An address to listen on: ``[tcp://]HOST:PORT`` (PORT 0 picks a free one)."""

    name = "address"

    def __init__(self, url: bool = True) -> None:
        self.url = url

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if (self.url and not text.startswith("tcp://")) or _host_port(text, allow_zero=True) is None:
            form = "tcp://HOST:PORT" if self.url else "HOST:PORT"
            self.fail(f"{_shown(text)}: expected {form} with PORT 0..65535", param, ctx)
        return text


def _stat(path: str, param: click.Parameter | None, ctx: click.Context | None, t: click.ParamType):
    """os.stat of ``path`` or None when nothing is there; a loop or a bad component fails."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            t.fail(f"{path}: a dangling symbolic link", param, ctx)
        return None
    except OSError as exc:
        t.fail(f"{path}: {exc.strerror}", param, ctx)


def _existing_ancestor_is_dir(path: str, param, ctx, t: click.ParamType, direct: bool) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if direct:
        st = _stat(parent, param, ctx, t)
        if st is None:
            t.fail(f"{path}: directory {parent} does not exist", param, ctx)
        if not stat.S_ISDIR(st.st_mode):
            t.fail(f"{path}: {parent} is not a directory", param, ctx)
        return
    while parent and parent != os.path.dirname(parent):
        st = _stat(parent, param, ctx, t)
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                t.fail(f"{path}: {parent} is not a directory", param, ctx)
            return
        parent = os.path.dirname(parent)


class InputFile(click.ParamType):
    """An existing, readable regular file; with ``text=True`` also UTF-8 text (a scenario,
    rule file or recording), so a binary file is refused here with its name."""

    name = "file"

    def __init__(self, text: bool = False, max_bytes: int = 256 * 1024 * 1024, allow_dash: bool = False) -> None:
        self.text = text
        self.max_bytes = max_bytes
        self.allow_dash = allow_dash

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        path = os.fspath(value)
        if path == "-" and self.allow_dash:
            return path
        if path == "":
            self.fail("no file given", param, ctx)
        st = _stat(path, param, ctx, self)
        if st is None:
            self.fail(f"{path}: no such file", param, ctx)
        if not stat.S_ISREG(st.st_mode):
            self.fail(f"{path}: not a regular file", param, ctx)
        if st.st_size > self.max_bytes:
            self.fail(f"{path}: {st.st_size} bytes, more than {self.max_bytes}", param, ctx)
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.max_bytes + 1) if self.text else b""
        except OSError as exc:
            self.fail(f"{path}: {exc.strerror}", param, ctx)
        if self.text:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.fail(f"{path}: not UTF-8 text (a binary file? byte {exc.start})", param, ctx)
            if b"\x00" in data:
                self.fail(f"{path}: not text (it holds NUL bytes)", param, ctx)
        return path


class OutputFile(click.ParamType):
    """A file to write: its directory exists, and it is not a directory itself."""

    name = "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        path = os.fspath(value)
        if path == "":
            self.fail("no file given", param, ctx)
        st = _stat(path, param, ctx, self)
        if st is not None and stat.S_ISDIR(st.st_mode):
            self.fail(f"{path}: a directory, not a file", param, ctx)
        _existing_ancestor_is_dir(path, param, ctx, self, direct=True)
        return path


class DatabaseFile(click.ParamType):
    """An SQLite database: an existing one (checked by its header), or a new one to create
    in an existing directory. A garbage file is refused here, named. Or a PostgreSQL
    database's ``postgresql://`` URL (checked for form only; its password, if it has one, is
    never repeated in an error)."""

    name = "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        path = os.fspath(value)
        if path == "":
            self.fail("no file given", param, ctx)
        if path.lower().startswith(("postgresql://", "postgres://")):
            return self._url(path, param, ctx)
        if os.path.islink(path):  # never opened through, not even to read its header
            self.fail(f"{path} is a symlink; posterm does not follow links it did not make", param, ctx)
        st = _stat(path, param, ctx, self)
        if st is None:  # a new database: its directories are made as $POSTERM_HOME is
            _existing_ancestor_is_dir(path, param, ctx, self, direct=False)
            return path
        if not stat.S_ISREG(st.st_mode):
            self.fail(f"{path}: not a regular file", param, ctx)
        try:
            with open(path, "rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            self.fail(f"{path}: {exc.strerror}", param, ctx)
        if head and head != b"SQLite format 3\x00":
            self.fail(f"{path}: not an SQLite database", param, ctx)
        if head:
            import sqlite3

            try:  # read-only: a damaged first page is refused here, named, not deep in a command
                db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True)
                try:
                    db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                finally:
                    db.close()
            except sqlite3.DatabaseError as exc:
                self.fail(f"{path}: a damaged SQLite database ({exc})", param, ctx)
        return path


    def _url(self, url: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from psycopg.conninfo import conninfo_to_dict

        from posterm.host.store.postgres import redact

        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - a port that is not a number raises here
            conninfo_to_dict(url)
        except Exception:
            self.fail(f"{redact(url)}: not a valid PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE)", param, ctx)
        if not parts.path.strip("/"):
            self.fail(f"{redact(url)}: no database named (postgresql://USER@HOST:PORT/DATABASE)", param, ctx)
        return url


class Directory(click.ParamType):
    """A directory: an existing one, or one that can be made (no file in the way)."""

    name = "directory"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        path = os.fspath(value)
        if path == "":
            self.fail("no directory given", param, ctx)
        st = _stat(path, param, ctx, self)
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                self.fail(f"{path}: not a directory", param, ctx)
            return path
        _existing_ancestor_is_dir(path, param, ctx, self, direct=False)
        return path


def _shown(text: str, limit: int = 40) -> str:
    """A value as shown in an error line: repr, cut short (a 300-byte value stays one short line)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


AMOUNT = AmountType()
AMOUNT_MINOR = AmountMinorType()
ORDER_ID = IdType(64)
ID32 = IdType(32)
PAYMENT_CODE = PaymentCodeType()
PASSWORD = PasswordType()
CONFIG_BYTE = ByteType()
CURRENCY = CurrencyType()
DESCRIPTION = TextType(128)   # SHORT_TEXT on the wire
NOTE = TextType(1000)         # names, reasons, resolutions: shown in tables, kept in the database
DATE = DateType()
MONTH = DateType(month=True)
TZ = TimeZoneType()
PORT = PortType()
FAMILY = FamilyType()
