"""The agent gateway against a real uvicorn server and a minimal in-test agent."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey
from websockets.exceptions import ConnectionClosed

from corral.protocol import (
    PROTOCOL_VERSION,
    SERVER_MESSAGES,
    Accepted,
    Auth,
    Cancel,
    ErrorMessage,
    Heartbeat,
    Invoke,
    Output,
    OutputRewind,
    Result,
    ResultAck,
    StepResult,
    auth_payload,
    decode,
    encode,
)
from tests.server.agentclient import INFO, FakeAgent, connect_agent, open_raw
from tests.server.conftest import LiveServer, fast_config, live_server


async def register(
    client: httpx.AsyncClient, tags: dict[str, str] | None = None
) -> tuple[str, SigningKey]:
    """Register a node over HTTP."""
    key = SigningKey.generate()
    activation = (
        await client.post("/api/v1/activations", json={"tags": tags or {}, "registration_limit": 1})
    ).json()
    response = await client.post(
        "/api/v1/register",
        json={
            "activation_id": activation["activation_id"],
            "activation_code": activation["activation_code"],
            "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["node_id"], key


async def send_command(client: httpx.AsyncClient, targets: list[str], **extra: object) -> str:
    """Send an echo command; returns its id."""
    body = {
        "document_name": "Corral-RunShellScript",
        "targets": targets,
        "parameters": {"commands": ["echo hi"]},
        **extra,
    }
    response = await client.post("/api/v1/commands", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["command_id"])


async def wait_command(
    client: httpx.AsyncClient, command_id: str, status: str, timeout: float = 10.0
) -> dict[str, object]:
    """Poll until the command has `status`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body = (await client.get(f"/api/v1/commands/{command_id}")).json()
        if body["status"] == status:
            return body  # type: ignore[no-any-return]
        if loop.time() > deadline:
            raise AssertionError(f"command stayed {body['status']}: {body}")
        await asyncio.sleep(0.02)


async def wait_invocation(
    client: httpx.AsyncClient, command_id: str, status: str, timeout: float = 10.0
) -> dict[str, object]:
    """Poll until the command's first invocation has `status` (writes are group-committed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body = (await client.get(f"/api/v1/commands/{command_id}")).json()
        inv: dict[str, object] = body["invocations"][0]
        if inv["status"] == status:
            return inv
        if loop.time() > deadline:
            raise AssertionError(f"invocation stayed {inv['status']}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def client(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client of the live server."""
    async with live.client() as c:
        yield c


async def expect_closed(ws: object, code: int, error_code: str) -> None:
    """The server sends ErrorMessage(error_code) and closes with `code`."""
    frame = await asyncio.wait_for(ws.recv(), 10)  # type: ignore[attr-defined]
    message = decode(frame, SERVER_MESSAGES)
    assert isinstance(message, ErrorMessage)
    assert message.code == error_code
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)  # type: ignore[attr-defined]
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


async def test_handshake_marks_node_online_and_disconnect_lost(
    live: LiveServer, client: httpx.AsyncClient
) -> None:
    node_id, key = await register(client)
    agent = await connect_agent(live.ws_url, node_id, key)
    node = (await client.get(f"/api/v1/nodes/{node_id}")).json()
    assert node["ping_status"] == "Online"
    assert node["platform"] == {
        "type": "Linux",
        "name": "debian",
        "version": "12",
        "kernel": "6.1.0",
        "arch": "x86_64",
    }
    assert node["hostname"] == INFO.hostname
    await agent.send(Heartbeat())
    await agent.close()
    for _ in range(200):
        node = (await client.get(f"/api/v1/nodes/{node_id}")).json()
        if node["ping_status"] == "ConnectionLost":
            break
        await asyncio.sleep(0.02)
    assert node["ping_status"] == "ConnectionLost"


async def test_bad_signature_is_refused(live: LiveServer, client: httpx.AsyncClient) -> None:
    node_id, _key = await register(client)
    ws, hello = await open_raw(live.ws_url)
    wrong = SigningKey.generate().sign(auth_payload(hello.nonce, node_id)).signature
    await ws.send(encode(Auth(node_id, wrong, PROTOCOL_VERSION, INFO)))
    await expect_closed(ws, 1008, "auth_failed")
    assert (await client.get(f"/api/v1/nodes/{node_id}")).json()["ping_status"] == "ConnectionLost"


