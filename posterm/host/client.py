"""A terminal's TCP connection to a host server (see :mod:`posterm.host.wire`)."""

from posterm.host.wire import TcpHostClient

__all__ = ["TcpHostClient"]
