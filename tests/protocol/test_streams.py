"""Session data streams: the binary codec, and lossless, bounded streams across reconnects."""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from corral.errors import ProtocolError
from corral.protocol.streams import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_WINDOW,
    MAX_OFFSET,
    MAX_REASON_BYTES,
    MAX_STREAM,
    AckFrame,
    DataFrame,
    EofFrame,
    ExitFrame,
    Frame,
    NoticeFrame,
    OpenFailedFrame,
    OpenFrame,
    ResizeFrame,
    ResumeFrame,
    StreamPosition,
    StreamReceiver,
    StreamSender,
    decode,
    encode,
    safe_reason,
)

# --- codec: wire layout ---------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (DataFrame(1, 2, b"hi"), "01 00000001 0000000000000002 6869"),
        (AckFrame(0x01020304, 0x0A0B), "02 01020304 0000000000000a0b"),
        (ResizeFrame(80, 24), "03 0050 0018"),
        (EofFrame(7, 300), "04 00000007 000000000000012c"),
        (ExitFrame(-1, "idle"), "05 ffffffff 69646c65"),
        (
            ResumeFrame((StreamPosition(0, 5), StreamPosition(1, 6))),
            "06 0002 00000000 0000000000000005 00000001 0000000000000006",
        ),
        (
            ResumeFrame((StreamPosition(1, 6),), request=True),
            "0a 0001 00000001 0000000000000006",
        ),
        (OpenFrame(3, "db", 5432), "07 00000003 0002 6462 1538"),
        (OpenFailedFrame(3, "no"), "08 00000003 6e6f"),
    ],
)
def test_wire_layout_is_big_endian_as_documented(frame: Frame, wire: str) -> None:
    assert encode(frame) == bytes.fromhex(wire)
    assert decode(bytes.fromhex(wire)) == frame


