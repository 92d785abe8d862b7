"""Session data streams: binary frames, and the per-stream state that makes them lossless.

A session (interactive shell, port forward) carries bytes operator ↔ server ↔ agent
over a dedicated binary WebSocket connection. That connection may drop and be
replaced within a grace period; no byte may be lost or duplicated, and no buffer may
grow without bound. This module is the sans-I/O core of that: the frame codec, and
`StreamSender`/`StreamReceiver`, the two ends of one direction of one stream. It
knows nothing about sockets or asyncio; a driver feeds it bytes and frames and sends
what it returns.

Wire format (big-endian; one frame per WebSocket binary message)::

    DATA        0x01 | stream u32 | offset u64 | payload (1..max_payload bytes)
    ACK         0x02 | stream u32 | offset u64
    RESIZE      0x03 | cols u16 | rows u16                     (1..10000 each)
    EOF         0x04 | stream u32 | offset u64
    EXIT        0x05 | code i32 | reason UTF-8                  (<= 1024 bytes)
    RESUME      0x06 | count u16 | count x (stream u32 | received u64)
    OPEN        0x07 | stream u32 | host length u16 | host UTF-8 | port u16
    OPEN_FAILED 0x08 | stream u32 | reason UTF-8                (<= 1024 bytes)
    NOTICE      0x09 | text UTF-8                                (<= 1024 bytes)
    RESUME_REQ  0x0A | as RESUME                                  (server -> endpoint only)

NOTICE is a message for the person at the terminal (e.g. "user:bob is watching"),
shown beside the session's output, never mixed into it.

Rules:

* **Offsets, not sequence numbers.** Every byte of a stream has a position, counted
  from 0 for the stream's whole life, across every connection. A DATA frame says
  where its first byte goes, so frames may be re-cut freely on resend (a different
  `max_payload`, a different chunking) and a receiver still knows exactly which bytes
  are new: a frame entirely before `received` is a duplicate and is dropped, one that
  straddles it yields only its new tail, one that starts after it is a gap, which a
  correct peer can never produce (frames travel in order on one connection, and a
  resend starts exactly where the peer said) and is therefore a ProtocolError.
* **Cumulative acks.** ACK(offset) means "I have every byte before `offset`". One
  number says everything, a lost or repeated ACK is harmless (the next one covers
  it), the sender frees a prefix of one contiguous buffer, and the same number is
  what the peer puts in RESUME after a reconnect. Selective acks would only help
  with reordering, which an ordered transport (TCP under WebSocket) never does.
* **Windows bound memory.** A sender holds every byte from `acked_offset` (not yet
  acknowledged, maybe not yet sent) up to what it accepted; `offer()` accepts at
  most `window - buffered` bytes and the caller keeps the rest and waits. That one
  buffer is both the send queue and the resend buffer, so a fast producer (`yes`)
  is slowed to the consumer's pace and memory stays at most `window` per stream
  direction. A receiver refuses DATA reaching more than `window` bytes past the last
  offset it acknowledged (ACK or RESUME), so a peer that ignores the window cannot
  make anyone buffer more either; its window must be at least the sender's (both
  default to `DEFAULT_WINDOW`).
* **Ack what was handed on.** A driver calls `ack_due()` after the bytes returned
  by `on_data()` were delivered onward (written to the pty or socket and drained):
  then a slow consumer holds acks back and the window throttles the producer end to
  end. Ack at most every `window / 2` bytes or so; `ack_due(force=True)` from a
  timer acknowledges a small tail, and once EOF arrived the final ack is due at once.
* **Resume.** When a connection is replaced, each side first sends RESUME listing,
  for each stream it receives, `StreamReceiver.resume_position()` (which counts as an
  acknowledgement). The other side stops sending (`connection_lost()`) until that
  RESUME arrives, then calls `StreamSender.resume(received)`: bytes before
  `received` are freed, everything after is sent again, and the EOF too if the
  stream was closed. A stream missing from a peer's RESUME is resumed from 0. A
  driver must stop reading the old connection before it sends RESUME on the new
  one: acks then never go backwards, and one that does is a ProtocolError.
* **Who resumes whom.** Sessions relay through the server, and either hop may be
  replaced; the two endpoints (operator CLI, agent) hold the stream state. The
  endpoint that reconnects sends RESUME as its first frame and sends no DATA until
  a RESUME comes back. The server forwards that RESUME to the other endpoint as a
  RESUME_REQ (`ResumeFrame(request=True)`): the receiver resumes its senders from
  the positions in it and, in the same step and before any resent DATA, answers
  with a RESUME of its own (which the server forwards as a plain RESUME). Until that
  answer the server drops the answering side's DATA, ACK and EOF: they were sent
  before it knew what the reconnected side has, and the resend covers them. An
  endpoint never sends RESUME_REQ.
* **Control frames are not sequenced.** RESIZE, EXIT, OPEN and OPEN_FAILED are not
  in any stream; after a resume the driver sends again the latest RESIZE and any
  OPEN, OPEN_FAILED or EXIT the peer may not have seen (all are idempotent). An EOF
  is resent on every resume; a receiver accepts the same EOF again.
* **Errors.** Anything malformed or contradictory raises `ProtocolError` with a
  precise message (numbers only, never the peer's text) and a `code`:
  `bad_frame` (malformed), `too_big` (DATA payload over the limit), `bad_ack`,
  `bad_resume`, `stream_gap`, `bad_eof`, `window_exceeded`. Building an invalid
  frame locally, or misusing a sender, raises `ValueError` (a bug, not the peer's).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import assert_never

from corral.errors import ProtocolError

DEFAULT_MAX_PAYLOAD = 64 * 1024
DEFAULT_WINDOW = 1024 * 1024
DEFAULT_ACK_EVERY = DEFAULT_WINDOW // 4
MAX_TERMINAL_SIZE = 10_000
MAX_REASON_BYTES = 1024
MAX_HOST_BYTES = 255
MAX_RESUME_STREAMS = 0xFFFF
MAX_STREAM = 0xFFFF_FFFF
MAX_OFFSET = 0xFFFF_FFFF_FFFF_FFFF
MIN_EXIT_CODE = -(2**31)
MAX_EXIT_CODE = 2**31 - 1


class FrameType(IntEnum):
    """The first byte of every frame."""

    DATA = 0x01
    ACK = 0x02
    RESIZE = 0x03
    EOF = 0x04
    EXIT = 0x05
    RESUME = 0x06
    OPEN = 0x07
    OPEN_FAILED = 0x08
    NOTICE = 0x09
    RESUME_REQUEST = 0x0A


class _InvalidFrameError(ValueError):
    """A frame field is out of range; `decode` turns it into a ProtocolError."""


# C0 and C1 controls: a reason or host is shown in an operator's terminal, where an
# escape sequence from a hostile node could rewrite the screen.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_OR_SPACE = re.compile("[\x00-\x20\x7f-\x9f]")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise _InvalidFrameError(message)


def _check_stream(kind: str, stream: int) -> None:
    _check(0 <= stream <= MAX_STREAM, f"{kind} stream must be 0..{MAX_STREAM}, got {stream}")


def _check_offset(kind: str, offset: int, name: str = "offset") -> None:
    _check(0 <= offset <= MAX_OFFSET, f"{kind} {name} must be 0..{MAX_OFFSET}, got {offset}")


def _utf8_size(what: str, text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise _InvalidFrameError(f"{what} is not valid UTF-8 text") from exc


def _check_reason(kind: str, reason: str) -> None:
    size = _utf8_size(f"{kind} reason", reason)
    _check(size <= MAX_REASON_BYTES, f"{kind} reason of {size} bytes exceeds {MAX_REASON_BYTES}")
    _check(_CONTROL.search(reason) is None, f"{kind} reason contains control characters")


# --- frames -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataFrame:
    """Bytes `offset` .. `offset + len(payload)` of a stream."""

    stream: int
    offset: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_stream("DATA", self.stream)
        _check_offset("DATA", self.offset)
        _check(len(self.payload) > 0, "DATA payload is empty")
        _check(
            self.offset + len(self.payload) <= MAX_OFFSET,
            f"DATA ends past byte {MAX_OFFSET} of the stream",
        )

    @property
    def end(self) -> int:
        """The offset just after the payload's last byte."""
        return self.offset + len(self.payload)


