"""asciicast v2 recordings (pure): written as a session runs, read strictly, replayed in time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import corral.sessions
from corral.errors import ConflictError, ValidationError
from corral.sessions import (
    AsciicastWriter,
    Event,
    Header,
    RecordingError,
    async_replay,
    parse,
    replay,
    text_of,
)

START = 1_700_000_000.25


class FakeClock:
    """Stands in for time.sleep / asyncio.sleep and records when each write happened."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.writes: list[tuple[float, str]] = []
        self.resizes: list[tuple[float, int, int]] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def write(self, text: str) -> None:
        self.writes.append((round(self.now, 6), text))

    def resize(self, cols: int, rows: int) -> None:
        self.resizes.append((round(self.now, 6), cols, rows))


def writer(**options: object) -> AsciicastWriter:
    return AsciicastWriter(width=80, height=24, start=START, **options)  # type: ignore[arg-type]


def lines_of(blob: bytes) -> list[object]:
    """Every line decoded as JSON, checking that each one ends in a newline."""
    assert blob.endswith(b"\n")
    return [json.loads(line) for line in blob.decode("utf-8").split("\n")[:-1]]


def session_blob(*, idle_time_limit: float | None = None) -> bytes:
    """A short session: prompt, typed command (input recorded), output, resize, long pause."""
    w = writer(command="bash", idle_time_limit=idle_time_limit)
    return b"".join(
        [
            w.header(),
            w.output(b"$ ", START + 0.5),
            w.input(b"ls\r", START + 1.0),
            w.output(b"ls\r\n", START + 1.0),
            w.output("café\r\n".encode(), START + 1.25),
            w.resize(100, 30, START + 2.0),
            w.marker("after ls", START + 2.5),
            w.output(b"$ ", START + 12.0),
            w.close(START + 13.0),
        ]
    )


# ---- the public surface


