"""Seeded fuzz of the emulated terminal over a pty and over TCP: it survives every input
(threads alive, no error), its memory stays bounded, and a good payment succeeds after."""

from __future__ import annotations

import pytest

from posterm.families.native.ecr import Terminal
from posterm.emulator.runner import EmulatedTerminal
from posterm.families.native.fuzz import HostileEcr

INPUTS = 20_000
MEMORY_BOUND = 64 * 1024 * 1024   # growth of the process's peak RSS over the fuzz


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_fuzz_the_emulator(tmp_path, monkeypatch, transport):
    monkeypatch.setenv("POSTERM_HOME", str(tmp_path))
    listen = "tcp://127.0.0.1:0" if transport == "tcp" else None
    with EmulatedTerminal.start(home=tmp_path / "emu", listen=listen) as emu:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                       # reset the peak RSS to the current RSS
        except OSError:
            pass
        base = _rss("VmRSS")
        ecr = HostileEcr(emu.port, seed=20261201)
        try:
            counts = ecr.run(INPUTS)
            # Let the terminal digest the backlog (bounded wait on its byte counter), then end
            # the session as a real ECR would, so the next one starts clean.
            # (pty only: on TCP a connection the fuzz replaced takes its unread bytes with it)
            if transport == "pty":
                assert emu.wait_for_input(ecr.bytes_written, timeout=60), (emu.bytes_received, ecr.bytes_written)
            assert ecr.settle()
        finally:
            ecr.close()
        peak = _rss("VmHWM")
        assert sum(counts.values()) == INPUTS and all(counts[k] for k in HostileEcr.KINDS), counts
        assert emu.error is None, emu.error
        assert emu._line.is_alive() and emu._worker.is_alive()
        print(f"fuzz {transport}: {INPUTS} inputs, {ecr.bytes_written} bytes, peak RSS growth "
              f"{(peak - base) / 2**20:.1f} MiB, {dict(emu.line_events)}")
        assert peak - base < MEMORY_BOUND
        with Terminal.open(emu.port, journal=str(tmp_path / "d.db")) as term:
            r = term.pay(100, "CNY", payment_code="289900000000000001", timeout=30)
        assert r.approved
        assert emu.error is None
