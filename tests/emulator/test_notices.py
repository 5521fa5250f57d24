"""Security notices (issue 17): published with `posterm host notice`, given to terminals at
logon, re-fetched when they change, shown on the idle screen and at the foot of every receipt
(native and ZVT), in the wallet's inbox; capped; a host with none answers as before."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from firmware_protocol.host import messages as h
from firmware_protocol.native.tlv import OPTIONAL_TAG_BIT, encode, split_items
from posterm.cli import main
from posterm.emulator.firmware import FirmwareConfig
from posterm.emulator.runner import EmulatedTerminal
from posterm.families.native.ecr import Terminal
from posterm.host import Host, notices

NEVER_TELL = "Never tell anyone your payment password."
STAFF = "Our staff never ask for your password."
CODE = "289900000000000001"


def _cli(*args: str) -> str:
    r = CliRunner().invoke(main, ["host", "notice", *args])
    assert r.exit_code == 0, r.output
    return r.output


def _footer(receipt) -> list[str]:
    lines = list(receipt)
    return lines[lines.index("-" * 32):] if "-" * 32 in lines else []


def test_a_notice_added_with_the_cli_reaches_the_idle_screen_and_the_receipt_and_goes_when_removed(
        posterm_terminal, tmp_path):
    emu = posterm_terminal
    with Terminal.open(emu.port, journal=str(tmp_path / "drv.db")) as term:
        before = term.pay(100, "CNY", payment_code=CODE, timeout=30)
        assert before.approved and _footer(before.receipt) == []
        assert emu.firmware.display.text == "WELCOME"

        assert "notice 1 published" in _cli("add", NEVER_TELL)
        r = term.pay(200, "CNY", payment_code=CODE, timeout=30)
        assert r.approved
        assert _footer(r.receipt) == ["-" * 32, "SECURITY NOTICE", "Never tell anyone your payment", "password."]
        assert emu.firmware.display.text == "WELCOME\n" + NEVER_TELL
        stored = next(rc for rc in emu.receipts() if rc.order_id == r.order_id)
        assert "Never tell anyone your payment" in stored.lines        # the journal's copy too

        _cli("add", STAFF, "--until", "2099-12-31")
        refund = term.refund(r.order_id, 50, "RF-" + r.order_id, "246810", timeout=30)
        assert refund.approved
        r2 = term.pay(300, "CNY", payment_code=CODE, timeout=30)
        assert "SECURITY NOTICES" in r2.receipt and "Our staff never ask for your" in r2.receipt
        assert emu.firmware.display.text == "\n".join(("WELCOME", NEVER_TELL, STAFF))

        _cli("remove", "1")
        _cli("remove", "2")
        gone = term.pay(400, "CNY", payment_code=CODE, timeout=30)
        assert gone.approved and _footer(gone.receipt) == []
        assert emu.firmware.display.text == "WELCOME"
        settle = term.settle("246810", timeout=30)
        assert not any("SECURITY" in line for line in settle.receipt)
    assert "nothing" in _cli("list")
    assert emu.error is None


def test_a_terminal_that_starts_after_the_notice_shows_it_at_once(tmp_path):
    home = tmp_path / "home"
    with Host.open(home / "host.db") as host:
        notices.add(host.ctx, NEVER_TELL)
    with EmulatedTerminal.start(home=home, config=FirmwareConfig(poll_interval=0.2)) as emu:
        # logged on at start (the runner's first host call): the idle screen has it
        assert _wait_for(lambda: emu.firmware.display.text != "WELCOME")
        assert emu.firmware.display.text == "WELCOME\n" + NEVER_TELL
        assert emu.hostlink.notices == (NEVER_TELL,) and emu.hostlink.notices_version


def _wait_for(pred, timeout: float = 30.0) -> bool:
    import threading
    import time

    deadline, tick = time.monotonic() + timeout, threading.Event()
    while not pred():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.05)
    return True


def test_zvt_receipts_carry_the_notices_too(tmp_path):
    from posterm.families.zvt.ecr import ZvtTerminal

    home = tmp_path / "home"
    with EmulatedTerminal.start(home=home, protocol="zvt", config=FirmwareConfig(poll_interval=0.2)) as emu:
        notices.add(emu.host.ctx, STAFF)
        with ZvtTerminal.open(emu.port, journal=str(tmp_path / "ecr.db"), password="246810") as term:
            term.hello()
            r = term.pay(1250, "EUR", timeout=60)
        assert r.approved
        (printed,) = [rc.lines for rc in emu.receipts()]         # the terminal's copy
        assert _footer(printed) == ["-" * 32, "SECURITY NOTICE", "Our staff never ask for your", "password."]
        assert _footer(r.receipt) == _footer(printed)            # the register's, over ZVT print lines


# ------------------------------------------------------------------ the host alone


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def host(tmp_path):
    clock = Clock()
    with Host.open(tmp_path / "host.db", clock=clock) as h_:
        h_.test_clock = clock
        yield h_


def test_current_inbox_caps_and_expiry(host):
    clock = host.test_clock
    view = host.store.view()
    assert notices.current(view, clock()) == [] and notices.version([]) is None
    a = notices.add(host.ctx, NEVER_TELL)
    b = notices.add(host.ctx, STAFF, until=clock() + 3600)
    assert [n.text for n in notices.current(view, clock())] == [NEVER_TELL, STAFF]
    v = notices.version(notices.current(view, clock()))
    assert v and v != notices.version([a])
    inbox = notices.inbox_entries(view, clock())
    assert [(e["kind"], e["notice_id"], e["text"]) for e in inbox] == [
        ("security_notice", a.id, NEVER_TELL), ("security_notice", b.id, STAFF)]
    assert inbox[0]["created_at_iso"].endswith("+00:00")
    clock.now += 3601                                   # b ends by itself
    assert [n.id for n in notices.current(view, clock())] == [a.id]
    assert notices.version(notices.current(view, clock())) == notices.version([a])
    assert [n.id for n in notices.listing(view)] == [a.id, b.id]   # listed still, not in force
    for i in range(notices.MAX_PUBLISHED - 1):
        notices.add(host.ctx, f"notice {i}")
    with pytest.raises(notices.HostRefused):
        notices.add(host.ctx, "one too many")
    assert len(notices.current(view, clock())) == notices.MAX_SHOWN
    with pytest.raises(ValueError):
        notices.add(host.ctx, "x" * (notices.MAX_CHARS + 1))
    with pytest.raises(ValueError):
        notices.add(host.ctx, "two\nlines")
    with pytest.raises(notices.HostRefused):
        notices.remove(host.ctx, 9999)


def test_answers_carry_the_version_only_when_there_are_notices(host):
    view, now = host.store.view(), host.test_clock()
    reply = h.AuthResponse(order_id="A-1", status=h.HostStatus.APPROVED)
    assert notices.stamp(view, reply, now) is reply                 # none: the answer as before
    assert notices.stamp(view, h.LogonResult(accepted=True), now) == h.LogonResult(accepted=True)
    notices.add(host.ctx, NEVER_TELL)
    stamped = notices.stamp(view, reply, now)
    assert stamped.notices_version == notices.version(notices.current(view, now))
    logon = notices.stamp(view, h.LogonResult(accepted=True, session_id="S"), now)
    assert logon.notices == (NEVER_TELL,) and logon.notices_version == stamped.notices_version
    refused = h.LogonResult(accepted=False)
    assert notices.stamp(view, refused, now) is refused
    # Optional tags: a terminal that does not know them skips them (and the MAC covers them as received).
    _, items = split_items(encode(dataclasses.replace(logon, ksn=b"\x00" * 12, mac=b"\x00" * 8)))
    new_tags = {tag for tag, _, _ in items} - {f.tag for f in h.LogonResult.FIELDS if f.name not in (
        "notices", "notices_version")}
    assert new_tags == {h.NOTICES_TAG, h.NOTICES_VERSION_TAG}
    assert all(tag & OPTIONAL_TAG_BIT for tag in new_tags)


def test_notices_over_tcp_the_mac_covers_the_new_items_as_received(tmp_path):
    """`posterm host serve` in front: the terminal verifies each answer's MAC over the bytes it
    received, the notices' items included; the `host notice` command (another Host on the
    same database) changes what the serving host answers next."""
    from posterm.host.server import serve

    host = Host.open(tmp_path / "host.db")
    server = serve(host, "127.0.0.1:0")
    try:
        with EmulatedTerminal.start(listen="tcp://127.0.0.1:0", host=server.address, home=tmp_path) as emu:
            with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
                assert _footer(term.pay(100, "CNY", payment_code=CODE, timeout=30).receipt) == []
                with Host.open(tmp_path / "host.db") as admin:      # as the CLI would
                    notices.add(admin.ctx, NEVER_TELL)
                r = term.pay(101, "CNY", payment_code=CODE, timeout=30)
                assert r.approved and "Never tell anyone your payment" in r.receipt
                assert term.status().host_online
            assert emu.error is None
    finally:
        server.close()
        host.close()
