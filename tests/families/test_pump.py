"""The one drive loop (posterm.families.pump) on a fake clock and a fake port, that it is the
only one, and that the links and fronts have the declared shapes."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

from firmware_protocol.native import frame as fr
from firmware_protocol.native import messages as m
from firmware_protocol.native.tlv import encode
from posterm.errors import LinkFailed, LocalProtocolError
from posterm.families import family
from posterm.families.concert.front import ConcertFront
from posterm.families.concert.link import ConcertLink
from posterm.families.events import MessageReceived, SendFailed
from posterm.families.interfaces import Link as LinkShape
from posterm.families.interfaces import TerminalFront
from posterm.families.native.front import NativeFront
from posterm.families.native.link import Link, LinkConfig
from posterm.families.pump import TIMED_OUT, Pump
from posterm.testing.clock import FakeClock

ROOT = Path(__file__).resolve().parents[2] / "posterm"


class FakePort:
    """``read(timeout)`` hands out what was scripted for the next read, else nothing, and
    moves the fake clock on by the whole timeout (what a quiet port does): no sleeps."""

    def __init__(self, clock: FakeClock, log: list) -> None:
        self.clock = clock
        self.log = log
        self.incoming: deque[bytes] = deque()
        self.waits: list[float] = []

    def read(self, timeout: float) -> bytes:
        self.waits.append(timeout)
        self.log.append(("read", timeout))
        if self.incoming:
            return self.incoming.popleft()
        self.clock.advance(timeout)
        return b""

    def write(self, data: bytes) -> None:
        self.log.append(("write", data))


class FakeLink:
    """A link whose every call is logged; events, output and a deadline are set by the test."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.events: deque = deque()
        self.out = bytearray()
        self.deadline: float | None = None
        self.raise_on_receive: Exception | None = None

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        self.log.append(("receive", data, now))
        if self.raise_on_receive is not None:
            raise self.raise_on_receive

    def tick(self, now: float) -> None:
        self.log.append(("tick", now))

    def next_event(self):
        return self.events.popleft() if self.events else None

    def data_to_send(self) -> bytes:
        out, self.out = bytes(self.out), bytearray()
        return out

    def next_deadline(self) -> float | None:
        return self.deadline

    def send(self, message, now: float | None = None) -> bytes:
        self.log.append(("send", message, now))
        self.out += b"<" + message + b">"
        return self.data_to_send()


@pytest.fixture
def rig():
    clock, log = FakeClock(100.0), []
    port, link = FakePort(clock, log), FakeLink(log)
    pump = Pump(link, port.read, port.write, clock=clock, max_wait=0.05)
    return clock, log, port, link, pump


# -- (a) the pump on a fake link and a fake clock ---------------------------------------------


def test_run_times_out_at_the_deadline_reading_at_most_max_wait_and_never_past_it(rig):
    clock, log, port, link, pump = rig
    assert pump.run(100.12, lambda ev: ev) is TIMED_OUT
    assert clock.now == pytest.approx(100.12)
    assert port.waits == pytest.approx([0.05, 0.05, 0.02])          # the last read ends at the deadline
    assert not TIMED_OUT and repr(TIMED_OUT) == "TIMED_OUT"


def test_a_read_waits_only_until_the_links_next_timer(rig):
    clock, log, port, link, pump = rig
    link.deadline = 100.01
    assert pump.wait_time(clock()) == pytest.approx(0.01)
    assert pump.wait_time(clock(), None, 100.004) == pytest.approx(0.004)   # the caller's own deadline
    link.deadline = 99.0
    assert pump.wait_time(clock()) == 0.0                            # overdue: read without waiting
    link.deadline = None
    assert pump.wait_time(clock()) == 0.05


def test_one_turn_reads_feeds_ticks_writes_the_ack_before_the_event_is_handled_and_stops_on_an_answer(rig):
    clock, log, port, link, pump = rig
    port.incoming.append(b"frame")
    link.out += b"ACK"
    link.events.extend(["progress", "answer", "later"])
    handled = []

    def on_event(ev):
        log.append(("event", ev))
        handled.append(ev)
        return ev if ev == "answer" else None

    assert pump.run(200.0, on_event) == "answer"
    assert log[:5] == [("read", 0.05), ("receive", b"frame", 100.0), ("tick", 100.0), ("write", b"ACK"),
                       ("event", "progress")]
    assert handled == ["progress", "answer"]
    assert link.next_event() == "later"                              # what follows the answer stays queued