@pytest.mark.parametrize(
    "frame",
    [
        DataFrame(0, 0, b"\x00"),
        DataFrame(MAX_STREAM, MAX_OFFSET - 3, b"\xff\x00\xfe"),
        DataFrame(1, 10, bytes(range(256)) * 256),  # exactly 64 KiB
        AckFrame(0, 0),
        AckFrame(MAX_STREAM, MAX_OFFSET),
        ResizeFrame(1, 1),
        ResizeFrame(10_000, 10_000),
        EofFrame(2, 0),
        EofFrame(2, MAX_OFFSET),
        ExitFrame(0),
        ExitFrame(-(2**31), "idle timeout"),
        ExitFrame(2**31 - 1, "é" * (MAX_REASON_BYTES // 2)),
        ResumeFrame(),
        ResumeFrame(tuple(StreamPosition(s, s * 1000) for s in range(100))),
        ResumeFrame(request=True),
        OpenFrame(5, "localhost", 1),
        OpenFrame(5, "[::1]", 65535),
        OpenFrame(5, "bücher.example", 443),
        OpenFrame(5, "h" * 255, 80),
        OpenFailedFrame(5),
        OpenFailedFrame(5, "connection refused"),
    ],
    ids=repr,
)
def test_every_frame_type_round_trips(frame: Frame) -> None:
    assert decode(encode(frame)) == frame


def test_data_payload_limit_is_configurable() -> None:
    frame = DataFrame(1, 0, b"x" * 100)
    assert decode(encode(frame), max_payload=100) == frame
    with pytest.raises(ProtocolError) as caught:
        decode(encode(frame), max_payload=99)
    assert caught.value.code == "too_big"
    assert caught.value.message == "DATA payload of 100 bytes exceeds the limit of 99"


def test_default_payload_limit_is_64_kib() -> None:
    assert DEFAULT_MAX_PAYLOAD == 65536
    with pytest.raises(ProtocolError, match="65537 bytes exceeds the limit of 65536"):
        decode(encode(DataFrame(1, 0, b"x" * 65537)))


def head(kind: int, fmt: str = "", *values: int) -> bytes:
    return struct.pack(">B" + fmt, kind, *values)


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"", "bad_frame", "empty frame"),
        (b"\x00", "bad_frame", "unknown frame type 0x00"),
        (b"\x0b\x00\x00", "bad_frame", "unknown frame type 0x0b"),
        (b"\x09no\nway", "bad_frame", "NOTICE reason contains control"),
        (b"\xff", "bad_frame", "unknown frame type 0xff"),
        # DATA
        (b"\x01\x00\x00", "bad_frame", "DATA frame is truncated: needs at least 14 bytes, got 3"),
        (head(1, "IQ", 1, 0), "bad_frame", "DATA frame is truncated: needs at least 14 bytes"),
        (
            head(1, "IQ", 1, MAX_OFFSET) + b"x",
            "bad_frame",
            f"DATA ends past byte {MAX_OFFSET} of the stream",
        ),
        (head(1, "IQ", 1, 0) + b"x" * 65537, "too_big", "DATA payload of 65537 bytes exceeds"),
        # ACK and EOF: exactly 13 bytes
        (head(2, "I", 1), "bad_frame", "ACK frame is truncated: needs at least 13 bytes, got 5"),
        (head(2, "IQ", 1, 0) + b"\x00", "bad_frame", "ACK frame has 1 trailing bytes after its 13"),
        (head(4, "IQ", 1, 0)[:12], "bad_frame", "EOF frame is truncated"),
        (head(4, "IQ", 1, 0) + b"zz", "bad_frame", "EOF frame has 2 trailing bytes"),
        # RESIZE
        (head(3, "H", 80), "bad_frame", "RESIZE frame is truncated: needs at least 5 bytes"),
        (head(3, "HHB", 80, 24, 0), "bad_frame", "RESIZE frame has 1 trailing bytes"),
        (head(3, "HH", 0, 24), "bad_frame", "RESIZE cols must be 1..10000, got 0"),
        (head(3, "HH", 80, 10_001), "bad_frame", "RESIZE rows must be 1..10000, got 10001"),
        (head(3, "HH", 65535, 24), "bad_frame", "RESIZE cols must be 1..10000, got 65535"),
        # EXIT
        (b"\x05\x00\x00", "bad_frame", "EXIT frame is truncated: needs at least 5 bytes, got 3"),
        (head(5, "i", 0) + b"\xff\xfe", "bad_frame", "EXIT reason is not valid UTF-8"),
        (head(5, "i", 0) + b"\xed\xa0\x80", "bad_frame", "EXIT reason is not valid UTF-8"),
        (
            head(5, "i", 0) + b"x" * 1025,
            "bad_frame",
            "EXIT reason of 1025 bytes exceeds 1024",
        ),
        (head(5, "i", 0) + b"\x1b[2J", "bad_frame", "EXIT reason contains control characters"),
        # RESUME
        (b"\x06\x00", "bad_frame", "RESUME frame is truncated: needs at least 3 bytes, got 2"),
        (
            head(6, "H", 2) + struct.pack(">IQ", 1, 0),
            "bad_frame",
            "RESUME frame lists 2 streams, so must be 27 bytes, got 15",
        ),
        (head(6, "H", 0) + b"\x00", "bad_frame", "RESUME frame lists 0 streams, so must be 3"),
        (
            head(6, "H", 2) + struct.pack(">IQIQ", 4, 0, 4, 9),
            "bad_frame",
            "RESUME lists stream 4 twice",
        ),
        # OPEN
        (
            head(7, "IH", 1, 2) + b"db",
            "bad_frame",
            "OPEN frame with a 2-byte host must be 11 bytes, got 9",
        ),
        (head(7, "I", 1), "bad_frame", "OPEN frame is truncated: needs at least 9 bytes, got 5"),
        (head(7, "IH", 1, 0) + b"\x00\x16", "bad_frame", "OPEN host must be 1..255 bytes, got 0"),
        (
            head(7, "IH", 1, 256) + b"h" * 256 + b"\x00\x16",
            "bad_frame",
            "OPEN host of 256 bytes exceeds 255",
        ),
        (head(7, "IH", 1, 2) + b"\xc3\x28\x00\x16", "bad_frame", "OPEN host is not valid UTF-8"),
        (
            head(7, "IH", 1, 3) + b"a b\x00\x16",
            "bad_frame",
            "OPEN host contains spaces or control characters",
        ),
        (head(7, "IH", 1, 2) + b"db\x00\x00", "bad_frame", "OPEN port must be 1..65535, got 0"),
        (
            head(7, "IH", 1, 0xFFFF) + b"db\x00\x16",
            "bad_frame",
            "OPEN frame with a 65535-byte host must be 65544 bytes, got 11",
        ),
        # OPEN_FAILED
        (b"\x08\x00\x00\x00", "bad_frame", "OPEN_FAILED frame is truncated"),
        (head(8, "I", 1) + b"\x80", "bad_frame", "OPEN_FAILED reason is not valid UTF-8"),
        (head(8, "I", 1) + b"r" * 2000, "bad_frame", "OPEN_FAILED reason of 2000 bytes exceeds"),
        (head(8, "I", 1) + b"no\nway", "bad_frame", "OPEN_FAILED reason contains control"),
    ],
)
def test_malformed_frames_are_refused_precisely(data: bytes, code: str, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    assert caught.value.code == code
    assert caught.value.message.startswith(message), caught.value.message


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DataFrame(1, 0, b""), "DATA payload is empty"),
        (lambda: DataFrame(-1, 0, b"x"), "DATA stream must be 0..4294967295, got -1"),
        (lambda: DataFrame(MAX_STREAM + 1, 0, b"x"), "DATA stream must be 0.."),
        (lambda: DataFrame(1, -5, b"x"), "DATA offset must be 0.."),
        (lambda: AckFrame(1, MAX_OFFSET + 1), "ACK offset must be 0.."),
        (lambda: EofFrame(1, -1), "EOF offset must be 0.."),
        (lambda: ResizeFrame(80, 0), "RESIZE rows must be 1..10000, got 0"),
        (lambda: ExitFrame(2**31), "EXIT code must be a signed 32-bit integer"),
        (lambda: ExitFrame(1, "\ud800"), "EXIT reason is not valid UTF-8 text"),
        (lambda: ExitFrame(1, "x" * 1025), "EXIT reason of 1025 bytes exceeds 1024"),
        (lambda: ExitFrame(1, "a\x9bb"), "EXIT reason contains control characters"),
        (lambda: StreamPosition(1, -1), "RESUME received must be 0.."),
        (lambda: ResumeFrame((StreamPosition(1, 0),) * 2), "RESUME lists stream 1 twice"),
        (
            lambda: ResumeFrame(tuple(StreamPosition(s, 0) for s in range(65536))),
            "RESUME lists 65536 streams, more than 65535",
        ),
        (lambda: OpenFrame(1, "", 22), "OPEN host must be 1..255 bytes, got 0"),
        (lambda: OpenFrame(1, "h\tx", 22), "OPEN host contains spaces or control characters"),
        (lambda: OpenFrame(1, "db", 65536), "OPEN port must be 1..65535, got 65536"),
        (lambda: OpenFailedFrame(1, "\x07"), "OPEN_FAILED reason contains control characters"),
    ],
)
def test_invalid_frames_cannot_be_built(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        build()


def test_decode_refuses_a_nonsensical_limit() -> None:
    with pytest.raises(ValueError, match="max_payload"):
        decode(encode(AckFrame(1, 1)), max_payload=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connection refused", "connection refused"),
        ("line one\nline two\x1b[31m", "line one line two [31m"),
        ("x" * 2000, "x" * MAX_REASON_BYTES),
        ("é" * 600, "é" * 512),  # 1200 bytes cut at 1024, on a character boundary
        ("bad \ud800 surrogate", "bad ? surrogate"),
    ],
)
def test_safe_reason_always_fits_a_frame(text: str, expected: str) -> None:
    reason = safe_reason(text)
    assert reason == expected
    assert decode(encode(ExitFrame(-1, reason))) == ExitFrame(-1, reason)


