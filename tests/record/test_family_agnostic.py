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


def _modules() -> list[Path]:
    found = sorted(RECORD.glob("*.py"))
    assert {p.name for p in found} >= {"__init__.py", "format.py", "replay.py", "pcapng.py", "tap.py"}
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_module_of_posterm_record_imports_a_family(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            assert not (set(parts) & set(NAMES)), f"{path.name}:{node.lineno} imports {target}"
            # the registry and the declared interfaces are all posterm.record may know of families
            if target.startswith("posterm.families"):
                assert parts[:3] in (["posterm", "families"], ["posterm", "families", "interfaces"],
                                     ["posterm", "families", "ProtocolFamily"], ["posterm", "families", "family"],
                                     ["posterm", "families", "names"]), f"{path.name}:{node.lineno} imports {target}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_module_of_posterm_record_names_a_family(path):
    """Not in code, strings, comments or docstrings: nothing there is about one family."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        assert not WORD.search(line), f"{path.name}:{n}: {line.strip()}"


def test_every_registered_family_that_records_gives_a_complete_recording():
    for name, fam in FAMILIES.items():
        assert isinstance(fam, ProtocolFamily)
        support = recording_support(name)
        assert isinstance(support, FamilyRecording)
        assert isinstance(support.observer(), RecordObserver)
        assert 147 <= support.pcap.linktype <= 162   # DLT_USER0..15
    linktypes = [recording_support(name).pcap.linktype for name in FAMILIES]
    assert len(set(linktypes)) == len(linktypes)     # a capture says which family it holds


def test_a_family_without_recording_support_is_one_clear_error(tmp_path, monkeypatch):
    from dataclasses import replace

    from posterm.record import Recorder

    monkeypatch.setitem(FAMILIES, "mute", replace(FAMILIES["posterm"], name="mute", recording=None))
    with pytest.raises(ConfigError, match="protocol 'mute' cannot be recorded or replayed"):
        Recorder(tmp_path / "r.jsonl", protocol="mute")
    path = tmp_path / "mute.jsonl"
    path.write_text(json.dumps({"type": "header", "format": "posterm-recording", "format_version": 1,
                                "protocol": "mute"}) + "\n")
    with pytest.raises(RecordingError) as exc:
        load(path)
    assert exc.value.line == 1 and "cannot be recorded or replayed" in str(exc.value)


def test_an_unknown_protocol_names_the_known_families(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"type": "header", "format": "posterm-recording", "format_version": 1,
                                "protocol": "nosuch"}) + "\n")
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