def test_public_names_are_pinned() -> None:
    assert sorted(corral.sessions.__all__) == [
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


# ---- writing


def test_header_carries_the_given_fields_and_an_integer_timestamp() -> None:
    w = writer(
        title="web-1 shell",
        command="/bin/bash -l",
        env={"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        idle_time_limit=2.5,
    )
    line = w.header()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": 1_700_000_000,
        "idle_time_limit": 2.5,
        "command": "/bin/bash -l",
        "title": "web-1 shell",
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
    }


def test_header_leaves_out_what_is_unset() -> None:
    assert json.loads(writer().header()) == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": 1_700_000_000,
    }


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"width": 0, "height": 24}, "width"),
        ({"width": 80, "height": -1}, "height"),
        ({"width": 80, "height": 24, "idle_time_limit": 0}, "idle_time_limit"),
    ],
)
def test_writer_refuses_an_impossible_header(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AsciicastWriter(start=START, **options)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_events_have_times_relative_to_the_start() -> None:
    w = writer()
    assert lines_of(w.output(b"hello", START + 0.5)) == [[0.5, "o", "hello"]]
    assert lines_of(w.input(b"q", START + 1.25)) == [[1.25, "i", "q"]]
    assert lines_of(w.resize(120, 40, START + 2)) == [[2.0, "r", "120x40"]]
    assert lines_of(w.marker("deploy", START + 3)) == [[3.0, "m", "deploy"]]


def test_times_are_rounded_to_microseconds() -> None:
    w = writer()
    assert lines_of(w.output(b"x", START + 1.23456789)) == [[1.234568, "o", "x"]]


def test_times_never_go_backwards_when_the_clock_steps_back() -> None:
    w = writer()
    w.output(b"a", START + 5.0)
    assert lines_of(w.output(b"b", START + 4.0)) == [[5.0, "o", "b"]]
    assert lines_of(w.output(b"c", START - 100)) == [[5.0, "o", "c"]]


def test_control_characters_and_quotes_are_escaped_into_one_line() -> None:
    raw = b'\x1b[1mbold\x1b[0m "q" \\ \r\n\t\x00'
    blob = writer().output(raw, START)
    assert blob.count(b"\n") == 1
    assert lines_of(blob) == [[0.0, "o", raw.decode()]]


def test_resize_refuses_a_size_that_is_not_positive() -> None:
    with pytest.raises(ValidationError) as caught:
        writer().resize(0, 24, START)
    assert caught.value.field == "cols"


def test_writer_after_close_refuses_more_events_and_close_is_idempotent() -> None:
    w = writer()
    w.close(START + 1)
    assert w.close(START + 2) == b""
    with pytest.raises(ConflictError):
        w.output(b"late", START + 3)


# ---- UTF-8 across chunks

SPLIT_TEXTS = ["é", "€", "😀", "a😀é"]


@pytest.mark.parametrize("text", SPLIT_TEXTS)
def test_a_character_split_at_every_byte_position_comes_out_whole(text: str) -> None:
    encoded = text.encode("utf-8")
    for cut in range(1, len(encoded)):
        w = writer()
        first = w.output(encoded[:cut], START + 1)
        second = w.output(encoded[cut:], START + 2)
        events = lines_of(first) if first else []
        events += lines_of(second)
        assert "".join(str(event[2]) for event in events) == text, cut  # type: ignore[index]
        assert w.close(START + 3) == b""


@pytest.mark.parametrize("text", SPLIT_TEXTS)
def test_a_text_fed_one_byte_at_a_time_comes_out_exactly(text: str) -> None:
    w = writer()
    blob = w.header() + b"".join(
        w.output(bytes([byte]), START + i) for i, byte in enumerate(text.encode())
    )
    assert text_of(blob) == text
    # Each emitted event carries whole characters only, at the time the last byte came.
    events = parse(blob).events
    assert [e.data for e in events] == list(text)


def test_an_unfinished_character_waits_for_the_next_chunk() -> None:
    w = writer()
    assert w.output(b"\xf0\x9f", START + 1) == b""
    assert lines_of(w.output(b"\x98\x80!", START + 2)) == [[2.0, "o", "😀!"]]


def test_invalid_bytes_become_replacement_characters() -> None:
    w = writer()
    assert lines_of(w.output(b"a\xffb\xc3(", START)) == [[0.0, "o", "a\ufffdb\ufffd("]]


def test_close_flushes_an_unfinished_character_as_a_replacement() -> None:
    w = writer()
    w.output(b"ok\xe2\x82", START + 1)
    assert lines_of(w.close(START + 4)) == [[4.0, "o", "\ufffd"]]


def test_output_and_input_are_decoded_separately() -> None:
    w = writer()
    assert w.output(b"\xc3", START + 1) == b""
    assert lines_of(w.input(b"\xc3\xa9", START + 2)) == [[2.0, "i", "é"]]
    assert lines_of(w.output(b"\xa9", START + 3)) == [[3.0, "o", "é"]]


# ---- reading


def test_parse_reads_back_what_was_written() -> None:
    recording = parse(session_blob(idle_time_limit=3.0))
    assert recording.header == Header(
        width=80, height=24, timestamp=1_700_000_000, idle_time_limit=3.0, command="bash"
    )
    assert recording.events == (
        Event(0.5, "o", "$ "),
        Event(1.0, "i", "ls\r"),
        Event(1.0, "o", "ls\r\n"),
        Event(1.25, "o", "café\r\n"),
        Event(2.0, "r", "100x30"),
        Event(2.5, "m", "after ls"),
        Event(12.0, "o", "$ "),
    )
    assert recording.truncated_line is None


def test_parse_accepts_a_blob_text_lines_with_or_without_newlines_and_a_file(
    tmp_path: Path,
) -> None:
    blob = session_blob()
    expected = parse(blob)
    path = tmp_path / "session.cast"
    path.write_bytes(blob)
    with path.open("rb") as binary, path.open(encoding="utf-8") as text:
        sources: list[object] = [
            blob.decode(),
            blob.splitlines(keepends=True),
            blob.decode().split("\n"),
            blob.decode().splitlines(),
            binary,
            text,
        ]
        for source in sources:
            assert parse(source) == expected  # type: ignore[arg-type]


def test_line_numbers_count_blank_lines_given_without_newlines() -> None:
    with pytest.raises(RecordingError) as caught:
        parse([HEADER, "", '[1, "o", "x"]', "", "[2]"])
    assert caught.value.line == 5


def test_blank_lines_and_unknown_header_keys_are_ignored() -> None:
    blob = b'{"version": 2, "width": 10, "height": 5, "theme": {"fg": "#fff"}}\n\n[1, "o", "x"]\n\n'
    recording = parse(blob)
    assert recording.header == Header(width=10, height=5)
    assert recording.events == (Event(1.0, "o", "x"),)


def test_a_header_written_by_asciinema_is_read() -> None:
    blob = (
        b'{"version": 2, "width": 213, "height": 58, "timestamp": 1598366400, '
        b'"env": {"SHELL": null, "TERM": "xterm"}}\n'
        b'[0.248848, "o", "\\u001b[1;31mhi\\u001b[0m"]\n'
    )
    recording = parse(blob)
    assert recording.header.env == {"TERM": "xterm"}
    assert text_of(recording, strip_ansi=True) == "hi"


# ---- a crash mid-write


def test_a_truncated_last_line_is_dropped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    blob = session_blob()
    complete = parse(blob)
    last_line_start = blob.rstrip(b"\n").rfind(b"\n") + 1
    number_of_last_line = blob.count(b"\n")
    for cut in range(last_line_start + 1, len(blob) - 1):
        recording = parse(blob[:cut])
        assert recording.truncated_line == number_of_last_line, cut
        assert recording.events == complete.events[:-1]
    assert "truncated" in caplog.text


def test_a_line_truncated_inside_a_multibyte_character_is_dropped() -> None:
    w = writer()
    blob = w.header() + w.output(b"a", START) + w.output("é😀".encode(), START + 1)
    cut = blob.rindex("😀".encode()) + 2
    recording = parse(blob[:cut])
    assert recording.truncated_line == 3
    assert text_of(recording) == "a"


def test_a_damaged_line_that_was_completed_is_not_mistaken_for_truncation() -> None:
    blob = session_blob() + b'[13.5, "o", "unterminated\n'
    with pytest.raises(RecordingError) as caught:
        parse(blob)
    assert caught.value.line == blob.count(b"\n")


def test_a_truncated_header_is_an_error() -> None:
    with pytest.raises(RecordingError) as caught:
        parse(b'{"version": 2, "wid')
    assert caught.value.line == 1


# ---- damaged recordings

HEADER = '{"version": 2, "width": 80, "height": 24}'


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("", 1, "empty"),
        ("\n\n", 1, "empty"),
        ('[0, "o", "x"]\n', 1, "JSON object"),
        ("{oops}\n", 1, "not valid JSON"),
        ('{"width": 80, "height": 24}\n', 1, "version 2"),
        ('{"version": 1, "width": 80, "height": 24}\n', 1, "version 2"),
        ('{"version": "2", "width": 80, "height": 24}\n', 1, "version 2"),
        ('{"version": 2, "height": 24}\n', 1, "width"),
        ('{"version": 2, "width": 80, "height": 0}\n', 1, "height"),
        ('{"version": 2, "width": 80.5, "height": 24}\n', 1, "width"),
        ('{"version": 2, "width": true, "height": 24}\n', 1, "width"),
        ('{"version": 2, "width": 80, "height": 24, "timestamp": "now"}\n', 1, "timestamp"),
        ('{"version": 2, "width": 80, "height": 24, "idle_time_limit": -1}\n', 1, "idle"),
        ('{"version": 2, "width": 80, "height": 24, "duration": "long"}\n', 1, "duration"),
        ('{"version": 2, "width": 80, "height": 24, "title": 7}\n', 1, "title"),
        ('{"version": 2, "width": 80, "height": 24, "env": {"TERM": 1}}\n', 1, "env"),
        (HEADER + '\n[0.5, "o", "x"]\n{"time": 1}\n', 3, "array"),
        (HEADER + '\n[0.5, "o"]\n', 2, "array"),
        (HEADER + '\n[0.5, "o", "x", 1]\n', 2, "array"),
        (HEADER + '\n["0.5", "o", "x"]\n', 2, "time"),
        (HEADER + '\n[-1, "o", "x"]\n', 2, "time"),
        (HEADER + '\n[NaN, "o", "x"]\n', 2, "not valid JSON"),
        (HEADER + '\n[Infinity, "o", "x"]\n', 2, "not valid JSON"),
        (HEADER + '\n[0.5, "x", "x"]\n', 2, "code"),
        (HEADER + '\n[0.5, "o", 5]\n', 2, "data"),
        (HEADER + '\n[0.5, "r", "80 by 24"]\n', 2, "COLSxROWS"),
        (HEADER + '\n[0.5, "r", "0x24"]\n', 2, "COLSxROWS"),
        (HEADER + '\n[2, "o", "x"]\n\n[1, "o", "y"]\n', 4, "before"),
        (HEADER + '\n[0.5, "o", "x"\n[1, "o", "y"]\n', 2, "not valid JSON"),
    ],
)
def test_a_damaged_recording_is_refused_naming_the_line(text: str, line: int, problem: str) -> None:
    with pytest.raises(RecordingError) as caught:
        parse(text)
    assert isinstance(caught.value, ValidationError)
    assert caught.value.line == line
    assert caught.value.field == f"line {line}"
    assert str(caught.value).startswith(f"recording line {line}: ")
    assert problem in str(caught.value)