any_frame = st.one_of(
    st.builds(
        DataFrame,
        st.integers(0, MAX_STREAM),
        st.integers(0, MAX_OFFSET - 1000),
        st.binary(min_size=1, max_size=1000),
    ),
    st.builds(AckFrame, st.integers(0, MAX_STREAM), st.integers(0, MAX_OFFSET)),
    st.builds(ResizeFrame, st.integers(1, 10_000), st.integers(1, 10_000)),
    st.builds(EofFrame, st.integers(0, MAX_STREAM), st.integers(0, MAX_OFFSET)),
    st.builds(
        ExitFrame,
        st.integers(-(2**31), 2**31 - 1),
        st.text(max_size=100).map(safe_reason),
    ),
    st.builds(
        ResumeFrame,
        st.dictionaries(st.integers(0, MAX_STREAM), st.integers(0, MAX_OFFSET), max_size=20).map(
            lambda positions: tuple(StreamPosition(s, r) for s, r in positions.items())
        ),
        st.booleans(),
    ),
    st.builds(
        OpenFrame,
        st.integers(0, MAX_STREAM),
        st.text(st.characters(min_codepoint=0x21, codec="utf-8"), min_size=1, max_size=60).filter(
            lambda host: not any(0x7F <= ord(c) <= 0x9F for c in host)
        ),
        st.integers(1, 65535),
    ),
    st.builds(OpenFailedFrame, st.integers(0, MAX_STREAM), st.text(max_size=100).map(safe_reason)),
)


