"""Interactive sessions: recordings in asciicast v2 (writing, reading, replaying)."""

from corral.sessions.asciicast import (
    AsciicastWriter,
    Event,
    EventCode,
    Header,
    Recording,
    RecordingError,
    RecordingSource,
    async_replay,
    parse,
    replay,
    text_of,
)

__all__ = [
    "AsciicastWriter",
    "Event",
    "EventCode",
    "Header",
    "Recording",
    "RecordingError",
    "RecordingSource",
    "async_replay",
    "parse",
    "replay",
    "text_of",
]