def test_bytes_that_are_not_utf8_are_refused_naming_the_line() -> None:
    blob = HEADER.encode() + b'\n[0.5, "o", "x"]\n[1, "o", "\xff"]\n[2, "o", "y"]\n'
    with pytest.raises(RecordingError, match="line 3: not valid UTF-8"):
        parse(blob)


# ---- replay


def test_replay_writes_output_at_the_recorded_times() -> None:
    clock = FakeClock()
    replay(session_blob(), clock.write, clock.sleep, on_resize=clock.resize)
    assert clock.writes == [
        (0.5, "$ "),
        (1.0, "ls\r\n"),
        (1.25, "café\r\n"),
        (12.0, "$ "),
    ]
    assert clock.resizes == [(2.0, 100, 30)]
    assert "ls\r" not in [text for _, text in clock.writes]  # input is not played
    assert 0 not in clock.sleeps  # no needless zero-length waits


def test_replay_speed_divides_every_gap() -> None:
    clock = FakeClock()
    replay(session_blob(), clock.write, clock.sleep, speed=2)
    assert [at for at, _ in clock.writes] == [0.25, 0.5, 0.625, 6.0]


def test_replay_caps_idle_gaps_with_the_headers_limit() -> None:
    clock = FakeClock()
    replay(session_blob(idle_time_limit=3.0), clock.write, clock.sleep)
    # The 10 s pause between the resize at 2.0 and the prompt at 12.0 becomes 3 s.
    assert [at for at, _ in clock.writes] == [0.5, 1.0, 1.25, 5.0]


