"""The ECR's session with a terminal, whatever family it speaks: the port, the journal,
reconnecting, the bounds on waiting, and opening the right family's driver.

    from posterm.ecr.session import open_terminal

    with open_terminal("/dev/ttyACM0", protocol="concert", journal="till.db") as term:
        result = term.pay(1250, "EUR")

:func:`open_terminal` asks the registry (:mod:`posterm.families`) for the family's driver
class and calls its ``open``. Every driver builds on :class:`PortSession` (the port and its
errors, the journal, closing, reopening with back-off) and the helpers below; what goes on
the line is the family's own (``posterm/families/<name>/ecr.py``).
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Callable

from posterm.errors import Disconnected, LocalProtocolError, TransportError
from posterm.ecr.journal import Journal

log = logging.getLogger("posterm.ecr")

DEFAULT_PAY_TIMEOUT = 120.0
DEFAULT_TIMEOUT = 10.0
#: The longest wait any one operation may be given (a day): a bound, not a policy.
MAX_TIMEOUT = 86400.0


def check_timeout(timeout: float) -> None:
    """A timeout is a finite number of seconds in (0, MAX_TIMEOUT]: nan or inf would wait forever.
    Raises LocalProtocolError."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise LocalProtocolError(f"timeout must be a finite number of seconds in (0, {MAX_TIMEOUT:g}], not {timeout!r}")


def line_rate(url: str, settings: dict[str, Any]) -> float | None:
    """Bytes per second of a real serial line at these settings; None where the bytes are not
    clocked out at the baud rate (TCP, socket://, loop://; a pty is a serial path and gets a
    rate, which only lengthens a link's ACK timer)."""
    from posterm.transport import default_baud
    from posterm.transport.base import bits_per_byte

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme and scheme not in ("rfc2217",):
        return None
    baud = settings.get("baudrate") or default_baud()
    return baud / bits_per_byte(settings.get("bytesize", 8), settings.get("parity", "N"), settings.get("stopbits", 1))


def resolve_port(url: str | None) -> str:
    """``url``, else ``$POSTERM_PORT``. Raises LocalProtocolError when there is neither."""
    from posterm.transport import default_port

    url = url or default_port()
    if not url:
        raise LocalProtocolError("no port given and POSTERM_PORT is not set")
    return url


def open_journal(journal: Journal | str | None) -> tuple[Journal, bool]:
    """The journal to use and whether the session owns it (opened it, so closes it): a
    :class:`Journal` is used as it is; a path, or None for the default file, is opened."""
    if journal is None or isinstance(journal, str):
        return Journal(journal), True
    return journal, False


def transport_opener(url: str, settings: dict[str, Any], record: str | None, protocol: str) -> Callable[..., Any]:
    """``open_transport``, or with ``record`` a wrapper of it whose every transport (the first
    and each reconnection) records the ECR's side of the line into that one file, as
    ``protocol`` (:mod:`posterm.record`)."""
    from posterm.transport import open_transport

    if not record:
        return open_transport
    from posterm.record import open_recorded

    return open_recorded(open_transport, record, url, settings, protocol=protocol)


def line_settings(url: str, settings: dict[str, Any], defaults: dict[str, Any],
                  foreign: tuple[str, ...] = ("reconnect", "trace", "link_config")) -> dict[str, Any]:
    """The serial settings a family's driver opens ``url`` with: ``settings`` without the
    options only other drivers take (``foreign``) and those left ``None``, over the family's
    ``defaults`` where the URL is a serial line (none over TCP, virtual or pty)."""
    settings = {k: v for k, v in settings.items() if v is not None and k not in foreign}
    if not url.startswith(("tcp://", "virtual://", "pty://")):
        settings = {**defaults, **settings}
    return settings