@given(any_frame)
def test_any_valid_frame_round_trips(frame: Frame) -> None:
    assert decode(encode(frame)) == frame


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    refused: str | None = None
    try:
        frame = decode(data, max_payload=64)
    except ProtocolError as error:
        refused = error.code
    else:
        assert encode(frame) == data  # one encoding per frame: nothing was silently dropped
    assert refused in {None, "bad_frame", "too_big"}


# --- StreamSender ---------------------------------------------------------------


def payloads(frames: list[DataFrame | EofFrame]) -> list[tuple[int, bytes]]:
    return [(f.offset, f.payload) for f in frames if isinstance(f, DataFrame)]


def test_sender_accepts_only_what_fits_in_its_window() -> None:
    sender = StreamSender(3, window=10)
    assert sender.offer(b"a" * 25) == 10
    assert (sender.buffered, sender.writable) == (10, 0)
    assert sender.offer(b"more") == 0
    assert sender.offer(b"") == 0
    assert payloads(sender.frames(max_payload=4)) == [(0, b"aaaa"), (4, b"aaaa"), (8, b"aa")]
    assert sender.frames(max_payload=4) == []
    assert sender.buffered == 10  # sent is not freed: it may have to be sent again
    sender.on_ack(4)
    assert (sender.acked_offset, sender.buffered, sender.writable) == (4, 6, 4)
    assert sender.offer(bytearray(b"bcdefg")) == 4
    assert payloads(sender.frames()) == [(10, b"bcde")]
    assert (sender.sent_offset, sender.written_offset) == (14, 14)


def test_sender_frees_acknowledged_bytes_and_ignores_a_repeated_ack() -> None:
    sender = StreamSender(1, window=100)
    sender.offer(memoryview(b"0123456789"))
    sender.frames()
    sender.on_ack(6)
    sender.on_ack(6)
    assert (sender.acked_offset, sender.buffered) == (6, 4)
    sender.on_ack(10)
    assert (sender.acked_offset, sender.buffered, sender.writable) == (10, 0, 100)


def test_sender_refuses_an_ack_beyond_what_was_sent() -> None:
    sender = StreamSender(1)
    sender.offer(b"0123456789")
    sender.frames(max_payload=4)
    sender.offer(b"unsent")
    with pytest.raises(ProtocolError) as caught:
        sender.on_ack(11)
    assert caught.value.code == "bad_ack"
    assert caught.value.message == "stream 1: ACK up to byte 11, but only 10 bytes were sent"
    assert sender.acked_offset == 0


def test_sender_refuses_an_ack_going_backwards() -> None:
    sender = StreamSender(2)
    sender.offer(b"0123456789")
    sender.frames()
    sender.on_ack(8)
    with pytest.raises(ProtocolError) as caught:
        sender.on_ack(5)
    assert caught.value.code == "bad_ack"
    assert caught.value.message == (
        "stream 2: ACK goes back to byte 5, after bytes up to 8 were acknowledged"
    )


def test_sender_resumes_from_the_middle_and_may_cut_frames_anew() -> None:
    sender = StreamSender(4, window=100)
    sender.offer(b"0123456789")
    sender.frames(max_payload=3)
    sender.on_ack(3)
    sender.connection_lost()
    assert sender.offer(b"AB") == 2  # the producer may go on while disconnected ...
    assert sender.frames() == []  # ... but nothing is sent before the peer says where to start
    resent = sender.resume(6, max_payload=4)
    assert payloads(resent) == [(6, b"6789"), (10, b"AB")]
    assert (sender.acked_offset, sender.sent_offset, sender.buffered) == (6, 12, 6)


