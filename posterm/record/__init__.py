"""Record, tap, show, convert and replay sessions on the ECR-terminal line.

    from posterm.record import RecordingTransport, recording_path
    t = RecordingTransport(transport, "session.jsonl", side="ecr")   # or side="terminal"
    t = RecordingTransport(transport, "session.jsonl", side="ecr", protocol="concert")  # Ingenico Concert

See :mod:`posterm.record.format` for the file format, :mod:`posterm.record.replay`
for replay, :mod:`posterm.families.concert.record` for Concert sessions, docs/record.md for the commands.
"""

from posterm.record.format import (
    FORMAT,
    FORMAT_VERSION,
    PROTOCOLS,
    Recorder,
    Recording,
    RecordingError,
    RecordingTransport,
    iter_records,
    load,
    open_recorded,
    recording_path,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "PROTOCOLS", "Recorder", "Recording", "RecordingError", "RecordingTransport",
           "iter_records", "load", "open_recorded", "recording_path"]
