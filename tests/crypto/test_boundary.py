"""The wall between the PIN pad's secure module and the host's HSM, checked three ways.

What each side *holds* is checked on live objects in test_modules.py
(test_terminal_side_never_holds_host_secrets, test_hsm_keeps_no_clear_pin).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_boundary_in_the_source():
    for side, forbidden in (("pinpad", "posterm.crypto.hsm"), ("hsm", "posterm.crypto.pinpad")):
        tree = ast.parse((ROOT / "posterm" / "crypto" / f"{side}.py").read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
                {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert forbidden not in names and not any(n.startswith(forbidden) for n in names)


@pytest.mark.parametrize("side, other", [("pinpad", "hsm"), ("hsm", "pinpad")])
def test_importing_one_side_never_loads_the_other(side, other):
    code = (f"import sys, posterm.crypto.{side}; "
            f"sys.exit(1 if 'posterm.crypto.{other}' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_import_linter_contract():
    """The same wall as a checked contract (import-linter, configured in pyproject.toml)."""
    pytest.importorskip("importlinter")
    r = subprocess.run([sys.executable, "-m", "importlinter.cli", "--config", str(ROOT / "pyproject.toml")],
                       cwd=ROOT, capture_output=True, text=True)
    if "No module named" in r.stderr:
        r = subprocess.run(["lint-imports", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                           capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
