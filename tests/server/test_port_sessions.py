"""The relay of a port session against a real server, with a scripted agent and operator:
what it holds back, what it refuses, and what it refuses to pass at all."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect

from corral.protocol import streams
from corral.protocol.messages import SessionStart
from corral.protocol.requestsig import authorization_header, request_payload
from tests.server.agentclient import FakeAgent, connect_agent
from tests.server.conftest import LiveServer
from tests.server.test_gateway import register


@dataclass
class Ends:
    """The two stream connections of one port session."""

    session_id: str
    agent: ClientConnection
    operator: ClientConnection


async def frame(ws: ClientConnection) -> streams.Frame:
    raw = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(raw, bytes)
    return streams.decode(raw)


async def send(ws: ClientConnection, *frames: streams.Frame) -> None:
    for one in frames:
        await ws.send(streams.encode(one))


@contextlib.asynccontextmanager
async def port_session(live: LiveServer, port: int) -> AsyncIterator[tuple[Ends, FakeAgent]]:
    async with live.client() as client:
        node_id, key = await register(client)
        agent = await connect_agent(live.ws_url, node_id, key)
        created = await client.post(
            "/api/v1/sessions", json={"node_id": node_id, "kind": "port", "port": port}
        )
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        start = await agent.expect(SessionStart)
        assert isinstance(start, SessionStart)
        assert (start.kind, start.host, start.port) == ("port", "localhost", port)
        assert start.idle_timeout_seconds is None
        agent_ws = await _join_as_node(live, session_id, node_id, key)
        operator_ws = await connect(
            f"ws://127.0.0.1:{live.port}/api/v1/sessions/{session_id}/stream",
            additional_headers={"Authorization": f"Bearer {live.token}"},
        )
        try:
            yield Ends(session_id, agent_ws, operator_ws), agent
        finally:
            await operator_ws.close()
            await agent_ws.close()
            await agent.close()


async def _join_as_node(
    live: LiveServer, session_id: str, node_id: str, key: SigningKey
) -> ClientConnection:
    path = f"/agent/v1/sessions/{session_id}"
    stamp, nonce = int(time.time()), secrets.token_hex(16)
    signature = key.sign(request_payload("GET", path, stamp, nonce, b"")).signature
    return await connect(
        f"ws://127.0.0.1:{live.port}{path}",
        additional_headers={
            "Authorization": authorization_header(node_id, stamp, nonce, signature)
        },
    )


async def test_only_the_sessions_target_is_opened_and_frames_pass_once_the_agent_is_ready(
    live: LiveServer,
) -> None:
    async with port_session(live, 5432) as (ends, _agent):
        await send(
            ends.operator,
            streams.OpenFrame(1, "localhost", 5432),
            streams.DataFrame(1, 0, b"hello"),
            streams.OpenFrame(2, "db.internal", 5432),  # not what the session was granted
        )
        await asyncio.sleep(0.2)
        async with live.client() as client:
            record = (await client.get(f"/api/v1/sessions/{ends.session_id}")).json()
        assert record["status"] == "Connected"  # but nothing passes until the agent is ready
        await send(ends.agent, streams.ResumeFrame())
        assert await frame(ends.agent) == streams.OpenFrame(1, "localhost", 5432)
        assert await frame(ends.agent) == streams.DataFrame(1, 0, b"hello")
        # Refused by the server itself, and never shown to the node (its next frame is
        # the EOF below).
        assert await frame(ends.operator) == streams.OpenFailedFrame(
            2, "this session may only open localhost:5432"
        )
        await send(ends.agent, streams.DataFrame(1, 0, b"hi back"), streams.EofFrame(1, 7))
        assert await frame(ends.operator) == streams.DataFrame(1, 0, b"hi back")
        assert await frame(ends.operator) == streams.EofFrame(1, 7)
        await send(ends.operator, streams.EofFrame(1, 5), streams.ExitFrame(0))
        assert await frame(ends.agent) == streams.EofFrame(1, 5)
        # The node is told the session ended only once the outcome is stored.
        assert isinstance(await frame(ends.agent), streams.ExitFrame)
        async with live.client() as client:
            record = (await client.get(f"/api/v1/sessions/{ends.session_id}")).json()
    assert (record["status"], record["reason"]) == ("Terminated", "the operator closed the session")
    assert (record["bytes_in"], record["bytes_out"], record["connections"]) == (5, 7, 1)
    assert (record["target_host"], record["target_port"]) == ("localhost", 5432)


async def test_an_agent_that_starts_a_shell_instead_never_sees_the_operators_bytes(
    live: LiveServer,
) -> None:
    async with port_session(live, 22) as (ends, _agent):
        await send(
            ends.operator,
            streams.OpenFrame(1, "localhost", 22),
            streams.DataFrame(1, 0, b"SSH-2.0-OpenSSH\r\n"),
        )
        # An agent too old for port sessions runs a shell and sends its prompt.
        await send(ends.agent, streams.DataFrame(1, 0, b"$ "))
        end = await frame(ends.operator)
        assert end == streams.ExitFrame(
            -1, "the node's agent does not support port forwarding; upgrade it"
        )
        exit_to_agent = await frame(ends.agent)  # nothing but the end reaches the node
        assert isinstance(exit_to_agent, streams.ExitFrame)
        async with live.client() as client:
            record = (await client.get(f"/api/v1/sessions/{ends.session_id}")).json()
    assert record["status"] == "Failed"
