"""Bad input to any command: one clear line on stderr, the documented exit code, never a traceback.

The sweep (tests/cli/sweep.py) is generated from the click tree: a new command or option
is swept automatically. `python -m tests.cli.sweep_report` prints its figures.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from posterm.cli import main
from tests.cli import sweep

LEAVES = sweep.leaf_commands()


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click 8.1
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart already


def check(case: sweep.Case, result) -> str | None:
    """Why ``result`` is wrong for ``case``, or None."""
    err = result.stderr
    lines = err.strip().splitlines()
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        return f"traceback: {type(exc).__name__}: {str(exc)[:120]}"
    if "Traceback" in err:
        return "traceback on stderr"
    if result.exit_code != case.expected:
        return f"exit {result.exit_code}, expected {case.expected}: {err.strip()[-160:]!r}"
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr: {err[:200]!r}"
    line = lines[0]
    if not line.startswith("posterm: error: "):
        return f"not a posterm error line: {line[:160]!r}"
    if "internal error" in line:
        return f"reached the last-resort guard: {line[:160]!r}"
    if not any(n and n.lower() in line.lower() for n in case.names):
        return f"does not name {case.names[0]!r}: {line[:160]!r}"
    if case.secret and (case.secret in err or case.secret in result.stdout):
        return "echoes the password"
    return None


def run_cases(cases, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POSTERM_PORT", raising=False)
    monkeypatch.delenv("POSTERM_OPERATOR_PASSWORD", raising=False)
    monkeypatch.delenv("POSTERM_DEBUG", raising=False)
    sweep.sigterm_at_once(monkeypatch)
    failures = []
    runner = _runner()
    runner.invoke(main, ["host", "account", "add", "ORDER-1", "--name", "swept"])  # an account to change
    for case in cases:
        result = runner.invoke(main, case.argv, input=case.stdin)
        why = check(case, result)
        if why:
            failures.append(f"posterm {case.label}\n    -> {why}")
    return failures


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=" ".join)
def test_every_option_refuses_bad_values(path, tmp_path, monkeypatch):
    cmd = dict(LEAVES)[path]
    files = sweep.Files(tmp_path / "files")
    files.root.mkdir()
    files.make()
    cases = sweep.cases_for(path, cmd, files)
    failures = run_cases(cases, tmp_path, monkeypatch)
    assert not failures, f"{len(failures)} of {len(cases)} bad invocations misbehave:\n" + "\n".join(failures)


def test_the_issue_examples(tmp_path, monkeypatch):
    files = sweep.Files(tmp_path / "files")
    files.root.mkdir()
    files.make()
    cases = sweep.explicit_cases(files)
    failures = run_cases(cases, tmp_path, monkeypatch)
    assert not failures, "\n".join(failures)


def test_the_security_centre_guard_refuses_bad_input(tmp_path, monkeypatch):
    """Issue 17 (real-name ID numbers, password rules, limits, back office): values of the
    right shape that are still wrong, and options that need each other."""
    C = sweep.Case
    good_id, acct = "11010519491231002X", ["--name", "G"]
    cases = [
        C(["host", "account", "add", "acct-g", *acct, "--real-name"], 2, ("--id-number",)),
        C(["host", "account", "add", "acct-g", *acct, "--id-number", good_id], 2, ("--real-name-of",)),
        C(["host", "account", "add", "acct-g", *acct, "--id-number", "110105194912310021", "--real-name-of", "X"],
          2, ("--id-number",)),
        C(["host", "account", "add", "acct-g", *acct, "--id-number", "11010519490231002X", "--real-name-of", "X"],
          2, ("--id-number",)),
        C(["host", "account", "add", "acct-g", *acct, "--id-number", "1101051949123100", "--real-name-of", "X"],
          2, ("--id-number",)),
        C(["host", "account", "add", "acct-g", *acct, "--real-name", "--not-verified", "--id-number", good_id,
           "--real-name-of", "X"], 2, ("--not-verified",)),
        C(["host", "account", "add", "acct-g", *acct, "--id-number", good_id, "--real-name-of", "x" * 65],
          2, ("--real-name-of",)),
        C(["host", "account", "add", "acct-g", *acct, "--set-password"], 2, ("payment password",), secret="123456",
          stdin="123456\n123456\n"),
        C(["host", "account", "add", "acct-g", *acct, "--set-password"], 2, ("payment password",), secret="888888",
          stdin="888888\n888888\n"),
        C(["host", "account", "add", "acct-g", *acct, "--id-number", good_id, "--real-name-of", "X",
           "--set-password"], 2, ("payment password",), secret="491231", stdin="491231\n491231\n"),
        C(["host", "account", "verify", "ORDER-1", "--id-number", "12345", "--real-name-of", "X"], 2,
          ("--id-number",)),
        C(["host", "account", "verify", "ORDER-1", "--real-name-of", "X"], 2, ("--id-number",)),
        C(["host", "account", "verify", "ORDER-1", "--id-number", good_id], 2, ("--real-name-of",)),
        C(["host", "account", "set-security", "ORDER-1", "--over-limit", "maybe"], 2, ("--over-limit",)),
        C(["host", "account", "set-security", "ORDER-1", "--remind-at", "101"], 2, ("--remind-at",)),
        C(["host", "account", "set-security", "ORDER-1", "--remind-at", "-5"], 2, ("--remind-at",)),
        C(["host", "account", "set-security", "ORDER-1", "--remind-at", "80%"], 2, ("--remind-at",)),
        C(["host", "decisions", "--action", "maybe"], 2, ("--action",)),
        C(["host", "decisions", "--since", "yesterday"], 2, ("--since",)),
        C(["host", "decisions", "--since", "2026-02-30"], 2, ("--since",)),
        C(["host", "decisions", "--tz", "Mars/Olympus"], 2, ("--tz",)),
        C(["host", "decisions", "--limit", "0"], 2, ("--limit",)),
        C(["host", "decisions", "--account", "bad id!"], 2, ("--account",)),
        C(["host", "settlements", "--terminal", "bad id!"], 2, ("--terminal",)),
        C(["host", "settlements", "--tz", "UTC+8"], 2, ("--tz",)),
        C(["host", "terminal", "add", "T1"], 2, ("--merchant",)),
        C(["host", "terminal", "add", "T1", "--merchant", "M1", "--location", "a b"], 2, ("--location",)),
        C(["host", "terminal", "list", "--merchant", "../x"], 2, ("--merchant",)),
        C(["host", "merchant", "add", "M1"], 2, ("--name",)),
        C(["host", "merchant", "add", "M 1", "--name", "X"], 2, ("MERCHANT_ID",)),
        C(["host", "bill", "ORDER-1", "--month", "2026-12", "--tz", "Mars/Olympus"], 2, ("--tz",)),
        C(["host", "audit", "--bogus"], 2, ("--bogus",)),
    ]
    failures = run_cases(cases, tmp_path, monkeypatch)
    assert not failures, "\n".join(failures)


def test_the_sweep_reaches_every_command():
    """A command with nothing swept would pass vacuously: each has cases, or is known to take none."""
    takes_nothing = {("ports",), ("demo",)}
    for path, cmd in LEAVES:
        n = len(sweep.cases_for(path, cmd, sweep.Files(__import__("pathlib").Path("/nonexistent"))))
        assert n or path in takes_nothing, f"posterm {' '.join(path)}: no parameter swept"
    assert len(LEAVES) > 30


@pytest.mark.parametrize("path", sweep.all_commands(), ids=lambda p: " ".join(p) or "posterm")
def test_help_works_everywhere(path):
    r = _runner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.stdout and r.exception is None


def test_selftest_is_not_listed_anymore():
    from posterm.cli import COMMANDS

    assert "selftest" not in COMMANDS
    for name, spec in COMMANDS.items():
        module, _, attr = spec.partition(":")
        assert hasattr(__import__(module, fromlist=[attr]), attr), f"{name}: {spec} does not exist"


# ------------------------------------------------------------------ the real entry point

def _posterm(*args, env=None, stdin=""):
    e = {**os.environ, "POSTERM_HOME": env.pop("home"), **env} if env else os.environ
    return subprocess.run([sys.executable, "-c", "from posterm.cli import main; main()", *args], input=stdin,
                          capture_output=True, text=True, env=e, timeout=120)


@pytest.mark.parametrize("args,code", [
    (["pay", "--port", "/nonexistent/tty", "--amount", "1e20"], 2),
    (["pay", "--port", "/nonexistent/tty", "--amount", "1", "--timeout", "nan"], 2),
    (["emulate", "--terminal-id", "bad id"], 2),
    (["emulate", "--count", "2", "--processes", "3"], 2),
    (["emulate", "--count", "4097"], 2),
    (["emulate", "--count", "2", "--fleet-parent", "1"], 2),
    (["host", "trades", "--date", "yesterday"], 2),
    (["pay", "--port", "/nonexistent/tty", "--amount", "1"], 4),
    (["emulate", "--panel", "0.0.0.0:8400"], 2),            # the control panel: loopback only
    (["panel", "--fleet", "http://127.0.0.1:1", "--listen", "192.168.1.5:8400"], 2),
])
def test_real_entry_point_prints_one_line(args, code, tmp_path):
    p = _posterm(*args, env={"home": str(tmp_path)})
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("posterm: error: ")


_BOOM = """
import sys, click
from posterm.cli import main
@click.command()
def boom():
    raise RuntimeError("kaboom")
