"""The toy family (tests/plugin/toyfam), installed the way a user installs a plug-in: a
``toyfam-0.1.dist-info`` with an ``entry_points.txt`` in a site directory on the path.
importlib.metadata discovers it there; no pip install, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).parent          # holds the toyfam package
ENTRY_POINTS = "[posterm.protocols]\ntoy = toyfam.family:FAMILY\n"


def make_site(root: Path, entry_points: str = ENTRY_POINTS) -> Path:
    """A directory with toyfam's distribution metadata, registering ``entry_points``."""
    info = root / "toyfam-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfam\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return root


def _forget_toyfam() -> None:
    for name in [n for n in sys.modules if n == "toyfam" or n.startswith("toyfam.")]:
        del sys.modules[name]


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """Register in this process: ``registered(entry_points)`` puts a site with them on sys.path."""
    def register(entry_points: str = ENTRY_POINTS) -> Path:
        site = make_site(tmp_path / f"site{len(list(tmp_path.glob('site*')))}", entry_points)
        monkeypatch.syspath_prepend(str(PLUGIN_DIR))
        monkeypatch.syspath_prepend(str(site))
        return site

    _forget_toyfam()
    yield register
    _forget_toyfam()


@pytest.fixture
def toy_env(tmp_path):
    """The environment of a ``posterm`` subprocess that has the toy family installed."""
    site = make_site(tmp_path / "site")
    path = [str(site), str(PLUGIN_DIR)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "POSTERM_HOME": str(tmp_path / "home")}
    for name in ("POSTERM_PORT", "POSTERM_PROTOCOL", "POSTERM_BAUD"):
        env.pop(name, None)
    return env


def posterm(env: dict, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posterm", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


class Served:
    """A serving ``posterm`` subprocess (emulate, replay --as terminal, tap) and the port it wrote."""

    def __init__(self, env: dict, args: list[str], port_file: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "posterm", *args, "--port-file", str(port_file)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60   # a loaded machine takes seconds to start a Python process
        while not port_file.exists() or not port_file.read_text().endswith("\n"):
            if self.proc.poll() is not None:
                raise AssertionError(f"posterm {' '.join(args)} exited: {self.proc.communicate()[1]}")
            assert time.monotonic() < deadline, "it never wrote its port file"
            time.sleep(0.05)  # poll interval of a bounded wait on a condition
        self.port = port_file.read_text().strip()

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, then its exit code, stdout and stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        return self.proc.returncode, out, err

    def wait(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


@pytest.fixture
def serve(toy_env, tmp_path):
    started: list[Served] = []

    def start(*args: str) -> Served:
        s = Served(toy_env, list(args), tmp_path / f"port{len(started)}")
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.stop()
