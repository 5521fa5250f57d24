"""Record, tap, show, convert and replay sessions on the ECR-terminal line.

    from posterm.record import RecordingTransport, recording_path
    t = RecordingTransport(transport, "session.jsonl", side="ecr")   # or side="terminal"
    t = RecordingTransport(transport, "session.jsonl", side="ecr", protocol=NAME)  # another family

See :mod:`posterm.record.format` for the file format, :mod:`posterm.record.replay`
for replay, docs/record.md for the commands. What a family records (its frames, events,
secrets) is its own: ``posterm.families.<name>.record`` (a
:class:`~posterm.families.interfaces.FamilyRecording`, named by the family's ``recording``).
"""

from posterm.record.format import (
    FORMAT,
    FORMAT_VERSION,
    Recorder,
    Recording,
    RecordingError,
    RecordingTransport,
    iter_records,
    load,
    open_recorded,
    recording_path,
    recording_support,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "Recorder", "Recording", "RecordingError", "RecordingTransport",
           "iter_records", "load", "open_recorded", "recording_path", "recording_support"]