def test_sender_resume_from_zero_and_from_everything() -> None:
    sender = StreamSender(4)
    sender.offer(b"abc")
    sender.frames()
    assert payloads(sender.resume(0)) == [(0, b"abc")]
    assert sender.resume(3) == []
    assert (sender.acked_offset, sender.buffered) == (3, 0)


def test_sender_refuses_a_resume_claiming_bytes_never_sent() -> None:
    sender = StreamSender(5)
    sender.offer(b"0123456789")
    sender.frames(max_payload=4)
    sender.offer(b"written, not sent")
    with pytest.raises(ProtocolError) as caught:
        sender.resume(11)
    assert caught.value.code == "bad_resume"
    assert caught.value.message == (
        "stream 5: peer claims to have received 11 bytes, but only 10 were ever sent"
    )


def test_sender_refuses_a_resume_asking_for_freed_bytes() -> None:
    sender = StreamSender(6)
    sender.offer(b"0123456789")
    sender.frames()
    sender.on_ack(7)
    with pytest.raises(ProtocolError) as caught:
        sender.resume(4)
    assert caught.value.code == "bad_resume"
    assert caught.value.message == (
        "stream 6: peer asks to resume from byte 4, but it acknowledged bytes up to 7,"
        " which were freed"
    )


def test_sender_sends_eof_after_its_data_and_again_on_resume() -> None:
    sender = StreamSender(7, window=100)
    sender.offer(b"last words")
    sender.close()
    sender.close()
    assert sender.closed
    assert sender.writable == 0
    with pytest.raises(ValueError, match="stream 7 is closed"):
        sender.offer(b"more")
    out = sender.frames(max_payload=6)
    assert out == [DataFrame(7, 0, b"last w"), DataFrame(7, 6, b"ords"), EofFrame(7, 10)]
    assert sender.frames() == []
    assert not sender.finished  # not acknowledged yet
    sender.connection_lost()
    assert sender.resume(10) == [EofFrame(7, 10)]  # the EOF may have been lost in the drop
    sender.on_ack(10)
    assert sender.finished


def test_sender_closing_an_empty_stream_sends_eof_at_zero() -> None:
    sender = StreamSender(8)
    sender.close()
    assert sender.frames() == [EofFrame(8, 0)]
    assert sender.finished


