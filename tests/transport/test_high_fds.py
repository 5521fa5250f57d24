"""Descriptors numbered 1024 and up (a fleet of hundreds in one process has thousands):
``select`` refuses them, the transports' ``poll`` does not."""

from __future__ import annotations

import os
import resource

import pytest

from posterm.transport.fd import fd_read, fd_write, wait_ready


@pytest.fixture
def high_pipe():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        pytest.skip(f"the descriptor limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < 2100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2100, hard))
    r, w = os.pipe()
    hi_r, hi_w = os.dup2(r, 2040), os.dup2(w, 2041)
    os.close(r)
    os.close(w)
    try:
        yield hi_r, hi_w
    finally:
        os.close(hi_r)
        os.close(hi_w)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_read_write_and_wait_on_descriptors_past_1024(high_pipe):
    r, w = high_pipe
    assert wait_ready([r], [w], 0) == (set(), {w})
    assert fd_read(r, 10, 0.01, "pipe") == b""          # nothing yet: timeout, no ValueError
    fd_write(w, b"hello", "pipe")
    assert wait_ready([r], [], 1.0) == ({r}, set())
    assert fd_read(r, 10, 1.0, "pipe") == b"hello"
