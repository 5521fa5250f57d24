"""rfc2217:// ports open and carry bytes (pyserial's rfc2217 refuses write_timeout: every
rfc2217 pay crashed). The far end is pyserial's own RFC 2217 server side, PortManager,
over a loopback socket, in front of a loop:// port that echoes what it is sent."""

from __future__ import annotations

import socket
import threading

import serial
import serial.rfc2217

from posterm.transport import open_transport


class Rfc2217Server(threading.Thread):
    """One connection: telnet/RFC 2217 negotiation by PortManager, data echoed by loop://."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(0.05)
                echo = serial.serial_for_url("loop://", timeout=0.05)

                class Writer:
                    def write(self, data: bytes) -> None:
                        conn.sendall(data)

                manager = serial.rfc2217.PortManager(echo, Writer())
                while not self.stop.is_set():
                    try:
                        data = conn.recv(1024)
                    except socket.timeout:
                        data = None
                    if data == b"":
                        break
                    if data:
                        out = b"".join(manager.filter(data))
                        if out:
                            echo.write(out)
                    back = echo.read(echo.in_waiting or 1)
                    if back:
                        conn.sendall(b"".join(manager.escape(back)))
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.listener.close()


def test_rfc2217_opens_without_write_timeout_and_carries_bytes():
    server = Rfc2217Server()
    server.start()
    try:
        t = open_transport(server.url)
        try:
            t.write(b"hello rfc2217")
            got = b""
            for _ in range(100):  # each read waits for data (up to 0.1 s), not a sleep
                got += t.read(64, 0.1)
                if len(got) >= 13:
                    break
            assert got == b"hello rfc2217"
        finally:
            t.close()
    finally:
        server.stop.set()
        server.join(5)
    assert server.error is None
