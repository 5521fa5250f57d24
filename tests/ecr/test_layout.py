"""The shape of the ECR side (issue 15): what every family shares lives in posterm.ecr.*, the
CLI reaches a family only through the registry, and recording never loads a driver."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import posterm
from posterm.ecr import ids, results, session, trace
from posterm.errors import LocalProtocolError

ROOT = Path(posterm.__file__).resolve().parent
FAMILIES = sorted(p.name for p in (ROOT / "families").iterdir() if (p / "__init__.py").is_file())

MOVED = {
    results: ["PaymentResult", "RefundOutcome", "Settlement", "TerminalInfo", "KeyInfo", "OutcomeMismatch",
              "as_reason", "reason_name", "mismatch"],
    ids: ["new_order_id"],
    session: ["PortSession", "open_terminal", "DEFAULT_TIMEOUT", "DEFAULT_PAY_TIMEOUT", "MAX_TIMEOUT",
              "check_timeout", "line_rate"],
    trace: ["hexdump", "mask_code", "MASK_BYTE", "jsonable"],
}

#: CLI files that still import a family module, each with the branch that takes it out. A file
#: listed here that no longer does fails the test: take it off the list.
PENDING_CLI: dict[str, str] = {}


def test_the_families_are_found():
    assert {"native", "concert"} <= set(FAMILIES)


@pytest.mark.parametrize("module", list(MOVED), ids=lambda m: m.__name__)
def test_shared_names_live_in_posterm_ecr(module):
    for name in MOVED[module]:
        value = getattr(module, name)
        if hasattr(value, "__module__") and not isinstance(value, (int, float)):
            # defined there, not re-exported from a family
            assert value.__module__ == module.__name__, (name, value.__module__)


def test_no_family_module_defines_a_shared_name():
    """No copy or shim: a family's ecr.py uses the shared names, never defines its own."""
    shared = {n for names in MOVED.values() for n in names}
    for fam in FAMILIES:
        path = ROOT / "families" / fam / "ecr.py"
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
        defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}
        assert not (defined & shared), (fam, sorted(defined & shared))


def test_posterm_exports_the_api():
    from posterm.families import family

    assert posterm.Terminal is family("posterm").driver_class()
    assert posterm.PaymentResult is results.PaymentResult
    assert posterm.new_order_id is ids.new_order_id
    assert posterm.open_terminal is session.open_terminal
    assert set(posterm.__all__) <= set(dir(posterm))
    with pytest.raises(AttributeError):
        posterm.no_such_name  # noqa: B018


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (top level or inside functions), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _family_imports(path: Path) -> list[str]:
    prefixes = tuple(f"posterm.families.{fam}" for fam in FAMILIES)
    return [f"{path.name}:{line}: {mod}" for line, mod in sorted(_imports(path))
            if mod in prefixes or mod.startswith(tuple(p + "." for p in prefixes))]


def test_the_cli_imports_no_family():
    """The CLI reaches a family through the registry (posterm.families.family) or posterm.Terminal."""
    offenders, still_pending = [], []
    for path in sorted((ROOT / "cli").glob("*.py")):
        found = _family_imports(path)
        if path.name in PENDING_CLI:
            still_pending += [path.name] if found else []
        else:
            offenders += found
    assert offenders == []
    assert sorted(still_pending) == sorted(PENDING_CLI), "take the cleaned files off PENDING_CLI"


def test_no_family_imports_another():
    """What two families share is in posterm.ecr.* (or posterm.families' own modules), never
    taken from the other family: the Concert driver once built on the native one."""
    offenders = []
    for fam in FAMILIES:
        for path in sorted((ROOT / "families" / fam).rglob("*.py")):
            offenders += [f"{fam}/{line}" for line in _family_imports(path)
                          if not line.split(": ", 1)[1].startswith(f"posterm.families.{fam}")]
    assert offenders == []


def test_the_import_scan_sees_a_family_import(tmp_path):
    """The scan above can fail: it finds a lazy import inside a function, in both spellings."""
    src = tmp_path / "bad.py"
    src.write_text("def f():\n    from posterm.families.native.ecr import Terminal\n"
                   "from posterm.families import concert\nimport posterm.families\n", encoding="utf-8")
    assert _family_imports(src) == ["bad.py:2: posterm.families.native.ecr",
                                    "bad.py:2: posterm.families.native.ecr.Terminal",
                                    "bad.py:3: posterm.families.concert"]


def test_record_sources_never_import_a_driver():
    """posterm.record sits below the ECR drivers (a driver records through it): no import of the
    session or a family's ecr module, not even inside a function (that was the cycle)."""
    banned = ("posterm.ecr.session", *(f"posterm.families.{fam}.ecr" for fam in FAMILIES))
    offenders = [f"{path.name}:{line}: {mod}" for path in sorted((ROOT / "record").glob("*.py"))
                 for line, mod in sorted(_imports(path)) if mod in banned or mod.startswith(tuple(b + "." for b in banned))]
    assert offenders == []