def test_replay_idle_limit_argument_overrides_the_header_and_applies_before_speed() -> None:
    clock = FakeClock()
    replay(session_blob(idle_time_limit=3.0), clock.write, clock.sleep, speed=2, idle_time_limit=1)
    # Gaps 0.5, 0.5, 0.25, (0.75 to the resize), then 10 capped to 1; all halved.
    assert [at for at, _ in clock.writes] == [0.25, 0.5, 0.625, 1.5]


def test_replay_max_idle_caps_real_waits_after_speed() -> None:
    clock = FakeClock()
    replay(session_blob(), clock.write, clock.sleep, speed=2, max_idle=0.3)
    assert clock.sleeps == [0.25, 0.25, 0.125, 0.3, 0.3]


def test_replay_without_a_resize_callback_ignores_resizes() -> None:
    clock = FakeClock()
    replay(session_blob(), clock.write, clock.sleep)
    assert len(clock.writes) == 4
    assert clock.now == 12.0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"speed": 0}, "speed"),
        ({"speed": float("inf")}, "speed"),
        ({"idle_time_limit": -1}, "idle_time_limit"),
        ({"max_idle": 0}, "max_idle"),
    ],
)
def test_replay_refuses_bad_options(options: dict[str, float], field: str) -> None:
    clock = FakeClock()
    with pytest.raises(ValidationError) as caught:
        replay(session_blob(), clock.write, clock.sleep, **options)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert clock.writes == []


