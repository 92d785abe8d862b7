"""File transfer routes and the server's relay, with a fake agent speaking the protocol:
policy on the requested path, on the path the node resolved, and protocol breaks."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from typing import Any

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from corral.protocol import codec, streams
from corral.protocol.messages import TransferStart
from corral.protocol.requestsig import authorization_header, request_payload
from corral.protocol.transfer import (
    FILE,
    TRANSFER_MESSAGES,
    TransferBegin,
    TransferEntry,
    TransferFailed,
    TransferReady,
    TransferResume,
)
from tests.server.agentclient import connect_agent
from tests.server.conftest import Api, LiveServer
from tests.server.test_identity import bearer, make_user

DATA_ONLY = {
    "statements": [
        {"effect": "allow", "actions": ["file:*"], "resources": ["node:*", "file:/data/*"]}
    ]
}


async def test_starting_checks_policy_paths_and_presence(api: Api) -> None:
    node_id, _key = await api.register_node({"env": "dev"})
    upload = {"node_id": node_id, "path": "/tmp/x", "source_name": "x"}
    offline = await api.client.post("/api/v1/transfers/upload", json=upload)
    assert offline.status_code == 409
    assert "not connected" in offline.json()["error"]["message"]
    viewer = await make_user(api, "vera", "viewer")
    denied = await api.client.post(
        "/api/v1/transfers/download",
        json={"node_id": node_id, "path": "/x"},
        headers=bearer(viewer),
    )
    assert denied.status_code == 403
    assert "file:Download" in denied.json()["error"]["message"]
    await api.client.post("/api/v1/roles", json={"name": "data", "policy": DATA_ONLY})
    scoped = await make_user(api, "dora", "data")
    outside = await api.client.post(
        "/api/v1/transfers/upload", json={**upload, "path": "/etc/x"}, headers=bearer(scoped)
    )
    assert outside.status_code == 403
    assert "file:Upload on file:/etc/x" in outside.json()["error"]["message"]
    normalised = await api.client.post(
        "/api/v1/transfers/upload", json={**upload, "path": "//data/./x/"}, headers=bearer(scoped)
    )
    assert normalised.status_code == 409  # allowed as /data/x; the node is offline
    for bad, field in [
        ({"path": "data/x"}, "path"),
        ({"path": "/data/../etc/passwd"}, "path"),
        ({"path": "/data/a\nb"}, "path"),
        ({"source_name": "a/b"}, "source_name"),
        ({"source_name": ".."}, "source_name"),
        ({"source_kind": "directory"}, "recursive"),
    ]:
        response = await api.client.post("/api/v1/transfers/upload", json={**upload, **bad})
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["field"] == field
    records = (await api.client.get("/api/v1/audit", params={"action": "file:Upload"})).json()
    refusal = next(r for r in records["records"] if "file:/etc/x" in r["resources"])
    assert refusal["outcome"] == "denied"
    assert f"node:{node_id}" in refusal["resources"]


async def agent_socket(live: LiveServer, node_id: str, key: SigningKey, transfer_id: str) -> Any:
    path = f"/agent/v1/transfers/{transfer_id}"
    stamp, nonce = int(time.time()), secrets.token_hex(16)
    signature = key.sign(request_payload("GET", path, stamp, nonce, b"")).signature
    header = authorization_header(node_id, stamp, nonce, signature)
    return await connect(
        f"ws://127.0.0.1:{live.port}{path}", additional_headers={"Authorization": header}
    )


async def operator_socket(live: LiveServer, token: str, transfer_id: str) -> ClientConnection:
    url = f"ws://127.0.0.1:{live.port}/api/v1/transfers/{transfer_id}/stream"
    return await connect(url, additional_headers=bearer(token))


async def failure(ws: ClientConnection) -> TransferFailed:
    message = codec.decode(await asyncio.wait_for(ws.recv(), 10), TRANSFER_MESSAGES)
    assert isinstance(message, TransferFailed), message
    return message


async def started_upload(live: LiveServer, path: str) -> tuple[Any, ...]:
    """A node, its fake agent, a user allowed /data/*, and an upload to `path` it asked for."""
    async with live.client() as admin:
        key = SigningKey.generate()
        created = (await admin.post("/api/v1/activations", json={"registration_limit": 1})).json()
        body = {
            "activation_id": created["activation_id"],
            "activation_code": created["activation_code"],
            "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
        }
        node_id = (await admin.post("/api/v1/register", json=body)).json()["node_id"]
        agent = await connect_agent(live.ws_url, node_id, key)
        await admin.post("/api/v1/roles", json={"name": "data", "policy": DATA_ONLY})
        user = (await admin.post("/api/v1/users", json={"name": "dora", "roles": ["data"]})).json()
        upload = {"node_id": node_id, "path": path, "source_name": "x"}
        response = await admin.post(
            "/api/v1/transfers/upload", json=upload, headers=bearer(user["token"])
        )
        assert response.status_code == 201, response.text
    start = await agent.expect(TransferStart)
    assert isinstance(start, TransferStart)
    assert (start.direction, start.path, start.source_name) == ("upload", path, "x")
    return agent, node_id, key, start.transfer_id, user["token"]


async def test_a_resolved_path_outside_policy_is_refused_to_both_sides(live: LiveServer) -> None:
    agent, node_id, key, transfer_id, token = await started_upload(live, "/data/x")
    with pytest.raises(InvalidStatus):  # someone else's transfer
        await operator_socket(live, live.token, transfer_id)
    operator = await operator_socket(live, token, transfer_id)
    node = await agent_socket(live, node_id, key, transfer_id)
    # /data/x was allowed, but on the node it is a link to /etc/x.
    await node.send(codec.encode(TransferReady("/etc/x", FILE)))
    for ws in (operator, node):
        refused = await failure(ws)
        assert refused.code == "denied"
        assert "file:/etc/x" in refused.message
    async with live.client() as admin:
        for _ in range(50):
            found = (await admin.get("/api/v1/audit", params={"action": "file:Transfer"})).json()[
                "records"
            ]
            if found:
                break
            await asyncio.sleep(0.05)
    assert found[0]["outcome"] == "denied"
    assert found[0]["resources"][0] == "file:/etc/x"
    await asyncio.gather(operator.close(), node.close(), agent.close())


async def test_a_protocol_break_ends_the_transfer_for_both(live: LiveServer) -> None:
    agent, node_id, key, transfer_id, token = await started_upload(live, "/data/x")
    operator = await operator_socket(live, token, transfer_id)
    node = await agent_socket(live, node_id, key, transfer_id)
    await node.send(codec.encode(TransferReady("/data/x", FILE)))
    assert isinstance(codec.decode(await operator.recv(), TRANSFER_MESSAGES), TransferReady)
    await operator.send(codec.encode(TransferEntry(0, "", FILE, 0o644, 1, 10)))
    assert isinstance(codec.decode(await node.recv(), TRANSFER_MESSAGES), TransferEntry)
    await node.send(codec.encode(TransferResume(0, 0)))
    await operator.recv()
    await operator.send(codec.encode(TransferBegin(0, 0)))
    await node.recv()
    await operator.send(streams.encode(streams.DataFrame(0, 5, b"gap")))  # bytes 0-4 missing
    for ws in (operator, node):
        assert (await failure(ws)).code == "protocol"
    await asyncio.gather(operator.close(), node.close(), agent.close())