def open_terminal(url: str | None = None, protocol: str | None = None, **kw: Any) -> Any:
    """Open ``url`` (a device path or pyserial URL; default ``$POSTERM_PORT``) with the ECR
    driver of ``protocol`` (a family name; default ``$POSTERM_PROTOCOL`` or ``posterm``).

    ``kw`` go to that driver's ``open``: ``journal`` (a Journal, a path, or None for the
    default file) and ``record`` (a recording path) every driver takes; the rest are serial
    settings or the driver's own options. Returns the driver (the :class:`EcrDriver
    <posterm.families.interfaces.EcrDriver>` API, a context manager). Raises ConfigError
    (no such family), LocalProtocolError (no port) or TransportError (the port will not open).
    """
    from posterm.families import family

    fam = family(protocol)
    driver = fam.driver_class()
    opener = driver.open
    # A driver whose open also dispatches on the family (posterm.Terminal.open) is told which
    # one was chosen, so that $POSTERM_PROTOCOL cannot send it elsewhere.
    if "protocol" in inspect.signature(opener).parameters:
        kw["protocol"] = fam.name
    return opener(url, **kw)


class PortSession:
    """What every protocol family's driver shares: the port, the journal, closing, I/O
    errors normalised to :class:`Disconnected`, and reopening a lost port. A context manager.

    A driver calls :meth:`_init_port` from its ``__init__`` and reads and writes only through
    :meth:`_read` and :meth:`_write`.
    """

    READ_SIZE = 4096
    protocol = ""   # the family's name (recordings name it)

    @classmethod
    def _open_session(cls, url: str, settings: dict[str, Any], record: str | None, journal: Journal | str | None,
                      make: Callable[[Any, Journal, Callable[..., Any]], Any]) -> Any:
        """Open the port (recorded with ``record``) and the journal, and build the driver with
        ``make(transport, journal, opener)`` (``opener(url, **settings)`` reopens the port).
        A driver that cannot be built closes the port it was given; the driver owns a journal
        it opened."""
        opener = transport_opener(url, settings, record, cls.protocol)
        transport = opener(url, **settings)
        try:
            journal, own = open_journal(journal)
            term = make(transport, journal, opener)
        except BaseException:
            transport.close()
            raise
        term._owns_journal = own
        return term

    def _init_port(self, transport: Any, port_name: str, journal: Journal | None, *,
                   reopen: Callable[[], Any] | None = None, reconnect_attempts: int = 6,
                   reconnect_max_delay: float = 2.0) -> None:
        self._transport = transport
        self.port_name = port_name or getattr(transport, "description", "") or repr(transport)
        self._journal = journal
        self._owns_journal = False
        self._closed = False
        self._reopen = reopen
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_max_delay = reconnect_max_delay

    def close(self) -> None:
        """Close the port (and the journal if this object opened it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._transport.close()
        finally:
            if self._owns_journal and self._journal is not None:
                self._journal.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def journal(self) -> Journal | None:
        return self._journal

    def _read(self, timeout: float) -> bytes:
        try:
            return self._transport.read(self.READ_SIZE, timeout)
        except TransportError:
            raise
        except OSError as exc:  # a transport that did not normalise its errors
            raise Disconnected(f"{self.port_name}: {exc}") from exc

    def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._transport.write(data)
        except TransportError:
            raise
        except OSError as exc:
            raise Disconnected(f"{self.port_name}: {exc}") from exc

    def _reopen_port(self) -> int:
        """Close the lost port and open it again, with bounded exponential back-off (from 0.1 s,
        doubling up to ``reconnect_max_delay``, at most ``reconnect_attempts`` tries). Returns
        the attempt that succeeded; the family then starts its session again (a new Hello...).
        Raises Disconnected when there is no way to reopen or every attempt failed."""
        if self._reopen is None:
            raise Disconnected(f"{self.port_name}: lost, and no way to reopen it")
        try:
            self._transport.close()
        except Exception:  # noqa: BLE001 - the old port is gone either way
            pass
        delay = 0.1
        last: Exception | None = None
        for attempt in range(1, self._reconnect_attempts + 1):
            # A real pause: the device needs wall time to come back, whatever clock drives the link.
            time.sleep(delay)
            try:
                self._transport = self._reopen()
            except TransportError as exc:
                last = exc
                log.info("reconnect attempt %d to %s failed: %s", attempt, self.port_name, exc)
                delay = min(delay * 2, self._reconnect_max_delay)
                continue
            log.info("reconnected to %s after %d attempt(s)", self.port_name, attempt)
            return attempt
        raise Disconnected(f"{self.port_name}: could not reconnect after {self._reconnect_attempts} attempts") from last
