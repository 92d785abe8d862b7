"""Session recordings in asciicast v2: writing while a session runs, reading, replaying.

Format (asciicast v2, as played by `asciinema play`): UTF-8 text, one JSON value per
line, each line ending in ``\\n``.

* Line 1, the header: a JSON object with ``version`` (always 2), ``width`` and
  ``height`` (terminal columns and rows), and optionally ``timestamp`` (start, integer
  epoch seconds), ``duration``, ``idle_time_limit`` (seconds), ``command``, ``title``
  and ``env`` (only ``TERM`` and ``SHELL`` by convention; never a command's full
  environment).
* Every further line, an event: ``[time, code, data]`` where ``time`` is seconds since
  the start (a float rounded to microseconds), ``code`` is ``"o"`` (output), ``"i"``
  (input), ``"r"`` (resize, data ``"COLSxROWS"``) or ``"m"`` (marker, data a label) and
  ``data`` is a string.

Guarantees of `AsciicastWriter`:

* Each call returns whole lines, ready to append to a blob as the session runs; what
  has been appended is always a valid recording, so a crash loses only what had not
  been appended yet (at worst leaving a truncated last line, which `parse` tolerates).
* Output and input are bytes; each stream has its own incremental UTF-8 decoder, so a
  character split across two chunks is written whole with the later chunk, and bytes
  that are not UTF-8 become U+FFFD. The JSON is therefore always valid UTF-8.
  `AsciicastWriter.close` flushes an unfinished character (as U+FFFD).
* Times given to the writer are absolute (``time.time()``); event times are relative
  to the writer's start and never decrease, even if the wall clock steps back.
* Input is encoded only when the caller passes it: recording keystrokes (passwords
  typed at a prompt included) is the caller's policy decision, not the writer's.

Rules of `parse`: strict. A line that is not UTF-8 or not JSON, a header without
``version: 2`` or positive integer ``width``/``height``, an event that is not a
three-item array with a finite non-negative time, a known code and string data, a
resize not shaped ``COLSxROWS``, or a time earlier than the previous event's raises
`RecordingError` (a `ValidationError`) naming the line. Blank lines are skipped and
unknown header keys ignored. One exception: a last line that is not valid JSON and has
no terminating newline is what a crash mid-append leaves, so it is dropped and reported
in `Recording.truncated_line` (and logged) instead of failing the whole recording.

Rules of `replay`: output events are written with their original gaps divided by
``speed``; resize events go to an optional callback; input and marker events are not
played. A gap between two played events is first capped at the idle time limit
(the ``idle_time_limit`` argument, else the header's), in recording seconds, like
``asciinema play -i``; then divided by ``speed``; then capped at ``max_idle`` real
seconds, a viewer's patience whatever the recording says. The recording is parsed
whole before anything is written, so a damaged recording plays nothing.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast

from corral.errors import ConflictError, ValidationError

logger = logging.getLogger(__name__)

EventCode: TypeAlias = Literal["o", "i", "r", "m"]

_CODES: frozenset[str] = frozenset({"o", "i", "r", "m"})
_RESIZE = re.compile(r"[1-9][0-9]*x[1-9][0-9]*")

# ECMA-48 escape sequences, 7-bit forms: CSI (ESC [ params intermediates final); OSC
# ending in BEL or ST; DCS, SOS, PM and APC strings ending in ST; any other ESC
# (intermediates) final, which covers charset designations like ESC ( B.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[PX^_][^\x1b]*\x1b\\"
    r"|\x1b[ -/]*[0-~]"
)


class RecordingError(ValidationError):
    """A recording is damaged; `line` is the 1-based line number to blame."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"recording line {line}: {problem}", field=f"line {line}")
        self.line = line


@dataclass(frozen=True)
class Header:
    """The first line of a recording: terminal size and what was recorded."""

    width: int
    height: int
    timestamp: int | None = None
    duration: float | None = None
    idle_time_limit: float | None = None
    command: str | None = None
    title: str | None = None
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValidationError(f"{name} must be a positive integer", field=name)
        if self.idle_time_limit is not None and not _is_positive(self.idle_time_limit):
            raise ValidationError(
                "idle_time_limit must be a positive number", field="idle_time_limit"
            )

    def to_json(self) -> dict[str, object]:
        """The header as the JSON object of line 1, without the keys that are unset."""
        fields: dict[str, object] = {"version": 2, "width": self.width, "height": self.height}
        optional: dict[str, object | None] = {
            "timestamp": self.timestamp,
            "duration": self.duration,
            "idle_time_limit": self.idle_time_limit,
            "command": self.command,
            "title": self.title,
            "env": dict(self.env) if self.env is not None else None,
        }
        fields.update({key: value for key, value in optional.items() if value is not None})
        return fields


@dataclass(frozen=True)
class Event:
    """One event line: `time` in seconds since the start, its `code` and its `data`."""

    time: float
    code: EventCode
    data: str


@dataclass(frozen=True)
class Recording:
    """A parsed recording; `truncated_line` is the number of a dropped partial last line."""

    header: Header
    events: tuple[Event, ...]
    truncated_line: int | None = None


