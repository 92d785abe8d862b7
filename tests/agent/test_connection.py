"""The agent's WebSocket loop against a small in-test channel server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.server import serve

import corral
from corral.agent.connection import Agent
from corral.agent.identity import save_identity
from corral.agent.swarm import run_swarm
from corral.protocol import Accepted, Auth, Heartbeat, Invoke, Output, Result, ResultAck, Step
from tests.agent.conftest import FAST, NODE_ID, ChannelServer, wait_until


async def test_auth_heartbeat_and_invoke(registered: Path, channel_server: ChannelServer) -> None:
    agent = Agent(registered, FAST)
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: channel_server.welcomed == 1)
        (auth,) = channel_server.of(Auth)
        assert isinstance(auth, Auth)
        assert auth.node_id == NODE_ID
        assert auth.info.platform_type == "Linux"
        assert auth.info.agent_version == corral.__version__
        assert auth.info.kernel
        assert auth.info.arch
        assert auth.info.hostname
        assert "127.0.0.1" not in auth.info.ip_addresses
        assert "::1" not in auth.info.ip_addresses
        await wait_until(lambda: len(channel_server.of(Heartbeat)) >= 2)

        await channel_server.send(Invoke("c-1", [Step("s", "echo via-ws")]))
        await wait_until(lambda: channel_server.of(Result))
        assert Accepted("c-1") in channel_server.received
        outputs = [m for m in channel_server.of(Output) if isinstance(m, Output)]
        assert [(m.stream, m.offset, m.data) for m in outputs] == [("stdout", 0, b"via-ws\n")]
    finally:
        await agent.stop()
        await task


async def test_bad_key_is_refused_and_retried(
    state_dir: Path, channel_server: ChannelServer
) -> None:
    save_identity(state_dir, NODE_ID, channel_server.url, SigningKey.generate())
    agent = Agent(state_dir, FAST)
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: channel_server.attempts >= 3)
        assert channel_server.welcomed == 0
        assert agent.connections == 0
    finally:
        await agent.stop()
        await task


async def test_reconnects_after_drop_and_resends_unacked_result(
    registered: Path, channel_server: ChannelServer
) -> None:
    agent = Agent(registered, FAST)
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: channel_server.welcomed == 1)
        await channel_server.send(Invoke("c-2", [Step("s", "echo again; exit 4")]))
        await wait_until(lambda: channel_server.of(Result))
        channel_server.received.clear()

        await channel_server.drop()
        await wait_until(lambda: channel_server.welcomed == 2)
        await wait_until(lambda: channel_server.of(Result))
        (result,) = channel_server.of(Result)
        assert isinstance(result, Result)
        assert (result.command_id, result.status, result.response_code) == ("c-2", "Failed", 4)
        resent = [m for m in channel_server.of(Output) if isinstance(m, Output)]
        assert [(m.offset, m.data) for m in resent] == [(0, b"again\n")]

        # Acknowledged: not re-sent on the next connection.
        await channel_server.send(ResultAck("c-2"))
        await wait_until(lambda: not (registered / "invocations" / "c-2").exists())
        channel_server.received.clear()
        await channel_server.drop()
        await wait_until(lambda: channel_server.welcomed == 3)
        await wait_until(lambda: channel_server.of(Heartbeat))
        assert not channel_server.of(Result)
    finally:
        await agent.stop()
        await task


async def test_comes_back_when_the_server_starts_later(
    registered: Path, channel_server: ChannelServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert channel_server.server is not None
    port = next(iter(channel_server.server.sockets)).getsockname()[1]
    channel_server.server.close()
    await channel_server.server.wait_closed()
    caplog.set_level(logging.WARNING, logger="corral.agent.connection")
    agent = Agent(registered, FAST)
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: caplog.text.count("cannot connect") >= 3)
        assert agent.connections == 0
        async with serve(channel_server._handler, "127.0.0.1", port):
            await wait_until(lambda: channel_server.welcomed == 1)
            # Welcomed is counted as the server sends it; the agent is connected once it
            # has read it.
            await wait_until(agent.connected.is_set)
            await agent.stop()
            await task
    finally:
        await agent.stop()
        await task


async def test_swarm_runs_many_agents_in_one_loop(
    tmp_path: Path, node_key: SigningKey, channel_server: ChannelServer
) -> None:
    dirs = [tmp_path / f"agent-{i}" for i in range(5)]
    for path in dirs:
        save_identity(path, NODE_ID, channel_server.url, node_key)
    stop = asyncio.Event()
    swarm = asyncio.create_task(run_swarm(dirs, FAST, stop))
    await wait_until(lambda: channel_server.welcomed == 5)
    stop.set()
    await swarm
    assert all((path / "invocations").is_dir() for path in dirs)
