"""``python -m posterm.bench replay``: frames per second replayed with ``--fast``.

Both replay directions at once, in one process over an in-process transport pair:
``replay_ecr`` plays a recording's ECR side to a ``ReplayTerminal`` playing its
terminal side, so every message crosses two links (framing, CRC, ACK, TLV decode,
field diff) and nothing else is measured. Frames counted: every frame on the line
(DATA and ACK, both ways). Goal (issue 8): at least 10,000 frames/s.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from posterm.bench import emit


def _recording(path: Path, payments: int) -> Path:
    from firmware_protocol.native import messages as m
    from posterm.record import Recorder
    from posterm.families.native.link import Link

    ecr, term = Link(), Link()
    with Recorder(path, side="ecr") as rec:
        def send(src: Link, dst: Link, who: str, other: str, msg) -> None:
            data = src.send(msg, 0.0)
            rec.data(who, data)
            dst.receive_data(data, 0.0)
            ack = dst.data_to_send()
            rec.data(other, ack)
            src.receive_data(ack, 0.0)
            while dst.next_event() is not None or src.next_event() is not None:
                pass

        send(ecr, term, "ecr", "terminal", m.Hello(protocol_version=1, session=1))
        send(term, ecr, "terminal", "ecr", m.HelloReply(protocol_version=1, capabilities=0, terminal_id="T0000001",
                                                        merchant_id="M100000001", firmware_version="bench"))
        for i in range(payments):
            oid = f"BENCH{i:08d}"
            send(ecr, term, "ecr", "terminal", m.PayRequest(amount_minor=100 + i, currency="CNY", order_id=oid,
                                                            payment_code="289900000000000001"))
            send(term, ecr, "terminal", "ecr", m.Progress(order_id=oid, stage=m.Stage.AUTHORISING, text="Authorising"))
            send(term, ecr, "terminal", "ecr", m.PayResult(order_id=oid, outcome=m.Outcome.APPROVED,
                                                           amount_minor=100 + i, currency="CNY", code_last4="0001"))
    return path


def main(argv: list[str]) -> int:
    from posterm.families.native.record import ReplayTerminal
    from posterm.record import load
    from posterm.record.replay import build_script, replay_ecr
    from posterm.transport import VirtualTransport

    ap = argparse.ArgumentParser(prog="python -m posterm.bench replay")
    ap.add_argument("--payments", type=int, default=1000, help="payments in the synthetic recording")
    ap.add_argument("--no-pty", action="store_true", help="skip the two-process run over a pty")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = _recording(Path(tmp) / "bench.jsonl", args.payments)
        t0 = time.perf_counter()
        script = build_script(load(path))
        load_s = time.perf_counter() - t0
    ecr, term = VirtualTransport.pair()
    player = ReplayTerminal(term, script, fast=True)
    th = threading.Thread(target=player.run, kwargs={"timeout": 600}, daemon=True)
    th.start()
    start = time.perf_counter()
    result = replay_ecr(ecr, script, fast=True)
    elapsed = time.perf_counter() - start
    player.stop.set()
    th.join(5)
    if not result.ok or player.divergences:
        print(f"replay diverged: {result.diffs[:3]} {player.divergences[:3]}")
        return 1
    data_frames = result.frames
    line_frames = data_frames * 2  # every DATA frame is ACKed
    emit("replay", "frames_per_s_fast", round(line_frames / elapsed), "frames/s", data_frames=data_frames,
         line_frames=line_frames, seconds=round(elapsed, 3), goal=10000)
    emit("replay", "messages_per_s_fast", round(data_frames / elapsed), "messages/s")
    emit("replay", "load_frames_per_s", round(line_frames / load_s), "frames/s")
    if not args.no_pty:
        return _two_processes(args.payments)
    return 0


def _two_processes(payments: int) -> int:
    """The commands as a user runs them: ``posterm replay --as terminal --fast`` in one
    process on a pty, ``replay --as ecr --fast`` here (two processes: no shared GIL)."""
    import subprocess
    import sys

    from posterm.record import load
    from posterm.record.replay import build_script, replay_ecr
    from posterm.transport import open_transport

    with tempfile.TemporaryDirectory() as tmp:
        path = _recording(Path(tmp) / "bench.jsonl", payments)
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen([sys.executable, "-m", "posterm", "replay", str(path), "--as", "terminal", "--fast",
                                 "--port-file", str(port_file), "--timeout", "300"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                if port_file.exists():
                    break
                time.sleep(0.05)
            script = build_script(load(path))
            t = open_transport(port_file.read_text().strip())
            try:
                start = time.perf_counter()
                result = replay_ecr(t, script, fast=True)
                elapsed = time.perf_counter() - start
            finally:
                t.close()
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    if not result.ok or proc.returncode != 0:
        print(f"pty replay diverged: {result.diffs[:3]} (terminal side exit {proc.returncode})")
        return 1
    emit("replay", "frames_per_s_fast_two_processes_pty", round(result.frames * 2 / elapsed), "frames/s",
         data_frames=result.frames, seconds=round(elapsed, 3), goal=10000)
    return 0
