"""Protocol families: what the driver and the emulator speak on the line. The one place
a family is named.

=============  ==================================================================
name           family
=============  ==================================================================
``posterm``    posterm's own framed TLV protocol (firmware_protocol/PROTOCOL.md),
               in :mod:`posterm.families.native`
``concert``    Ingenico Concert ("protocole E") of Telium terminals: ENQ/ACK/EOT,
               STX fixed-width ASCII ETX LRC (PROTOCOL.md, Concert section), in
               :mod:`posterm.families.concert`
``NAME``       a family another package registers in the ``posterm.protocols``
               entry-point group (the entry point names a :class:`ProtocolFamily`)
=============  ==================================================================

Each family builds its :class:`ProtocolFamily` in its own ``family.py``; :data:`BUILTIN`
holds one line per family (name -> ``"module:FAMILY"``), loaded only when the family is
asked for, so listing the families imports none of them. A family's parts (ECR driver,
terminal front, record observer, decoder) are named by ``"module:attribute"`` strings in turn and
imported only when used. Adding a family: its folders (``firmware_protocol/<name>/``,
``posterm/families/<name>/``) and one line in :data:`BUILTIN`, or, from another package,
one entry point::

    [project.entry-points."posterm.protocols"]
    toy = "toyfam.family:FAMILY"

Names are lower case; a name is one family (ours first: an entry point cannot replace a
built-in family).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from posterm.errors import ConfigError

ENTRY_POINT_GROUP = "posterm.protocols"
DEFAULT = "posterm"   # the family when none is named (and $POSTERM_PROTOCOL is unset)

# name -> "module:FAMILY" (a ProtocolFamily built by the family's own family.py). One line per family.
BUILTIN: dict[str, str] = {
    "posterm": "posterm.families.native.family:FAMILY",
    "concert": "posterm.families.concert.family:FAMILY",
    "zvt": "posterm.families.zvt.family:FAMILY",
}

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_\-]{0,31}")


@dataclass(frozen=True)
class ProtocolFamily:
    """What the rest of posterm needs to know about one family. The parts are
    ``"module:attribute"`` strings, imported when first used."""

    name: str
    description: str
    driver: str                     # "module:Class" of the ECR side (an EcrDriver with ``open(url, **kw)``)
    terminal_link: str              # "module:callable(operator_password=...) -> TerminalFront" for the emulator
    serial_defaults: dict[str, Any] = field(default_factory=dict)
    # The ECR can ask what became of an order (posterm: Query). Without that, the emulated
    # terminal reverses an order whose outcome the ECR never learnt (FirmwareConfig.void_unfinished).
    ecr_can_query: bool = True
    # "module:attr" of the family's posterm.families.interfaces.FamilyRecording (record, show,
    # convert, tap, replay); None: the family cannot be recorded.
    recording: str | None = None
    # "module:callable() -> RecordObserver" (posterm.families.interfaces): a family that gives only
    # this is recorded, shown, converted and tapped, not replayed; "" if none.
    record_observer: str = ""
    # "module:callable(data: bytes) -> list[dict]" for ``posterm decode``: what the frames in
    # pasted bytes say (see :meth:`decode`); None: the family's frames cannot be decoded.
    decoder: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(f"protocol family name {self.name!r}: 1 to 32 of a-z 0-9 _ -, starting with a letter")
        for part in ("driver", "terminal_link") + tuple(p for p in ("recording", "record_observer", "decoder") if getattr(self, p)):
            spec = getattr(self, part)
            if not isinstance(spec, str) or not re.fullmatch(r"[\w.]+:[\w.]+", spec):
                raise ConfigError(f"protocol family {self.name!r}: {part} must be 'module:attribute', not {spec!r}")

    @property
    def baudrate(self) -> int:
        """The family's default line rate (115200 when its serial defaults do not say)."""
        return int(self.serial_defaults.get("baudrate", 115200))

    def driver_class(self) -> Any:
        return _load(self.driver, self.name, "driver")

    def make_terminal_link(self, **kw: Any) -> Any:
        factory: Callable[..., Any] = _load(self.terminal_link, self.name, "terminal_link")
        return factory(**kw)

    def make_record_observer(self, **kw: Any) -> Any:
        """A new :class:`~posterm.families.interfaces.RecordObserver` for one recording.
        Raises ConfigError when the family offers none."""
        if not self.record_observer:
            raise ConfigError(f"protocol family {self.name!r} cannot be recorded (it has no record observer)")
        factory: Callable[..., Any] = _load(self.record_observer, self.name, "record_observer")
        return factory(**kw)

    def decode(self, data: bytes) -> list[dict[str, Any]]:
        """What the frames in ``data`` say (``posterm decode``): one JSON-able dict per frame,
        control byte or run of garbage found, in order, with secrets masked.

        Each dict has ``offset`` (where it starts in ``data``), ``kind`` (what it is:
        ``"apdu"``, ``"frame"``, ``"ack"``, ``"garbage"``, ...) and ``summary`` (one line
        naming it); ``error`` (one line, no secret in it) when it is malformed or cannot be
        decoded, though what could be read is still given; ``fields``, a list of
        ``{"name", "value"}`` with an optional ``id`` (the field's number on the wire,
        ``"BMP 04"``), ``note`` (a gloss: ``"EUR"``, ``"0xDE"``) and ``items`` (nested fields,
        the same shape); and any other JSON-able keys. Raises ConfigError when the family
        has no decoder or its decoder does not keep to this.
        """
        if not self.decoder:
            raise ConfigError(f"protocol family {self.name!r} has no decoder: posterm decode cannot read its frames")
        fn: Callable[[bytes], Any] = _load(self.decoder, self.name, "decoder")
        out = fn(bytes(data))
        if not isinstance(out, list) or not all(isinstance(e, dict) and "offset" in e and "kind" in e for e in out):
            raise ConfigError(f"protocol family {self.name!r}: decoder {self.decoder} did not return a list of"
                              " frame descriptions (dicts with offset and kind)")
        return out


