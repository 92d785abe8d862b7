"""Helpers for agent tests: a recording runner sink, a tiny agent-channel server, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from corral.agent.identity import save_identity
from corral.agent.options import AgentOptions
from corral.errors import ProtocolError
from corral.protocol import (
    ErrorMessage,
    Message,
    ServerChannel,
    Welcome,
    codec,
)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
FAST = AgentOptions(
    backoff_base=0.02,
    backoff_cap=0.2,
    output_poll=0.02,
    kill_grace=0.3,
    connect_timeout=5.0,
    cleanup_delay=0.05,
)
NODE_ID = "mi-0123456789abcdef0"


async def wait_until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until `cond()` is truthy, polling the event loop; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def wait_until_sync(cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Blocking variant of `wait_until` for code outside the event loop."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def pid_gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


class Sink:
    """Collects what a Runner sends."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def of(self, kind: type[Message]) -> list[Message]:
        """Messages of one type, in order."""
        return [m for m in self.messages if isinstance(m, kind)]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh agent state directory; any worker left behind is killed afterwards."""
    path = tmp_path / "state"
    yield path
    kill_workers_under(path)


def kill_workers_under(path: Path) -> None:
    """SIGKILL every worker process group of the state dir `path` (from its journal and /proc)."""
    groups: set[int] = set()
    journal = path / "journal"
    if journal.exists():
        for line in journal.read_text().splitlines():
            parts = line.split()
            if len(parts) == 7 and parts[2] == "worker":
                groups.add(int(parts[3]))
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                groups.add(os.getpgid(int(entry.name)))
        except OSError:
            continue
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(group, os.WNOHANG)


class ChannelServer:
    """The server side of the agent channel, for tests: records frames, scripted replies."""

    def __init__(self, public_key: bytes, heartbeat: float = 0.05) -> None:
        self.public_key = public_key
        self.heartbeat = heartbeat
        self.received: list[Message] = []
        self.attempts = 0
        self.welcomed = 0
        self.connection: ServerConnection | None = None
        self.server: Server | None = None
        self.url = ""

    def _verify(self, node_id: str, payload: bytes, signature: bytes) -> bool:
        try:
            VerifyKey(self.public_key).verify(payload, signature)
        except BadSignatureError:
            return False
        return node_id == NODE_ID

    async def _handler(self, ws: ServerConnection) -> None:
        self.attempts += 1
        channel = ServerChannel(self._verify)
        await ws.send(channel.hello())
        try:
            self.received.append(channel.receive(await ws.recv()))
        except ProtocolError as exc:
            await ws.send(codec.encode(ErrorMessage(code=exc.code, message=exc.message)))
            await ws.close()
            return
        await ws.send(
            codec.encode(Welcome(NODE_ID, 1, self.heartbeat, codec.DEFAULT_MAX_MESSAGE_BYTES))
        )
        self.welcomed += 1
        self.connection = ws
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                self.received.append(channel.receive(frame))

    async def send(self, message: Message) -> None:
        """Send one message to the connected agent."""
        assert self.connection is not None
        await self.connection.send(codec.encode(message))

    async def drop(self) -> None:
        """Close the current connection from the server side."""
        assert self.connection is not None
        conn, self.connection = self.connection, None
        await conn.close()

    def of(self, kind: type[Message]) -> list[Message]:
        """Received messages of one type, in order."""
        return [m for m in self.received if isinstance(m, kind)]


@pytest.fixture
def node_key() -> SigningKey:
    """The node's key pair."""
    return SigningKey.generate()


@pytest.fixture
async def channel_server(node_key: SigningKey) -> AsyncIterator[ChannelServer]:
    """A running test channel server on 127.0.0.1 that trusts `node_key`."""
    fake = ChannelServer(bytes(node_key.verify_key))
    async with serve(fake._handler, "127.0.0.1", 0) as server:
        fake.server = server
        port = next(iter(server.sockets)).getsockname()[1]
        fake.url = f"http://127.0.0.1:{port}"
        yield fake


@pytest.fixture
def registered(state_dir: Path, node_key: SigningKey, channel_server: ChannelServer) -> Path:
    """A state directory registered to `channel_server` with `node_key`."""
    save_identity(state_dir, NODE_ID, channel_server.url, node_key)
    return state_dir
