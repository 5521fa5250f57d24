"""The exception tree of posterm: every error says who is at fault.

``PosError``
  ``LocalProtocolError``  the caller misused the API (our bug or yours, not the peer's)
  ``RemoteProtocolError`` the peer sent something that breaks the contract
  ``TransportError``      the port could not be opened, or went away
    ``PortNotFound``, ``PortBusy``, ``PortPermission``, ``Disconnected``
  ``PosTimeout``          also a ``TimeoutError``: nothing came within the time allowed
  ``LinkFailed``          the link gave up after its retransmission limit
  ``ConfigError``         a bad flag, file or setting
  ``CryptoError``         key misuse, a bad key block, a MAC mismatch
"""

from __future__ import annotations


class PosError(Exception):
    """Root of every error posterm raises on purpose."""


class LocalProtocolError(PosError):
    """The caller did something the protocol does not allow (e.g. send while closed)."""


class SendQueueFull(LocalProtocolError):
    """A link's ``send()`` found its queue full: the caller sends faster than the peer
    takes. Nothing was queued; the caller decides (drop, answer busy, wait)."""


class RemoteProtocolError(PosError):
    """The peer sent bytes or a message that break the wire contract."""


class TransportError(PosError):
    """The port could not be opened, read or written."""


class PortNotFound(TransportError):
    """No device at that path or URL."""


class PortBusy(TransportError):
    """Another process holds the port (exclusive open failed)."""


class PortPermission(TransportError):
    """This user may not open the port."""


class Disconnected(TransportError):
    """The other end went away: cable pulled, pty closed, socket reset."""


class PosTimeout(PosError, TimeoutError):
    """Nothing arrived within the time allowed."""


class LinkFailed(PosError):
    """The link gave up: a frame was not acknowledged after the retransmission limit."""


class ConfigError(PosError, ValueError):
    """A malformed flag, scenario, rule file or setting."""


class CryptoError(PosError):
    """Key misuse, a malformed key block, a failed MAC or KCV check."""