# What `parse`, `replay` and `text_of` read: a parsed recording, the whole blob, or its
# lines (from a file or a blob store, with or without their newlines).
RecordingSource: TypeAlias = Recording | bytes | str | Iterable[bytes] | Iterable[str]


class AsciicastWriter:
    """Encodes a session as asciicast v2 lines, one call per thing that happened."""

    def __init__(
        self,
        *,
        width: int,
        height: int,
        start: float,
        command: str | None = None,
        title: str | None = None,
        env: Mapping[str, str] | None = None,
        idle_time_limit: float | None = None,
    ) -> None:
        # `start` is the session's start (time.time()); event times are relative to it.
        self._header = Header(
            width=width,
            height=height,
            timestamp=int(start),
            idle_time_limit=idle_time_limit,
            command=command,
            title=title,
            env=env,
        )
        self._start = start
        self._last = 0.0
        self._closed = False
        self._decoders = {
            "o": codecs.getincrementaldecoder("utf-8")(errors="replace"),
            "i": codecs.getincrementaldecoder("utf-8")(errors="replace"),
        }

    def header(self) -> bytes:
        """Line 1 of the recording, newline included."""
        return _line(self._header.to_json())

    def output(self, data: bytes, at: float) -> bytes:
        """The line for terminal output received at `at` (empty while a character is unfinished)."""
        return self._stream("o", data, at, final=False)

    def input(self, data: bytes, at: float) -> bytes:
        """The line for keyboard input sent at `at`; call it only when input is recorded."""
        return self._stream("i", data, at, final=False)

    def resize(self, cols: int, rows: int, at: float) -> bytes:
        """The line for a window resized to `cols` x `rows` at `at`."""
        for name, value in (("cols", cols), ("rows", rows)):
            if not _is_int(value) or value < 1:
                raise ValidationError(f"{name} must be a positive integer", field=name)
        return self._event("r", f"{cols}x{rows}", at)

    def marker(self, label: str, at: float) -> bytes:
        """The line for a marker (a named point to jump to) at `at`."""
        return self._event("m", label, at)

    def close(self, at: float) -> bytes:
        """The last lines: unfinished characters of output and input, as U+FFFD."""
        if self._closed:
            return b""
        lines = self._stream("o", b"", at, final=True) + self._stream("i", b"", at, final=True)
        self._closed = True
        return lines

    def _stream(self, code: Literal["o", "i"], data: bytes, at: float, *, final: bool) -> bytes:
        self._check_open()
        text = self._decoders[code].decode(data, final)
        return self._event(code, text, at) if text else b""

    def _event(self, code: EventCode, data: str, at: float) -> bytes:
        self._check_open()
        # Clamped so that times never decrease, even if the wall clock steps back.
        self._last = max(self._last, round(at - self._start, 6))
        return _line([self._last, code, data])

    def _check_open(self) -> None:
        if self._closed:
            raise ConflictError("the recording is closed")


def parse(lines: RecordingSource) -> Recording:
    """Read a recording strictly, tolerating only a partial last line (see module rules)."""
    if isinstance(lines, Recording):
        return lines
    numbered = [(number, line) for number, line in enumerate(_split(lines), 1) if line.strip()]
    if not numbered:
        raise RecordingError(1, "the recording is empty; expected a header")
    truncated_line: int | None = None
    number, last = numbered[-1]
    if len(numbered) > 1 and not last.endswith(b"\n"):
        try:
            _load(number, last)
        except RecordingError:
            truncated_line = number
            numbered.pop()
            logger.warning("recording truncated: dropped a partial last line, line=%s", number)
    header = _parse_header(number=numbered[0][0], value=_load(*numbered[0]))
    events: list[Event] = []
    previous = 0.0
    for number, line in numbered[1:]:
        event = _parse_event(number, _load(number, line))
        if event.time < previous:
            raise RecordingError(number, f"event time {event.time} is before {previous}")
        previous = event.time
        events.append(event)
    return Recording(header, tuple(events), truncated_line)


def text_of(recording: RecordingSource, *, strip_ansi: bool = False) -> str:
    """All output of a recording as one string, optionally without escape sequences."""
    text = "".join(event.data for event in parse(recording).events if event.code == "o")
    return _ANSI.sub("", text) if strip_ansi else text


def replay(
    recording: RecordingSource,
    write: Callable[[str], object],
    sleep: Callable[[float], object],
    speed: float = 1.0,
    idle_time_limit: float | None = None,
    max_idle: float | None = None,
    on_resize: Callable[[int, int], object] | None = None,
) -> None:
    """Play a recording's output to `write`, waiting through `sleep` between events."""
    for delay, event in _schedule(parse(recording), speed, idle_time_limit, max_idle):
        if delay > 0:
            sleep(delay)
        _play(event, write, on_resize)


