"""The relay's side of resuming a shell session, against a real server with a scripted
agent and operator: who is asked for what, what is dropped, and when it gives up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from corral.protocol import streams
from corral.protocol.messages import SessionStart
from tests.server.agentclient import connect_agent
from tests.server.conftest import LiveServer, fast_config, live_server
from tests.server.test_gateway import register
from tests.server.test_port_sessions import _join_as_node, frame, send

GRACE = 0.5


@dataclasses.dataclass
class Shell:
    """A shell session's two ends, and how to open another of either."""

    live: LiveServer
    session_id: str
    node_id: str
    key: object
    agent: ClientConnection
    operator: ClientConnection

    async def operator_again(self) -> ClientConnection:
        return await connect(
            f"ws://127.0.0.1:{self.live.port}/api/v1/sessions/{self.session_id}/stream",
            additional_headers={"Authorization": f"Bearer {self.live.token}"},
        )

    async def agent_again(self) -> ClientConnection:
        return await _join_as_node(self.live, self.session_id, self.node_id, self.key)  # type: ignore[arg-type]

    async def record(self) -> dict[str, object]:
        async with self.live.client() as client:
            return dict((await client.get(f"/api/v1/sessions/{self.session_id}")).json())


@contextlib.asynccontextmanager
async def shell_session(
    tmp_path: Path, grace: float = 30.0, **settings: object
) -> AsyncIterator[Shell]:
    config = fast_config(tmp_path / "data", session_resume_grace_seconds=grace, **settings)
    async with live_server(config) as live, live.client() as client:
        node_id, key = await register(client)
        control = await connect_agent(live.ws_url, node_id, key)
        created = await client.post("/api/v1/sessions", json={"node_id": node_id})
        assert created.status_code == 201, created.text
        assert created.json()["resume_grace_seconds"] == grace
        session_id = created.json()["session_id"]
        start = await control.expect(SessionStart)
        assert isinstance(start, SessionStart)
        assert start.resume_grace_seconds == grace
        agent = await _join_as_node(live, session_id, node_id, key)
        operator = await connect(
            f"ws://127.0.0.1:{live.port}/api/v1/sessions/{session_id}/stream",
            additional_headers={"Authorization": f"Bearer {live.token}"},
        )
        try:
            yield Shell(live, session_id, node_id, key, agent, operator)
        finally:
            await operator.close()
            await agent.close()
            await control.close()


def drop(ws: ClientConnection) -> None:
    """Lose the connection the way a network does: no close frame."""
    ws.transport.abort()


async def test_a_new_operator_connection_resumes_and_the_node_resends_once(
    tmp_path: Path,
) -> None:
    async with shell_session(tmp_path) as shell:
        await send(shell.agent, streams.DataFrame(1, 0, b"abc"))
        assert await frame(shell.operator) == streams.DataFrame(1, 0, b"abc")
        drop(shell.operator)
        await asyncio.sleep(0.2)
        # Output while the operator is away is not held by the relay ...
        await send(shell.agent, streams.DataFrame(1, 3, b"def"))
        operator = await shell.operator_again()
        await send(operator, streams.ResumeFrame((streams.StreamPosition(1, 3),)))
        # ... and the node is asked where to start again, as a request it must answer.
        assert await frame(shell.agent) == streams.ResumeFrame(
            (streams.StreamPosition(1, 3),), request=True
        )
        # ... the node's answer comes first, then it sends that output again.
        await send(
            shell.agent,
            streams.ResumeFrame((streams.StreamPosition(0, 0),)),
            streams.DataFrame(1, 3, b"def"),
        )
        assert await frame(operator) == streams.ResumeFrame((streams.StreamPosition(0, 0),))
        assert await frame(operator) == streams.DataFrame(1, 3, b"def")
        await send(shell.agent, streams.ExitFrame(0, ""))
        assert isinstance(await frame(operator), streams.ExitFrame)
        record = await shell.record()
        await operator.close()
    assert (record["status"], record["exit_code"], record["bytes_out"]) == ("Terminated", 0, 6)


