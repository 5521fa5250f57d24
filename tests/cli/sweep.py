"""The bad-input sweep: every command, every option, each class of bad value or file.

The invocations are generated from the click command tree (``posterm.cli.main``), so a
new command or option is swept without touching this file. Each parameter is put in a
category by its name and click type (:func:`category`); each category has classes of bad
values (:data:`BAD`), and every other parameter the command needs gets a good value
(:func:`good_args`), so the bad value is the only thing wrong with the invocation.

Expected: exit 2 (a bad URL, value or file) or 4 (a well-formed port nobody answers on),
exactly one line on stderr, starting ``posterm: error:``, naming the parameter (or the
bad path), no traceback, and no secret echoed back.

Commands that serve (``emulate``, ``host serve``, ``tap``, ``replay``) are stopped the
moment they install their SIGTERM handler (:func:`sigterm_at_once`): a bad value that
slips through makes them start and exit 0 at once instead of serving forever.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from posterm.cli import main

CODE = "289900000000000001"
PASSWORD = "246810"


def leaf_commands() -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``posterm`` (a group that runs without a subcommand counts too)."""
    out: list[tuple[tuple[str, ...], click.Command]] = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command and path:
                out.append((path, cmd))
            ctx = click.Context(cmd, info_name=path[-1] if path else "posterm")
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, f"{' '.join(path + (name,))} is listed but cannot be loaded"
                walk(sub, path + (name,))
        elif path:
            out.append((path, cmd))

    walk(main, ())
    return out


def all_commands() -> list[tuple[str, ...]]:
    """Every command path, groups included (for the --help sweep)."""
    out: list[tuple[str, ...]] = [()]

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd, info_name=path[-1] if path else "posterm")
            for name in cmd.list_commands(ctx):
                out.append(path + (name,))
                walk(cmd.get_command(ctx, name), path + (name,))

    walk(main, ())
    return out


# ------------------------------------------------------------------ categories

_PORTS = {"port", "ecr_port", "terminal_port"}
_AMOUNTS = {"amount", "balance", "per_tx_limit", "daily_limit", "password_free"}
_IDS = {"order_id", "refund_id", "terminal_id", "account_id", "account", "merchant", "terminal", "host_id", "trade"}
_SECONDS = {"timeout", "duration", "poll_interval", "outage_seconds", "speed"}
_DATABASES = {"journal_path", "db_path"}
_OUT_FILES = {"record", "port_file", "out", "record_file", "link", "panel_file"}
_DIRS = {"home", "dests", "backup_to"}
_HEX = {"bdk", "ksn", "key", "data", "kbpk", "fill", "block"}