@dataclass(frozen=True, slots=True)
class AckFrame:
    """The sender of this frame has every byte of `stream` before `offset`."""

    stream: int
    offset: int

    def __post_init__(self) -> None:
        _check_stream("ACK", self.stream)
        _check_offset("ACK", self.offset)


@dataclass(frozen=True, slots=True)
class ResizeFrame:
    """The operator's terminal is now `cols` x `rows`."""

    cols: int
    rows: int

    def __post_init__(self) -> None:
        for name, value in (("cols", self.cols), ("rows", self.rows)):
            _check(
                1 <= value <= MAX_TERMINAL_SIZE,
                f"RESIZE {name} must be 1..{MAX_TERMINAL_SIZE}, got {value}",
            )


@dataclass(frozen=True, slots=True)
class EofFrame:
    """No byte at or after `offset` will come on `stream` (half-close)."""

    stream: int
    offset: int

    def __post_init__(self) -> None:
        _check_stream("EOF", self.stream)
        _check_offset("EOF", self.offset)


@dataclass(frozen=True, slots=True)
class ExitFrame:
    """The session ended: the shell's exit status, or -1 and a reason ("idle timeout")."""

    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        _check(
            MIN_EXIT_CODE <= self.code <= MAX_EXIT_CODE,
            f"EXIT code must be a signed 32-bit integer, got {self.code}",
        )
        _check_reason("EXIT", self.reason)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """One entry of RESUME: how many bytes of `stream` this side has received."""

    stream: int
    received: int

    def __post_init__(self) -> None:
        _check_stream("RESUME", self.stream)
        _check_offset("RESUME", self.received, "received")


