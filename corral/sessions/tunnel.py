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
* **Resume.** A `TunnelLink` replaces a dropped session connection within the grace
  period (`corral.sessions.link`), and every stream goes on where it was: RESUME
  lists each stream's received position (streams that ended recently too), the
  peer resends from there, and what a dropped connection may have swallowed is sent
  again: an OPEN the peer never answered, the EOF or OPEN_FAILED of a stream that
  ended here (`resumed`, `repeated_open`). A stream ends cleanly only once the peer
  acknowledged all its bytes, so a resume never needs one this side forgot; the
  last `REMEMBERED_STREAMS` ended streams are remembered for a peer that missed
  their end.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.errors import ProtocolError
from corral.protocol import streams
from corral.sessions.link import Connector, Duplex, Link

logger = logging.getLogger(__name__)

# Concurrent connections per port session (the agent and the server enforce it).
MAX_STREAMS = 256
DEFAULT_HOST = "localhost"

Send = Callable[[streams.Frame], Awaitable[None]]
# Sends, in order and under the connection's send lock, the frames a callable makes.
Emit = Callable[[Callable[[], Sequence[streams.Frame]]], Awaitable[None]]
# Ended streams remembered per session, for a peer that missed their end.
REMEMBERED_STREAMS = 4096
LOST_REASON = "the connection was lost while the session reconnected"


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
class _Channel(Duplex):
    """One carried connection as this side sees it."""

    failed: asyncio.Event = field(default_factory=asyncio.Event)
    failure: str | None = None  # the peer's OPEN_FAILED reason
    target: tuple[str, int] | None = None  # the opener's: where OPEN asked to go
    confirmed: bool = False  # a frame for it came from the peer: the peer has it