main.add_command(boom)
main()
"""


@pytest.mark.parametrize("debug", ["env", "flag", None])
def test_an_unexpected_exception_is_one_line_unless_debugging(debug, tmp_path):
    env = {**os.environ, "POSTERM_HOME": str(tmp_path)}
    env.pop("POSTERM_DEBUG", None)
    args = ["boom"]
    if debug == "env":
        env["POSTERM_DEBUG"] = "1"
    elif debug == "flag":
        args = ["--debug", "boom"]
    p = subprocess.run([sys.executable, "-c", _BOOM, *args], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 3
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("posterm: error: internal error") and "kaboom" in last
    if debug:
        assert "Traceback" in p.stderr and "RuntimeError" in p.stderr
    else:
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ the security centre (issue 17)

@pytest.mark.parametrize("argv,stdin,names", [
    (["host", "webhook", "set", "ORDER-1", "https://127.0.0.1/x"], "", ("URL",)),
    (["host", "webhook", "set", "ORDER-1", "http://example.com/x"], "", ("URL",)),
    (["host", "webhook", "set", "ORDER-1", "http://10.0.0.1/x"], "", ("URL",)),
    (["host", "account", "set-limits", "ORDER-1", "--daily-limit", "1", "--code", "12345", "--password-stdin"],
     "135790\n", ("--code",)),
    (["host", "account", "set-limits", "ORDER-1", "--daily-limit", "1", "--code", "123456"], "", ("--password-stdin",)),
    (["host", "account", "unfreeze", "ORDER-1", "--code", "123456", "--operator", "sup", "--password-stdin"],
     "x\n", ("--code", "--operator")),
    (["host", "account", "unfreeze", "ORDER-1", "--code", "123456", "--password-stdin"], "12ab56\n", ("password",)),
    (["host", "account", "unfreeze", "ORDER-1", "--operator", "sup", "--password-stdin"], "", ("password",)),
    (["host", "account", "reset-password", "ORDER-1", "--id-number", "12345", "--code", "123456"], "135790\n",
     ("--id-number",)),
    (["host", "account", "reset-password", "ORDER-1", "--id-number", "11010519491231002X", "--code", "123456"],
     "1111\n", ("password", "stdin")),
    (["host", "phone", "send-code", "ORDER-1", "--purpose", "payment"], "", ("--purpose",)),
    (["host", "phone", "approve", "ORDER-1", "0"], "", ("REQUEST_ID",)),
    (["host", "operator", "add", "sup"], "short\n", ("password", "stdin")),
    (["host", "wallet", "confirm", "ORDER-1", "--code", "abcdef"], "", ("--code",)),
    (["host", "account", "set-security", "ORDER-1", "--large-payment", "-1"], "", ("--large-payment",)),
])
def test_security_centre_bad_inputs(argv, stdin, names, tmp_path, monkeypatch):
    case = sweep.Case(argv, 2, names, secret=stdin.strip() if len(stdin.strip()) > 1 else None, stdin=stdin)
    failures = run_cases([case], tmp_path, monkeypatch)
    assert not failures, failures
# ------------------------------------------------------------------ issue 17: terminal passwords, notices


def test_terminal_reset_password_and_supervisor_password_refuse_bad_input(tmp_path, monkeypatch):
    """The passwords come from stdin (or hidden prompts) once the port is open: a pty nobody
    answers on is open enough to reach them."""
    master, slave = os.openpty()
    try:
        port = ["--port", os.ttyname(slave)]
        reset = ["terminal", "reset-password", *port, "--passwords-stdin"]
        cases = [
            sweep.Case(reset, 2, ("--passwords-stdin",), stdin=""),
            sweep.Case(reset, 2, ("--passwords-stdin",), stdin="975310\n"),
            sweep.Case(reset, 2, ("--passwords-stdin",), secret="x!", stdin="x!\n135792\n"),
            sweep.Case(reset, 2, ("--passwords-stdin",), secret="Q" * 33, stdin="975310\n" + "Q" * 33 + "\n"),
            sweep.Case(["terminal", "reset-password", "--port", "/nonexistent/tty"], 4, ("/nonexistent/tty",)),
            sweep.Case(["terminal", "reset-password", *port, "--timeout", "0"], 2, ("--timeout",)),
            sweep.Case(["terminal", "reset-password", "--protocol", "concert", *port], 2, ("concert",)),
            sweep.Case(["emulate", "--supervisor-password-stdin"], 2, ("--supervisor-password-stdin",),
                       secret="7q", stdin="7q\n"),
            sweep.Case(["emulate", "--supervisor-password-stdin"], 2, ("--supervisor-password-stdin",), stdin=""),
        ]
        failures = run_cases(cases, tmp_path, monkeypatch)
    finally:
        os.close(master)
        os.close(slave)
    assert not failures, "\n".join(failures)


def test_host_notice_commands_refuse_bad_input(tmp_path, monkeypatch):
    add = ["host", "notice", "add"]
    cases = [
        sweep.Case([*add, ""], 2, ("TEXT",)),
        sweep.Case([*add, "   "], 2, ("TEXT",)),
        sweep.Case([*add, "x" * 81], 2, ("TEXT",)),
        sweep.Case([*add, "永" * 81], 2, ("TEXT",)),
        sweep.Case([*add, "two\tcolumns"], 2, ("TEXT",)),
        sweep.Case([*add, "Never tell anyone your payment password.", "--until", "yesterday"], 2, ("--until",)),
        sweep.Case([*add, "Never tell anyone your payment password.", "--until", "2000-01-01"], 2, ("--until",)),
        sweep.Case([*add, "Never tell anyone your payment password.", "--until", "2099-02-30"], 2, ("--until",)),
        sweep.Case([*add, "Never tell anyone your payment password.", "--tz", "Mars/Base"], 2, ("--tz",)),
        sweep.Case(["host", "notice", "list", "--tz", "nowhere"], 2, ("--tz",)),
        sweep.Case(["host", "notice", "remove", "abc"], 2, ("ID",)),
        sweep.Case(["host", "notice", "remove", "0"], 2, ("ID",)),
        sweep.Case(["host", "notice", "remove", "99"], 1, ("notice 99",)),
        sweep.Case(["host", "notice", "frobnicate"], 2, ("frobnicate",)),
    ]
    failures = run_cases(cases, tmp_path, monkeypatch)
    assert not failures, "\n".join(failures)


def test_the_control_panel_options(tmp_path, monkeypatch):
    """--panel / posterm panel: loopback only, a real port, a URL or a file holding one."""
    missing = str(tmp_path / "no-such-dir" / "url")
    cases = [
        sweep.Case(["emulate", "--panel", "0.0.0.0:8400"], 2, ("--panel", "loopback")),
        sweep.Case(["emulate", "--panel", "192.168.1.10:8400"], 2, ("--panel",)),
        sweep.Case(["emulate", "--panel", "127.0.0.1:99999"], 2, ("--panel",)),
        sweep.Case(["emulate", "--panel", "127.0.0.1:http"], 2, ("--panel",)),
        sweep.Case(["emulate", "--panel", "127.0.0.1"], 2, ("--panel",)),
        sweep.Case(["emulate", "--panel-file", str(tmp_path / "url")], 2, ("--panel",)),
        sweep.Case(["emulate", "--panel", "127.0.0.1:0", "--panel-file", missing], 2, ("--panel-file",)),
        sweep.Case(["panel", "--fleet", "http://10.1.2.3:8400"], 2, ("--fleet", "loopback")),
        sweep.Case(["panel", "--fleet", str(tmp_path / "nothing-here")], 2, ("--fleet",)),
        sweep.Case(["panel", "--fleet", "http://127.0.0.1:notaport"], 2, ("--fleet",)),
        sweep.Case(["panel", "--fleet", f"http://127.0.0.1:{sweep.unused_port()}"], 4, ("--fleet",)),
        sweep.Case(["panel", "--fleet", "http://127.0.0.1:1", "--listen", "0.0.0.0:0"], 2, ("--listen",)),
    ]
    failures = run_cases(cases, tmp_path, monkeypatch)
    assert not failures, "\n".join(failures)
