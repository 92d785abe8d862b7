"""Two tunnels back to back in one process, joined by an ordered, bounded wire (as the
WebSocket through the server is), carrying real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from corral.protocol import streams
from corral.sessions.tunnel import SocketEndpoint, Tunnel, describe

WINDOW = 64 * 1024


@dataclass
class Wire:
    """Frames one way, in order; `put` waits when the far side is behind (backpressure)."""

    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(maxsize=4))

    async def send(self, frame: streams.Frame) -> None:
        await self.queue.put(streams.encode(frame))


@dataclass
class Pair:
    """The operator's tunnel and the node's, and what the node side does on OPEN."""

    operator: Tunnel
    node: Tunnel
    on_open: Callable[[streams.OpenFrame], None]


async def _socket_pair() -> tuple[SocketEndpoint, asyncio.StreamReader, asyncio.StreamWriter]:
    """An endpoint for a tunnel and the (reader, writer) of its other end."""
    left, right = socket.socketpair()
    endpoint = SocketEndpoint(*await asyncio.open_connection(sock=left))
    reader, writer = await asyncio.open_connection(sock=right)
    return endpoint, reader, writer


@contextlib.asynccontextmanager
async def tunnels(
    on_open: Callable[[Pair, streams.OpenFrame], None] | None = None,
) -> AsyncIterator[Pair]:
    to_node, to_operator = Wire(), Wire()
    pair = Pair(
        Tunnel(to_node.send, window=WINDOW),
        Tunnel(to_operator.send, window=WINDOW),
        lambda frame: None,
    )
    if on_open is not None:
        pair.on_open = lambda frame: on_open(pair, frame)

    async def deliver(wire: Wire, tunnel: Tunnel, node_side: bool) -> None:
        while True:
            frame = streams.decode(await wire.queue.get())
            if isinstance(frame, streams.OpenFrame):
                assert node_side
                tunnel.expect(frame.stream)
                pair.on_open(frame)
            else:
                tunnel.on_frame(frame)

    pumps = [
        asyncio.create_task(deliver(to_node, pair.node, True)),
        asyncio.create_task(deliver(to_operator, pair.operator, False)),
    ]
    try:
        yield pair
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def test_bytes_cross_both_ways_and_half_close_is_passed_on() -> None:
    node_ends: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    carried: list[asyncio.Task[str | None]] = []

    def open_on_node(pair: Pair, frame: streams.OpenFrame) -> None:
        async def connect() -> str | None:
            endpoint, reader, writer = await _socket_pair()
            node_ends.append((reader, writer))
            return await pair.node.carry(frame.stream, endpoint)

        carried.append(asyncio.create_task(connect()))

    async with tunnels(open_on_node) as pair:
        endpoint, client_reader, client_writer = await _socket_pair()
        await pair.operator.open(1, "localhost", 80)
        operator_side = asyncio.create_task(pair.operator.carry(1, endpoint))
        request = os.urandom(300_000)  # several windows
        client_writer.write(request)
        client_writer.write_eof()  # the client half-closes ...
        while not node_ends:
            await asyncio.sleep(0.01)
        server_reader, server_writer = node_ends[0]
        assert await server_reader.read() == request  # ... and the node's side sees EOF
        server_writer.write(b"reply after the client's EOF")
        server_writer.write_eof()
        assert await client_reader.read() == b"reply after the client's EOF"
        assert await operator_side is None
        assert await carried[0] is None
        assert len(pair.operator) == 0
        assert len(pair.node) == 0
        client_writer.close()
        server_writer.close()


async def test_a_slow_reader_stops_the_far_side_reading_and_nothing_piles_up() -> None:
    written = [0]
    flood_done = asyncio.Event()

    def open_on_node(pair: Pair, frame: streams.OpenFrame) -> None:
        async def flood() -> None:
            endpoint, _reader, writer = await _socket_pair()
            carrying = asyncio.create_task(pair.node.carry(frame.stream, endpoint))
            chunk = os.urandom(64 * 1024)
            digest = hashlib.sha256()
            for _ in range(64):  # 4 MiB
                writer.write(chunk)
                digest.update(chunk)
                await writer.drain()
                written[0] += len(chunk)
            writer.write_eof()
            flood_done.set()
            await carrying
            writer.close()
            await writer.wait_closed()

        tasks.append(asyncio.create_task(flood()))

    tasks: list[asyncio.Task[None]] = []
    async with tunnels(open_on_node) as pair:
        endpoint, client_reader, client_writer = await _socket_pair()
        await pair.operator.open(1, "localhost", 80)
        operator_side = asyncio.create_task(pair.operator.carry(1, endpoint))
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        # One window in flight plus what the kernel's socket buffers hold, not 4 MiB.
        assert written[0] < 2 * 1024 * 1024
        total = 0
        while chunk := await client_reader.read(65536):
            total += len(chunk)
        assert total == 64 * 64 * 1024
        assert flood_done.is_set()
        client_writer.write_eof()  # our direction ends too: the connection is done
        assert await operator_side is None
        client_writer.close()
        await asyncio.gather(*tasks)


async def test_a_failure_at_the_far_side_closes_the_near_socket_with_the_reason() -> None:
    def refuse(pair: Pair, frame: streams.OpenFrame) -> None:
        task = asyncio.create_task(pair.node.refuse(frame.stream, "connection refused"))
        refusals.append(task)

    refusals: list[asyncio.Task[None]] = []
    async with tunnels(refuse) as pair:
        endpoint, client_reader, client_writer = await _socket_pair()
        await pair.operator.open(1, "localhost", 1)
        client_writer.write(b"hello?")
        assert await pair.operator.carry(1, endpoint) == "connection refused"
        with contextlib.suppress(ConnectionResetError):
            assert await client_reader.read() == b""
        client_writer.close()
        await asyncio.gather(*refusals)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"), "connection refused"),
        (TimeoutError(), "timed out"),
        (socket.gaierror(-2, "Name or service not known"), "name or service not known"),
        (ValueError("secret detail"), "ValueError"),
    ],
)
def test_errors_are_described_in_a_few_safe_words(error: BaseException, reason: str) -> None:
    assert describe(error) == reason


class Captured:
    """A tunnel's outgoing frames, kept."""

    def __init__(self) -> None:
        self.frames: list[streams.Frame] = []

    async def send(self, frame: streams.Frame) -> None:
        self.frames.append(frame)