def category(path: tuple[str, ...], param: click.Parameter) -> str | None:
    """The category of bad values ``param`` is swept with, or None (flags, choices)."""
    name = param.name or ""
    t = param.type
    if getattr(param, "is_flag", False) or isinstance(t, (click.Choice, click.types.BoolParamType)):
        return None
    if path[-1] == "emulate" and name == "record":
        return "dir"  # emulate records one file per session into a directory
    if path[0] == "crypto" and name == "text":
        return None  # any text has a MAC: no bad value
    if name in _PORTS:
        return "port"
    if name == "host_url":
        return "host_url"
    if name == "listen":
        return "listen"
    if name == "amount_minor":
        return "amount_minor"
    if name in _AMOUNTS:
        return "money" if path[0] == "host" else "amount"  # host amounts may be 0 (a balance, a limit)
    if name == "payment_code":
        return "code"
    if name == "operator_password":
        return "password"
    if name in _IDS:
        return "id"
    if name == "outage_seconds":
        return "seconds0"
    if name in _SECONDS:
        return "seconds"
    if name == "date":
        return "date"
    if name == "month":
        return "month"
    if name == "currency":
        return "currency"
    if name == "tz":
        return "tz"
    if name == "faults":
        return "faults"
    if t.name == "family":
        return "family"   # a protocol family's name (posterm.cli.common.FamilyType)
    if name == "backup_every":
        return "interval"
    if name in _DATABASES:
        return "database"
    if name == "key_file" and path[-1] == "keygen" or name in _OUT_FILES:
        return "outfile"
    if name in _DIRS or (name == "record" and isinstance(t, click.Path) and not t.file_okay):
        return "dir"
    if name in ("scenario", "risk_rules"):
        return "toml"
    if isinstance(t, (click.Path, click.File)) or name.endswith("_file") or name == "file":
        return "infile"
    if path[0] == "crypto" and name in _HEX:
        return "hex"
    if name == "pan":
        return "pan"
    if isinstance(t, click.types.IntParamType) or t.name == "integer":
        return "int"
    if isinstance(t, click.types.FloatParamType) or t.name in ("float", "seconds"):
        return "seconds"
    if name == "description":
        return "description"
    return "text"  # anything else takes text: at least an over-long one must be refused or harmless


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then closed: refused on connect)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Files:
    """The bad files, made once per test in ``root``."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = self.root
        self.paths = {
            "binary": str(r / "binary"), "garbage_db": str(r / "garbage.db"), "corrupt_db": str(r / "corrupt.db"),
            "empty": str(r / "empty"), "not_toml": str(r / "not-toml"), "dir": str(r / "a-dir"),
            "missing": str(r / "no-such-file"), "missing_dir": str(r / "no-such-dir" / "f"),
            "loop": str(r / "loop-a"), "under_file": str(r / "regular" / "f"), "regular": str(r / "regular"),
        }

    def make(self) -> "Files":
        r = self.root
        (r / "binary").write_bytes(bytes(range(256)) * 64 + b"\xff\xfe\x00\x80")
        (r / "garbage.db").write_bytes(b"this is not a database\n" * 200)
        (r / "corrupt.db").write_bytes(b"SQLite format 3\x00" + b"\xa5" * 8000)
        (r / "empty").write_bytes(b"")
        (r / "not-toml").write_text("[[[ = = =\n")
        (r / "a-dir").mkdir()
        (r / "regular").write_text("a file\n")
        (r / "backup.key").write_text("00" * 32 + "\n")
        os.symlink(r / "loop-b", r / "loop-a")
        os.symlink(r / "loop-a", r / "loop-b")
        return self


def bad_values(cat: str, f: Files) -> list[tuple[str, int]]:
    """(bad value, expected exit code) for a category."""
    p = f.paths
    free = unused_port()
    usage = {
        "amount": ["1e20", "-1", "0", "nan", "inf", "-inf", "1e999999999", "12abc", "", " ", "99999999999999999999",
                   "12.345", "0.001", "1,00", "١٢"],
        "amount_minor": ["99999999999999999999", "-5", "0", "nan", "1e3", "", "12abc"],
        "code": ["12abc", "", "1" * 19, "12345", "２８９９００００００００００００００１", "2899 00000000000001"],
        "id": ["bad id!", "", "x" * 65, "é" * 10, "a\nb", "../../etc"],
        "password": ["7q", "", "Q" * 33, "pass word", "密码密码"],
        "seconds": ["nan", "inf", "-inf", "-1", "0", "1e308", "abc", ""],
        "seconds0": ["nan", "inf", "-inf", "-1", "1e308", "abc", ""],
        "money": ["1e30", "-1", "nan", "inf", "1e999999999", "12abc", "", "99999999999999999999", "12.345",
                  "0.001", "1,00", "١٢"],
        "int": ["99999999999999999999999", "-1", "nan", "abc", ""],
        "date": ["yesterday", "2026-13-01", "2026-02-30", "", "20261201"],
        "month": ["2026-13", "December", "", "2026-1"],
        "currency": ["XXX", "", "cny1", "€€€"],
        "tz": ["Mars/Olympus", "", "../../etc/passwd"],
        "faults": ["drop=2", "drop=nan", "bogus", "seed=x"],
        "family": ["nosuchfamily", "", " ", "x" * 70000, "posterm concert", "../concert", "concert\x00", "ｃｏｎｃｅｒｔ"],
        "interval": ["0s", "nan", "1x", "-1h", ""],
        "host_url": ["tcp://127.0.0.1:notaport", "tcp://[::1", "http://x", "", "tcp://127.0.0.1:99999"],
        "listen": ["tcp://127.0.0.1:notaport", "tcp://[::1", "127.0.0.1:99999", "notaport", ""],
        "port": ["tcp://[::1", "tcp://127.0.0.1:notaport", "tcp://127.0.0.1:99999", "rfc2217://", "nosuch://x",
                 "socket://:x", ""],
        "hex": ["XYZ", "0" * 10001, "éé"],
        "pan": ["12a4", "", "1" * 40],
        "description": ["x" * 300, "é" * 65],
        "text": ["x" * 70000],
        "database": [p["garbage_db"], p["corrupt_db"], p["binary"], p["dir"], p["loop"],
                     p["under_file"]],
        "infile": [p["binary"], p["empty"], p["not_toml"], p["dir"], p["missing"], p["missing_dir"], p["loop"],
                   p["under_file"], p["garbage_db"]],
        "toml": [p["binary"], p["dir"], p["missing"], p["missing_dir"], p["loop"], p["under_file"], p["not_toml"]],
        "outfile": [p["dir"], p["missing_dir"], p["loop"], p["under_file"]],
        "dir": [p["regular"], p["under_file"], p["loop"]],
    }[cat]
    out = [(v, 2) for v in usage]
    if cat == "port":  # well formed, nobody there: a transport failure, fast
        out += [("/nonexistent/posterm-sweep/tty", 4), (f"tcp://127.0.0.1:{free}", 4),
                (f"socket://127.0.0.1:{free}", 4), (f"rfc2217://127.0.0.1:{free}", 4)]
    return out


# ------------------------------------------------------------------ good values

GOOD: dict[str, Any] = {
    "port": "/nonexistent/posterm-sweep/tty",   # fails fast (exit 4) if the bad value slips past
    "amount": "1.00", "amount_minor": "100", "code": CODE, "password": PASSWORD, "id": "ORDER-1",
    "seconds": "1", "int": "1", "date": "2026-12-01", "month": "2026-12", "currency": "CNY",
    "tz": "Asia/Shanghai", "host_url": "embedded", "listen": None, "description": "coffee", "text": "text",
    "pan": "4111111111111111",
}
_CRYPTO_GOOD = {"bdk": "0123456789ABCDEFFEDCBA9876543210", "ksn": "FFFF9876543210E00001",
                "key": "0123456789ABCDEFFEDCBA9876543210", "data": "00", "kbpk": "00" * 16,
                "header": "D0000B1AX00N0000", "block": "0412AC89ABCDEF67", "format": "0", "pin": "1234"}


def good_value(path: tuple[str, ...], param: click.Parameter, cat: str | None, f: Files) -> str | None:
    name = param.name or ""
    if path[0] == "crypto" and name in _CRYPTO_GOOD:
        if path[-1] == "unwrap" and name == "block":
            return "B0080P0TE00E0000" + "00" * 32
        if path[:2] == ("keys", "load"):
            return None
        return _CRYPTO_GOOD[name]
    if path[:2] == ("keys", "load") and name == "block":
        return "D0112B1AX00E0000" + "0" * 96
    if name == "block" and path[-1] == "inspect":
        return "D0112B1AX00E0000" + "0" * 96
    if name == "reason" or name == "resolution" or name == "name" or name == "why":
        return "text"
    if name == "qr_data":
        return "posterm://pay?o=ORDER-1"
    if name == "case_id":
        return "1"
    if name == "url" and path[:2] == ("host", "webhook"):
        return "http://127.0.0.1:9/hook"       # a loopback webhook (posterm host webhook set)
    if name == "code" and path[0] == "host":
        return "123456"                        # a verification code from the phone
    if name == "id_number":
        return "11010519491231002X"
    if name in ("file", "scenario", "risk_rules"):
        return None
    if name == "dests":
        return str(f.root)
    if name == "key_file" and path[-1] != "keygen":
        return str(f.root / "backup.key")
    if name == "out":
        return str(f.root / "out.pcapng")
    if name == "record_file":
        return str(f.root / "rec.jsonl")
    if name == "role":
        return "ecr"
    if isinstance(param.type, click.Choice):
        return str(param.type.choices[0])
    if cat == "port":
        return GOOD["port"]
    return GOOD.get(cat or "", None)


def good_args(path: tuple[str, ...], cmd: click.Command, target: click.Parameter, f: Files) -> list[str]:
    """Good values for what the command needs besides ``target``: arguments, required
    options, the port, the operator password (no prompt), one amount."""
    names = {p.name for p in cmd.params}
    args: list[str] = []
    opts: list[str] = []
    for p in cmd.params:
        if p is target:
            continue
        name = p.name or ""
        cat = category(path, p)
        needed = p.required or isinstance(p, click.Argument) or name in _PORTS or name == "operator_password"
        if name == "amount" and "amount_minor" in names:
            needed = target.name != "amount_minor"
        if name == "block" and path[:2] == ("keys", "load"):
            needed = target.name != "block_file"
        if name == "bdk" and path[0] == "crypto":
            needed = target.name != "bdk_file"
        if name == "data" and path[-1] == "retail-mac":
            needed = target.name != "text"
        if name in ("operator_password",) and target.name == "password_stdin":
            needed = False
        if path[0] == "crypto" and name == "key" and path[-1] in ("encode",):
            needed = False
        if path[0] == "crypto" and name == "pin":
            needed = True  # else it is prompted for
        if path[:2] == ("host", "backup") and name in ("dests", "key_file") and len(path) == 2:
            needed = True
        if path[-1] == "restore" and name == "key_file":
            needed = True
        if path[-1] == "replay" and name == "port":
            needed = True
        if not needed:
            continue
        value = good_value(path, p, cat, f)
        if value is None:
            if name in ("file",) and path[-1] in ("show", "convert", "replay", "verify", "restore"):
                value = str(Path(__file__).parents[2] / "fixtures" / "sessions" / "pay_approved.jsonl")
            elif isinstance(p, click.Argument):
                value = "x"
            else:
                continue
        if isinstance(p, click.Argument):
            args.append(value)
        else:
            opts += [p.opts[0], value]
    return opts + args


def place(cmd: click.Command, target: click.Parameter, value: str) -> list[str]:
    if isinstance(target, click.Argument):
        return ["--", value] if value.startswith("-") else [value]
    return [target.opts[0], value]


@dataclass
class Case:
    argv: list[str]
    expected: int
    names: tuple[str, ...]      # what the error line must mention (any one)
    secret: str | None = None   # must not appear on stderr or stdout
    stdin: str = ""

    @property
    def label(self) -> str:
        return " ".join(repr(a) if (" " in a or not a) else (a[:40] + "...") if len(a) > 40 else a for a in self.argv)


def param_names(param: click.Parameter) -> tuple[str, ...]:
    if isinstance(param, click.Argument):
        return ((param.metavar or param.name or "").upper(), (param.name or "").upper())
    return tuple(param.opts) + tuple(getattr(param, "secondary_opts", ()))


def cases_for(path: tuple[str, ...], cmd: click.Command, f: Files) -> list[Case]:
    out: list[Case] = []
    for p in cmd.params:
        cat = category(path, p)
        if cat is None:
            continue
        for value, code in bad_values(cat, f):
            argv_pos = [a for a in good_args(path, cmd, p, f)]
            # options before the bad one; a bad argument in its own place among the others
            # (after "--" when needed)
            if isinstance(p, click.Argument):
                arguments = [q for q in cmd.params if isinstance(q, click.Argument)]
                before = arguments.index(p)
                at = len(argv_pos) - (len(arguments) - 1) + before
                argv = list(path) + argv_pos[:at] + place(cmd, p, value) + argv_pos[at:]
            else:
                argv = list(path) + place(cmd, p, value) + argv_pos
            names = param_names(p) + ((value,) if cat in ("database", "infile", "toml", "outfile", "dir", "port")
                                      and value else ())
            if code == 4:  # nobody answers: either port may be the one named
                names += (GOOD["port"],)
            out.append(Case(argv, code, names, secret=value if cat == "password" and len(value) > 1 else None))
    # the operator password from stdin: empty, malformed
    if any(p.name == "password_stdin" for p in cmd.params):
        target = next(p for p in cmd.params if p.name == "password_stdin")
        for stdin in ("", "\n", "7q\n", "Q" * 33 + "\n"):
            argv = list(path) + ["--password-stdin"] + good_args(path, cmd, target, f)
            out.append(Case(argv, 2, ("password",), secret=stdin.strip() if len(stdin.strip()) > 1 else None,
                            stdin=stdin))
    return out


def explicit_cases(f: Files) -> list[Case]:
    """The examples from the hardening issue, verbatim where they stand alone."""
    port = ["--port", GOOD["port"]]
    pay = ["pay", *port, "--payment-code", CODE]
    rec = str(Path(__file__).parents[2] / "fixtures" / "sessions" / "pay_approved.jsonl")
    p = f.paths
    c = [
        Case([*pay, "--amount", "1e20"], 2, ("--amount",)),
        Case(["pay", *port, "--amount-minor", "99999999999999999999"], 2, ("--amount-minor",)),
        Case(["pay", *port, "--amount", "1", "--payment-code", "12abc"], 2, ("--payment-code",)),
        Case([*pay, "--amount", "1", "--order-id", "bad id!"], 2, ("--order-id",)),
        Case(["query", *port, "bad id!"], 2, ("ORDER_ID",)),
        Case([*pay, "--amount", "1", "--description", "x" * 300], 2, ("--description",)),
        Case(["settle", *port, "--operator-password", "12"], 2, ("--operator-password",), secret=None),
        Case(["settle", *port, "--password-stdin"], 2, ("password",)),
        Case([*pay, "--amount", "1", "--journal", p["garbage_db"]], 2, ("--journal", p["garbage_db"])),
        Case(["host", "trades", "--db", p["garbage_db"]], 2, ("--db", p["garbage_db"])),
        # a PostgreSQL URL: malformed or naming no database (usage), or no server there (4); the password never shown
        Case(["host", "trades", "--db", "postgresql://u:s3cretpw@127.0.0.1:abc/x"], 2, ("--db",), secret="s3cretpw"),
        Case(["host", "trades", "--db", "postgresql://u:s3cretpw@127.0.0.1:5432"], 2, ("--db",), secret="s3cretpw"),
        Case(["host", "trades", "--db", f"postgresql://u:s3cretpw@127.0.0.1:{unused_port()}/x"], 4, ("database",),
             secret="s3cretpw"),
        Case([*pay, "--amount", "1", "--record", p["missing_dir"]], 2, ("--record", p["missing_dir"])),
        Case(["emulate", "--port-file", p["missing_dir"]], 2, ("--port-file", p["missing_dir"])),
        Case(["emulate", "--scenario", p["binary"]], 2, ("--scenario", p["binary"])),
        Case(["host", "serve", "--risk-rules", p["binary"]], 2, ("--risk-rules", p["binary"])),
        Case(["show", p["binary"]], 2, ("FILE", p["binary"])),
        Case(["replay", p["binary"], "--as", "ecr", *port], 2, ("FILE", p["binary"])),
        Case(["host", "account", "add", "acct-1", "--name", "A", "--balance", "1e30"], 2, ("--balance",)),
        Case(["pay", "--port", "tcp://[::1", "--amount", "1", "--payment-code", CODE], 2, ("--port",)),
        Case(["pay", "--port", f"rfc2217://127.0.0.1:{unused_port()}", "--amount", "1", "--payment-code", CODE], 4,
             ("rfc2217",)),
        Case(["emulate", "--terminal-id", "bad id"], 2, ("--terminal-id",)),
        Case([*pay, "--amount", "1", "--timeout", "nan"], 2, ("--timeout",)),
        Case([*pay, "--amount", "1", "--timeout", "inf"], 2, ("--timeout",)),
        Case([*pay, "--amount", "1", "--timeout", "-1"], 2, ("--timeout",)),
        Case([*pay, "--amount", "1", "--timeout", "0"], 2, ("--timeout",)),
        Case(["emulate", "--host", "tcp://127.0.0.1:notaport"], 2, ("--host",)),
        Case(["host", "trades", "--date", "yesterday"], 2, ("--date",)),
        Case(["show", rec, "--no-such-flag"], 2, ("--no-such-flag",)),
        Case(["no-such-command"], 2, ("no-such-command",)),
    ]
    return c


def sigterm_at_once(monkeypatch) -> None:
    """A command that installs a SIGTERM handler gets the signal at once (see the module doc)."""
    real = signal.signal

    def fake(sig, handler):
        if sig in (signal.SIGTERM, signal.SIGINT) and callable(handler):
            handler(sig, None)
            return signal.SIG_DFL
        return real(sig, handler)

    monkeypatch.setattr(signal, "signal", fake)