def test_step_is_one_turn_for_a_caller_with_its_own_loop(rig):
    clock, log, port, link, pump = rig
    link.deadline = 100.03
    port.incoming.append(b"frame")
    link.out += b"ACK"
    link.events.extend(["a", "b"])
    assert list(pump.step(100.01)) == ["a", "b"]
    assert log[:4] == [("read", pytest.approx(0.01)), ("receive", b"frame", 100.0), ("tick", 100.0), ("write", b"ACK")]
    assert list(pump.step()) == [] and port.waits[-1] == pytest.approx(0.03)   # the link's timer bounds the read


def test_before_read_runs_each_turn_can_send_and_can_end_the_run(rig):
    clock, log, port, link, pump = rig
    turns = []

    def before_read(now):
        turns.append(now)
        if len(turns) == 2:
            pump.send(b"Abort", now)                                  # an abort asked for meanwhile
        return "stopped" if len(turns) == 3 else None

    assert pump.run(200.0, lambda ev: None, before_read=before_read) == "stopped"
    assert turns == pytest.approx([100.0, 100.05, 100.10])
    assert ("send", b"Abort", pytest.approx(100.05)) in log and ("write", b"<Abort>") in log


def test_without_on_event_the_line_moves_and_the_events_stay_queued(rig):
    clock, log, port, link, pump = rig
    port.incoming.append(b"EOT")
    link.out += b"ACK"
    link.events.append("eot seen")
    assert pump.run(100.1) is TIMED_OUT
    assert ("receive", b"EOT", 100.0) in log and ("write", b"ACK") in log
    assert link.next_event() == "eot seen"


def test_feed_without_writing_leaves_the_ack_for_the_callers_one_write(rig):
    clock, log, port, link, pump = rig
    link.out += b"ACK"
    link.events.append("request")
    assert list(pump.feed(b"req", 5.0, write=False)) == ["request"]
    assert ("receive", b"req", 5.0) in log and ("tick", 5.0) in log
    assert not [e for e in log if e[0] == "write"]
    pump.send(b"Answer", 5.0)                                         # the link's send returns what is pending too
    assert [e for e in log if e[0] == "write"] == [("write", b"ACK<Answer>")]
    pump.flush()                                                      # nothing left: nothing written
    assert len([e for e in log if e[0] == "write"]) == 1


def test_feed_writes_before_the_first_event_and_after_the_last(rig):
    clock, log, port, link, pump = rig
    link.out += b"ACK"
    link.events.append("ev")
    it = pump.feed(b"x", 1.0)
    assert log == []                                                  # a generator: nothing until iterated
    assert next(it) == "ev" and log[-1] == ("write", b"ACK")
    link.out += b"late"
    assert list(it) == [] and log[-1] == ("write", b"late")


def test_a_flooded_link_becomes_what_the_caller_says_else_the_error_passes(rig):
    clock, log, port, link, pump = rig
    link.raise_on_receive = LocalProtocolError("4096 events not collected")
    with pytest.raises(LocalProtocolError):
        pump.run(200.0, lambda ev: None)
    flooded = Pump(link, port.read, port.write, clock=clock, flooded=lambda exc: LinkFailed(f"floods: {exc}"))
    with pytest.raises(LinkFailed, match="floods: 4096") as info:
        flooded.run(200.0, lambda ev: None)
    assert isinstance(info.value.__cause__, LocalProtocolError)


def test_read_errors_pass_through(rig):
    clock, log, port, link, _ = rig

    def broken(timeout):
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        Pump(link, broken, port.write, clock=clock).run(200.0, lambda ev: None)


def test_a_real_link_request_answer_and_ack_through_the_pump():
    """posterm's Link over the pump: the request goes out, the terminal's ACK and answer come
    in one read, our ACK of the answer leaves before the answer is handled."""
    clock, log = FakeClock(0.0), []
    port = FakePort(clock, log)
    link = Link(LinkConfig(ack_timeout=0.5))
    pump = Pump(link, port.read, port.write, clock=clock)
    pump.send(m.StatusRequest())
    assert log[-1][0] == "write" and fr.FrameKind(log[-1][1][2]) is fr.FrameKind.DATA
    answer = m.Status(state=m.TerminalState.IDLE, host_online=True)
    port.incoming.append(fr.encode_frame(fr.FrameKind.ACK, 0) + fr.encode_frame(fr.FrameKind.DATA, 0, encode(answer)))
    seen = []

    def on_event(ev):
        seen.append((type(ev).__name__, [e[0] for e in log].count("write")))
        return ev.message if isinstance(ev, MessageReceived) else None

    assert pump.run(10.0, on_event) == answer
    assert seen == [("Delivered", 2), ("MessageReceived", 2)]       # our ACK (write 2) before either event
    assert log[-1] == ("write", fr.encode_frame(fr.FrameKind.ACK, 0))