async def async_replay(
    recording: RecordingSource,
    write: Callable[[str], object],
    sleep: Callable[[float], Awaitable[object]],
    speed: float = 1.0,
    idle_time_limit: float | None = None,
    max_idle: float | None = None,
    on_resize: Callable[[int, int], object] | None = None,
) -> None:
    """`replay` for asyncio: the same schedule, waiting with an async `sleep`."""
    for delay, event in _schedule(parse(recording), speed, idle_time_limit, max_idle):
        if delay > 0:
            await sleep(delay)
        _play(event, write, on_resize)


def _schedule(
    recording: Recording, speed: float, idle_time_limit: float | None, max_idle: float | None
) -> Iterator[tuple[float, Event]]:
    """Each played event with the real seconds to wait before it."""
    if not _is_positive(speed):
        raise ValidationError("speed must be a positive number", field="speed")
    for name, value in (("idle_time_limit", idle_time_limit), ("max_idle", max_idle)):
        if value is not None and not _is_positive(value):
            raise ValidationError(f"{name} must be a positive number", field=name)
    cap = idle_time_limit if idle_time_limit is not None else recording.header.idle_time_limit
    previous = 0.0
    for event in recording.events:
        if event.code not in ("o", "r"):
            continue
        gap = event.time - previous
        previous = event.time
        if cap is not None:
            gap = min(gap, cap)
        delay = gap / speed
        if max_idle is not None:
            delay = min(delay, max_idle)
        yield delay, event


def _play(
    event: Event, write: Callable[[str], object], on_resize: Callable[[int, int], object] | None
) -> None:
    if event.code == "o":
        write(event.data)
    elif on_resize is not None:
        cols, rows = event.data.split("x")
        on_resize(int(cols), int(rows))


def _parse_header(number: int, value: object) -> Header:
    if not isinstance(value, dict):
        raise RecordingError(number, "the header must be a JSON object")
    if not _is_int(value.get("version")) or value["version"] != 2:
        raise RecordingError(number, "the header must have version 2 (asciicast v2)")
    for key in ("width", "height"):
        if not _is_int(value.get(key)) or value[key] < 1:
            raise RecordingError(number, f"header {key} must be a positive integer")
    timestamp = value.get("timestamp")
    if timestamp is not None and not _is_number(timestamp):
        raise RecordingError(number, "header timestamp must be a number")
    duration = value.get("duration")
    if duration is not None and not (_is_number(duration) and duration >= 0):
        raise RecordingError(number, "header duration must be a number >= 0")
    idle_time_limit = value.get("idle_time_limit")
    if idle_time_limit is not None and not _is_positive(idle_time_limit):
        raise RecordingError(number, "header idle_time_limit must be a positive number")
    for key in ("command", "title"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise RecordingError(number, f"header {key} must be a string")
    env = value.get("env")
    if env is not None and not (
        isinstance(env, dict) and all(v is None or isinstance(v, str) for v in env.values())
    ):
        raise RecordingError(number, "header env must map names to strings")
    return Header(
        width=value["width"],
        height=value["height"],
        timestamp=int(timestamp) if timestamp is not None else None,
        duration=duration,
        idle_time_limit=idle_time_limit,
        command=value.get("command"),
        title=value.get("title"),
        env={k: v for k, v in env.items() if v is not None} if env is not None else None,
    )


def _parse_event(number: int, value: object) -> Event:
    if not isinstance(value, list) or len(value) != 3:
        raise RecordingError(number, "an event must be an array [time, code, data]")
    time, code, data = value
    if not _is_number(time) or time < 0:
        raise RecordingError(number, "event time must be a number of seconds >= 0")
    if not isinstance(code, str) or code not in _CODES:
        raise RecordingError(number, 'event code must be one of "o", "i", "r", "m"')
    if not isinstance(data, str):
        raise RecordingError(number, "event data must be a string")
    if code == "r" and not _RESIZE.fullmatch(data):
        raise RecordingError(number, 'resize data must be "COLSxROWS"')
    return Event(float(time), cast(EventCode, code), data)


def _load(number: int, line: bytes) -> object:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecordingError(number, "not valid UTF-8") from error
    try:
        return cast(object, json.loads(text, parse_constant=_reject_constant))
    except ValueError as error:
        raise RecordingError(number, "not valid JSON") from error


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _split(source: bytes | str | Iterable[bytes] | Iterable[str]) -> Iterator[bytes]:
    """Lines as UTF-8 bytes, each keeping its newline if it had one.

    A blob is cut at each ``\\n`` (and only there: JSON may hold a raw U+2028). Each
    item of an iterable is one line, with or without its newline.
    """
    whole = isinstance(source, bytes | str)
    items: Iterable[bytes | str] = [source] if isinstance(source, bytes | str) else source
    for item in items:
        if isinstance(item, str):
            item = item.encode("utf-8", errors="surrogatepass")
        *complete, rest = item.split(b"\n")
        for line in complete:
            yield line + b"\n"
        if rest or not (whole or complete):
            yield rest


def _line(value: object) -> bytes:
    return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive(value: object) -> bool:
    return _is_number(value) and cast(float, value) > 0