async def test_unknown_node_is_refused(live: LiveServer) -> None:
    ws, hello = await open_raw(live.ws_url)
    key = SigningKey.generate()
    node_id = "mi-0123456789abcdef0"
    signature = key.sign(auth_payload(hello.nonce, node_id)).signature
    await ws.send(encode(Auth(node_id, signature, PROTOCOL_VERSION, INFO)))
    await expect_closed(ws, 1008, "auth_failed")


async def test_replayed_handshake_is_refused(live: LiveServer, client: httpx.AsyncClient) -> None:
    node_id, key = await register(client)
    agent = await connect_agent(live.ws_url, node_id, key)
    await agent.close()
    ws, _hello = await open_raw(live.ws_url)
    await ws.send(agent.auth_frame)
    await expect_closed(ws, 1008, "auth_failed")


async def test_malformed_frame_closes_with_1008(
    live: LiveServer, client: httpx.AsyncClient
) -> None:
    node_id, key = await register(client)
    agent = await connect_agent(live.ws_url, node_id, key)
    await agent.ws.send('{"type": "output", "command_id": 5}')
    await expect_closed(agent.ws, 1008, "bad_message")


async def test_oversized_frame_closes_with_1009(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data", max_message_bytes=4096)
    async with live_server(config) as live, live.client() as client:
        node_id, key = await register(client)
        agent = await connect_agent(live.ws_url, node_id, key)
        await agent.send(Output("c" * 36, "stdout", 0, b"x" * 8000))
        await expect_closed(agent.ws, 1009, "too_big")
        assert await live.server.config.app.state.context.store.count_rows("commands") == 0  # type: ignore[attr-defined]


async def test_result_for_another_nodes_invocation_is_refused(
    live: LiveServer, client: httpx.AsyncClient
) -> None:
    node_a, key_a = await register(client)
    node_b, key_b = await register(client)
    agent_a = await connect_agent(live.ws_url, node_a, key_a)
    agent_b = await connect_agent(live.ws_url, node_b, key_b)
    command_id = await send_command(client, [node_a])
    invoke = await agent_a.expect(Invoke)
    assert invoke.command_id == command_id  # type: ignore[attr-defined]
    await agent_b.send(Output(command_id, "stdout", 0, b"forged"))
    refused = await agent_b.expect(ErrorMessage)
    assert refused.code == "not_found"  # type: ignore[attr-defined]
    await agent_b.finish(command_id, b"", "Failed", 1)
    refused = await agent_b.expect(ErrorMessage)
    assert refused.code == "not_found"  # type: ignore[attr-defined]
    inv = await wait_invocation(client, command_id, "InProgress")
    assert (inv["node_id"], inv["stdout"]) == (node_a, "")
    await agent_a.finish(command_id, b"hi\n")
    await agent_a.expect(ResultAck)
    done = await wait_command(client, command_id, "Success")
    assert done["invocations"][0]["stdout"] == "hi\n"  # type: ignore[index]


async def test_output_dedupe_rewind_and_ack(live: LiveServer, client: httpx.AsyncClient) -> None:
    node_id, key = await register(client)
    agent = await connect_agent(live.ws_url, node_id, key)
    command_id = await send_command(client, [node_id])
    await agent.expect(Invoke)
    await agent.send(Accepted(command_id))
    await agent.send(Output(command_id, "stdout", 0, b"hello "))
    await agent.send(Output(command_id, "stdout", 0, b"hello "))  # re-sent: deduplicated
    await agent.send(Output(command_id, "stdout", 100, b"gap"))  # gap: rewind to 6
    rewind = await agent.expect(OutputRewind)
    assert (rewind.stream, rewind.offset) == ("stdout", 6)  # type: ignore[attr-defined]
    result = Result(command_id, "Success", "Success", 0, 12, 0, [StepResult("s", "Success", 0)])
    await agent.send(result)  # only 6 of 12 bytes stored: rewind, no ack
    rewind = await agent.expect(OutputRewind)
    assert rewind.offset == 6  # type: ignore[attr-defined]
    await wait_invocation(client, command_id, "InProgress")
    await agent.send(Output(command_id, "stdout", 3, b"lo world\n"))  # overlaps: tail kept
    await agent.send(result)
    ack = await agent.expect(ResultAck)
    assert ack.command_id == command_id  # type: ignore[attr-defined]
    body = (await client.get(f"/api/v1/commands/{command_id}")).json()
    assert body["status"] == "Success"
    [inv] = body["invocations"]
    assert (inv["stdout"], inv["stdout_bytes"], inv["response_code"]) == ("hello world\n", 12, 0)
    assert inv["steps"] == [{"name": "s", "status": "Success", "response_code": 0}]
    page = (
        await client.get(
            f"/api/v1/commands/{command_id}/invocations/{node_id}/output",
            params={"offset": 6, "limit": 3},
        )
    ).json()
    assert page == {
        "data": "wor",
        "offset": 6,
        "next_offset": 9,
        "complete": False,
        "status": "Success",
    }
    # A re-sent result (the ack was lost) is acked again and changes nothing.
    await agent.send(result)
    await agent.expect(ResultAck)


async def test_offline_node_gets_invoke_on_connect(
    live: LiveServer, client: httpx.AsyncClient
) -> None:
    node_id, key = await register(client)
    command_id = await send_command(client, [node_id])
    await asyncio.sleep(0.2)  # several dispatch passes: the node stays Pending meanwhile
    body = (await client.get(f"/api/v1/commands/{command_id}")).json()
    assert body["invocations"][0]["status"] == "Pending"
    assert body["status"] == "Pending"
    agent = await connect_agent(live.ws_url, node_id, key)
    invoke = await agent.expect(Invoke)
    assert invoke.command_id == command_id  # type: ignore[attr-defined]
    await agent.finish(command_id, b"late\n")
    await agent.expect(ResultAck)
    await wait_command(client, command_id, "Success")


async def test_reconnect_resends_unfinished_invocation(
    live: LiveServer, client: httpx.AsyncClient
) -> None:
    node_id, key = await register(client)
    agent = await connect_agent(live.ws_url, node_id, key)
    command_id = await send_command(client, [node_id])
    await agent.expect(Invoke)
    await agent.send(Accepted(command_id))
    await agent.close()
    agent = await connect_agent(live.ws_url, node_id, key)
    again = await agent.expect(Invoke)
    assert again.command_id == command_id  # type: ignore[attr-defined]
    await agent.finish(command_id)
    await agent.expect(ResultAck)


async def test_delivery_timeout(live: LiveServer, client: httpx.AsyncClient) -> None:
    node_id, _key = await register(client)
    command_id = await send_command(client, [node_id], delivery_timeout_seconds=1)
    body = await wait_command(client, command_id, "TimedOut")
    inv = body["invocations"][0]  # type: ignore[index]
    assert (inv["status"], inv["status_details"], inv["response_code"]) == (
        "TimedOut",
        "DeliveryTimedOut",
        None,
    )
    assert body["delivery_timed_out_count"] == 1


async def test_execution_backstop(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data", execution_grace_seconds=0.2)
    async with live_server(config) as live, live.client() as client:
        node_id, key = await register(client)
        agent = await connect_agent(live.ws_url, node_id, key)
        command_id = await send_command(client, [node_id], timeout_seconds=1)
        await agent.expect(Invoke)
        body = await wait_command(client, command_id, "TimedOut")
        inv = body["invocations"][0]  # type: ignore[index]
        assert inv["status_details"] == "ExecutionTimedOut"
        assert body["error_count"] == 1


async def test_max_errors_terminates_unsent(live: LiveServer, client: httpx.AsyncClient) -> None:
    agents: list[FakeAgent] = []
    for _ in range(3):
        node_id, key = await register(client, {"role": "web"})
        agents.append(await connect_agent(live.ws_url, node_id, key))
    command_id = await send_command(client, ["tag:role=web"], max_concurrency="1", max_errors="0")
    invoked = None
    for agent in agents:
        try:
            invoked = (agent, await agent.expect(Invoke, timeout=0.5))
            break
        except TimeoutError:
            continue
    assert invoked is not None
    await invoked[0].finish(command_id, b"", "Failed", 2)
    body = await wait_command(client, command_id, "Failed")
    details = sorted(i["status_details"] for i in body["invocations"])  # type: ignore[attr-defined]
    assert details == ["Failed", "Terminated", "Terminated"]
    assert body["error_count"] == 1


async def test_concurrency_limit_is_respected(live: LiveServer, client: httpx.AsyncClient) -> None:
    agents: dict[str, FakeAgent] = {}
    for _ in range(4):
        node_id, key = await register(client)
        agents[node_id] = await connect_agent(live.ws_url, node_id, key)
    command_id = await send_command(client, list(agents), max_concurrency="50%")
    done = 0
    while done < 4:
        in_flight = []
        for agent in agents.values():
            try:
                await agent.expect(Invoke, timeout=0.3)
                in_flight.append(agent)
            except TimeoutError:
                continue
        assert 1 <= len(in_flight) <= 2
        for agent in in_flight:
            await agent.finish(command_id)
            await agent.expect(ResultAck)
            done += 1
    await wait_command(client, command_id, "Success")


async def test_cancel_in_flight(live: LiveServer, client: httpx.AsyncClient) -> None:
    node_a, key_a = await register(client)
    node_b, _ = await register(client)
    agent = await connect_agent(live.ws_url, node_a, key_a)
    command_id = await send_command(client, [node_a, node_b], max_concurrency="2")
    await agent.expect(Invoke)  # node_b is offline: its invocation stays Pending
    body = (await client.post(f"/api/v1/commands/{command_id}/cancel", json={})).json()
    statuses = {i["node_id"]: i["status"] for i in body["invocations"]}
    assert statuses == {node_a: "Cancelling", node_b: "Cancelled"}
    assert body["status"] == "Cancelling"
    cancel = await agent.expect(Cancel)
    assert cancel.command_id == command_id  # type: ignore[attr-defined]
    await agent.finish(command_id, b"", "Cancelled", -1)
    await agent.expect(ResultAck)
    await wait_command(client, command_id, "Cancelled")


async def test_deregistration_closes_connection_and_fails_work(
    live: LiveServer, client: httpx.AsyncClient
) -> None:
    node_id, key = await register(client)
    agent = await connect_agent(live.ws_url, node_id, key)
    command_id = await send_command(client, [node_id])
    await agent.expect(Invoke)
    assert (await client.delete(f"/api/v1/nodes/{node_id}")).status_code == 204
    await expect_closed(agent.ws, 1008, "deregistered")
    body = await wait_command(client, command_id, "Failed")
    assert body["invocations"][0]["status_details"] == "Undeliverable"  # type: ignore[index]
    ws, hello = await open_raw(live.ws_url)
    signature = key.sign(auth_payload(hello.nonce, node_id)).signature
    await ws.send(encode(Auth(node_id, signature, PROTOCOL_VERSION, INFO)))
    await expect_closed(ws, 1008, "auth_failed")


async def test_restart_mid_command_resumes(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data")
    async with live_server(config) as live, live.client() as client:
        nodes = [await register(client) for _ in range(2)]
        agent = await connect_agent(live.ws_url, *nodes[0])
        command_id = await send_command(client, [n for n, _ in nodes], max_concurrency="2")
        await agent.expect(Invoke)
        await agent.send(Accepted(command_id))
    async with live_server(config) as live, live.client() as client:
        for node_id, key in nodes:
            agent = await connect_agent(live.ws_url, node_id, key)
            invoke = await agent.expect(Invoke)
            assert invoke.command_id == command_id  # type: ignore[attr-defined]
            await agent.finish(command_id, b"ok\n")
            await agent.expect(ResultAck)
        body = await wait_command(client, command_id, "Success")
        assert [i["stdout"] for i in body["invocations"]] == ["ok\n", "ok\n"]  # type: ignore[attr-defined]


async def test_cancel_one_node(live: LiveServer, client: httpx.AsyncClient) -> None:
    node_a, key_a = await register(client)
    node_b, key_b = await register(client)
    agent_a = await connect_agent(live.ws_url, node_a, key_a)
    agent_b = await connect_agent(live.ws_url, node_b, key_b)
    command_id = await send_command(client, [node_a, node_b])
    await agent_a.expect(Invoke)
    await agent_b.expect(Invoke)
    path = f"/api/v1/commands/{command_id}/cancel"
    missing = await client.post(path, json={"node_id": "mi-0000000000000000f"})
    assert missing.status_code == 404
    await client.post(path, json={"node_id": node_b})
    await agent_b.expect(Cancel)
    await agent_b.finish(command_id, b"", "Cancelled", -1)
    await agent_b.expect(ResultAck)
    await agent_a.finish(command_id, b"ok\n")
    await agent_a.expect(ResultAck)
    body = await wait_command(client, command_id, "Cancelled")
    statuses = {i["node_id"]: i["status"] for i in body["invocations"]}  # type: ignore[attr-defined]
    assert statuses == {node_a: "Success", node_b: "Cancelled"}


async def test_silent_agent_is_disconnected_and_marked_lost(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data", connection_lost_seconds=0.5)
    async with live_server(config) as live, live.client() as client:
        node_id, key = await register(client)
        agent = await connect_agent(live.ws_url, node_id, key)
        with pytest.raises(ConnectionClosed):
            await agent.recv(timeout=10)
        for _ in range(200):
            node = (await client.get(f"/api/v1/nodes/{node_id}")).json()
            if node["ping_status"] == "ConnectionLost":
                break
            await asyncio.sleep(0.02)
        assert node["ping_status"] == "ConnectionLost"
