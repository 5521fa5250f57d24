"""Where posterm keeps its state: ``$POSTERM_HOME``, else the per-user data directory."""

from __future__ import annotations

import os
from pathlib import Path


def posterm_home(create: bool = True) -> Path:
    """Return the state directory (journal, host database, recordings).

    ``$POSTERM_HOME`` wins; otherwise ``$XDG_DATA_HOME/posterm`` or
    ``~/.local/share/posterm`` (macOS: ``~/Library/Application Support/posterm``).
    """
    env = os.environ.get("POSTERM_HOME")
    if env:
        path = Path(env).expanduser()
    elif os.name == "posix" and os.uname().sysname == "Darwin":
        path = Path.home() / "Library" / "Application Support" / "posterm"
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(base) / "posterm"
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
