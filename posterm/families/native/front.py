"""The emulated terminal's native front: posterm's own link, seen from the terminal's side.

The native wire already carries the firmware's vocabulary (posterm messages), so the front
is the :class:`~posterm.families.native.link.Link` itself, plus what a terminal does when an
ECR opens a new session (its Hello): :meth:`NativeFront.new_session`.
"""

from __future__ import annotations

from firmware_protocol.native.tlv import Message

from posterm.families.native.link import Link, LinkConfig

__all__ = ["NativeFront"]


class NativeFront(Link):
    """posterm's link on the terminal's side of the line (a
    :class:`posterm.families.interfaces.TerminalFront`).

    ``operator_password`` is unused: the native wire carries the operator's password in the
    requests. ``line_rate`` (bytes per second, for a paced line) lets the ACK timer allow
    for a frame's time on the wire; ``config`` gives every link setting instead.
    """

    def __init__(self, *, operator_password: str = "", line_rate: float | None = None,
                 config: LinkConfig | None = None) -> None:
        super().__init__(config or LinkConfig(line_rate=line_rate))

    def new_session(self) -> list[Message]:
        """The ECR began a new session (the firmware got its Hello: it reopened the port).

        Its sequence numbers start again (:meth:`Link.start_session`), and the answers still
        queued or waiting for an ACK were meant for the session that ended: nobody would
        take them, and they would hold up this session's answers. Dropped; returned so the
        caller can say how many (the firmware journaled them: a Query finds them).
        """
        self.start_session()
        return self.drop_queued(in_flight=True)
