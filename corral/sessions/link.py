"""One end of a session's byte streams, kept alive across dropped connections.

The operator's CLI and the agent each run a `Link` over their WebSocket to the
server: a `ShellLink` for a shell, a `corral.sessions.tunnel.TunnelLink` for a port
forward. Each stream has, at each end, a `Duplex`: a `streams.StreamSender` for
what this end writes (keystrokes at the CLI, the shell's output at the agent) and a
`streams.StreamReceiver` for what it reads. Because the byte positions live here
and not in a connection, a connection that drops is replaced within `grace` seconds
and the session goes on where it was, with no byte lost or repeated:

* **Reconnect.** When the connection drops, the sender pauses (nothing is sent into
  a connection that may not deliver it) and the link connects again, with a
  growing pause between attempts (at most `retry_cap` seconds), until `grace`
  seconds have passed. The first frame on the new connection is a RESUME saying how
  much this end has received; the sender stays paused until the peer's RESUME
  says where to start again (`streams` explains the exchange). If the server
  refuses the new connection (the session ended meanwhile), or `grace` runs out,
  `run()` raises `LinkClosed`.
* **Answer a resume.** A RESUME_REQ (the other end reconnected) resumes the sender
  from the positions in it, and the answering RESUME goes out first, in the same
  step, before any resent byte.
* **Flow control.** `write()` waits while the window is full (bytes sent but not
  acknowledged), so a producer faster than the consumer at the far end is slowed
  down and this end holds at most one window. Received bytes wait in an inbox
  (at most one window, the peer's sender guarantees it) until `deliver` has taken
  them, and only then are they acknowledged: a slow consumer here slows the far
  producer down, while this end keeps reading frames (acks, resumes) meanwhile.
* **Order.** Everything sent goes out under one lock, so frames handed out by the
  sender reach the connection in the order of their offsets.
* **Control frames** (RESIZE, EXIT) are sent once; the latest of each is sent again
  after every resume (both are idempotent). Others go to `on_control`, which returns
  True when the session is over (the server's EXIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from corral.errors import ProtocolError
from corral.protocol import streams

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.05
LOST, RESTORED = "lost", "restored"


class LinkClosed(Exception):
    """The session's connection could not be kept: `reason` says why."""

    def __init__(self, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # True when the server refused the new connection: the session had ended.
        self.refused = refused


@dataclass(slots=True)
class Duplex:
    """Both directions of one stream at one end: what this end sends (window and
    resend buffer) and what it receives (in order, held in `inbox` until handed on,
    acknowledged once handed on). A shell session has one; a port session one per
    carried connection."""

    sender: streams.StreamSender
    receiver: streams.StreamReceiver
    inbox: bytearray = field(default_factory=bytearray)  # received, not handed on yet
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # inbox or EOF changed
    room: asyncio.Event = field(default_factory=asyncio.Event)  # an ACK (or resume) freed window

    def apply(self, frame: streams.DataFrame | streams.EofFrame | streams.AckFrame) -> None:
        """Take one DATA, EOF or ACK from the peer (the caller checked its stream id)."""
        if isinstance(frame, streams.DataFrame):
            data = self.receiver.on_data(frame.offset, frame.payload)
            if data:
                self.inbox += data
                self.arrived.set()
        elif isinstance(frame, streams.EofFrame):
            self.receiver.on_eof(frame.offset)
            self.arrived.set()
        else:
            self.sender.on_ack(frame.offset)
            self.room.set()

    async def hand_on(
        self,
        write: Callable[[bytes], Awaitable[None]],
        send: Callable[[streams.Frame], Awaitable[None]],
        ack_every: int,
    ) -> None:
        """Give received bytes to `write` as they come, acknowledging them once written
        (only when nothing more is waiting, so an ACK never covers bytes still held);
        returns at the peer's EOF, after the final ACK."""
        while True:
            if self.inbox:
                data = bytes(self.inbox)
                self.inbox.clear()
                await write(data)
                if not self.inbox:
                    ack = self.receiver.ack_due(ack_every)
                    if ack is not None:
                        await send(ack)
                continue
            if self.receiver.eof:
                ack = self.receiver.ack_due(force=True)
                if ack is not None:
                    await send(ack)
                return
            self.arrived.clear()
            await self.arrived.wait()


@dataclass(frozen=True, slots=True)
class Connector:
    """How a link connects: the connection to open (an async context manager giving a
    websockets connection), how long a dropped one may take to come back, the longest
    wait between attempts, and who hears of drops (LOST, RESTORED)."""

    connect: Callable[[], Any]
    grace: float
    retry_cap: float = 1.0
    on_state: Callable[[str], None] | None = None


class Link:
    """A session's connection to the server, replaced within `grace` when it drops.

    Subclasses keep the stream state and say what to send and do at each step:
    `_hello` (frames for a first connection), `_lost`, `_positions` (for RESUME),
    `_resumed` (frames to send again after the peer's RESUME) and `_on_frame`.
    Everything goes out through `emit`, under one lock and only while connected.
    """

    def __init__(
        self, connector: Connector, max_payload: int = streams.DEFAULT_MAX_PAYLOAD
    ) -> None:
        self._connect = connector.connect
        self._on_state = connector.on_state or (lambda _state: None)
        self._grace = max(0.0, connector.grace)
        self._retry_cap = max(FIRST_RETRY_SECONDS, connector.retry_cap)
        self._max_payload = max_payload
        self._ws: Any = None
        self._lock = asyncio.Lock()
        self._closing = False
        self.reconnects = 0
        self.ready = asyncio.Event()  # the first connection is up

    async def close(self) -> None:
        """This end is done with the session: close the connection, never reconnect."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    # --- what a subclass provides -------------------------------------------------

    def _hello(self) -> list[streams.Frame]:
        """Frames for a first connection (before anything else is sent on it)."""
        return []

    def _lost(self) -> None:
        """The connection dropped: stop handing out stream bytes until a RESUME."""

    def _positions(self) -> tuple[streams.StreamPosition, ...]:
        """What this end has received, for its RESUME (each counts as an acknowledgement)."""
        return ()

    def _resumed(self, frame: streams.ResumeFrame) -> list[streams.Frame]:
        """The peer's RESUME: the frames to send again, in order."""
        return []

    async def _on_frame(self, frame: streams.Frame) -> bool:
        """Apply any other frame; True when the session is over."""
        raise ProtocolError(f"unexpected {type(frame).__name__} from the server")

    # --- the connection loop ------------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect within the grace period, until the session is over.

        Errors of the first connection are raised as they are (the caller knows how
        to report them); a ProtocolError from the peer is raised too.
        """
        first = True
        lost_at: float | None = None
        attempt = 0
        while True:
            try:
                async with self._connect() as ws:
                    await self._attach(ws, resume=not first)
                    if lost_at is not None:
                        self.reconnects += 1
                        self._on_state(RESTORED)
                    first, lost_at, attempt = False, None, 0
                    if await self._read(ws):
                        return
            except InvalidStatus as error:
                if first:
                    raise
                status = error.response.status_code
                raise LinkClosed(
                    f"the server refused to resume the session (HTTP {status}): it has ended",
                    refused=True,
                ) from None
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as error:
                if first:
                    raise
                logger.debug("session connection lost: %s", error)
            finally:
                self._detach()
            if self._closing:
                return
            now = time.monotonic()
            if lost_at is None:
                lost_at = now
                self._on_state(LOST)
            left = self._grace - (now - lost_at)
            if left <= 0:
                raise LinkClosed(
                    f"the connection to the server was lost and not restored"
                    f" within {self._grace:g} s"
                )
            await asyncio.sleep(min(left, self._retry_cap, FIRST_RETRY_SECONDS * 2**attempt))
            attempt = min(attempt + 1, 30)

    async def _attach(self, ws: Any, resume: bool) -> None:
        async with self._lock:
            hello = [streams.ResumeFrame(self._positions())] if resume else self._hello()
            for frame in hello:
                await ws.send(streams.encode(frame))
            self._ws = ws
            self.ready.set()
        if not resume:  # a first connection: anything written before it goes now
            await self._flush()

    def _detach(self) -> None:
        if self._ws is not None:
            self._ws = None
            self._lost()

    async def _flush(self) -> None:
        """Send what is ready (a subclass with buffered output overrides this)."""

    async def _read(self, ws: Any) -> bool:
        """Apply frames until the connection closes (False) or the session is over (True)."""
        async for raw in ws:
            if not isinstance(raw, bytes):
                raise ProtocolError("a text frame on a session stream", "bad_frame")
            frame = streams.decode(raw, self._max_payload)
            if isinstance(frame, streams.ResumeFrame):
                await self._resume(frame)
            elif await self._on_frame(frame):
                return True
        return False

    async def _resume(self, frame: streams.ResumeFrame) -> None:
        """The peer says what it has: resend the rest (answering first when asked)."""
        async with self._lock:
            ws = self._ws
            if ws is None:
                return
            resent = self._resumed(frame)
            if frame.request:
                await ws.send(streams.encode(streams.ResumeFrame(self._positions())))
            await self._send_all(ws, resent)

    # --- sending ----------------------------------------------------------------

    async def emit(self, produce: Callable[[], Sequence[streams.Frame]]) -> None:
        """Send the frames `produce()` makes, if connected: it is called under the send
        lock, so stream frames leave in the order of their offsets."""
        async with self._lock:
            ws = self._ws
            if ws is not None:
                await self._send_all(ws, produce())

    async def send(self, frame: streams.Frame) -> None:
        """Send one frame if connected (otherwise a resume takes care of it)."""
        await self.emit(lambda: (frame,))

    @staticmethod
    async def _send_all(ws: Any, frames: Sequence[streams.Frame]) -> None:
        try:
            for frame in frames:
                await ws.send(streams.encode(frame))
        except ConnectionClosed:
            pass  # the reader sees the drop; a resume sends these again


class ShellLink(Link):
    """The two byte streams of a shell session at one end (CLI or agent)."""

    def __init__(
        self,
        connector: Connector,
        *,
        send_stream: int,
        receive_stream: int,
        deliver: Callable[[bytes], Awaitable[None]],
        on_control: Callable[[streams.Frame], Awaitable[bool]],
        window: int = streams.DEFAULT_WINDOW,
        max_payload: int = streams.DEFAULT_MAX_PAYLOAD,
    ) -> None:
        super().__init__(connector, max_payload)
        self._deliver = deliver
        self._on_control = on_control
        self._ack_every = max(1, window // 4)
        self._duplex = Duplex(
            streams.StreamSender(send_stream, window),
            streams.StreamReceiver(receive_stream, window),
        )
        self._sender = self._duplex.sender
        self._receiver = self._duplex.receiver
        self._room = self._duplex.room
        self._controls: dict[type, streams.Frame] = {}

    @property
    def sent(self) -> int:
        """Bytes written by this end so far (accepted by `write`)."""
        return self._sender.written_offset

    @property
    def received(self) -> int:
        """Bytes received from the far end so far."""
        return self._receiver.received

    async def run(self) -> None:
        """`Link.run`, with the task that hands received bytes to `deliver`; an error
        there (the terminal went away) ends the run too, instead of stalling it."""
        consumer = asyncio.create_task(self._consume())
        runner = asyncio.create_task(super().run())
        try:
            done, _ = await asyncio.wait({consumer, runner}, return_when=asyncio.FIRST_COMPLETED)
            if consumer in done and runner not in done:
                consumer.result()  # raises what `deliver` raised; None after the peer's EOF
            await runner
        finally:
            for task in (consumer, runner):
                task.cancel()
            await asyncio.gather(consumer, runner, return_exceptions=True)

    def _lost(self) -> None:
        self._sender.connection_lost()

    def _positions(self) -> tuple[streams.StreamPosition, ...]:
        return (self._receiver.resume_position(),)

    def _resumed(self, frame: streams.ResumeFrame) -> list[streams.Frame]:
        received = frame.received().get(self._sender.stream, 0)
        resent: list[streams.Frame] = list(self._sender.resume(received, self._max_payload))
        self._room.set()
        return resent + list(self._controls.values())

    async def _on_frame(self, frame: streams.Frame) -> bool:
        if isinstance(frame, streams.DataFrame | streams.EofFrame | streams.AckFrame):
            self._on_stream_frame(frame)
            return False
        return await self._on_control(frame)

    def _on_stream_frame(
        self, frame: streams.DataFrame | streams.EofFrame | streams.AckFrame
    ) -> None:
        ack = isinstance(frame, streams.AckFrame)
        expected = self._sender.stream if ack else self._receiver.stream
        if frame.stream != expected:
            raise ProtocolError(
                f"{type(frame).__name__} on stream {frame.stream}, expected {expected}",
                "bad_frame",
            )
        self._duplex.apply(frame)

    # --- sending ----------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send `data`, waiting while the window is full (or the connection is down)."""
        view = memoryview(data)
        while view:
            taken = self._sender.offer(view)
            view = view[taken:]
            await self._flush()
            if view:
                self._room.clear()
                if self._sender.writable == 0:
                    await self._room.wait()

    async def close_output(self) -> None:
        """No more data from this end: the far end gets EOF after the last byte."""
        if not self._sender.closed:
            self._sender.close()
        await self._flush()

    async def drained(self) -> None:
        """Wait until the far end acknowledged every byte written here (after close_output)."""
        while not (self._sender.closed and self._sender.buffered == 0):
            self._room.clear()
            await self._room.wait()

    async def send_control(self, frame: streams.Frame) -> None:
        """Send a RESIZE or EXIT now if connected; the latest of each again after a resume."""
        self._controls[type(frame)] = frame
        await self.send(frame)

    async def _flush(self) -> None:
        # frames() hands out bytes only while connected, and emit calls it only then.
        await self.emit(lambda: self._sender.frames(self._max_payload))

    # --- receiving --------------------------------------------------------------

    async def _consume(self) -> None:
        """Hand received bytes to `deliver`, then acknowledge them (when not connected,
        the next RESUME carries the position)."""
        await self._duplex.hand_on(self._deliver, self.send, self._ack_every)
