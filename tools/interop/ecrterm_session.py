"""Drive ``posterm emulate --protocol zvt`` with python-ecrterm, an ECR nobody here wrote.

Run by hand, not by CI: ecrterm is LGPL-3 and is not part of this repository. Put a copy of
it (github.com/wirelane/ecrterm; the files and commits used are listed in
fixtures/zvt/ecrterm/README.md) on ``PYTHONPATH`` and ``posterm`` on ``PATH`` (or pass
``--posterm``), in a virtualenv that has pyserial and six::

    PYTHONPATH=/tmp/ecrterm-src /tmp/ecrterm-venv/bin/python tools/interop/ecrterm_session.py \\
        --transport both --out fixtures/zvt/ecrterm

For each transport (``tcp``: ``--listen tcp://127.0.0.1:0`` through a byte-relaying proxy;
``serial``: the emulator's pty, opened by ecrterm at 9600 8N2) it starts a fresh emulator and
runs one session with ecrterm's own API: registration, status, payment, reversal of it,
a payment in EUR through ``ECR.payment`` (ecrterm's own call, BMP 49 = 978), a payment,
its reversal, a second payment and a refund of part of it, a payment that needs the PIN, a
decline (above the demo limits), a display text, end of day, log off. Every byte both ways goes to ``<out>/<transport>.jsonl``:

* line 1, the header: ``{"capture": "ecrterm-zvt", "version": 1, "transport": ..., ...}``
* byte records: ``{"dir": "ecr>pt" | "pt>ecr", "hex": "...", "t": seconds}``: a run of
  bytes in one direction (consecutive reads/writes the same way are joined), ``t`` the
  offset of its first byte from the session's start.
* step records: ``{"step": name, "args": {...}}`` before a step's first byte, and
  ``{"result": name, "ecrterm": {...}}`` after it: what ecrterm returned and how ecrterm
  itself parsed each message the terminal sent (its own BMP reading, as strings).

Exit status: 0 every step as expected, 1 a step failed (each failure printed), 2 usage.

ecrterm as stored needs a few adaptations to run at all; they are made here, at run time,
never in ecrterm's files (``_adapt_ecrterm``, each one commented).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CAPTURE_VERSION = 1
STEP_TIMEOUT_S = 60          # ecrterm's own T4 is 180 s; a step of ours never needs a minute
MAX_RECORDS = 20_000         # a session is some hundred records; the cap keeps a runaway bounded

APPROVE = 1234               # 12.34: approved, no PIN (demo: up to 1,000.00)
REFUNDED = 2000              # 20.00 paid, then refunded in part
REFUND_PART = 500
WITH_PIN = 250000            # 2,500.00: approved after the PIN (demo: up to 5,000.00)
DECLINE = 600000             # 6,000.00: above the demo limits, declined
EUR = 978                    # ZVT counters trade in EUR: the demo host has EUR twins of its test accounts


# -- the capture -------------------------------------------------------------------------

class Capture:
    """JSON-lines capture of one session; thread-safe, bounded (``MAX_RECORDS``)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._records: list[dict[str, Any]] = [dict(capture="ecrterm-zvt", version=CAPTURE_VERSION, **header)]
        self._path = path

    def _t(self) -> float:
        return round(time.monotonic() - self._t0, 4)

    def bytes(self, direction: str, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            last = self._records[-1]
            if last.get("dir") == direction:
                last["hex"] += data.hex()
                return
            if len(self._records) >= MAX_RECORDS:
                raise RuntimeError(f"capture over {MAX_RECORDS} records")
            self._records.append({"dir": direction, "hex": data.hex(), "t": self._t()})

    def note(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(record)

    def write(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("w") as f:
            for r in self._records:
                f.write(json.dumps(r, sort_keys=False) + "\n")


# -- ecrterm, adapted at run time ----------------------------------------------------------

_CAPTURE_REF: list = [None]      # the session's Capture: the serial tap and the TCP proxy write to it
_API: dict[str, Any] = {}


def _adapt_ecrterm(capture_ref: list) -> dict[str, Any]:
    """Import ecrterm and make the adaptations it needs, once; return the classes used.

    ``capture_ref[0]`` is the current :class:`Capture` (the serial tap writes to it)."""
    if _API:
        return _API
    import serial

    import ecrterm.common
    import ecrterm.exceptions
    import ecrterm.packets.apdu

    # 1. The stored exceptions.py predates TransportConnectionFailed, which ecr.py and
    #    transport_socket.py import (upstream defines it as a TransportLayerException).
    if not hasattr(ecrterm.exceptions, "TransportConnectionFailed"):
        class TransportConnectionFailed(ecrterm.exceptions.TransportLayerException):
            pass
        ecrterm.exceptions.TransportConnectionFailed = TransportConnectionFailed
    # 2. The stored transport_socket.py imports common.noop (its debug hook), gone from common.py.
    if not hasattr(ecrterm.common, "noop"):
        ecrterm.common.noop = lambda *a, **k: None
    # 3. The newest stored transport_socket.py still speaks the old packet API: it sends
    #    ``apdu.to_list()`` and returns ``APDUPacket.parse(blob)``, where _transmission.py
    #    now hands it bytes and parses the bytes it gets back. Bridge exactly that: bytes
    #    in, bytes out; the socket code itself (framing, lengths) runs as written.
    if not hasattr(ecrterm.packets.apdu, "APDUPacket"):
        class APDUPacket:
            @staticmethod
            def parse(blob: bytes = b"") -> bytes:
                return bytes(blob)
        ecrterm.packets.apdu.APDUPacket = APDUPacket

    from ecrterm.transmission import transport_serial, transport_socket

    class _Listable(bytes):
        def to_list(self) -> list[int]:
            return list(self)

    socket_send = transport_socket.SocketTransport.send
    if not getattr(socket_send, "_adapted", False):
        def send(self, apdu, tries=0, no_wait=False):
            return socket_send(self, _Listable(apdu), tries, no_wait)
        send._adapted = True
        transport_socket.SocketTransport.send = send

    # 4. On a pty the modem-control ioctls fail (ENOTTY/EINVAL): ecrterm sets RTS and DTR
    #    at open (PITFALLS.md). Ignore exactly that failure; the tap below also records
    #    every byte ecrterm writes and reads, so the serial capture is what crossed the line.
    class TapSerial(serial.Serial):
        def _modem(self, setter, level):
            try:
                setter(level)
            except OSError as exc:
                if exc.errno not in (errno.ENOTTY, errno.EINVAL):
                    raise

        def setRTS(self, level=True):  # noqa: N802 - pyserial's name
            self._modem(super().setRTS, level)

        def setDTR(self, level=True):  # noqa: N802
            self._modem(super().setDTR, level)

        def write(self, data):
            capture_ref[0].bytes("ecr>pt", bytes(data))
            return super().write(data)

        def read(self, size=1):
            data = super().read(size)
            capture_ref[0].bytes("pt>ecr", bytes(data))
            return data

    transport_serial.SerialTransport.SerialCls = TapSerial
    # ecrterm sleeps 0.2 s before each command on serial ("better flow"): harmless, kept.

    from ecrterm import ecr as ecr_mod
    from ecrterm.packets import base_packets as bp
    from ecrterm.packets.fields import BCDIntField  # noqa: F401 - used by the classes below
    from ecrterm.packets.types import ConfigByte

    # 5. ecrterm has no Reversal (06 30) or Refund (06 31) class and no method for them:
    #    declared here the way its own packets are (password, then BMPs), sent with
    #    ECR.transmit like any of its packets.
    class Reversal(bp.CommandWithPassword):
        """06 30 Reversal: password, BMP 87 receipt number."""
        CMD_INSTR = 0x30
        wait_for_completion = True
        ALLOWED_BITMAPS = ["receipt", "amount", "currency_code", "tlv"]

    class Refund(bp.CommandWithPassword):
        """06 31 Refund: password, BMP 87 receipt number, 04 amount, 49 currency."""
        CMD_INSTR = 0x31
        wait_for_completion = True
        ALLOWED_BITMAPS = ["receipt", "amount", "currency_code", "tlv"]

    # (ecrterm's currency fields take EUR only; the session registers and pays in EUR, as a
    #  ZVT counter does, so they are used as they are.)

    _API.update(ECR=ecr_mod.ECR, bp=bp, ConfigByte=ConfigByte, Reversal=Reversal, Refund=Refund)
    return _API


# -- the byte tap for TCP ------------------------------------------------------------------

class TcpTap:
    """A loopback proxy: ecrterm connects here, each byte is recorded and relayed to the
    emulator's listener. One connection; ends when either side closes."""

    def __init__(self, target: tuple[str, int], capture_ref: list) -> None:
        self._target = target
        self._capture_ref = capture_ref
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="tcp-tap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._server.settimeout(STEP_TIMEOUT_S)
        try:
            client, _ = self._server.accept()
        except OSError:
            return
        upstream = socket.create_connection(self._target, timeout=STEP_TIMEOUT_S)
        pair = {client: (upstream, "ecr>pt"), upstream: (client, "pt>ecr")}
        try:
            while True:
                ready, _, _ = select.select(list(pair), [], [], STEP_TIMEOUT_S * 4)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(65536)
                    other, direction = pair[s]
                    if not data:
                        return
                    self._capture_ref[0].bytes(direction, data)
                    other.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._server.close()
        self._thread.join(timeout=5)


# -- the emulator --------------------------------------------------------------------------

def start_emulator(posterm: str, transport: str, home: Path) -> tuple[subprocess.Popen, str]:
    """Start ``posterm emulate --protocol zvt``; return it and the port it printed."""
    cmd = [posterm, "emulate", "--protocol", "zvt", "--home", str(home)]
    if transport == "tcp":
        cmd += ["--listen", "tcp://127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().strip() if ready else ""
    if not line:
        proc.kill()
        raise SystemExit(f"ecrterm_session: the emulator printed no port: {proc.stderr.read()[-500:]}")
    return proc, line


def stop_emulator(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


# -- one session ---------------------------------------------------------------------------

def _view(packet: Any) -> dict[str, Any]:
    """How ecrterm read a packet: its class and its own fields/BMPs, as strings."""
    try:
        items = {k: repr(v) for k, v in packet.items()}
    except Exception as exc:  # ecrterm's parser is ecrterm's; report whatever it did
        items = {"<error>": repr(exc)}
    return {"class": type(packet).__name__, "control": bytes(packet.control_field).hex(), "fields": items}


def _incoming(ecr) -> list[dict[str, Any]]:
    return [_view(p) for inc, p in ecr.transmitter.last_history if inc]


def _receipt_of_last(ecr, bp) -> str | None:
    """The receipt number (BMP 87) of the last payment, from its 04 0F, as ecrterm read it."""
    for inc, p in ecr.transmitter.last_history:
        if inc and isinstance(p, bp.StatusInformation):
            receipt = p.as_dict().get("receipt")
            if receipt:
                return receipt
    return None


def run_session(transport: str, out: Path, posterm: str, password: str) -> list[str]:
    """One session over ``transport`` (tcp|serial); the capture to ``out``. Failures returned."""
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"ecrterm-session-{transport}-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    capture_ref = _CAPTURE_REF
    api = _adapt_ecrterm(capture_ref)
    ECR, bp, ConfigByte = api["ECR"], api["bp"], api["ConfigByte"]
    proc, port = start_emulator(posterm, "tcp" if transport == "tcp" else "pty", home)
    tap = None
    failures: list[str] = []
    header = dict(transport=transport, client="wirelane/ecrterm (see README.md for file commits)",
                  script="tools/interop/ecrterm_session.py", started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    capture = Capture(out / f"{transport}.jsonl", header)
    capture_ref[0] = capture
    try:
        if transport == "tcp":
            host, p = port.removeprefix("tcp://").rsplit(":", 1)
            tap = TcpTap((host, int(p)), capture_ref)
            device = f"socket://127.0.0.1:{tap.port}?connect_timeout=10"
        else:
            device = port
        ecr = ECR(device=device, password=password)
        ecr.transmitter.actual_timeout = STEP_TIMEOUT_S
        if transport == "tcp":
            # ecrterm sets no timeout on the socket's reads but T4's (None until then).
            ecr.transport.sock.settimeout(STEP_TIMEOUT_S)

        def step(name: str, args: dict[str, Any], call, expect) -> Any:
            capture.note({"step": name, "args": args})
            try:
                ret = call()
                error = None
            except Exception as exc:  # ecrterm raises on what it cannot take: that is a finding
                ret, error = None, f"{type(exc).__name__}: {exc}"
            result = {"returned": repr(ret), "messages": _incoming(ecr) if ecr.transmitter.last_history else []}
            if error:
                result["error"] = error
            completion = getattr(ecr.transmitter.last, "completion", None) if ecr.transmitter.last else None
            if completion is not None:
                result["completion"] = _view(completion)
            capture.note({"result": name, "ecrterm": result})
            ok = error is None and expect(ret, completion)
            line = f"{transport:6} {name:22} {'ok  ' if ok else 'FAIL'} returned={ret!r}"
            if error:
                line += f" error={error}"
            print(line, flush=True)
            if not ok:
                failures.append(line)
            return ret

        def completed(ret, completion):
            return ret == 0 and isinstance(completion, bp.Completion)

        def approved(ret, completion):
            return ret is True

        def pay(amount: int) -> bool:
            # ECR.payment() word for word, less its fixed ``currency_code=978``: without
            # BMP 49 the terminal takes the registration's currency (ZVT 06 01).
            packet = bp.Authorisation(amount=amount, tlv=[])
            code = ecr.transmit(packet=packet)
            return code == 0 and isinstance(ecr.transmitter.last.completion, bp.Completion)

        def declined(ret, completion):
            return ret is False and isinstance(completion, bp.Abort)

        step("registration", {"config_byte": "0xBA (ConfigByte.DEFAULT)", "cc": EUR},
             lambda: ecr.register(config_byte=ConfigByte.DEFAULT, cc=EUR), completed)
        step("status", {}, lambda: ecr.status(), lambda ret, c: ret is not False and isinstance(c, bp.Completion))
        # ECR.status() returns the completion's BMP 19, which a status enquiry's completion
        # does not carry (ZVT: software version, terminal status byte): ecrterm's own reading
        # of the terminal status is ``_status`` and its text this:
        capture.note({"result": "status_text", "ecrterm": {"terminal_status": repr(ecr._status),
                                                           "human_readable": ecr.get_human_readable_status(),
                                                           "version": repr(ecr.version)}})
        step("payment_eur", {"amount_cent": APPROVE, "via": "ECR.payment (BMP 49 = 978)"},
             lambda: ecr.payment(amount_cent=APPROVE), approved)
        step("payment", {"amount_cent": APPROVE}, lambda: pay(APPROVE), approved)
        receipt = _receipt_of_last(ecr, bp)
        step("reversal", {"receipt": receipt},
             lambda: ecr.transmit(api["Reversal"](password=password, receipt=receipt)), completed)
        step("payment", {"amount_cent": REFUNDED}, lambda: pay(REFUNDED), approved)
        receipt = _receipt_of_last(ecr, bp)
        step("refund", {"receipt": receipt, "amount": REFUND_PART},
             lambda: ecr.transmit(api["Refund"](password=password, receipt=receipt, amount=REFUND_PART)),
             completed)
        step("payment_pin", {"amount_cent": WITH_PIN}, lambda: pay(WITH_PIN), approved)
        step("decline", {"amount_cent": DECLINE}, lambda: pay(DECLINE), declined)
        step("display_text", {"lines": ["posterm", "ecrterm"]},
             lambda: ecr.show_text(lines=["posterm", "ecrterm"], duration=5), lambda ret, c: ret == 0)
        step("end_of_day", {}, lambda: ecr.end_of_day(), completed)
        eod = ecr._end_of_day_info_packet()
        capture.note({"result": "end_of_day_info", "ecrterm": {
            "daylog": [str(x) for x in ecr.daylog], "info": {k: repr(v) for k, v in (eod or {}).items()}}})
        step("log_off", {}, lambda: ecr.transmit(bp.LogOff()), lambda ret, c: ret == 0)
        try:
            ecr.transport.close()
        except OSError:
            pass
    finally:
        if tap is not None:
            tap.close()
        err = stop_emulator(proc)
        capture.write()
        shutil.rmtree(home, ignore_errors=True)
        if err.strip():
            print(f"{transport}: emulator stderr (last lines):\n" + "\n".join(err.strip().splitlines()[-10:]),
                  file=sys.stderr)
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transport", choices=["tcp", "serial", "both"], default="both")
    ap.add_argument("--out", type=Path, default=Path("fixtures/zvt/ecrterm"))
    ap.add_argument("--posterm", default=shutil.which("posterm") or "posterm",
                    help="the posterm executable (default: the one on PATH)")
    ap.add_argument("--password", default="246810", help="the emulated terminal's operator password")
    args = ap.parse_args(argv)
    try:
        import ecrterm  # noqa: F401
    except ImportError:
        print("ecrterm_session: error: ecrterm is not importable; put its source on PYTHONPATH", file=sys.stderr)
        return 2
    failures: list[str] = []
    for transport in (["tcp", "serial"] if args.transport == "both" else [args.transport]):
        failures += run_session(transport, args.out, args.posterm, args.password)
    for f in failures:
        print("failed:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
