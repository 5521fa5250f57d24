"""Each family in one place: outside posterm/families/<name>/ and the registry, no posterm
module imports a family's modules or names a built-in family in code.

Allowed elsewhere: the registry (posterm/families/__init__.py) and the benchmarks (posterm/bench
measures a family's codec and line, and says which). The native family's *messages*
(firmware_protocol.native.messages) are also the emulator firmware's internal vocabulary
(DESIGN.md), so importing those is not naming a family; its framing and links are.
Docstrings and comments may mention a family to explain behaviour.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from posterm.families import BUILTIN

ROOT = Path(__file__).resolve().parents[2] / "posterm"
FAMILY_DIRS = {ROOT / "families" / name for name in ("native", "concert")}
ALLOWED = {ROOT / "families" / "__init__.py"} | set((ROOT / "bench").rglob("*.py"))
VOCABULARY = {"firmware_protocol.native.messages", "firmware_protocol.native.tlv", "firmware_protocol.native"}
# The terminal <-> host protocol is specified as TLV messages in the native link frame
# (PROTOCOL.md, "Host protocol"): the host's TCP ends frame with it.
HOST_FRAMING = {ROOT / "host" / name for name in ("client.py", "server.py", "wire.py")}


def _shared_modules() -> list[Path]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        if path in ALLOWED or any(d in path.parents for d in FAMILY_DIRS):
            continue
        out.append(path)
    return out


def _family_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["posterm", "families"] and len(parts) > 2 and parts[2] in ("native", "concert"):
                found.append((node.lineno, name))
            elif parts[0] == "firmware_protocol" and len(parts) > 1 and parts[1] == "concert":
                found.append((node.lineno, name))
            elif name.startswith("firmware_protocol.native.") and name not in VOCABULARY \
                    and not any(name.startswith(v + ".") for v in VOCABULARY - {"firmware_protocol.native"}):
                found.append((node.lineno, name))
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _family_names_in_code(tree: ast.AST) -> list[tuple[int, str]]:
    docs = _docstrings(tree)
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
            and "concert" in n.value.lower()]


@pytest.mark.parametrize("path", _shared_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_shared_module_names_no_family(path):
    tree = ast.parse(path.read_text(), str(path))
    found = [(line, name) for line, name in _family_imports(tree)
             if not (path in HOST_FRAMING and name.startswith("firmware_protocol.native.frame"))]
    assert found == [], f"{path.relative_to(ROOT)} imports a family's modules"
    assert _family_names_in_code(tree) == [], f"{path.relative_to(ROOT)} names a family in code"


def test_the_checks_catch_what_they_look_for():
    tree = ast.parse("from posterm.families.concert.ecr import X\nimport firmware_protocol.concert\n"
                     "from firmware_protocol.native import frame\nfrom firmware_protocol.native.messages import Hello\n"
                     "x = 'concert'\n")
    assert [n for _, n in _family_imports(tree)] == ["posterm.families.concert.ecr", "posterm.families.concert.ecr.X",
                                                    "firmware_protocol.concert", "firmware_protocol.native.frame"]
    assert _family_names_in_code(tree) == [(5, "concert")]


def test_the_registry_has_one_line_per_built_in_family():
    assert set(BUILTIN) == {"posterm", "concert", "zvt"}
    assert all(spec.startswith(f"posterm.families.{d}.family:") for spec, d in
               zip(BUILTIN.values(), ("native", "concert", "zvt")))
