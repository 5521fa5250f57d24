"""The flows the golden recordings in fixtures/sessions/ hold, as driver calls.

Regenerate the goldens (after a deliberate wire change) with
``python -m tests.record.flows fixtures/sessions``; review the diff with ``posterm show``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from firmware_protocol.native.messages import Outcome

OPERATOR = "246810"
# The emulator's phone confirmation polls this fast in the goldens (the Alipay default is 5 s).
FIRMWARE = {"poll_interval": 0.2, "poll_attempts": 20}


def pay_approved(term):
    assert term.pay(1234, "CNY", payment_code="289900000000000001").outcome is Outcome.APPROVED


def pay_declined(term):
    r = term.pay(10_000, "CNY", payment_code="289900000000000002")
    assert r.outcome is Outcome.DECLINED, r


def pay_pin(term):
    assert term.pay(50_000, "CNY", payment_code="289900000000000003").outcome is Outcome.APPROVED


def pay_phone(term):
    assert term.pay(2_000, "CNY", payment_code="289900000000000004", timeout=30).outcome is Outcome.APPROVED


def pay_risk(term):
    assert term.pay(3_000, "CNY", payment_code="289900000000000007").outcome is Outcome.DECLINED


def refund(term):
    r = term.pay(8_800, "CNY", payment_code="289900000000000001")
    rf = term.refund(r.order_id, 1_000, "RF" + r.order_id[2:], OPERATOR, currency="CNY")
    assert rf.outcome is Outcome.APPROVED, rf


def cancel_and_query(term):
    r = term.pay(4_200, "CNY", payment_code="289900000000000001")
    assert term.cancel(r.order_id, OPERATOR).outcome is Outcome.CANCELLED
    assert term.query(r.order_id).outcome is Outcome.CANCELLED


def status_and_settle(term):
    term.status()
    term.key_status()
    term.pay(1_500, "CNY", payment_code="289900000000000001")
    assert term.settle(OPERATOR).host_agrees


def concert_day(term):
    """Over Concert (Ingenico Telium): a payment, a refused one, a refund, a void."""
    paid = term.pay(1234, "CNY")
    assert paid.outcome is Outcome.APPROVED, paid
    assert term.pay(500_001, "CNY").outcome is Outcome.DECLINED       # over the per-transaction limit
    assert term.refund(paid.order_id, 234, "RF1", currency="CNY").outcome is Outcome.APPROVED
    other = term.pay(300, "CNY")
    assert term.cancel(other.order_id).outcome is Outcome.CANCELLED


def zvt_day(term):
    """Over ZVT (a pty: serial framing): registration, a payment, a refused one, its
    reversal, another payment and a partial refund of it, the status enquiry, the end of day."""
    term.hello()
    paid = term.pay(1250, "CNY")
    assert paid.outcome is Outcome.APPROVED and paid.code_last4 == "0001", paid
    assert term.pay(500_001, "CNY").outcome is Outcome.DECLINED       # over the per-transaction limit
    assert term.cancel(paid.order_id, OPERATOR).outcome is Outcome.CANCELLED
    other = term.pay(800, "CNY")
    assert other.outcome is Outcome.APPROVED, other
    assert term.refund(other.order_id, 300, "RZ1", OPERATOR).outcome is Outcome.APPROVED
    term.status()
    assert term.settle(OPERATOR).outcome is Outcome.APPROVED


FLOWS = {f.__name__: f for f in (pay_approved, pay_declined, pay_pin, pay_phone, pay_risk, refund,
                                 cancel_and_query, status_and_settle, concert_day, zvt_day)}
PROTOCOL = {"concert_day": "concert", "zvt_day": "zvt"}   # every other flow speaks posterm's protocol
# What a family's driver needs to be opened with (ZVT: the terminal's password, the counter's currency).
OPEN = {"zvt": {"password": OPERATOR, "currency": "CNY"}}


def start_emulator(home: Path, protocol: str = "posterm"):
    from posterm.emulator.firmware import FirmwareConfig
    from posterm.emulator.runner import EmulatedTerminal

    return EmulatedTerminal.start(home=home, config=FirmwareConfig(**FIRMWARE), protocol=protocol)


def record(name: str, out: Path, home: Path) -> Path:
    """Run flow ``name`` against a fresh emulator, recording the ECR side to ``out/name.jsonl``."""
    from posterm.families.native.ecr import Terminal

    path = out / f"{name}.jsonl"
    protocol = PROTOCOL.get(name, "posterm")
    with start_emulator(home, protocol) as emu:
        with Terminal.open(emu.port, journal=str(home / "driver.db"), record=str(path), protocol=protocol,
                           **OPEN.get(protocol, {})) as term:
            FLOWS[name](term)
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures/sessions")
    target.mkdir(parents=True, exist_ok=True)
    for flow in (sys.argv[2:] or FLOWS):
        with tempfile.TemporaryDirectory() as tmp:
            print(record(flow, target, Path(tmp)))