@pytest.mark.parametrize(
    ("stream", "window", "message"),
    [(-1, 10, "stream must be"), (MAX_STREAM + 1, 10, "stream must be"), (1, 0, "window")],
)
def test_sender_and_receiver_refuse_bad_settings(stream: int, window: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StreamSender(stream, window)
    with pytest.raises(ValueError, match=message):
        StreamReceiver(stream, window)


def test_sender_refuses_an_empty_frame_size() -> None:
    with pytest.raises(ValueError, match="max_payload"):
        StreamSender(1).frames(max_payload=0)


def test_defaults() -> None:
    assert StreamSender(1).window == StreamReceiver(1).window == DEFAULT_WINDOW == 1024 * 1024


# --- StreamReceiver -------------------------------------------------------------


def test_receiver_returns_only_new_bytes_in_order() -> None:
    receiver = StreamReceiver(1)
    assert receiver.on_data(0, b"hello") == b"hello"
    assert receiver.on_data(0, b"hello") == b""  # duplicate
    assert receiver.on_data(2, b"llo") == b""  # duplicate, cut differently
    assert receiver.on_data(3, b"lo wor") == b" wor"  # overlap: the new tail only
    assert receiver.on_data(9, b"ld") == b"ld"
    assert receiver.on_data(11, b"") == b""
    assert receiver.received == 11


def test_receiver_refuses_a_gap_and_keeps_its_state() -> None:
    receiver = StreamReceiver(9)
    receiver.on_data(0, b"abc")
    with pytest.raises(ProtocolError) as caught:
        receiver.on_data(5, b"fg")
    assert caught.value.code == "stream_gap"
    assert caught.value.message == (
        "stream 9: DATA starts at byte 5, but only 3 bytes were received: 2 are missing"
    )
    assert receiver.received == 3
    assert receiver.on_data(3, b"de") == b"de"


def test_receiver_acks_every_so_many_bytes_or_when_forced() -> None:
    receiver = StreamReceiver(2, window=100)
    assert receiver.ack_due(10) is None  # nothing received
    receiver.on_data(0, b"x" * 6)
    assert receiver.ack_due(10) is None
    receiver.on_data(6, b"x" * 4)
    assert receiver.ack_due(10) == AckFrame(2, 10)
    assert receiver.ack_due(10) is None
    receiver.on_data(10, b"x")
    assert receiver.ack_due(10) is None
    assert receiver.ack_due(10, force=True) == AckFrame(2, 11)
    assert receiver.ack_due(10, force=True) is None  # nothing new: no ack to send
    assert receiver.acked_offset == 11
    with pytest.raises(ValueError, match="every_bytes"):
        receiver.ack_due(0)


def test_receiver_ack_threshold_is_capped_by_its_window() -> None:
    receiver = StreamReceiver(2, window=8)
    receiver.on_data(0, b"x" * 8)
    # Waiting for 1 MiB would stall a sender whose window is 8 bytes.
    assert receiver.ack_due(1024 * 1024) == AckFrame(2, 8)


def test_receiver_refuses_data_beyond_the_window() -> None:
    receiver = StreamReceiver(3, window=10)
    receiver.on_data(0, b"x" * 6)
    with pytest.raises(ProtocolError) as caught:
        receiver.on_data(6, b"y" * 5)
    assert caught.value.code == "window_exceeded"
    assert caught.value.message == (
        "stream 3: DATA up to byte 11 overruns the window of 10 bytes"
        " after the last acknowledgement at byte 0"
    )
    assert receiver.ack_due(1) == AckFrame(3, 6)
    assert receiver.on_data(6, b"y" * 10) == b"y" * 10


def test_receiver_resume_position_counts_as_an_ack() -> None:
    receiver = StreamReceiver(4, window=10)
    receiver.on_data(0, b"x" * 10)
    assert receiver.resume_position() == StreamPosition(4, 10)
    assert receiver.ack_due(1, force=True) is None
    assert receiver.on_data(10, b"z" * 10) == b"z" * 10


def test_receiver_eof_after_every_byte() -> None:
    receiver = StreamReceiver(5)
    receiver.on_data(0, b"abc")
    assert not receiver.eof
    receiver.on_eof(3)
    assert receiver.eof
    receiver.on_eof(3)  # sent again after a resume
    assert receiver.ack_due() == AckFrame(5, 3)  # no more data: the last ack is due now
    assert receiver.on_data(1, b"bc") == b""  # an old duplicate is still harmless


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        (b"abc", lambda r: r.on_eof(5), "stream 6: EOF at byte 5, but only 3 bytes were received"),
        (b"abc", lambda r: r.on_eof(2), "stream 6: EOF at byte 2, but 3 bytes were already"),
        (b"abc", lambda r: (r.on_eof(3), r.on_eof(4)), "stream 6: EOF at byte 4 after an EOF"),
        (b"abc", lambda r: (r.on_eof(3), r.on_data(3, b"d")), "stream 6: DATA up to byte 4 after"),
        (b"abc", lambda r: (r.on_eof(3), r.on_data(2, b"cd")), "stream 6: DATA up to byte 4 after"),
    ],
)
def test_receiver_refuses_an_inconsistent_eof(
    setup: bytes, action: Callable[[StreamReceiver], object], message: str
) -> None:
    receiver = StreamReceiver(6)
    receiver.on_data(0, setup)
    with pytest.raises(ProtocolError) as caught:
        action(receiver)
    assert caught.value.code == "bad_eof"
    assert caught.value.message.startswith(message)


@given(
    data=st.binary(min_size=1, max_size=300),
    cuts=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 300)), max_size=40),
)
def test_receiver_reassembles_overlapping_duplicated_segments(
    data: bytes, cuts: list[tuple[int, int]]
) -> None:
    receiver = StreamReceiver(1, window=1000)
    out = bytearray()
    for start, length in cuts:
        start = min(start, len(data) - 1)
        segment = data[start : start + length]
        if start > receiver.received:
            with pytest.raises(ProtocolError):
                receiver.on_data(start, segment)
        else:
            out += receiver.on_data(start, segment)
        assert out == data[: receiver.received]
    out += receiver.on_data(0, data)
    assert out == data


# --- the whole thing: random transfers over connections that drop ------------