def _load(spec: str, owner: str = "", part: str = "") -> Any:
    """The object ``spec`` ("module:attr.attr") names. Raises ConfigError, naming the family, if it cannot be imported."""
    module, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for name in attr.split("."):
            obj = getattr(obj, name)
    except (ImportError, AttributeError) as exc:
        where = f"protocol family {owner!r}: {part} " if owner else ""
        raise ConfigError(f"{where}{spec} cannot be loaded ({type(exc).__name__}: {exc})") from exc
    return obj


def _entry_points() -> dict[str, Any]:
    """The group's entry points by (lower-case) name, ours excluded; the first of a name wins."""
    from importlib.metadata import entry_points   # here: importing the registry stays cheap

    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = ep.name.lower()
        if key not in BUILTIN and key not in found:
            found[key] = ep
    return found


def names() -> list[str]:
    """Every family available: ours, then the entry points' (none of them is imported)."""
    return list(BUILTIN) + sorted(_entry_points())


@functools.cache
def _builtin(name: str) -> ProtocolFamily:
    return _checked(_load(BUILTIN[name], name, "family"), name, BUILTIN[name])


def _checked(fam: Any, name: str, where: str) -> ProtocolFamily:
    if not isinstance(fam, ProtocolFamily):
        raise ConfigError(f"protocol family {name!r}: {where} is not a posterm.families.ProtocolFamily")
    if fam.name != name:
        raise ConfigError(f"protocol family {name!r}: {where} calls itself {fam.name!r}")
    return fam


def shown(name: Any) -> str:
    """``name`` as an error message may quote it (at most 40 characters)."""
    text = repr(name)
    return text if len(text) <= 40 else text[:37] + "...'"


def family(name: str | None = None) -> ProtocolFamily:
    """The family called ``name`` (default ``$POSTERM_PROTOCOL``, then ``posterm``).

    Raises ConfigError, one line: an unknown name (the message lists the known ones), or an
    entry point that cannot be loaded or is not a :class:`ProtocolFamily` of that name.
    """
    name = name or os.environ.get("POSTERM_PROTOCOL") or DEFAULT
    key = name.lower() if isinstance(name, str) else name
    if key in BUILTIN:
        return _builtin(key)
    ep = _entry_points().get(key) if isinstance(key, str) else None
    if ep is None:
        raise ConfigError(f"no protocol family {shown(name)} (known: {', '.join(names())})")
    try:
        fam = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is a configuration error, one line
        raise ConfigError(f"protocol family {key!r}: entry point {ep.value} in {ENTRY_POINT_GROUP} cannot be"
                          f" loaded ({type(exc).__name__}: {exc})") from exc
    return _checked(fam, key, f"entry point {ep.value}")


def known() -> list[ProtocolFamily]:
    """Every family that loads (for help texts and listings); one that does not is left out."""
    out = []
    for n in names():
        try:
            out.append(family(n))
        except ConfigError:
            continue
    return out


def __getattr__(attr: str) -> Any:
    # Kept for callers of the old posterm.protocols module: the built-in families by their
    # old constant names, loaded on first use rather than at import.
    if attr == "POSTERM":
        return family("posterm")
    if attr == "CONCERT":
        return family("concert")
    if attr == "FAMILIES":
        return {n: family(n) for n in BUILTIN}
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
