"""Helpers for the files-at-rest tests: run posterm under a umask, walk what it made."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def posterm(*args: str, env: dict[str, str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posterm", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["POSTERM_HOME"] = str(home)
    env.pop("POSTERM_BACKUP_KEY", None)
    return env


def bad_modes(root: Path, *, include_root: bool = True) -> list[str]:
    """Every file under ``root`` that is not 0600 and every directory that is not 0700."""
    out = []
    paths = [root] if include_root else []
    paths += sorted(root.rglob("*"))
    for p in paths:
        st = os.lstat(p)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            if mode != 0o700:
                out.append(f"{p} dir {mode:o}")
        elif stat.S_ISREG(st.st_mode):
            if mode != 0o600:
                out.append(f"{p} file {mode:o}")
        elif not stat.S_ISLNK(st.st_mode):  # a pty link made by --link would be ours; none here
            out.append(f"{p} unexpected type {st.st_mode:o}")
    return out


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)
