"""`posterm panel`: the control panel for terminals of running `posterm emulate --panel`
processes (a fleet spread over processes, or a panel on another port); and the `--panel`
option type `posterm emulate` shares."""

from __future__ import annotations

import signal
import sys
import threading

import click

from posterm.cli.common import EXIT_USAGE, fail


class PanelAddress(click.ParamType):
    """``HOST:PORT`` on loopback (PORT 0: a free one); anything else is refused while parsing."""

    name = "address"

    def convert(self, value, param, ctx):
        from posterm.errors import ConfigError
        from posterm.panel.server import parse_listen

        try:
            parse_listen(str(value), f"--{param.name.replace('_', '-')}" if param is not None else "--panel")
        except ConfigError as exc:
            self.fail(str(exc).split(" ", 1)[1] if " " in str(exc) else str(exc), param, ctx)
        return str(value).strip()


def serve_until_stopped(server, stop: threading.Event) -> None:
    """Block until SIGTERM/SIGINT sets ``stop`` (installed by the caller before announcing)."""
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


@click.command()
@click.option("--fleet", "fleet", multiple=True, required=True, metavar="URL_OR_FILE",
              help="A running `posterm emulate --panel` (http://127.0.0.1:PORT), or the file its --panel-file"
                   " wrote; repeat for each process of the fleet (up to 16).")
@click.option("--listen", type=PanelAddress(), default="127.0.0.1:0", show_default=True, metavar="127.0.0.1:PORT",
              help="Where this panel serves (loopback only; PORT 0: a free one). Its URL is the first line of stdout.")
def panel(fleet, listen):
    """Serve one control panel for the terminals of running emulators.

    Each `posterm emulate --panel ADDR` serves its own terminals' page and API; this
    command gathers several of them (the processes of one fleet) into one page and one
    API: states come from each one's event stream, actions are forwarded to it. Runs
    until Ctrl-C or SIGTERM. docs/panel.md has the API.

    \b
    Examples:
      posterm emulate --count 8 --home /tmp/shop-a --panel 127.0.0.1:0 --panel-file /tmp/a &
      posterm emulate --terminal-id T0000009 --home /tmp/shop-b --panel 127.0.0.1:0 --panel-file /tmp/b &
      posterm panel --fleet /tmp/a --fleet /tmp/b --listen 127.0.0.1:8400
    """
    from posterm.errors import ConfigError, PosError
    from posterm.panel.backend import RemoteBackend
    from posterm.panel.server import PanelServer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        backend = RemoteBackend(list(fleet))
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
        return
    except PosError as exc:
        fail(f"--fleet: {exc}", 4)
        return
    try:
        server = PanelServer(backend, listen, option="--listen")
    except ConfigError as exc:
        backend.close()
        fail(str(exc), EXIT_USAGE)
        return
    click.echo(server.url)
    sys.stdout.flush()
    try:
        serve_until_stopped(server, stop)
    finally:
        server.close()
        backend.close()
