"""The firmware alone (sans-IO, no threads, no host): ECR messages in, crafted host answers
in, and what it says back."""

from __future__ import annotations

import logging

import pytest

from firmware_protocol import messages as m
from posterm.crypto.terminal import OperatorPassword, SecureModule
from posterm.emulator.firmware import Firmware, FirmwareConfig, Identity
from posterm.emulator.journal import TerminalJournal
from posterm.emulator.peripherals import OperatorKeypad, PinPad


@pytest.fixture
def fw(tmp_path):
    journal = TerminalJournal(tmp_path / "journal.db")
    firmware = Firmware(Identity(), journal, PinPad(SecureModule()),
                        OperatorKeypad(OperatorPassword(password="246810")), config=FirmwareConfig(print_time=0.01))
    firmware.start(0.0)
    yield firmware
    journal.close()


def test_an_error_from_the_ecr_is_logged_never_answered_with_an_error(fw, caplog):
    with caplog.at_level(logging.WARNING, logger="posterm.emulator"):
        fw.on_message(m.Error(code=m.ErrorCode.UNKNOWN_MESSAGE, text="what?", in_reply_to=0x0011), 1.0)
    assert fw.take_ecr() == []            # two peers answering errors with errors would never stop
    assert "UNKNOWN_MESSAGE" in caplog.text
    fw.on_message(m.Progress(order_id="X", stage=m.Stage.AUTHORISING, text="?"), 1.0)
    (err,) = fw.take_ecr()                # anything else that is not a request still gets one
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.UNKNOWN_MESSAGE