@dataclass(frozen=True, slots=True)
class ResumeFrame:
    """What this side has received: first frame on a reconnected data connection.

    `request` (RESUME_REQ on the wire) is the server's forward of a reconnected
    peer's RESUME: resume from it and answer with a RESUME at once.
    """

    positions: tuple[StreamPosition, ...] = ()
    request: bool = False

    def __post_init__(self) -> None:
        count = len(self.positions)
        _check(
            count <= MAX_RESUME_STREAMS,
            f"RESUME lists {count} streams, more than {MAX_RESUME_STREAMS}",
        )
        seen: set[int] = set()
        for position in self.positions:
            _check(position.stream not in seen, f"RESUME lists stream {position.stream} twice")
            seen.add(position.stream)

    def received(self) -> dict[int, int]:
        """Bytes received by the peer, by stream id."""
        return {p.stream: p.received for p in self.positions}


@dataclass(frozen=True, slots=True)
class OpenFrame:
    """Open a new TCP connection to `host`:`port` from the node, carried as `stream`."""

    stream: int
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_stream("OPEN", self.stream)
        size = _utf8_size("OPEN host", self.host)
        _check(
            0 < size <= MAX_HOST_BYTES, f"OPEN host must be 1..{MAX_HOST_BYTES} bytes, got {size}"
        )
        _check(
            _CONTROL_OR_SPACE.search(self.host) is None,
            "OPEN host contains spaces or control characters",
        )
        _check(1 <= self.port <= 0xFFFF, f"OPEN port must be 1..65535, got {self.port}")


@dataclass(frozen=True, slots=True)
class OpenFailedFrame:
    """The connection for `stream` could not be opened ("connection refused")."""

    stream: int
    reason: str = ""

    def __post_init__(self) -> None:
        _check_stream("OPEN_FAILED", self.stream)
        _check_reason("OPEN_FAILED", self.reason)


@dataclass(frozen=True, slots=True)
class NoticeFrame:
    """A message for the person at the terminal, outside the session's byte streams."""

    text: str

    def __post_init__(self) -> None:
        _check_reason("NOTICE", self.text)