class Tunnel:
    """The streams of one port session at one end; the driver feeds it frames."""

    def __init__(
        self,
        send: Send,
        window: int = streams.DEFAULT_WINDOW,
        max_payload: int = streams.DEFAULT_MAX_PAYLOAD,
        emit: Emit | None = None,
        remember: int = REMEMBERED_STREAMS,
    ) -> None:
        self._send = send
        self._emit = emit or self._emit_directly
        self._window = window
        self._max_payload = max_payload
        self._ack_every = max(1, window // 4)
        self._channels: dict[int, _Channel] = {}
        self._highest = 0  # the highest stream id this side has had
        self._connected = True  # False from a lost connection until the peer's RESUME
        self._remember = remember
        # Streams that ended, for a peer that missed the end (its connection dropped):
        # finished cleanly (bytes written here, bytes received) or failed (the reason).
        self._finished: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self._failures: OrderedDict[int, str] = OrderedDict()

    async def _emit_directly(self, produce: Callable[[], Sequence[streams.Frame]]) -> None:
        for frame in produce():
            await self._send(frame)

    def __len__(self) -> int:
        """Streams open (or being opened) now."""
        return len(self._channels)

    def __contains__(self, stream: object) -> bool:
        return stream in self._channels

    @property
    def highest(self) -> int:
        """The highest stream id this side has had (0: none yet)."""
        return self._highest

    def expect(self, stream: int) -> None:
        """Register `stream` before its endpoint exists, so its early DATA is held."""
        if stream in self._channels:
            raise ProtocolError(f"stream {stream} is already open", "bad_frame")
        channel = _Channel(
            streams.StreamSender(stream, self._window),
            streams.StreamReceiver(stream, self._window),
        )
        if not self._connected:  # its bytes wait for the RESUME like every other stream's
            channel.sender.connection_lost()
        self._channels[stream] = channel
        self._highest = max(self._highest, stream)

    async def open(self, stream: int, host: str, port: int) -> None:
        """Open `stream` to `host`:`port` at the far end (the opener's side)."""
        self.expect(stream)
        self._channels[stream].target = (host, port)
        if self._connected:  # otherwise the RESUME sends it, in stream order
            await self._send(streams.OpenFrame(stream, host, port))

    async def refuse(self, stream: int, reason: str) -> None:
        """The connection for `stream` could not be opened: tell the peer, forget it."""
        self._channels.pop(stream, None)
        self._highest = max(self._highest, stream)
        reason = streams.safe_reason(reason)
        self._remember_end(self._failures, stream, reason)
        await self._send(streams.OpenFailedFrame(stream, reason))

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
        channel.confirmed = True
        if isinstance(frame, streams.OpenFailedFrame):
            channel.failure = frame.reason or "the connection failed"
            channel.failed.set()
        else:
            channel.apply(frame)

    # --- resuming after the session's connection was replaced ------------------------

    def connection_lost(self) -> None:
        """The session's connection dropped: no stream sends until the peer's RESUME."""
        self._connected = False
        for channel in self._channels.values():
            channel.sender.connection_lost()

    def positions(self) -> tuple[streams.StreamPosition, ...]:
        """What this side received on each stream it has or recently finished (RESUME)."""
        out = [channel.receiver.resume_position() for channel in self._channels.values()]
        out += [
            streams.StreamPosition(stream, received)
            for stream, (_, received) in self._finished.items()
            if stream not in self._channels
        ]
        return tuple(out[: streams.MAX_RESUME_STREAMS])

    def resumed(self, frame: streams.ResumeFrame) -> list[streams.Frame]:
        """The peer's RESUME: what to send again so that every stream carries on.

        * A stream the peer lists: the bytes it has not got, from where it says.
        * The opener's stream the peer does not list and never answered: its OPEN
          was lost, so OPEN again, then its bytes from the start.
        * Any other stream the peer does not list: the peer has no record of it
          any more, so it cannot go on; it fails here.
        * A stream the peer lists that ended here: its end again (EOF at the last
          byte, or OPEN_FAILED with the reason), which the peer missed.
        """
        positions = frame.received()
        self._connected = True
        out: list[streams.Frame] = []
        for stream, channel in list(self._channels.items()):
            if stream in positions:
                channel.confirmed = True
            elif channel.confirmed or channel.target is None:
                self._channels.pop(stream)
                channel.failure = LOST_REASON
                channel.failed.set()
                continue
            else:
                out.append(streams.OpenFrame(stream, *channel.target))
            out += channel.sender.resume(positions.get(stream, 0), self._max_payload)
            channel.room.set()
        for stream in sorted(positions.keys() - self._channels.keys()):
            if stream in self._finished:
                out.append(streams.EofFrame(stream, self._finished[stream][0]))
            elif stream in self._failures:
                out.append(streams.OpenFailedFrame(stream, self._failures[stream]))
            elif stream <= self._highest:
                out.append(streams.OpenFailedFrame(stream, LOST_REASON))
            # else: the peer opened it and its OPEN is yet to come (it sends it again)
        return out

    def repeated_open(self, stream: int) -> list[streams.Frame] | None:
        """The answer to an OPEN of a stream this side had (sent again after a resume);
        None when the stream is new."""
        if stream > self._highest:
            return None
        if stream in self._channels:
            return []
        if stream in self._failures:
            return [streams.OpenFailedFrame(stream, self._failures[stream])]
        if stream in self._finished:
            return [streams.EofFrame(stream, self._finished[stream][0])]
        return [streams.OpenFailedFrame(stream, LOST_REASON)]

    def _remember_end(self, table: OrderedDict[int, Any], stream: int, value: Any) -> None:
        table[stream] = value
        while len(table) > self._remember:
            table.popitem(last=False)

    # --- carrying -----------------------------------------------------------------

    async def carry(self, stream: int, endpoint: Endpoint) -> str | None:
        """Pump `endpoint` both ways as `stream` until both directions ended or it failed.

        Returns None after a clean end (the endpoint is closed), else why it failed:
        the peer's OPEN_FAILED reason, or a local error, which the peer is told. The
        endpoint is aborted on failure and on cancellation. A clean end waits until
        the peer acknowledged every byte sent, so that a resume never needs a stream
        this side has forgotten.
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
                        self._remember_end(self._failures, stream, reason)
                        with contextlib.suppress(Exception):
                            await self._send(streams.OpenFailedFrame(stream, reason))
                        return reason
            clean = True
            await endpoint.close()
            acked = asyncio.create_task(self._acknowledged(channel))
            await asyncio.wait({acked, peer_failed}, return_when=asyncio.FIRST_COMPLETED)
            acked.cancel()
            if channel.failure is not None:
                return channel.failure
            self._remember_end(
                self._finished,
                stream,
                (channel.sender.written_offset, channel.receiver.received),
            )
            return None
        finally:
            self._channels.pop(stream, None)
            if not clean:
                endpoint.abort()
            for task in (upload, download, peer_failed):
                task.cancel()
            await asyncio.gather(upload, download, peer_failed, return_exceptions=True)

    @staticmethod
    async def _acknowledged(channel: _Channel) -> None:
        """Wait until the peer has every byte sent on `channel`."""
        while channel.sender.buffered:
            channel.room.clear()
            await channel.room.wait()

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
            await self._emit(lambda: sender.frames(self._max_payload))
            if not data:
                return

    async def _download(self, channel: _Channel, endpoint: Endpoint) -> None:
        """Peer -> endpoint; acknowledges what was written, then half-closes at EOF."""
        await channel.hand_on(endpoint.write, self._send, self._ack_every)
        await endpoint.write_eof()


class TunnelLink(Link):
    """A port session's connection to the server, kept across drops, with its `Tunnel`.

    The opener (the CLI) OPENs streams; the other end (the agent) gets each OPEN
    through `on_open`, and says it serves port sessions with `hello` (an empty
    RESUME) on its first connection. `ended_reason` is the server's EXIT reason.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        on_open: Callable[[streams.OpenFrame], Awaitable[None]] | None = None,
        hello: Sequence[streams.Frame] = (),
        window: int = streams.DEFAULT_WINDOW,
        max_payload: int = streams.DEFAULT_MAX_PAYLOAD,
    ) -> None:
        super().__init__(connector, max_payload)
        self._on_open = on_open
        self._hello_frames = list(hello)
        self.tunnel = Tunnel(self.send, window, max_payload, emit=self.emit)
        self.ended_reason: str | None = None

    def _hello(self) -> list[streams.Frame]:
        return list(self._hello_frames)

    def _lost(self) -> None:
        self.tunnel.connection_lost()

    def _positions(self) -> tuple[streams.StreamPosition, ...]:
        return self.tunnel.positions()

    def _resumed(self, frame: streams.ResumeFrame) -> list[streams.Frame]:
        return self.tunnel.resumed(frame)

    async def _on_frame(self, frame: streams.Frame) -> bool:
        if isinstance(frame, streams.ExitFrame):
            self.ended_reason = frame.reason or "the session ended"
            return True
        if isinstance(frame, streams.OpenFrame):
            if self._on_open is None:
                raise ProtocolError("OPEN from the server", "bad_frame")
            await self._on_open(frame)
            return False
        self.tunnel.on_frame(frame)
        return False