def test_no_import_chain_from_record_to_a_driver():
    """The static import graph (what import-linter sees, TYPE_CHECKING imports included): no
    chain, however long, from a record module to the session or a family's ECR driver."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("posterm", "firmware_protocol")
    targets = ["posterm.ecr.session", *(f"posterm.families.{fam}.ecr" for fam in FAMILIES
                                        if (ROOT / "families" / fam / "ecr.py").exists())]
    chains = [chain for src in sorted(graph.find_children("posterm.record") | {"posterm.record"})
              for dst in targets if (chain := graph.find_shortest_chain(importer=src, imported=dst))]
    assert chains == []
    # and the graph does see the drivers' (legitimate) way down to record
    assert graph.find_shortest_chain(importer="posterm.families.native.ecr", imported="posterm.record")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_importing_record_loads_no_driver():
    loaded = _loaded_after("import posterm.record")
    assert "posterm.record" in loaded
    drivers = [m for m in loaded if m == "posterm.ecr.session"
               or any(m == f"posterm.families.{fam}.ecr" for fam in FAMILIES)]
    assert drivers == []


def test_importing_posterm_stays_cheap():
    loaded = _loaded_after("import posterm")
    assert [m for m in loaded if m.startswith(("posterm.", "firmware_protocol"))] == []


# -- open_terminal: the registry picks the driver ---------------------------------------------


@pytest.fixture
def journal(tmp_path):
    return str(tmp_path / "j.db")


def test_open_terminal_opens_the_familys_driver(journal, monkeypatch):
    from posterm.families import family

    monkeypatch.delenv("POSTERM_PROTOCOL", raising=False)
    for name in ("posterm", "concert"):
        with session.open_terminal("loop://", name, journal=journal) as term:
            assert type(term) is family(name).driver_class()
    with session.open_terminal("loop://", journal=journal) as term:
        assert type(term) is posterm.Terminal


def test_an_explicit_family_wins_over_the_environment(journal, monkeypatch):
    """$POSTERM_PROTOCOL is only the default: asking for a family by name gets that family, also
    through posterm.Terminal.open (which dispatches on it too)."""
    from posterm.families import family

    concert = family("concert").driver_class()
    monkeypatch.setenv("POSTERM_PROTOCOL", "concert")
    with session.open_terminal("loop://", "posterm", journal=journal) as term:
        assert type(term) is posterm.Terminal
    with posterm.Terminal.open("loop://", protocol="posterm", journal=journal) as term:
        assert type(term) is posterm.Terminal
    with posterm.Terminal.open("loop://", journal=journal) as term:   # as before: the default
        assert type(term) is concert
    monkeypatch.setenv("POSTERM_PROTOCOL", "posterm")
    with posterm.Terminal.open("loop://", protocol="concert", journal=journal) as term:
        assert type(term) is concert


def test_open_terminal_without_a_port_says_so(monkeypatch):
    monkeypatch.delenv("POSTERM_PORT", raising=False)
    with pytest.raises(LocalProtocolError, match="POSTERM_PORT"):
        session.open_terminal(None, "posterm")


def test_an_unknown_family_is_one_clear_error():
    from posterm.errors import ConfigError

    with pytest.raises(ConfigError, match="no protocol family 'nope'"):
        session.open_terminal("loop://", "nope")


# -- the shared helpers ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), session.MAX_TIMEOUT + 1, True, "5", None])
def test_check_timeout_refuses_what_would_not_end(bad):
    with pytest.raises(LocalProtocolError):
        session.check_timeout(bad)


def test_check_timeout_takes_a_bounded_wait():
    session.check_timeout(0.1)
    session.check_timeout(session.MAX_TIMEOUT)


def test_mismatch_judges_approvals_only():
    pay, ok, no = results.PaymentResult, results.Outcome.APPROVED, results.Outcome.DECLINED
    assert results.mismatch(pay("A", ok, 100, "CNY"), "A", 100, "CNY") is None
    assert results.mismatch(pay("A", no, 999, "EUR"), "A", 100, "CNY") is None
    assert "for 999 EUR" in results.mismatch(pay("A", ok, 999, "EUR"), "A", 100, "CNY")
    assert "approved B in answer to order A" in results.mismatch(pay("B", ok, 100, "CNY"), "A", 100, "CNY")
    refund = results.RefundOutcome("A", "R2", ok, 100, "CNY")
    assert "in answer to refund R1" in results.mismatch(refund, "A", 100, "CNY", refund_id="R1")


def test_reason_helpers_keep_unknown_codes():
    assert results.as_reason(0) is results.Reason.NONE
    assert results.as_reason(60000) == 60000 and not isinstance(results.as_reason(60000), results.Reason)
    assert results.reason_name(results.Reason.NONE) == "none"
    assert results.reason_name(60000) == "code_60000"


def test_trace_helpers():
    assert trace.mask_code("289900000000000001") == "**************0001"
    assert trace.mask_code("12") == "12"
    assert trace.hexdump(bytes(range(18)), width=8).splitlines() == [
        "00 01 02 03 04 05 06 07", "08 09 0A 0B 0C 0D 0E 0F", "10 11"]
    assert trace.jsonable((results.Outcome.APPROVED, b"\x01\xab")) == ["APPROVED", "01AB"]
