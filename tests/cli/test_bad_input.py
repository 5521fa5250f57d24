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
    (["host", "trades", "--date", "yesterday"], 2),
    (["pay", "--port", "/nonexistent/tty", "--amount", "1"], 4),
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
