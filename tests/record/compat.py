"""Recorder sessions whose output is pinned byte for byte (tests/record/compat/).

The expected files were written by the recorder as it stood before recording became
family-agnostic (issue 15: the framing, decoding and redaction moved into each family's
record observer). Every feed here is deterministic: a step clock and a step wall clock,
seeded chunking. Regenerate only after a deliberate format change, with
``python -m tests.record.compat tests/record/compat``, and review the diff.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from firmware_protocol.concert import ACK, ENQ, EOT, NAK, AnswerFlag, ConcertAnswer, ConcertRequest, Status, TxnType
from firmware_protocol.native import frame as fr
from firmware_protocol.native import messages as m
from firmware_protocol.native.tlv import encode

CARD = "4761739001010119"
CODE = "289900000000000003"


class StepClock:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, start: float, step: float) -> None:
        self.now, self.step = start, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _recorder(target, **kw):
    from posterm.record import Recorder

    return Recorder(target, clock=StepClock(100.0, 0.0125), wall=StepClock(1_800_000_000.0, 0.25), **kw)


def _data(n: int, seq: int, msg) -> bytes:
    return fr.encode_frame(fr.FrameKind.DATA, seq, encode(msg))


def _ctl(kind: fr.FrameKind, seq: int) -> bytes:
    return fr.encode_frame(kind, seq, b"")


def _chunked(rec, sender: str, data: bytes, rng: random.Random, most: int = 9) -> None:
    i = 0
    while i < len(data):
        n = rng.randint(1, most)
        rec.data(sender, data[i:i + n])
        i += n


def _straddling(rec, sender: str, frames: list[bytes], k: int) -> None:
    """Each chunk ends ``k`` bytes into the next frame: the recorder never sees a frame boundary."""
    rec.data(sender, frames[0][:k])
    for i, f in enumerate(frames):
        rec.data(sender, f[k:] + (frames[i + 1][:k] if i + 1 < len(frames) else b""))


def native_session(directory: Path) -> list[Path]:
    """A terminal-side recording that rotates (two ECR sessions), with every kind of trouble."""
    from posterm.record import recording_path

    rng = random.Random(15)
    hello = _data(0, 0, m.Hello(protocol_version=m.PROTOCOL_VERSION, session=7))
    reply = _data(0, 0, m.HelloReply(protocol_version=m.PROTOCOL_VERSION, capabilities=3, terminal_id="T0000042",
                                     merchant_id="M0000001", firmware_version="emu 1.0"))
    pay = _data(0, 1, m.PayRequest(amount_minor=1234, currency="CNY", order_id="OR1", payment_code=CODE))
    keyload = _data(0, 2, m.KeyLoad(key_block="D0144B1AX00N0000" + "0123456789ABCDEF" * 8, operator_password="246810"))
    settle = _data(0, 3, m.Settle(operator_password="147258"))
    corrupt = bytearray(keyload)
    corrupt[-1] ^= 0xFF                       # bad CRC: the framer resumes one byte in
    mangled = bytearray(pay)
    mangled[6] ^= 0xFF                        # broken length check: garbage to the framer
    undecodable = fr.encode_frame(fr.FrameKind.DATA, 4, b"\xff\xfe\x01\x00\x01\x41")
    rec = _recorder(recording_path(directory, "T0000042"), side="terminal", port={"url": "pty://", "baudrate": 115200},
                    terminal={"terminal_id": "T0000042"})
    rec.data("ecr", hello)
    rec.data("terminal", _ctl(fr.FrameKind.ACK, 0))
    _chunked(rec, "terminal", reply, rng)
    rec.data("ecr", _ctl(fr.FrameKind.ACK, 0))
    rec.data("terminal", reply)               # resent: no second identity
    _chunked(rec, "ecr", pay, rng)
    rec.data("terminal", _ctl(fr.FrameKind.NAK, 1))
    rec.data("ecr", pay)                      # resent after the NAK
    rec.data("ecr", pay)                      # and after a timeout
    rec.event("ecr", "timeout", seq=1)
    _chunked(rec, "ecr", b"\x00\x01" + bytes(corrupt) + bytes(mangled) + undecodable + keyload[:11], rng)
    rec.flush()                               # a stalled partial frame is masked and written
    _chunked(rec, "ecr", keyload[11:] + settle, rng)
    rec.data("ecr", hello)                    # a new ECR session: a new file
    rec.data("ecr", hello + pay[:5])          # the same Hello again: a resend, no new session
    hello2 = _data(0, 0, m.Hello(protocol_version=m.PROTOCOL_VERSION, session=8))
    rec.data("terminal", reply[:9])           # the terminal's partial frame at the rotation
    rec.data("ecr", pay[5:] + hello2 + settle)    # a new ECR session: a new file
    rec.data("terminal", reply[9:])
    # A long run of chunks each ending inside a frame: the held bytes pass MAX_HELD.
    burst = [_data(0, 5 + i % 200, m.PayRequest(amount_minor=i + 1, currency="CNY", order_id=f"B{i}",
                                               payment_code=CODE)) for i in range(320)]
    _straddling(rec, "ecr", burst, 3)
    rec.data("terminal", reply[:12])          # partial at close
    rec.close()
    return list(rec.paths)


def concert_session(directory: Path) -> list[Path]:
    """A Concert tap recording with NAKs, resends, garbage, a bad LRC and a partial answer."""
    from posterm.record import recording_path

    rng = random.Random(16)
    request = ConcertRequest(1234, 156, private="P000000001").encode()
    short_req = ConcertRequest(500, 978, txn_type=TxnType.CREDIT, answer_flag=AnswerFlag.SHORT, private="P2").encode()
    answer = ConcertAnswer(Status.ACCEPTED, 1234, 156, report=f"VISA {CARD}", private="P000000001").encode()
    short = ConcertAnswer(Status.REFUSED, 500, 978, report=None, private="P2").encode()
    bad = bytearray(answer)
    bad[-1] ^= 0xFF
    bad_req = bytearray(request)
    bad_req[-1] ^= 0xFF
    malformed = b"\x02" + b"X" * 20 + b"\x03"
    malformed += bytes([_lrc(malformed[1:])])
    rec = _recorder(recording_path(directory, "T0000043"), side="terminal", protocol="concert",
                    port={"description": "pty"})
    for who, data in (("ecr", bytes([ENQ])), ("terminal", bytes([ACK])), ("ecr", bytes(bad_req)),
                      ("terminal", bytes([NAK])), ("ecr", request), ("terminal", bytes([NAK])), ("ecr", request),
                      ("terminal", bytes([ACK])), ("ecr", bytes([EOT])), ("terminal", bytes([ENQ])),
                      ("ecr", bytes([ACK]))):
        rec.data(who, data)
    _chunked(rec, "terminal", bytes(bad) + answer + bytes([EOT]) + answer[1:] + b"\x10", rng, 11)
    rec.data("ecr", bytes([NAK, ACK]))
    _chunked(rec, "terminal", answer + malformed + bytes([EOT]), rng, 7)
    rec.data("ecr", bytes([ENQ]) + short_req)
    rec.data("terminal", bytes([ACK]) + short + bytes([EOT]))
    rec.data("ecr", b"\x02" + b"Y" * 3000)    # too long for a frame: garbage
    rec.data("ecr", bytes([EOT, ENQ]) + request + bytes([EOT]))
    answers = [ConcertAnswer(Status.ACCEPTED, i + 1, 156, report=f"VISA {CARD}", private=f"P{i}").encode()
               for i in range(220)]
    _straddling(rec, "terminal", answers, 2)
    rec.data("terminal", answer[:40])
    rec.flush()
    rec.data("terminal", answer[40:70])
    rec.close()
    return list(rec.paths)


def _lrc(data: bytes) -> int:
    out = 0
    for b in data:
        out ^= b
    return out


def zvt_session(directory: Path) -> list[Path]:
    """ZVT: a serial tap recording that rotates (two registrations), with a bad CRC, a NAK and
    a resend, garbage, a password with a stuffed DLE, card data; then a TCP one."""
    from firmware_protocol.zvt import (
        Ack, Authorisation, Completion, PrintLine, Registration, StatusInformation, encode_serial,
    )
    from firmware_protocol.zvt import ACK as Z_ACK
    from firmware_protocol.zvt import NAK as Z_NAK
    from posterm.record import recording_path

    rng = random.Random(17)
    register = Registration("101234", 0xDE, 978)
    pay = Authorisation.make(amount=1234, currency=978, pan=CARD, expiry="2512", track2=CARD + "D2512101")
    info = StatusInformation.make(result_code=0, amount=1234, currency=978, pan=CARD, card_name="VISA", receipt_no=7)
    answers = [Ack(), info, PrintLine(0, "CARD ************0119"), Completion()]
    ack = encode_serial(Ack().encode())
    bad = bytearray(encode_serial(pay.encode()))
    bad[-1] ^= 0xFF
    rec = _recorder(recording_path(directory, "T0000044"), side="tap", protocol="zvt", port={"ecr": "pty://"})
    for session in range(2):
        rec.data("ecr", encode_serial(register.encode()))
        rec.data("terminal", bytes([Z_ACK]) + ack + encode_serial(Completion.make(terminal_id="00000044").encode()))
        rec.data("ecr", bytes([Z_ACK]) + ack)
        rec.data("terminal", bytes([Z_ACK]))
    _chunked(rec, "ecr", bytes(bad), rng)
    rec.data("terminal", bytes([Z_NAK]))
    _chunked(rec, "ecr", encode_serial(pay.encode()) * 2, rng)            # after the NAK, then its ACK lost
    rec.data("terminal", bytes([Z_ACK]))
    for a in answers:
        _chunked(rec, "terminal", encode_serial(a.encode()), rng)
        rec.data("ecr", bytes([Z_ACK]) + (ack if not isinstance(a, Ack) else b""))
        rec.data("terminal", bytes([Z_ACK]) if not isinstance(a, Ack) else b"")
    rec.data("ecr", encode_serial(pay.encode())[:7] + b"\x10\x02")        # cut off: garbage
    rec.data("ecr", encode_serial(pay.encode())[2:20])
    rec.close()
    paths = list(rec.paths)
    rec = _recorder(recording_path(directory, "T0000045"), side="ecr", protocol="zvt", port={"url": "tcp://127.0.0.1:20007"})
    _chunked(rec, "ecr", register.encode() + pay.encode(), rng)
    for a in answers:
        _chunked(rec, "terminal", a.encode(), rng)
        rec.data("ecr", Ack().encode() if not isinstance(a, Ack) else b"")
    rec.data("terminal", b"\x06\xd3\xff\x00\x50" + b"\x2a" * 10)         # an APDU above the cap, cut off
    rec.close()
    return paths + list(rec.paths)


SESSIONS = {"native": native_session, "concert": concert_session, "zvt": zvt_session}
GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "sessions"
# Recordings whose `show` timelines and pcapng conversions are pinned too.
VIEWED = ["native-0", "concert-0", "zvt-0", "zvt-2", "golden:pay_approved", "golden:concert_day", "golden:zvt_day"]
SHOW_FLAGS = {"plain": [], "all": ["--acks", "--chunks"]}


def viewed_path(name: str, compat_dir: Path) -> Path:
    return GOLDENS / f"{name[7:]}.jsonl" if name.startswith("golden:") else compat_dir / f"{name}.jsonl"


def show_output(path: Path, flags: list[str]) -> str:
    from click.testing import CliRunner

    from posterm.cli import main as cli

    result = CliRunner().invoke(cli, ["show", *flags, str(path)])
    assert result.exit_code == 0, result.output
    return result.output.replace(str(path), path.name, 1)   # the header line names the file as given


def pcapng_bytes(path: Path) -> bytes:
    import io

    from posterm.record import load
    from posterm.record.pcapng import write_pcapng

    out = io.BytesIO()
    write_pcapng(load(path), out)
    return out.getvalue()


def main(out: str) -> None:
    import tempfile

    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name, make in SESSIONS.items():
        with tempfile.TemporaryDirectory() as tmp:
            for i, path in enumerate(make(Path(tmp))):
                (target / f"{name}-{i}.jsonl").write_bytes(path.read_bytes())
    for name in VIEWED:
        path = viewed_path(name, target)
        stem = name.replace("golden:", "golden-")
        for flag, flags in SHOW_FLAGS.items():
            (target / f"{stem}.show-{flag}.txt").write_text(show_output(path, flags))
        (target / f"{stem}.pcapng").write_bytes(pcapng_bytes(path))


if __name__ == "__main__":
    main(sys.argv[1])
