"""python -m posterm.bench zvt [--seconds S] [--slices N]: ZVT frames built and parsed per second.

Figures (each a round through the wire contract, firmware_protocol/zvt, checked at start):

* ``authorisation_apdu``: ``Authorisation.make(...)`` + ``encode()``, then ``decode()`` back
  to the typed command (06 01: amount, currency, payment type; 13 bytes);
* ``status_information_apdu``: a payment's status information (04 0F: result code, amount,
  currency, time, date, PAN, receipt, trace, terminal id, expiry, card name, VU number ...;
  the shared capture 1680728165.675509000_pt_ecr) encoded from its typed command and decoded;
* ``serial_framing``: the status information's APDU framed (``encode_serial``: DLE stuffing,
  CRC-16/KERMIT) and taken back through ``SerialFramer.feed`` / ``pop`` (CRC checked);
* ``tcp_framing``: the same APDU through ``TcpFramer.feed`` / ``pop``;
* ``serial_round_trip``: all of it, as a link does it: build the status information, encode,
  frame, feed the serial framer, pop, decode.

Baseline in the same run: posterm's own frame round trip for a typical PayRequest
(``encode_message`` + ``encode_frame``, ``Framer.feed`` / ``pop`` + ``decode_message``, as
``python -m posterm.bench codec`` measures it). ``<figure>_ratio`` is the figure's time per
frame over the baseline's: how much dearer a ZVT frame is than a native one of similar size.

All are measured in alternating slices (``--slices``), so a machine shared with other work
slows them alike; ``best_slice`` is the fastest slice, the figure an idle core would give.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from firmware_protocol import FrameKind, Framer, decode_message, encode_frame, encode_message
from firmware_protocol.native.messages import PayRequest
from firmware_protocol.zvt import Authorisation, SerialFramer, TcpFramer, ZvtFrame, decode, encode_serial
from firmware_protocol.zvt.bmp import Fields
from firmware_protocol.zvt.apdu import StatusInformation

from posterm.bench import emit, interleaved

# The status information of a real payment (fixtures/zvt/1680728165.675509000_pt_ecr), as
# its typed command: built here so the benchmark needs no file.
STATUS_INFORMATION = StatusInformation(Fields(
    result_code=0, amount=2500, currency=978, time="225558", date="0405", pan="559883EEEEEE8074",
    receipt_no=231, aid="750071", trace=975, type_byte=0x60, terminal_id="52523535", expiry="2405",
    zvt_card_type=6, card_type_id=1, card_name="MasterCard", vu_number="804011926"))
CAPTURE = Path(__file__).resolve().parents[2] / "fixtures" / "zvt" / "1680728165.675509000_pt_ecr.blob"
PAY_REQUEST = PayRequest(amount_minor=12345, currency="CNY", order_id="ORD-20261201-000123",
                         payment_code="289900000000000001", description="2x coffee, 1x croissant")


def _authorisation() -> Any:
    return decode(Authorisation.make(amount=1250, currency=978, type_byte=0x40).encode())


def _status_information() -> Any:
    return decode(STATUS_INFORMATION.encode())


_STATUS_APDU = STATUS_INFORMATION.encode()


def _serial_framing() -> Callable[[], Any]:
    framer = SerialFramer()

    def run() -> Any:
        framer.feed(encode_serial(_STATUS_APDU))
        return framer.pop()
    return run


def _tcp_framing() -> Callable[[], Any]:
    framer = TcpFramer()

    def run() -> Any:
        framer.feed(_STATUS_APDU)
        return framer.pop()
    return run


def _serial_round_trip() -> Callable[[], Any]:
    framer = SerialFramer()

    def run() -> Any:
        framer.feed(encode_serial(STATUS_INFORMATION.encode()))
        return decode(framer.pop().apdu)
    return run


def _native_baseline() -> Callable[[], Any]:
    framer = Framer()

    def run() -> Any:
        framer.feed(encode_frame(FrameKind.DATA, 7, encode_message(PAY_REQUEST)))
        return decode_message(framer.pop().payload)
    return run


FIGURES: list[tuple[str, Callable[[], Callable[[], Any]], int]] = [
    ("authorisation_apdu", lambda: _authorisation, len(Authorisation.make(amount=1250, currency=978,
                                                                          type_byte=0x40).encode())),
    ("status_information_apdu", lambda: _status_information, len(_STATUS_APDU)),
    ("serial_framing", _serial_framing, len(encode_serial(_STATUS_APDU))),
    ("tcp_framing", _tcp_framing, len(_STATUS_APDU)),
    ("serial_round_trip", _serial_round_trip, len(encode_serial(_STATUS_APDU))),
]


def check() -> None:
    """Each figure does what it says, so a fast wrong path cannot pass for a fast right one."""
    auth = _authorisation()
    assert isinstance(auth, Authorisation) and (auth.amount, auth.currency, auth.payment_type) == (1250, 978, 0x40)
    assert _status_information() == STATUS_INFORMATION
    if CAPTURE.is_file():   # the built command is the capture's (but for the NUL after the card name)
        assert decode(CAPTURE.read_bytes()) == STATUS_INFORMATION
    for make in (_serial_framing, _tcp_framing):
        frame = make()()
        assert isinstance(frame, ZvtFrame) and frame.apdu == _STATUS_APDU
    assert _serial_round_trip()() == STATUS_INFORMATION
    assert _native_baseline()() == PAY_REQUEST


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m posterm.bench zvt")
    ap.add_argument("--seconds", type=float, default=1.0, help="measuring time per figure (default 1.0)")
    ap.add_argument("--slices", type=int, default=10, help="alternating slices (default 10)")
    args = ap.parse_args(argv)
    check()
    fns = [make() for _, make, _ in FIGURES] + [_native_baseline()]
    results = interleaved(fns, args.seconds, max(1, args.slices), batch=50)
    (base_n, base_spent, base_best) = results[-1]
    base = base_n / base_spent
    baseline_bytes = len(encode_frame(FrameKind.DATA, 7, encode_message(PAY_REQUEST)))
    for (name, _, size), (n, spent, best) in zip(FIGURES, results):
        rate = n / spent
        emit("zvt", name, round(rate), "frames/s", frame_bytes=size, best_slice=round(best))
        emit("zvt", f"{name}_ratio", base / rate, "x", baseline="native_frame_round_trip")
    emit("zvt", "native_frame_round_trip", round(base), "frames/s", frame_bytes=baseline_bytes,
         best_slice=round(base_best), baseline=True)
    return 0
