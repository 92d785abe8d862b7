"""TCP connections carried as streams of one session connection (port forwards, SSH proxy).

Both ends of a port session run a `Tunnel` over the session's binary WebSocket: the
operator's CLI, which accepts local connections (or pipes its stdin/stdout) and
OPENs a stream for each, and the agent, which connects to the target for each OPEN.
The server relays the frames between them (`corral.sessions.connections` says what
it checks and keeps).

Rules:

* **One connection, one stream id, both directions.** DATA, ACK and EOF on stream N
  concern connection N whichever side sends them; the direction is the sender's, and
  each direction has its own byte offsets from 0.
* **Stream ids.** The opener (the CLI) numbers its connections 1, 2, 3, ... in the
  order it opens them and never reuses one in a session; the server refuses an OPEN
  whose id is not above every earlier one.
* **OPEN first, then data at once.** The opener may send DATA right after OPEN; the
  other end holds it (at most a window) until its connection is up.
* **Flow control is end to end, per stream and direction.** A side reads its socket
  only while its `StreamSender` has room (a window of unacknowledged bytes), and the
  receiving side acknowledges bytes only once they were written to its socket and
  drained (and only when it holds nothing more for that stream, so an ACK never
  covers bytes still queued). A slow reader at one end therefore stops the reads at
  the other end for that connection only: the session connection itself never
  waits for one slow stream, and nothing grows past one window per stream and
  direction (`MAX_STREAMS` streams at most).
* **Half-close.** End of file read from a socket becomes an EOF frame; an EOF frame
  becomes `shutdown(SHUT_WR)` once every byte before it was written. A stream is done,
  and its socket closed, once both directions have ended.
* **Failure.** OPEN_FAILED {stream, reason} from either side ends a stream at once:
  before any data it means the connection could not be opened ("connection
  refused"), later that one end failed (a reset, a write to a closed socket). The
  receiving side aborts its socket; the reason goes to the operator.
* **Late frames are dropped.** Frames for a stream this side does not know (any more)
  are ignored: after a failure, the peer's frames for it may still be in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from corral.errors import ProtocolError
from corral.protocol import streams

logger = logging.getLogger(__name__)

# Concurrent connections per port session (the agent and the server enforce it).
MAX_STREAMS = 256
DEFAULT_HOST = "localhost"

Send = Callable[[streams.Frame], Awaitable[None]]


class Endpoint(Protocol):
    """One local end of a carried connection: a socket, or stdin and stdout."""

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes; b"" at end of file."""
        ...

    async def write(self, data: bytes) -> None:
        """Write all of `data` and wait until it was handed to the kernel."""
        ...

    async def write_eof(self) -> None:
        """Half-close: nothing more will be written."""
        ...

    def abort(self) -> None:
        """Drop the connection now (a reset), discarding anything unsent."""
        ...

    async def close(self) -> None:
        """Close after a clean end of both directions."""
        ...


class SocketEndpoint:
    """A TCP connection as an `Endpoint`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes; b"" at end of file."""
        return await self._reader.read(limit)

    async def write(self, data: bytes) -> None:
        """Write and drain."""
        if self._writer.is_closing():
            raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
        self._writer.write(data)
        await self._writer.drain()

    async def write_eof(self) -> None:
        """shutdown(SHUT_WR), once what was written is sent."""
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()

    def abort(self) -> None:
        """Close at once (RST when data is unread or unsent)."""
        self._writer.transport.abort()

    async def close(self) -> None:
        """Close and wait for the transport to let go."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def describe(error: BaseException) -> str:
    """A short, safe reason for a connection error ("connection refused")."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if not isinstance(error, OSError):
        return type(error).__name__
    # asyncio puts its own text ("Connect call failed (...)") where the errno's goes;
    # resolver errors (socket.gaierror) carry EAI_* codes that only their text explains.
    if error.errno and error.errno > 0 and not isinstance(error, socket.gaierror):
        text = os.strerror(error.errno)
    else:
        text = str(error.strerror or type(error).__name__)
    return text[:1].lower() + text[1:]


@dataclass(slots=True)
class _Channel:
    """One carried connection as this side sees it."""

    sender: streams.StreamSender
    receiver: streams.StreamReceiver
    inbox: bytearray = field(default_factory=bytearray)  # received, not yet written
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # inbox or EOF changed
    room: asyncio.Event = field(default_factory=asyncio.Event)  # an ACK freed window
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    failure: str | None = None  # the peer's OPEN_FAILED reason


