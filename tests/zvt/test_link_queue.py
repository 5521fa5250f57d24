"""The ZVT link's queues and the register's hold on results: commands the PT has not yet
answered (answered in order, bounded), ``drop_queued`` (the Link shape the other families'
links have), and ``confirm_results`` (the 80 00 00 of a status information leaves only when
the ECR's caller accepts it). Two links joined in memory on a fake clock, no sleeps."""

from __future__ import annotations

import pytest

from firmware_protocol.zvt import (
    Ack, Authorisation, Completion, IntermediateStatus, LogOff, Nack, Registration, StatusEnquiry, StatusInformation,
    decode,
)

from posterm.errors import LocalProtocolError
from posterm.families.events import Delivered, MessageReceived, SendFailed
from posterm.families.interfaces import Link
from posterm.families.zvt import ZvtConfig, ZvtLink

TRANSPORTS = ["serial", "tcp"]
ACK_APDU = bytes.fromhex("800000")


class Pair:
    """An ECR link and a PT link; ``run()`` moves bytes both ways until the line is quiet."""

    def __init__(self, transport: str, *, confirm: bool = False, config: ZvtConfig | None = None) -> None:
        self.ecr = ZvtLink("ecr", transport, config, confirm_results=confirm)
        self.pt = ZvtLink("pt", transport, config)
        self.now = 0.0
        self.events: dict[str, list] = {"ecr": [], "pt": []}

    def send(self, side: str, message) -> None:
        """``side`` sends ``message``; what its link returns goes to the other side at once."""
        link, other = (self.ecr, self.pt) if side == "ecr" else (self.pt, self.ecr)
        out = link.send(message, self.now)
        if out:
            other.receive_data(out, self.now)
        self.run()

    def run(self, rounds: int = 50) -> None:
        self._take()
        for _ in range(rounds):
            a, b = self.ecr.data_to_send(), self.pt.data_to_send()
            if not a and not b:
                break
            if a:
                self.pt.receive_data(a, self.now)
            if b:
                self.ecr.receive_data(b, self.now)
            self._take()
        self._take()

    def _take(self) -> None:
        for side, link in (("ecr", self.ecr), ("pt", self.pt)):
            while (ev := link.next_event()) is not None:
                self.events[side].append(ev)

    def received(self, side: str) -> list:
        return [ev.message for ev in self.events[side] if isinstance(ev, MessageReceived)]

    def delivered(self, side: str) -> list:
        return [ev.message for ev in self.events[side] if isinstance(ev, Delivered)]

    def tick(self, dt: float) -> None:
        self.now += dt
        self.ecr.tick(self.now)
        self.pt.tick(self.now)
        self.run()


def test_the_link_has_the_link_shape_with_drop_queued():
    link = ZvtLink("ecr", "tcp")
    assert isinstance(link, Link) and callable(link.drop_queued)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_commands_in_one_read_are_answered_in_the_order_they_came(transport):
    """An ECR that sends two commands back to back (not ours: ours waits for each answer):
    the PT keeps both and its answers go in order, the first to the first."""
    pair = Pair(transport)
    first, second = Registration("123456", 0xDE, 978), StatusEnquiry(None)
    raw = first.encode() + second.encode()
    if transport == "serial":
        from firmware_protocol.zvt import encode_serial
        raw = encode_serial(first.encode()) + encode_serial(second.encode())
    pair.pt.receive_data(raw, pair.now)
    pair._take()
    assert pair.received("pt") == [first, second]
    out = pair.pt.send(Nack(0x9C), pair.now)               # to the first
    out += pair.pt.send(Nack(0x83), pair.now)              # to the second
    with pytest.raises(LocalProtocolError, match="no command"):
        pair.pt.send(Ack(), pair.now)                      # nothing left to answer
    if transport == "tcp":
        assert out == Nack(0x9C).encode() + Nack(0x83).encode()


def test_unanswered_commands_are_bounded():
    pair = Pair("tcp", config=ZvtConfig(max_queue=4))
    for _ in range(10):
        pair.pt.receive_data(LogOff().encode(), pair.now)
    assert len(pair.pt._unanswered) == 4 and pair.pt.stats["unanswered_dropped"] == 6


