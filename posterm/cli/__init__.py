"""The ``posterm`` command: a thin click layer over the library.

Subcommands live in their own modules and are imported only when used, so
``posterm --help`` stays fast and one broken optional piece cannot take the
whole tool down.  A command is listed only if its module is importable.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from posterm import __version__

# command name -> "module:attribute"; modules are imported lazily.
COMMANDS: dict[str, str] = {
    "demo": "posterm.cli.demo_cmd:demo",
    "emulate": "posterm.cli.emulate_cmd:emulate",
    "ports": "posterm.cli.driver_cmd:ports",
    "doctor": "posterm.cli.driver_cmd:doctor",
    "status": "posterm.cli.driver_cmd:status",
    "pay": "posterm.cli.driver_cmd:pay",
    "query": "posterm.cli.driver_cmd:query",
    "cancel": "posterm.cli.driver_cmd:cancel",
    "refund": "posterm.cli.driver_cmd:refund",
    "settle": "posterm.cli.driver_cmd:settle",
    "recover": "posterm.cli.driver_cmd:recover",
    "keys": "posterm.cli.keys_cmd:keys",
    "crypto": "posterm.cli.crypto_cmd:crypto",
    "host": "posterm.cli.host_cmd:host",
    "selftest": "posterm.cli.selftest_cmd:selftest",
    "tap": "posterm.cli.record_cmd:tap",
    "replay": "posterm.cli.record_cmd:replay",
    "show": "posterm.cli.record_cmd:show",
    "convert": "posterm.cli.record_cmd:convert",
}


def _available(spec: str) -> bool:
    module = spec.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n, spec in COMMANDS.items() if _available(spec))
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        spec = COMMANDS.get(name)
        if spec is None or not _available(spec):
            return None
        module_name, attr = spec.split(":", 1)
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="posterm")
def main() -> None:
    """posterm: drive payment terminals over serial/USB/TCP, emulate terminals and a payment host.

    Quick start: `posterm demo` runs a short trading day against an emulated terminal.
    """
