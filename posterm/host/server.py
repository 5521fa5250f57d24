"""``posterm host serve``: the host on a loopback TCP port (see :mod:`posterm.host.wire`)."""

from posterm.host.wire import HostServer, ServerLimits, serve

__all__ = ["HostServer", "ServerLimits", "serve"]
