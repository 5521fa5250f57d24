"""The family registry (posterm.families): built-ins by one line each, plug-ins by entry point,
loaded lazily, bad names and broken plug-ins refused in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from posterm import families
from posterm.errors import ConfigError
from posterm.families import ProtocolFamily, family, names

from .conftest import posterm


def test_builtin_families_by_name_and_the_default(monkeypatch):
    monkeypatch.delenv("POSTERM_PROTOCOL", raising=False)
    assert names()[:3] == ["posterm", "concert", "zvt"]
    assert family().name == "posterm" and family("CONCERT").name == "concert"
    assert family("posterm").driver_class().__name__ == "Terminal"
    assert family("concert").driver_class().__name__ == "ConcertTerminal"
    assert (family("posterm").baudrate, family("concert").baudrate) == (115200, 9600)
    assert not family("concert").ecr_can_query and family("posterm").ecr_can_query
    monkeypatch.setenv("POSTERM_PROTOCOL", "concert")
    assert family().name == "concert"
    # the old constants of posterm.protocols, still there
    assert families.POSTERM is family("posterm") and families.CONCERT is family("concert")
    assert set(families.FAMILIES) == {"posterm", "concert", "zvt"}


def test_each_builtin_is_one_line_pointing_at_its_own_family_py():
    for name, spec in families.BUILTIN.items():
        module, _, attr = spec.partition(":")
        assert attr == "FAMILY" and module.startswith("posterm.families.") and module.endswith(".family")
        assert family(name).name == name


def test_a_built_in_family_needs_no_entry_point_only_its_registry_line():
    from importlib.metadata import entry_points

    assert not {ep.name for ep in entry_points(group=families.ENTRY_POINT_GROUP)} & set(families.BUILTIN)
    assert families.names()[:3] == ["posterm", "concert", "zvt"]


def test_an_unknown_name_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError) as e:
        family("nosuch")
    assert str(e.value) == "no protocol family 'nosuch' (known: posterm, concert, zvt)"
    with pytest.raises(ConfigError) as e:
        family("x" * 5000)
    assert len(str(e.value)) < 120 and "\n" not in str(e.value)


def test_a_family_is_checked_when_built():
    with pytest.raises(ConfigError, match="name"):
        ProtocolFamily("Bad Name", "", "m:C", "m:f")
    with pytest.raises(ConfigError, match="driver must be 'module:attribute'"):
        ProtocolFamily("ok", "", "no colon", "m:f")
    fam = ProtocolFamily("ok", "", "m:C", "m:f")
    with pytest.raises(ConfigError, match="no record observer"):
        fam.make_record_observer()
    with pytest.raises(ConfigError, match="protocol family 'ok': driver m:C cannot be loaded"):
        fam.driver_class()


def test_listing_and_checking_names_import_no_family():
    """`posterm --help` lists the commands: no family module is imported; neither is one
    when only the names are asked for."""
    code = ("import sys\nfrom posterm.cli import main\nfrom posterm.families import BUILTIN, names\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\nnames()\n"
            "print(sorted(m for m in sys.modules for n in BUILTIN if m.startswith(BUILTIN[n].rsplit('.', 1)[0])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"    # what all families share (events...) may be there


# ------------------------------------------------------------------ plug-ins


def test_a_plugin_is_listed_without_being_imported_then_loaded_by_name(registered):
    registered()
    assert names() == ["posterm", "concert", "zvt", "toy"]
    assert "toyfam.family" not in sys.modules
    toy = family("Toy")
    assert isinstance(toy, ProtocolFamily) and toy.name == "toy" and "toyfam.family" in sys.modules
    assert toy.driver_class().__name__ == "ToyTerminal"
    assert toy.make_record_observer().__class__.__name__ == "ToyRecordObserver"


def test_a_plugin_cannot_take_a_builtin_name(registered):
    registered("[posterm.protocols]\nconcert = toyfam.family:FAMILY\nposterm = toyfam.family:FAMILY\n")
    assert names() == ["posterm", "concert", "zvt"]
    assert family("concert").driver_class().__name__ == "ConcertTerminal"


@pytest.mark.parametrize("entry,why", [
    ("broken = nosuchpackage.family:FAMILY", "cannot be loaded (ModuleNotFoundError"),
    ("broken = toyfam.wire:Framer", "is not a posterm.families.ProtocolFamily"),
    ("broken = toyfam.family:FAMILY", "calls itself 'toy'"),
])
def test_a_broken_plugin_is_a_one_line_config_error(registered, entry, why):
    registered(f"[posterm.protocols]\n{entry}\n")
    assert "broken" in names()
    with pytest.raises(ConfigError) as e:
        family("broken")
    assert why in str(e.value) and "\n" not in str(e.value)
    assert [f.name for f in families.known()] == ["posterm", "concert", "zvt"]   # help texts leave it out


def test_the_cli_refuses_a_broken_plugin_in_one_line(toy_env, tmp_path):
    site = tmp_path / "site" / "toyfam-0.1.dist-info" / "entry_points.txt"
    site.write_text("[posterm.protocols]\ntoy = toyfam.family:FAMILY\nbroken = nosuchpackage:FAMILY\n")
    for args in (["pay", "--port", "/nonexistent/tty", "--amount", "1"], ["emulate"],
                 ["tap", "--ecr", "pty://", "--terminal", "/nonexistent/tty", "--record", str(tmp_path / "r.jsonl")]):
        p = posterm(toy_env, *args, "--protocol", "broken")
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert lines[0].startswith("posterm: error: ") and "--protocol" in lines[0] and "cannot be loaded" in lines[0]
    help_text = posterm(toy_env, "pay", "--help")
    assert help_text.returncode == 0 and "toy:" in help_text.stdout   # the broken one left out, the rest listed


def test_every_protocol_option_and_help_knows_the_plugin(toy_env):
    for cmd in (["pay"], ["doctor"], ["emulate"], ["tap"]):
        h = posterm(toy_env, *cmd, "--help")
        assert h.returncode == 0, h.stderr
        flat = " ".join(h.stdout.split())
        assert "[posterm|concert|zvt|toy]" in flat, cmd
        assert "toy: a toy line protocol" in flat, cmd
    flat = " ".join(posterm(toy_env, "pay", "--help").stdout.split())
    assert "posterm 115200, concert 9600, zvt 9600, toy 19200" in flat
    bad = posterm(toy_env, "emulate", "--protocol", "nosuch")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "posterm: error: Invalid value for '--protocol': no protocol family 'nosuch' (known: posterm, concert, zvt, toy)"
        " (see 'python -m posterm emulate --help')"]