class Tunnel:
    """The streams of one port session at one end; the driver feeds it frames."""

    def __init__(
        self,
        send: Send,
        window: int = streams.DEFAULT_WINDOW,
        max_payload: int = streams.DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self._send = send
        self._window = window
        self._max_payload = max_payload
        self._ack_every = max(1, window // 4)
        self._channels: dict[int, _Channel] = {}

    def __len__(self) -> int:
        """Streams open (or being opened) now."""
        return len(self._channels)

    def __contains__(self, stream: object) -> bool:
        return stream in self._channels

    def expect(self, stream: int) -> None:
        """Register `stream` before its endpoint exists, so its early DATA is held."""
        if stream in self._channels:
            raise ProtocolError(f"stream {stream} is already open", "bad_frame")
        self._channels[stream] = _Channel(
            streams.StreamSender(stream, self._window),
            streams.StreamReceiver(stream, self._window),
        )

    async def open(self, stream: int, host: str, port: int) -> None:
        """Open `stream` to `host`:`port` at the far end (the opener's side)."""
        self.expect(stream)
        await self._send(streams.OpenFrame(stream, host, port))

    async def refuse(self, stream: int, reason: str) -> None:
        """The connection for `stream` could not be opened: tell the peer, forget it."""
        self._channels.pop(stream, None)
        await self._send(streams.OpenFailedFrame(stream, streams.safe_reason(reason)))

    def on_frame(self, frame: streams.Frame) -> None:
        """Apply one DATA, ACK, EOF or OPEN_FAILED from the peer (never blocks).

        Raises ProtocolError when the peer breaks the stream rules (or sends a frame
        that has no place here); the driver ends the session.
        """
        if not isinstance(
            frame,
            streams.DataFrame | streams.AckFrame | streams.EofFrame | streams.OpenFailedFrame,
        ):
            raise ProtocolError(f"unexpected {type(frame).__name__} in a port session", "bad_frame")
        channel = self._channels.get(frame.stream)
        if channel is None:
            return  # ended here already; the peer's frames were in flight
        if isinstance(frame, streams.DataFrame):
            data = channel.receiver.on_data(frame.offset, frame.payload)
            if data:
                channel.inbox += data
                channel.arrived.set()
        elif isinstance(frame, streams.EofFrame):
            channel.receiver.on_eof(frame.offset)
            channel.arrived.set()
        elif isinstance(frame, streams.AckFrame):
            channel.sender.on_ack(frame.offset)
            channel.room.set()
        else:
            channel.failure = frame.reason or "the connection failed"
            channel.failed.set()

    async def carry(self, stream: int, endpoint: Endpoint) -> str | None:
        """Pump `endpoint` both ways as `stream` until both directions ended or it failed.

        Returns None after a clean end (the endpoint is closed), else why it failed:
        the peer's OPEN_FAILED reason, or a local error, which the peer is told. The
        endpoint is aborted on failure and on cancellation.
        """
        if stream not in self._channels:
            self.expect(stream)
        channel = self._channels[stream]
        upload = asyncio.create_task(self._upload(channel, endpoint))
        download = asyncio.create_task(self._download(channel, endpoint))
        peer_failed = asyncio.create_task(channel.failed.wait())
        running = {upload, download}
        clean = False
        try:
            while running:
                done, _ = await asyncio.wait(
                    running | {peer_failed}, return_when=asyncio.FIRST_COMPLETED
                )
                if channel.failure is not None:
                    return channel.failure
                for task in done & running:
                    running.discard(task)
                    error = task.exception()
                    if error is not None:
                        reason = describe(error)
                        logger.debug("stream %d failed locally: %s", stream, reason)
                        self._channels.pop(stream, None)
                        endpoint.abort()
                        with contextlib.suppress(Exception):
                            await self._send(streams.OpenFailedFrame(stream, reason))
                        return reason
            clean = True
            await endpoint.close()
            return None
        finally:
            self._channels.pop(stream, None)
            if not clean:
                endpoint.abort()
            for task in (upload, download, peer_failed):
                task.cancel()
            await asyncio.gather(upload, download, peer_failed, return_exceptions=True)

    async def _upload(self, channel: _Channel, endpoint: Endpoint) -> None:
        """Endpoint -> peer, reading only while the window has room."""
        sender = channel.sender
        while True:
            while sender.writable == 0:
                channel.room.clear()
                await channel.room.wait()
            data = await endpoint.read(min(sender.writable, self._max_payload))
            if data:
                sender.offer(data)
            else:
                sender.close()
            for frame in sender.frames(self._max_payload):
                await self._send(frame)
            if not data:
                return

    async def _download(self, channel: _Channel, endpoint: Endpoint) -> None:
        """Peer -> endpoint; acknowledges what was written, then half-closes at EOF."""
        receiver = channel.receiver
        while True:
            if channel.inbox:
                data = bytes(channel.inbox)
                channel.inbox.clear()
                await endpoint.write(data)
                if not channel.inbox:
                    ack = receiver.ack_due(self._ack_every)
                    if ack is not None:
                        await self._send(ack)
                continue
            if receiver.eof:
                ack = receiver.ack_due(force=True)
                if ack is not None:
                    await self._send(ack)
                await endpoint.write_eof()
                return
            channel.arrived.clear()
            await channel.arrived.wait()
