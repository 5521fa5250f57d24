"""posterm.record names no protocol family: each family's recording is its own
(posterm/families/<name>/record.py), reached through the registry."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import posterm.record
from posterm.errors import ConfigError
from posterm.families import FAMILIES, ProtocolFamily
from posterm.families.interfaces import FamilyRecording, RecordObserver
from posterm.record import RecordingError, load, recording_support

RECORD = Path(posterm.record.__file__).resolve().parent
# Every family's name, and the words its package and wire contract go by.
NAMES = sorted({*FAMILIES, "native", "concert"} - {"posterm"})   # "posterm" is the format's own name too
WORD = re.compile("|".join(NAMES), re.IGNORECASE)
REGISTRY = {"FAMILIES", "BUILTIN", "ProtocolFamily", "family", "names", "DEFAULT"}
SHARED = {"interfaces", "events", "pump"}


def _modules() -> list[Path]:
    found = sorted(RECORD.glob("*.py"))
    assert {p.name for p in found} >= {"__init__.py", "format.py", "replay.py", "pcapng.py", "tap.py"}
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_module_of_posterm_record_imports_a_family(path):
    """Of posterm.families, only the registry and what every family shares (interfaces, events, pump)."""
    tree = ast.parse(path.read_text(), str(path))
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    for line, target in imported:
        parts = target.split(".")
        assert not set(parts) & set(NAMES), f"{path.name}:{line} imports {target}"
        if parts[:2] == ["posterm", "families"] and len(parts) > 2:
            assert parts[2] in REGISTRY | SHARED, f"{path.name}:{line} imports {target}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_module_of_posterm_record_names_a_family(path):
    """Not in code, strings, comments or docstrings: nothing there is about one family."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        assert not WORD.search(line), f"{path.name}:{n}: {line.strip()}"


def test_every_registered_family_gives_a_complete_recording():
    for name, fam in FAMILIES.items():
        assert isinstance(fam, ProtocolFamily)
        assert fam.recording, f"built-in family {name!r} declares no recording"
        support = recording_support(name)
        assert isinstance(support, FamilyRecording)
        assert isinstance(support.observer(), RecordObserver)
        assert 147 <= support.pcap.linktype <= 162   # DLT_USER0..15
    linktypes = [recording_support(name).pcap.linktype for name in FAMILIES]
    assert len(set(linktypes)) == len(linktypes)     # a capture says which family it holds


def _register(monkeypatch, fam: ProtocolFamily) -> None:
    """``fam`` known to posterm.record (as the registry would list and return it)."""
    import posterm.record.format as f

    known, lookup = f.names, f.family
    monkeypatch.setattr(f, "names", lambda: [*known(), fam.name])
    monkeypatch.setattr(f, "family", lambda name=None: fam if name == fam.name else lookup(name))


def _header(path: Path, protocol: str) -> Path:
    path.write_text(json.dumps({"type": "header", "format": "posterm-recording", "format_version": 1,
                                "protocol": protocol}) + "\n")
    return path


def test_a_family_without_recording_support_is_one_clear_error(tmp_path, monkeypatch):
    from dataclasses import replace

    from posterm.record import Recorder

    _register(monkeypatch, replace(_family("posterm"), name="mute", recording=None))
    with pytest.raises(ConfigError, match="protocol 'mute' cannot be recorded or replayed"):
        Recorder(tmp_path / "r.jsonl", protocol="mute")
    with pytest.raises(RecordingError) as exc:
        load(_header(tmp_path / "mute.jsonl", "mute"))
    assert exc.value.line == 1 and "cannot be recorded or replayed" in str(exc.value)


class _Quiet:
    """An observer that sees nothing (a family that only records)."""

    def header(self):
        return {"wire": "quiet"}

    def feed(self, sender, data, offset):
        return []

    def pending(self, sender):
        return 0

    def mask_pending(self, sender, offset):
        return []


def test_a_family_with_only_a_record_observer_records_but_does_not_replay(tmp_path, monkeypatch):
    import types
    from dataclasses import replace

    from posterm.record import Recorder
    from posterm.record.replay import build_script

    module = types.ModuleType("quietfam")
    module.Quiet = _Quiet
    monkeypatch.setitem(__import__("sys").modules, "quietfam", module)
    fam = replace(_family("posterm"), name="quiet", recording=None)
    object.__setattr__(fam, "record_observer", "quietfam:Quiet")   # as a registry with that field holds it
    _register(monkeypatch, fam)
    with Recorder(tmp_path / "q.jsonl", protocol="quiet") as rec:
        rec.data("ecr", b"abc")
    got = load(tmp_path / "q.jsonl")
    assert got.header["protocol"] == "quiet" and got.header["wire"] == "quiet"
    assert [r["hex"] for r in got.records if r["type"] == "chunk"] == ["616263"]
    assert got.support.pcap.name == "posterm-quiet"
    with pytest.raises(ConfigError, match="protocol 'quiet' records but cannot be replayed"):
        build_script(got)


def _family(name: str) -> ProtocolFamily:
    from posterm.families import family

    return family(name)


def test_an_unknown_protocol_names_the_known_families(tmp_path):
    path = _header(tmp_path / "x.jsonl", "nosuch")
    with pytest.raises(RecordingError) as exc:
        load(path)
    # the families registered here first, then any an entry point adds
    assert str(exc.value).startswith(f"{path}: line 1: protocol 'nosuch' is not supported"
                                     f" (known families: {', '.join(FAMILIES)}")
    from click.testing import CliRunner

    from posterm.cli import main

    for args in (["show", str(path)], ["convert", str(path), str(tmp_path / "x.pcapng")],
                 ["replay", str(path), "--as", "terminal"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "known families: posterm" in result.output, result.output
        assert "Traceback" not in result.output