Frame = (
    DataFrame
    | AckFrame
    | ResizeFrame
    | EofFrame
    | ExitFrame
    | ResumeFrame
    | OpenFrame
    | OpenFailedFrame
    | NoticeFrame
)
# What a StreamSender emits: its data, then its EOF.
StreamFrame = DataFrame | EofFrame


def safe_reason(text: str) -> str:
    """`text` made fit for EXIT/OPEN_FAILED: controls become spaces, cut to the byte limit."""
    text = _CONTROL.sub(" ", text)
    raw = text.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    # Cutting may split a character: drop the partial tail rather than send invalid UTF-8.
    return raw.decode("utf-8", "ignore")


# --- codec --------------------------------------------------------------------

_STREAM_OFFSET = struct.Struct(">BIQ")  # DATA header, ACK, EOF
_RESIZE = struct.Struct(">BHH")
_EXIT = struct.Struct(">Bi")
_RESUME = struct.Struct(">BH")
_POSITION = struct.Struct(">IQ")
_OPEN = struct.Struct(">BIH")
_PORT = struct.Struct(">H")
_OPEN_FAILED = struct.Struct(">BI")


def encode(frame: Frame) -> bytes:
    """The wire bytes of `frame` (its fields were validated when it was built)."""
    match frame:
        case DataFrame():
            return _STREAM_OFFSET.pack(FrameType.DATA, frame.stream, frame.offset) + frame.payload
        case AckFrame():
            return _STREAM_OFFSET.pack(FrameType.ACK, frame.stream, frame.offset)
        case ResizeFrame():
            return _RESIZE.pack(FrameType.RESIZE, frame.cols, frame.rows)
        case EofFrame():
            return _STREAM_OFFSET.pack(FrameType.EOF, frame.stream, frame.offset)
        case ExitFrame():
            return _EXIT.pack(FrameType.EXIT, frame.code) + frame.reason.encode("utf-8")
        case ResumeFrame():
            kind = FrameType.RESUME_REQUEST if frame.request else FrameType.RESUME
            head = _RESUME.pack(kind, len(frame.positions))
            return head + b"".join(_POSITION.pack(p.stream, p.received) for p in frame.positions)
        case OpenFrame():
            host = frame.host.encode("utf-8")
            head = _OPEN.pack(FrameType.OPEN, frame.stream, len(host))
            return head + host + _PORT.pack(frame.port)
        case OpenFailedFrame():
            head = _OPEN_FAILED.pack(FrameType.OPEN_FAILED, frame.stream)
            return head + frame.reason.encode("utf-8")
        case NoticeFrame():
            return bytes([FrameType.NOTICE]) + frame.text.encode("utf-8")
        case _:
            assert_never(frame)