async def test_a_resume_sends_again_the_opens_the_peer_never_saw() -> None:
    out = Captured()
    tunnel = Tunnel(out.send)
    await tunnel.open(1, "localhost", 22)
    await tunnel.open(2, "localhost", 22)
    tunnel.on_frame(streams.AckFrame(1, 0))  # the node answered for stream 1: it has it
    tunnel.connection_lost()
    await tunnel.open(3, "localhost", 22)  # while reconnecting: its OPEN waits
    assert out.frames == [
        streams.OpenFrame(1, "localhost", 22),
        streams.OpenFrame(2, "localhost", 22),
    ]
    resent = tunnel.resumed(streams.ResumeFrame((streams.StreamPosition(1, 0),)))
    assert resent == [streams.OpenFrame(2, "localhost", 22), streams.OpenFrame(3, "localhost", 22)]
    assert len(tunnel) == 3


async def test_a_stream_the_peer_forgot_fails_here_with_a_reason() -> None:
    tunnel = Tunnel(Captured().send)
    await tunnel.open(1, "localhost", 22)
    tunnel.on_frame(streams.DataFrame(1, 0, b"banner"))
    tunnel.connection_lost()
    assert tunnel.resumed(streams.ResumeFrame()) == []  # the node lists no stream 1
    assert 1 not in tunnel
    assert tunnel.positions() == ()


async def test_ended_streams_are_answered_for_a_peer_that_missed_their_end() -> None:
    out = Captured()
    node = Tunnel(out.send)
    node.expect(4)
    await node.refuse(5, "cannot connect from the node: connection refused")
    refused = streams.OpenFailedFrame(5, "cannot connect from the node: connection refused")
    assert out.frames == [refused]
    # The operator sends OPEN 5 again (it never got the answer): answered, not reconnected.
    assert node.repeated_open(5) == [refused]
    assert node.repeated_open(4) == []  # still being carried
    assert node.repeated_open(6) is None  # new
    # The operator's RESUME lists 5, and 3, which this side had and forgot.
    node.connection_lost()
    resent = node.resumed(
        streams.ResumeFrame(
            (
                streams.StreamPosition(3, 0),
                streams.StreamPosition(4, 0),
                streams.StreamPosition(5, 0),
                streams.StreamPosition(9, 0),  # opened by the peer, its OPEN still to come
            )
        )
    )
    assert resent == [
        streams.OpenFailedFrame(3, "the connection was lost while the session reconnected"),
        refused,
    ]
