"""Print the sweep's figures: `python -m tests.cli.sweep_report` (exit 1 if anything misbehaves).

Runs the same cases as tests/cli/test_bad_input.py and counts invocations, tracebacks
(an exception escaping the command) and other misbehaviour (wrong exit code, several
lines, no parameter named).
"""

from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

import pytest

from posterm.cli import main
from tests.cli import sweep
from tests.cli.test_bad_input import _runner, check


def run() -> int:
    mp = pytest.MonkeyPatch()
    total, tracebacks, other = 0, [], []
    kinds: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, cmd) in enumerate([*sweep.leaf_commands(), (("<issue examples>",), None)]):
            root = Path(tmp) / str(i)
            (root / "files").mkdir(parents=True)
            files = sweep.Files(root / "files").make()
            cases = sweep.explicit_cases(files) if cmd is None else sweep.cases_for(path, cmd, files)
            mp.setenv("POSTERM_HOME", str(root / "home"))
            for var in ("POSTERM_PORT", "POSTERM_OPERATOR_PASSWORD", "POSTERM_DEBUG"):
                mp.delenv(var, raising=False)
            sweep.sigterm_at_once(mp)
            runner = _runner()
            runner.invoke(main, ["host", "account", "add", "ORDER-1", "--name", "swept"])
            for case in cases:
                total += 1
                result = runner.invoke(main, case.argv, input=case.stdin)
                why = check(case, result)
                if why is None:
                    continue
                kinds[why.split(":")[0].split(",")[0]] += 1
                (tracebacks if why.startswith("traceback") or "last-resort" in why else other).append(
                    f"posterm {case.label}\n    -> {why}")
            mp.undo()
    for line in tracebacks + other:
        print(line)
    print(f"\n{total} bad invocations; {len(tracebacks)} tracebacks (or last-resort guard); "
          f"{len(other)} other misbehaviour; by kind: {dict(kinds)}")
    return 1 if tracebacks or other else 0


if __name__ == "__main__":
    sys.exit(run())