async def test_a_new_node_connection_resumes_and_resent_output_is_counted_once(
    tmp_path: Path,
) -> None:
    async with shell_session(tmp_path) as shell:
        await send(shell.agent, streams.DataFrame(1, 0, b"abc"))
        assert await frame(shell.operator) == streams.DataFrame(1, 0, b"abc")
        drop(shell.agent)
        await asyncio.sleep(0.2)
        agent = await shell.agent_again()
        await send(agent, streams.ResumeFrame((streams.StreamPosition(0, 0),)))
        assert await frame(shell.operator) == streams.ResumeFrame(
            (streams.StreamPosition(0, 0),), request=True
        )
        await send(shell.operator, streams.ResumeFrame((streams.StreamPosition(1, 2),)))
        assert await frame(agent) == streams.ResumeFrame((streams.StreamPosition(1, 2),))
        await send(agent, streams.DataFrame(1, 2, b"cdef"), streams.ExitFrame(0, ""))
        assert await frame(shell.operator) == streams.DataFrame(1, 2, b"cdef")
        assert isinstance(await frame(shell.operator), streams.ExitFrame)
        record = await shell.record()
        await agent.close()
    assert record["bytes_out"] == 6  # "abcdef": the resent "c" once


async def test_a_replacing_connection_must_start_with_resume(tmp_path: Path) -> None:
    async with shell_session(tmp_path) as shell:
        drop(shell.operator)
        operator = await shell.operator_again()
        await send(operator, streams.DataFrame(0, 0, b"ls\r"))
        end = await frame(operator)
        assert end == streams.ExitFrame(-1, "the operator resumed the session without RESUME")
        await operator.close()
        assert (await shell.record())["status"] == "Failed"


async def test_only_the_relay_asks_for_a_resume(tmp_path: Path) -> None:
    async with shell_session(tmp_path) as shell:
        await send(shell.agent, streams.ResumeFrame(request=True))
        end = await frame(shell.operator)
        assert end == streams.ExitFrame(-1, "the node broke the session protocol")


async def test_the_session_ends_when_a_side_stays_away_past_the_grace_period(
    tmp_path: Path,
) -> None:
    async with shell_session(tmp_path, grace=GRACE) as shell:
        drop(shell.operator)
        end = await frame(shell.agent)
        record = await shell.record()
        with pytest.raises(InvalidStatus) as refused:  # over: the relay will not resume it
            await shell.operator_again()
    assert refused.value.response.status_code == 403
    reason = "the operator's connection was lost and not restored within 0.5 s"
    assert end == streams.ExitFrame(-1, reason)
    assert (record["status"], record["reason"]) == ("Terminated", reason)


async def test_a_connection_closed_on_purpose_ends_the_session_at_once(tmp_path: Path) -> None:
    async with shell_session(tmp_path) as shell:
        await shell.operator.close()  # a close frame, code 1000
        end = await frame(shell.agent)
        record = await shell.record()
    assert end == streams.ExitFrame(-1, "the operator closed the session connection")
    assert record["status"] == "Terminated"


async def test_a_half_open_connection_is_noticed_by_its_silence(tmp_path: Path) -> None:
    """The operator's machine stops answering (asleep, network gone): no close, no reset.
    The server's pings go unanswered, so it closes the connection and the grace
    period runs."""
    settings = {"ws_ping_interval_seconds": 0.2, "ws_ping_timeout_seconds": 0.3}
    async with shell_session(tmp_path, grace=GRACE, **settings) as shell:
        shell.operator.transport.pause_reading()  # no pong will come back
        started = time.monotonic()
        end = await frame(shell.agent)
        took = time.monotonic() - started
        drop(shell.operator)  # it would wait for a closing handshake that cannot come
    assert end == streams.ExitFrame(
        -1, "the operator's connection was lost and not restored within 0.5 s"
    )
    assert 0.5 <= took < 5


async def test_the_side_that_stays_is_still_read_while_the_other_is_away(tmp_path: Path) -> None:
    """Output sent while the operator is away is dropped, not held, so the node's
    connection keeps being read and answers the server's pings: it is still the same
    connection when the operator comes back."""
    settings = {"ws_ping_interval_seconds": 0.2, "ws_ping_timeout_seconds": 0.3}
    async with shell_session(tmp_path, **settings) as shell:
        drop(shell.operator)
        await asyncio.sleep(0.2)
        for offset in range(0, 30, 3):
            await send(shell.agent, streams.DataFrame(1, offset, b"abc"))
        await asyncio.sleep(1.5)  # many ping periods
        operator = await shell.operator_again()
        await send(operator, streams.ResumeFrame((streams.StreamPosition(1, 0),)))
        assert await frame(shell.agent) == streams.ResumeFrame(
            (streams.StreamPosition(1, 0),), request=True
        )
        await operator.close()