def test_a_real_link_retransmits_on_time_through_the_pump_and_gives_up():
    clock, log = FakeClock(0.0), []
    port = FakePort(clock, log)
    pump = Pump(Link(LinkConfig(ack_timeout=0.5, max_retries=2)), port.read, port.write, clock=clock)
    pump.send(m.StatusRequest())
    failed = pump.run(10.0, lambda ev: ev if isinstance(ev, SendFailed) else None)
    assert isinstance(failed, SendFailed) and failed.attempts == 3
    assert clock.now == pytest.approx(1.5)                           # 3 ACK timeouts, each fired on time
    assert [e[0] for e in log].count("write") == 3


# -- (b) the loop is written once ---------------------------------------------------------------

# The links themselves (and a front, which is a link wrapping one) may call receive_data.
ALLOWED = {"families/pump.py", "families/native/link.py", "families/concert/link.py", "families/concert/front.py"}


def loops_feeding_a_link(source: str) -> list[int]:
    """Lines where ``.receive_data(`` is called inside a loop of the same function."""
    hits = []

    def visit(node: ast.AST, in_loop: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                visit(child, False)                                   # a function called from a loop is fine
            elif isinstance(child, (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp,
                                    ast.GeneratorExp)):
                visit(child, True)
            else:
                if (in_loop and isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                        and child.func.attr == "receive_data"):
                    hits.append(child.lineno)
                visit(child, in_loop)

    visit(ast.parse(source), False)
    return hits


def test_the_checker_finds_a_hand_written_pump():
    assert loops_feeding_a_link("def f(link, port):\n    while True:\n        link.receive_data(port.read(1), 0)\n") == [3]
    assert loops_feeding_a_link("for x in y:\n    def g(link):\n        link.receive_data(b'', 0)\n") == []
    assert loops_feeding_a_link("[link.receive_data(d) for d in chunks]") == [1]


def test_no_module_outside_the_pump_and_the_links_drives_a_link_in_a_loop():
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        text = path.read_text(encoding="utf-8")
        if "receive_data" in text and (hits := loops_feeding_a_link(text)):
            found[rel] = hits
    assert found == {}, f"a hand-written drive loop (use posterm.families.pump.Pump): {found}"


# -- (c) the declared shapes --------------------------------------------------------------------


def test_both_links_and_both_fronts_have_the_declared_shapes():
    assert isinstance(Link(), LinkShape)
    assert isinstance(ConcertLink("ecr"), LinkShape)
    for front in (NativeFront(), ConcertFront("246810")):
        assert isinstance(front, TerminalFront) and isinstance(front, LinkShape)
    assert not isinstance(Link(), TerminalFront)                     # a bare link has no new_session: not a front
    assert not isinstance(object(), LinkShape)


@pytest.mark.parametrize("name", ["posterm", "concert"])
def test_the_registry_makes_a_front_for_each_family_paced_or_not(name):
    for kw in ({}, {"line_rate": 960.0}):
        front = family(name).make_terminal_link(operator_password="246810", **kw)
        assert isinstance(front, TerminalFront)
    assert family("posterm").make_terminal_link(operator_password="", line_rate=960.0).config.line_rate == 960.0


def test_a_new_native_session_drops_the_answers_meant_for_the_last_one():
    front = NativeFront()
    first = m.Status(state=m.TerminalState.IDLE, host_online=True)
    front.send(first, 0.0)                                            # in flight, never ACKed
    front.send(m.Progress(order_id="OLD", stage=m.Stage.AUTHORISING, text="..."), 0.0)   # queued behind it
    assert not front.idle
    assert [type(x).__name__ for x in front.new_session()] == ["Status", "Progress"]
    assert front.idle and front.next_deadline() is None               # nothing retransmitted to the new ECR
    assert ConcertFront("246810").new_session() == []                 # Concert has no sessions