def decode(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """Decode one frame, or raise ProtocolError; DATA payloads may be 1..`max_payload` bytes."""
    if max_payload < 1:
        raise ValueError(f"max_payload must be at least 1, got {max_payload}")
    if not data:
        raise ProtocolError("empty frame", "bad_frame")
    parse = _PARSERS.get(data[0])
    if parse is None:
        raise ProtocolError(f"unknown frame type 0x{data[0]:02x}", "bad_frame")
    try:
        return parse(data, max_payload)
    except _InvalidFrameError as exc:
        raise ProtocolError(str(exc), "bad_frame") from exc


def _need(data: bytes, size: int, kind: str) -> None:
    if len(data) < size:
        raise ProtocolError(
            f"{kind} frame is truncated: needs at least {size} bytes, got {len(data)}",
            "bad_frame",
        )


def _exactly(data: bytes, size: int, kind: str) -> None:
    _need(data, size, kind)
    if len(data) > size:
        raise ProtocolError(
            f"{kind} frame has {len(data) - size} trailing bytes after its {size}", "bad_frame"
        )


def _text(raw: bytes, what: str, limit: int) -> str:
    if len(raw) > limit:
        raise ProtocolError(f"{what} of {len(raw)} bytes exceeds {limit}", "bad_frame")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8", "bad_frame") from exc


def _parse_data(data: bytes, max_payload: int) -> Frame:
    header = _STREAM_OFFSET.size
    _need(data, header + 1, "DATA")
    size = len(data) - header
    if size > max_payload:
        raise ProtocolError(
            f"DATA payload of {size} bytes exceeds the limit of {max_payload}", "too_big"
        )
    _, stream, offset = _STREAM_OFFSET.unpack_from(data)
    return DataFrame(stream, offset, bytes(data[header:]))


def _parse_ack(data: bytes, max_payload: int) -> Frame:
    _exactly(data, _STREAM_OFFSET.size, "ACK")
    _, stream, offset = _STREAM_OFFSET.unpack(data)
    return AckFrame(stream, offset)


def _parse_resize(data: bytes, max_payload: int) -> Frame:
    _exactly(data, _RESIZE.size, "RESIZE")
    _, cols, rows = _RESIZE.unpack(data)
    return ResizeFrame(cols, rows)


def _parse_eof(data: bytes, max_payload: int) -> Frame:
    _exactly(data, _STREAM_OFFSET.size, "EOF")
    _, stream, offset = _STREAM_OFFSET.unpack(data)
    return EofFrame(stream, offset)


def _parse_exit(data: bytes, max_payload: int) -> Frame:
    _need(data, _EXIT.size, "EXIT")
    _, code = _EXIT.unpack_from(data)
    return ExitFrame(code, _text(data[_EXIT.size :], "EXIT reason", MAX_REASON_BYTES))


def _parse_resume(data: bytes, max_payload: int) -> Frame:
    _need(data, _RESUME.size, "RESUME")
    kind, count = _RESUME.unpack_from(data)
    expected = _RESUME.size + count * _POSITION.size
    if len(data) != expected:
        raise ProtocolError(
            f"RESUME frame lists {count} streams, so must be {expected} bytes, got {len(data)}",
            "bad_frame",
        )
    positions = tuple(
        StreamPosition(stream, received)
        for stream, received in _POSITION.iter_unpack(data[_RESUME.size :])
    )
    return ResumeFrame(positions, request=kind == FrameType.RESUME_REQUEST)


def _parse_open(data: bytes, max_payload: int) -> Frame:
    _need(data, _OPEN.size + _PORT.size, "OPEN")
    _, stream, host_size = _OPEN.unpack_from(data)
    expected = _OPEN.size + host_size + _PORT.size
    if len(data) != expected:
        raise ProtocolError(
            f"OPEN frame with a {host_size}-byte host must be {expected} bytes, got {len(data)}",
            "bad_frame",
        )
    host = _text(data[_OPEN.size : _OPEN.size + host_size], "OPEN host", MAX_HOST_BYTES)
    (port,) = _PORT.unpack_from(data, _OPEN.size + host_size)
    return OpenFrame(stream, host, port)


def _parse_open_failed(data: bytes, max_payload: int) -> Frame:
    _need(data, _OPEN_FAILED.size, "OPEN_FAILED")
    _, stream = _OPEN_FAILED.unpack_from(data)
    reason = _text(data[_OPEN_FAILED.size :], "OPEN_FAILED reason", MAX_REASON_BYTES)
    return OpenFailedFrame(stream, reason)


def _parse_notice(data: bytes, max_payload: int) -> Frame:
    return NoticeFrame(_text(data[1:], "NOTICE text", MAX_REASON_BYTES))


_PARSERS: dict[int, Callable[[bytes, int], Frame]] = {
    FrameType.DATA: _parse_data,
    FrameType.ACK: _parse_ack,
    FrameType.RESIZE: _parse_resize,
    FrameType.EOF: _parse_eof,
    FrameType.EXIT: _parse_exit,
    FrameType.RESUME: _parse_resume,
    FrameType.OPEN: _parse_open,
    FrameType.OPEN_FAILED: _parse_open_failed,
    FrameType.NOTICE: _parse_notice,
    FrameType.RESUME_REQUEST: _parse_resume,
}


# --- stream state ---------------------------------------------------------------


class StreamSender:
    """The sending end of one direction of one stream: window, resend buffer, EOF.

    Offsets: acked_offset <= sent_offset <= written_offset, and the buffer holds
    exactly the bytes acked_offset..written_offset (buffered <= window).
    """

    def __init__(self, stream: int, window: int = DEFAULT_WINDOW) -> None:
        if not 0 <= stream <= MAX_STREAM:
            raise ValueError(f"stream must be 0..{MAX_STREAM}, got {stream}")
        if window < 1:
            raise ValueError(f"window must be at least 1 byte, got {window}")
        self._stream = stream
        self._window = window
        self._buffer = bytearray()
        self._acked = 0
        self._sent = 0
        self._closed = False
        self._eof_sent = False
        self._connected = True

    @property
    def stream(self) -> int:
        """The stream id."""
        return self._stream

    @property
    def window(self) -> int:
        """The most bytes this sender ever holds."""
        return self._window

    @property
    def acked_offset(self) -> int:
        """Every byte before this offset was acknowledged by the peer (and freed)."""
        return self._acked

    @property
    def sent_offset(self) -> int:
        """Every byte before this offset was handed out in a DATA frame."""
        return self._sent

    @property
    def written_offset(self) -> int:
        """Every byte before this offset was accepted by `offer()`."""
        return self._acked + len(self._buffer)

    @property
    def buffered(self) -> int:
        """Bytes held: accepted but not yet acknowledged (sent or not)."""
        return len(self._buffer)

    @property
    def writable(self) -> int:
        """How many bytes `offer()` would accept now."""
        return 0 if self._closed else self._window - len(self._buffer)

    @property
    def closed(self) -> bool:
        """`close()` was called: no more data will be offered."""
        return self._closed

    @property
    def finished(self) -> bool:
        """Closed, EOF handed out, and every byte acknowledged."""
        return self._closed and self._eof_sent and not self._buffer

    def offer(self, data: bytes | bytearray | memoryview) -> int:
        """Accept as much of `data` as the window allows; returns how many bytes were taken."""
        if self._closed:
            raise ValueError(f"stream {self._stream} is closed: no more data may be offered")
        view = memoryview(data).cast("B")
        take = min(len(view), self._window - len(self._buffer))
        if take > 0:
            self._buffer += view[:take]
        return take

    def close(self) -> None:
        """No more data: an EOF at `written_offset` follows the data still to send."""
        self._closed = True

    def frames(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> list[StreamFrame]:
        """The bytes not sent yet as DATA frames, then the EOF if closed; none while paused."""
        if max_payload < 1:
            raise ValueError(f"max_payload must be at least 1, got {max_payload}")
        if not self._connected:
            return []
        out: list[StreamFrame] = []
        written = self.written_offset
        while self._sent < written:
            start = self._sent - self._acked
            chunk = bytes(self._buffer[start : start + max_payload])
            out.append(DataFrame(self._stream, self._sent, chunk))
            self._sent += len(chunk)
        if self._closed and not self._eof_sent:
            out.append(EofFrame(self._stream, written))
            self._eof_sent = True
        return out

    def on_ack(self, offset: int) -> None:
        """The peer has every byte before `offset`: free them."""
        if offset > self._sent:
            raise ProtocolError(
                f"stream {self._stream}: ACK up to byte {offset},"
                f" but only {self._sent} bytes were sent",
                "bad_ack",
            )
        if offset < self._acked:
            raise ProtocolError(
                f"stream {self._stream}: ACK goes back to byte {offset},"
                f" after bytes up to {self._acked} were acknowledged",
                "bad_ack",
            )
        del self._buffer[: offset - self._acked]
        self._acked = offset

    def connection_lost(self) -> None:
        """The connection dropped: `frames()` returns nothing until `resume()`."""
        self._connected = False

    def resume(
        self, peer_received: int, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> list[StreamFrame]:
        """The peer's RESUME says it has `peer_received` bytes: free those, resend the rest."""
        if peer_received > self._sent:
            raise ProtocolError(
                f"stream {self._stream}: peer claims to have received {peer_received} bytes,"
                f" but only {self._sent} were ever sent",
                "bad_resume",
            )
        if peer_received < self._acked:
            raise ProtocolError(
                f"stream {self._stream}: peer asks to resume from byte {peer_received},"
                f" but it acknowledged bytes up to {self._acked}, which were freed",
                "bad_resume",
            )
        del self._buffer[: peer_received - self._acked]
        self._acked = self._sent = peer_received
        self._eof_sent = False
        self._connected = True
        return self.frames(max_payload)


class StreamReceiver:
    """The receiving end of one direction of one stream: ordering, duplicates, acks, EOF."""

    def __init__(self, stream: int, window: int = DEFAULT_WINDOW) -> None:
        if not 0 <= stream <= MAX_STREAM:
            raise ValueError(f"stream must be 0..{MAX_STREAM}, got {stream}")
        if window < 1:
            raise ValueError(f"window must be at least 1 byte, got {window}")
        self._stream = stream
        self._window = window
        self._received = 0
        self._acked = 0
        self._eof: int | None = None

    @property
    def stream(self) -> int:
        """The stream id."""
        return self._stream

    @property
    def window(self) -> int:
        """The most bytes the peer may send past the last acknowledgement."""
        return self._window

    @property
    def received(self) -> int:
        """Every byte before this offset was received and returned by `on_data()`."""
        return self._received

    @property
    def acked_offset(self) -> int:
        """The offset of the last ACK (or RESUME position) handed out."""
        return self._acked

    @property
    def eof(self) -> bool:
        """The peer half-closed this stream and every byte before its EOF was received."""
        return self._eof is not None

    def on_data(self, offset: int, payload: bytes) -> bytes:
        """The bytes of this DATA not seen before, in order (b"" for a duplicate)."""
        end = offset + len(payload)
        if offset > self._received:
            raise ProtocolError(
                f"stream {self._stream}: DATA starts at byte {offset}, but only"
                f" {self._received} bytes were received: {offset - self._received} are missing",
                "stream_gap",
            )
        if end <= self._received:
            return b""
        if self._eof is not None:
            raise ProtocolError(
                f"stream {self._stream}: DATA up to byte {end} after EOF at byte {self._eof}",
                "bad_eof",
            )
        if end > self._acked + self._window:
            raise ProtocolError(
                f"stream {self._stream}: DATA up to byte {end} overruns the window of"
                f" {self._window} bytes after the last acknowledgement at byte {self._acked}",
                "window_exceeded",
            )
        new = payload[self._received - offset :]
        self._received = end
        return new

    def on_eof(self, offset: int) -> None:
        """The peer sends nothing at or after `offset` (a repeated, identical EOF is fine)."""
        if self._eof is not None:
            if offset != self._eof:
                raise ProtocolError(
                    f"stream {self._stream}: EOF at byte {offset} after an EOF at byte {self._eof}",
                    "bad_eof",
                )
            return
        if offset > self._received:
            raise ProtocolError(
                f"stream {self._stream}: EOF at byte {offset}, but only {self._received}"
                f" bytes were received: {offset - self._received} are missing",
                "bad_eof",
            )
        if offset < self._received:
            raise ProtocolError(
                f"stream {self._stream}: EOF at byte {offset},"
                f" but {self._received} bytes were already received",
                "bad_eof",
            )
        self._eof = offset

    def ack_due(
        self, every_bytes: int = DEFAULT_ACK_EVERY, *, force: bool = False
    ) -> AckFrame | None:
        """An ACK once `every_bytes` (at most the window) arrived, when forced, or at EOF."""
        if every_bytes < 1:
            raise ValueError(f"every_bytes must be at least 1, got {every_bytes}")
        pending = self._received - self._acked
        if pending == 0:
            return None
        if not (force or self._eof is not None or pending >= min(every_bytes, self._window)):
            return None
        self._acked = self._received
        return AckFrame(self._stream, self._received)

    def resume_position(self) -> StreamPosition:
        """This stream's entry for a RESUME frame; the peer frees what it names, like an ACK."""
        self._acked = self._received
        return StreamPosition(self._stream, self._received)
