"""``python -m posterm.bench NAME [options]``: run one benchmark (see posterm.bench)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import posterm.bench as _pkg


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__) if not m.name.startswith("_"))
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m posterm.bench NAME [options]\n\nbenchmarks: " + ", ".join(names))
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; choose from: {', '.join(names)}", file=sys.stderr)
        return 2
    try:
        return importlib.import_module(f"posterm.bench.{name}").main(argv[1:])
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
