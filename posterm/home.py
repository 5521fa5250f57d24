"""Where posterm keeps its state: ``$POSTERM_HOME``, else the per-user data directory."""

from __future__ import annotations

import os
from pathlib import Path

from posterm.safefs import private_dir


def posterm_home(create: bool = True) -> Path:
    """Return the state directory (journal, host database, recordings).

    ``$POSTERM_HOME`` wins; otherwise ``$XDG_DATA_HOME/posterm`` or
    ``~/.local/share/posterm`` (macOS: ``~/Library/Application Support/posterm``).
    With ``create`` it is made (or tightened to) 0700, the caller's alone. Raises
    :class:`~posterm.safefs.UnsafePath` if it is a symlink (give the real path), not a
    directory, or another user's.
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
        private_dir(path, own=True)
    return path