def test_an_answer_never_goes_to_a_command_the_ecr_gave_up_for_a_newer_one():
    """The PT's application never answered a command; T3 later the ECR sent the next one.
    The PT's next answer is the newer command's (the ECR cannot tell answers apart)."""
    pair = Pair("tcp")
    pair.pt.receive_data(StatusEnquiry(None).encode(), pair.now)
    pair.now += 6.0                                         # past the ECR's T3 (5 s)
    pair.pt.receive_data(LogOff().encode(), pair.now)
    assert pair.pt.send(Ack(), pair.now) == Ack().encode()
    assert not pair.pt._unanswered and pair.pt.stats["unanswered_dropped"] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_drop_queued_gives_back_what_waits_and_in_flight_the_one_on_the_line(transport):
    pair = Pair(transport)
    reg = Registration("123456", 0xDE, 978)
    assert pair.ecr.send(reg, pair.now)                    # goes on the line (the PT never reads it)
    later = StatusEnquiry(None)
    assert pair.ecr.send(later, pair.now) == b""           # waits for the registration's dialog
    assert pair.ecr.drop_queued() == [later]
    assert pair.ecr.drop_queued() == []
    assert pair.ecr.drop_queued(in_flight=True) == [reg]
    assert pair.ecr.master == "ecr" and pair.ecr.command is None
    pair.ecr.data_to_send()
    # The link is usable afterwards: nothing of the dropped messages is reported failed.
    pair.tick(30.0)
    assert not any(isinstance(ev, SendFailed) for ev in pair.events["ecr"])


def test_drop_queued_picks_with_which():
    pair = Pair("tcp")
    pair.ecr.send(Registration("123456", 0xDE, 978), pair.now)
    keep, drop = StatusEnquiry(None), LogOff()
    pair.ecr.send(keep, pair.now)
    pair.ecr.send(drop, pair.now)
    assert pair.ecr.drop_queued(lambda m: isinstance(m, LogOff)) == [drop]
    assert [m for m, _ in pair.ecr._queue] == [keep]


def _pay_until_status_information(pair: Pair) -> StatusInformation:
    pair.send("ecr", Authorisation.make(amount=1250, currency=978))
    pair.send("pt", Ack())
    pair.send("pt", IntermediateStatus(0x0A))
    si = StatusInformation.make(result_code=0, amount=1250, currency=978, receipt_no=7)
    pair.send("pt", si)
    return si


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_confirm_results_holds_the_acknowledgement_until_accepted(transport):
    pair = Pair(transport, confirm=True)
    si = _pay_until_status_information(pair)
    assert si in pair.received("ecr") and pair.ecr.held == si
    assert si not in pair.delivered("pt")                  # the terminal has no 80 00 00 for it yet
    assert not pair.ecr.idle
    pair.ecr.accept(pair.now)
    pair.run()
    assert si in pair.delivered("pt") and pair.ecr.held is None
    pair.send("pt", Completion())
    assert pair.ecr.master == "ecr"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_result_is_never_acknowledged_and_the_terminal_gives_it_up(transport):
    pair = Pair(transport, confirm=True)
    si = _pay_until_status_information(pair)
    pair.ecr.refuse(pair.now)
    pair.tick(20.0)                                         # past the PT's T3 (serial: times 3)
    assert si not in pair.delivered("pt")
    assert any(isinstance(ev, SendFailed) and ev.message is si for ev in pair.events["pt"])
    assert pair.ecr.stats["results_refused"] == 1


def test_a_held_result_nobody_decides_is_refused_after_t3():
    pair = Pair("tcp", confirm=True)
    si = _pay_until_status_information(pair)
    pair.tick(5.0)
    assert pair.ecr.held is None and pair.ecr.stats["results_refused"] == 1
    pair.ecr.accept(pair.now)                               # too late: nothing is held, nothing sent
    assert pair.ecr.data_to_send() == b""
    assert si not in pair.delivered("pt")


def test_without_confirm_results_the_ecr_acknowledges_at_once():
    pair = Pair("tcp")
    si = _pay_until_status_information(pair)
    assert si in pair.delivered("pt") and pair.ecr.held is None


def test_only_the_status_information_is_held():
    pair = Pair("tcp", confirm=True)
    pair.send("ecr", Authorisation.make(amount=1, currency=978))
    pair.send("pt", Ack())
    status = IntermediateStatus(0x17)
    pair.send("pt", status)
    assert status in pair.delivered("pt") and pair.ecr.held is None
    assert decode(ACK_APDU) == Ack()