@dataclass
class Transfer:
    """Streams from one side to the other over a connection that may drop at any point.

    Frames travel as wire bytes, through the codec, in order (one WebSocket); a drop
    loses everything in flight in both directions, and the replacement connection
    starts with the receiving side's RESUME, as a real driver does.
    """

    inputs: list[bytes]
    window: int
    max_payload: int
    ack_every: int
    senders: list[StreamSender] = field(init=False)
    receivers: list[StreamReceiver] = field(init=False)
    written: list[int] = field(init=False)
    outputs: list[bytearray] = field(init=False)
    forward: deque[bytes] = field(default_factory=deque)  # DATA/EOF, sender -> receiver
    backward: deque[bytes] = field(default_factory=deque)  # ACK/RESUME, receiver -> sender
    connected: bool = True
    delivered: list[DataFrame] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Stream ids need not be small or dense.
        ids = [7 + 1000 * i for i in range(len(self.inputs))]
        self.senders = [StreamSender(s, self.window) for s in ids]
        self.receivers = [StreamReceiver(s, self.window) for s in ids]
        self.written = [0] * len(self.inputs)
        self.outputs = [bytearray() for _ in self.inputs]

    def index(self, stream: int) -> int:
        return (stream - 7) // 1000

    def write(self, i: int, size: int) -> None:
        sender = self.senders[i]
        if sender.closed:
            return
        chunk = self.inputs[i][self.written[i] : self.written[i] + size]
        taken = sender.offer(chunk)
        assert taken == min(len(chunk), self.window - (sender.buffered - taken))
        self.written[i] += taken
        if taken < len(chunk):
            event("the window held the producer back")
        if self.written[i] == len(self.inputs[i]):
            sender.close()

    def send(self) -> None:
        for sender in self.senders:
            self.forward.extend(encode(f) for f in sender.frames(self.max_payload))

    def deliver(self, count: int, *, force_acks: bool = False) -> None:
        for _ in range(min(count, len(self.forward))):
            frame = decode(self.forward.popleft(), self.max_payload)
            assert isinstance(frame, DataFrame | EofFrame)
            i = self.index(frame.stream)
            receiver = self.receivers[i]
            if isinstance(frame, DataFrame):
                self.outputs[i] += receiver.on_data(frame.offset, frame.payload)
                self.delivered.append(frame)
            else:
                receiver.on_eof(frame.offset)
            ack = receiver.ack_due(self.ack_every, force=force_acks)
            if ack is not None:
                self.backward.append(encode(ack))

    def ack_timer(self) -> None:
        for receiver in self.receivers:
            ack = receiver.ack_due(self.ack_every, force=True)
            if ack is not None:
                self.backward.append(encode(ack))

    def deliver_back(self, count: int) -> None:
        for _ in range(min(count, len(self.backward))):
            frame = decode(self.backward.popleft(), self.max_payload)
            if isinstance(frame, AckFrame):
                self.senders[self.index(frame.stream)].on_ack(frame.offset)
            else:
                assert isinstance(frame, ResumeFrame)
                received = frame.received()
                for sender in self.senders:
                    resent = sender.resume(received.get(sender.stream, 0), self.max_payload)
                    if any(isinstance(f, DataFrame) for f in resent):
                        event("bytes lost in a drop were sent again")
                    self.forward.extend(encode(f) for f in resent)

    def replay(self, pick: int) -> None:
        """An old frame arrives again: it must change nothing."""
        if self.delivered:
            old = self.delivered[pick % len(self.delivered)]
            assert self.receivers[self.index(old.stream)].on_data(old.offset, old.payload) == b""

    def drop(self) -> None:
        if self.forward:
            event("a drop lost frames in flight")
        if self.backward:
            event("a drop lost acks in flight")
        self.forward.clear()
        self.backward.clear()
        self.connected = False
        for sender in self.senders:
            sender.connection_lost()

    def reconnect(self) -> None:
        if self.connected:
            return
        self.connected = True
        resume = ResumeFrame(tuple(r.resume_position() for r in self.receivers))
        self.backward.appendleft(encode(resume))

    def check(self) -> None:
        for i, (sender, receiver) in enumerate(zip(self.senders, self.receivers, strict=True)):
            assert sender.buffered <= self.window
            assert sender.acked_offset <= receiver.acked_offset <= receiver.received
            assert receiver.received <= sender.sent_offset <= sender.written_offset
            assert self.outputs[i] == self.inputs[i][: receiver.received]

    def finish(self) -> int:
        """Run without drops or timers until every stream is through; returns the rounds.

        Every round either acknowledges at least `ack_every` more bytes of a stream or
        brings it to its end, so a stream of n bytes needs at most about n rounds.
        """
        self.reconnect()
        for rounds in range(1, max(map(len, self.inputs)) + 10):
            for i in range(len(self.inputs)):
                self.write(i, self.window)
            self.send()
            self.deliver(len(self.forward))
            self.deliver_back(len(self.backward))
            self.check()
            if all(s.finished for s in self.senders) and all(r.eof for r in self.receivers):
                return rounds
        raise AssertionError("the transfer stalled")