def test_a_damaged_recording_plays_nothing() -> None:
    clock = FakeClock()
    with pytest.raises(RecordingError):
        replay(session_blob() + b'[1, "o"]\n', clock.write, clock.sleep)
    assert clock.writes == []


async def test_async_replay_follows_the_same_schedule() -> None:
    sync_clock, async_clock = FakeClock(), FakeClock()
    blob = session_blob(idle_time_limit=3.0)
    replay(blob, sync_clock.write, sync_clock.sleep, speed=1.5, on_resize=sync_clock.resize)
    await async_replay(
        blob, async_clock.write, async_clock.async_sleep, speed=1.5, on_resize=async_clock.resize
    )
    assert async_clock.writes == sync_clock.writes
    assert async_clock.resizes == sync_clock.resizes
    assert async_clock.sleeps == sync_clock.sleeps


def test_a_truncated_recording_still_replays_what_was_saved() -> None:
    blob = session_blob()
    clock = FakeClock()
    replay(blob[:-5], clock.write, clock.sleep)
    assert [text for _, text in clock.writes] == ["$ ", "ls\r\n", "café\r\n"]


# ---- text_of


def test_text_of_concatenates_output_only() -> None:
    assert text_of(session_blob()) == "$ ls\r\ncafé\r\n$ "


def test_text_of_strips_escape_sequences_when_asked() -> None:
    w = writer()
    chunks = [
        b"\x1b]0;user@web-1: ~\x07",  # window title (OSC, BEL)
        b"\x1b[01;32muser\x1b[0m:\x1b[",  # colours, one CSI split across two events
        b"01;34m~\x1b[00m$ ",
        b"\x1b(B\x1b[?2004h\x1b[2J\x1b[H",  # charset, bracketed paste, clear, home
        b"\x1b]8;;https://example.invalid\x1b\\link\x1b]8;;\x1b\\ done",  # OSC with ST
        b"\x1bP1$r0m\x1b\\\x1b=\x1b7!",  # DCS string, keypad mode, save cursor
    ]
    blob = w.header() + b"".join(w.output(chunk, START + i) for i, chunk in enumerate(chunks))
    assert text_of(blob, strip_ansi=True) == "user:~$ link done!"
    assert text_of(blob) == b"".join(chunks).decode()


# ---- interoperability with asciinema itself


@pytest.mark.skipif(
    shutil.which("asciinema") is None,
    reason="the asciinema command is not installed (pip install asciinema); "
    "it is only used to check that its own reader accepts our recordings",
)
def test_asciinema_cat_prints_the_recorded_text(tmp_path: Path) -> None:
    w = writer(command="bash", env={"TERM": "xterm-256color", "SHELL": "/bin/bash"})
    parts = [w.header()]
    parts += [w.output(bytes([byte]), START + 0.1) for byte in "héllo 😀\r\n".encode()]
    parts += [w.input(b"exit\r", START + 1), w.resize(100, 30, START + 1.5)]
    parts += [w.marker("end", START + 1.75), w.output(b"\x1b[1mbye\x1b[0m", START + 2)]
    parts += [w.output(b"\xe2\x82", START + 3), w.close(START + 4)]
    path = tmp_path / "session.cast"
    path.write_bytes(b"".join(parts))
    asciinema = shutil.which("asciinema")
    assert asciinema is not None
    result = subprocess.run(
        [asciinema, "cat", str(path)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal, so it does not touch /dev/tty
        env={**os.environ, "ASCIINEMA_CONFIG_HOME": str(tmp_path / "config")},
        timeout=60,
        check=True,
    )
    expected = "héllo 😀\r\n\x1b[1mbye\x1b[0m\ufffd"
    assert result.stdout.decode("utf-8") == expected
    assert text_of(path.read_bytes()) == expected
