"""The agent's side of a port session against a scripted session connection: what it
opens, what it refuses and why, and how the session ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from corral.agent.port_forward import PortForward
from corral.protocol import streams
from corral.protocol.messages import SessionStart


class FakeSessionSocket:
    """The server's end of the agent's session WebSocket, driven by the test."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent: asyncio.Queue[streams.Frame] = asyncio.Queue()

    def push(self, frame: streams.Frame) -> None:
        self.incoming.put_nowait(streams.encode(frame))

    async def send(self, data: bytes) -> None:
        await self.sent.put(streams.decode(data))

    async def close(self) -> None:
        self.incoming.put_nowait(None)

    async def next_sent(self) -> streams.Frame:
        return await asyncio.wait_for(self.sent.get(), 5)

    def __aiter__(self) -> FakeSessionSocket:
        return self

    async def __anext__(self) -> bytes:
        data = await self.incoming.get()
        if data is None:
            raise StopAsyncIteration
        return data


def connecting(ws: FakeSessionSocket) -> Callable[[], AbstractAsyncContextManager[Any]]:
    """A session connection that opens once, onto `ws`."""

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[FakeSessionSocket]:
        yield ws

    return connect


@contextlib.asynccontextmanager
async def listening() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A loopback server that holds every connection open."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], held
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def start(port: int, max_duration: float | None = None) -> SessionStart:
    return SessionStart(
        "ses-00000000000000001",
        kind="port",
        host="127.0.0.1",
        port=port,
        idle_timeout_seconds=None,
        max_duration_seconds=max_duration,
    )


async def test_opens_only_the_target_and_only_so_many_at_once() -> None:
    async with listening() as (port, held):
        ws = FakeSessionSocket()
        forward = PortForward(start(port), connect_timeout=5, max_streams=1)
        running = asyncio.create_task(forward.run(connecting(ws)))
        assert await ws.next_sent() == streams.ResumeFrame()  # first: "I serve port sessions"
        ws.push(streams.OpenFrame(1, "127.0.0.1", port + 1 if port < 65535 else port - 1))
        assert await ws.next_sent() == streams.OpenFailedFrame(
            1, f"this session may only open 127.0.0.1:{port}"
        )
        ws.push(streams.OpenFrame(2, "127.0.0.1", port))
        ws.push(streams.DataFrame(2, 0, b"early bytes"))  # sent before the connect finished
        while not held:
            await asyncio.sleep(0.01)
        ws.push(streams.OpenFrame(3, "127.0.0.1", port))
        assert await ws.next_sent() == streams.OpenFailedFrame(
            3, "too many connections: at most 1 at once in a session"
        )
        ws.push(streams.ExitFrame(-1, "terminated"))
        await asyncio.wait_for(running, 5)


async def test_a_refused_connection_is_reported_with_its_reason() -> None:
    async with listening() as (port, _held):
        pass  # closed again: nothing listens on `port` now
    ws = FakeSessionSocket()
    running = asyncio.create_task(PortForward(start(port)).run(connecting(ws)))
    ws.push(streams.OpenFrame(1, "127.0.0.1", port))
    assert await ws.next_sent() == streams.ResumeFrame()
    failed = await ws.next_sent()
    assert failed == streams.OpenFailedFrame(1, "cannot connect from the node: connection refused")
    ws.incoming.put_nowait(None)  # the server closed the connection
    await asyncio.wait_for(running, 5)


async def test_the_maximum_duration_ends_the_session_with_a_reason() -> None:
    async with listening() as (port, _held):
        ws = FakeSessionSocket()
        await asyncio.wait_for(PortForward(start(port, max_duration=0.2)).run(connecting(ws)), 5)
        assert await ws.next_sent() == streams.ResumeFrame()
        assert await ws.next_sent() == streams.ExitFrame(-1, "maximum duration reached")