# (action, a number, a size); repeated names are drawn more often.
ACTIONS = (
    *("write", "send", "deliver") * 3,
    *("deliver_back", "ack_timer", "replay", "drop", "reconnect"),
)
steps_strategy = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.integers(0, 1000), st.integers(1, 400)),
    min_size=20,
    max_size=200,
)


def pattern(size_and_seed: tuple[int, int]) -> bytes:
    """`size` bytes in which every 4-byte group is distinct: misplaced bytes cannot hide."""
    size, seed = size_and_seed
    return b"".join((seed + i).to_bytes(4, "big") for i in range(size // 4 + 1))[:size]


stream_input = st.one_of(
    st.binary(max_size=300), st.tuples(st.integers(0, 6000), st.integers(0, 2**24)).map(pattern)
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=st.lists(stream_input, min_size=1, max_size=3),
    window=st.integers(1, 300),
    max_payload=st.integers(1, 80),
    ack_every_fraction=st.floats(0.01, 1.0),
    steps=steps_strategy,
)
def test_streams_survive_drops_without_loss_duplication_or_unbounded_buffers(
    inputs: list[bytes],
    window: int,
    max_payload: int,
    ack_every_fraction: float,
    steps: list[tuple[str, int, int]],
) -> None:
    transfer = Transfer(inputs, window, max_payload, max(1, int(window * ack_every_fraction)))
    for name, number, size in steps:
        match name:
            case "write":
                transfer.write(number % len(inputs), size)
            case "send":
                transfer.send()
            case "deliver":
                transfer.deliver(size % 8 + 1)
            case "deliver_back":
                transfer.deliver_back(size % 5 + 1)
            case "ack_timer":
                transfer.ack_timer()
            case "replay":
                transfer.replay(number)
            case "drop":
                transfer.drop()
                if number % 2:  # a new connection at once; otherwise an outage until "reconnect"
                    transfer.reconnect()
            case "reconnect":
                transfer.reconnect()
        transfer.check()
    transfer.finish()
    for i, data in enumerate(inputs):
        assert bytes(transfer.outputs[i]) == data
        assert transfer.senders[i].acked_offset == len(data)
        assert transfer.senders[i].buffered == 0


def test_a_fast_producer_is_held_to_the_window() -> None:
    """`yes` into a slow consumer: the producer only ever gets window-sized room."""
    window = 64 * 1024
    sender = StreamSender(1, window)
    receiver = StreamReceiver(1, window)
    in_flight: deque[DataFrame | EofFrame] = deque()
    produced = consumed = 0
    for _ in range(500):
        produced += sender.offer(b"y\n" * 50_000)  # 100 KB per turn, far more than fits
        assert sender.buffered <= window
        in_flight.extend(sender.frames(16 * 1024))
        frame = in_flight.popleft()  # the consumer takes one 16 KiB frame per turn
        assert isinstance(frame, DataFrame)
        consumed += len(receiver.on_data(frame.offset, frame.payload))
        if (ack := receiver.ack_due(window // 4)) is not None:
            sender.on_ack(ack.offset)
    assert consumed == 500 * 16 * 1024  # acks kept it moving at the consumer's pace
    assert produced - consumed <= window  # and held the producer to it


def test_notice_frames_round_trip_and_are_plain_text() -> None:
    frame = NoticeFrame("user:bob is watching this session (read-only)")
    assert encode(frame) == b"\x09" + frame.text.encode()
    assert decode(encode(frame)) == frame
    assert decode(b"\x09") == NoticeFrame("")
