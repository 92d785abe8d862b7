"""Identity through the API: users, tokens, roles, whoami, throttling and node credentials."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
from nacl.signing import SigningKey

from corral.protocol.requestsig import authorization_header, request_payload
from tests.server.conftest import Api, fast_config, running_app

OPS_POLICY = {
    "description": "dev operators",
    "statements": [
        {
            "effect": "allow",
            "actions": ["command:*", "node:List", "node:Read", "document:Read"],
            "resources": ["*"],
            "conditions": {"node_tags": {"env": "dev"}},
        }
    ],
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_user(api: Api, name: str, *roles: str) -> str:
    response = await api.client.post("/api/v1/users", json={"name": name, "roles": list(roles)})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["token"].startswith("crl_")
    assert body["token_id"]
    return str(body["token"])


async def test_users_tokens_and_whoami(api: Api) -> None:
    token = await make_user(api, "alice", "viewer")
    who = (await api.client.get("/api/v1/whoami", headers=bearer(token))).json()
    assert (who["principal"], who["roles"], who["grants"]) == ("user:alice", ["viewer"], [])
    admin = (await api.client.get("/api/v1/whoami")).json()
    assert (admin["principal"], admin["roles"]) == ("user:admin", ["admin"])

    # A viewer reads but cannot change anything, and manages only its own tokens.
    assert (await api.client.get("/api/v1/nodes", headers=bearer(token))).status_code == 200
    denied = await api.client.post("/api/v1/activations", json={}, headers=bearer(token))
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "AccessDeniedError"
    assert "user:alice may not activation:Create" in denied.json()["error"]["message"]
    own = await api.client.post(
        "/api/v1/tokens",
        json={"description": "laptop", "expires_seconds": 3600},
        headers=bearer(token),
    )
    assert own.status_code == 201
    assert own.json()["user"] == "alice"
    second = own.json()["token"]
    assert own.json()["expires_at"].endswith("Z")
    other = await api.client.post("/api/v1/tokens", json={"user": "admin"}, headers=bearer(token))
    assert other.status_code == 403
    listed = (await api.client.get("/api/v1/tokens", headers=bearer(token))).json()
    assert [t["description"] for t in listed] == ["first token of alice", "laptop"]
    assert all("token" not in t for t in listed)
    assert all(t["last_used_at"] is None or t["last_used_at"].endswith("Z") for t in listed)

    # Revocation takes effect on the next request.
    revoked = await api.client.delete(
        f"/api/v1/tokens/{own.json()['token_id']}", headers=bearer(token)
    )
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    gone = await api.client.get("/api/v1/whoami", headers=bearer(second))
    assert gone.status_code == 401

    # Disabling the user stops every token of it; enabling restores them.
    assert (
        await api.client.patch("/api/v1/users/alice", json={"disabled": True})
    ).status_code == 200
    off = await api.client.get("/api/v1/whoami", headers=bearer(token))
    assert (off.status_code, off.json()["error"]["message"]) == (401, "user alice is disabled")
    await api.client.patch("/api/v1/users/alice", json={"disabled": False})
    assert (await api.client.get("/api/v1/whoami", headers=bearer(token))).status_code == 200
    assert (await api.client.delete("/api/v1/users/alice")).status_code == 204
    assert (await api.client.get("/api/v1/whoami", headers=bearer(token))).status_code == 401
    assert (await api.client.delete("/api/v1/users/admin")).status_code == 409  # not yourself


async def test_user_and_role_validation(api: Api) -> None:
    bad = await api.client.post("/api/v1/users", json={"name": "Bad Name", "roles": ["viewer"]})
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "name"
    unknown = await api.client.post("/api/v1/users", json={"name": "x", "roles": ["wizard"]})
    assert unknown.status_code == 400
    assert "no such role: wizard" in unknown.text
    await make_user(api, "bob", "viewer")
    assert (
        await api.client.post("/api/v1/users", json={"name": "bob", "roles": ["viewer"]})
    ).status_code == 409

    created = await api.client.post("/api/v1/roles", json={"name": "dev-ops", "policy": OPS_POLICY})
    assert created.status_code == 201, created.text
    assert created.json()["description"] == "dev operators"
    assert created.json()["policy"]["statements"][0]["conditions"] == {
        "node_tags": {"env": ["dev"]}
    }
    typo = {"statements": [{"effect": "allow", "actions": ["comand:Send"]}]}
    refused = await api.client.put("/api/v1/roles/dev-ops", json={"policy": typo})
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "statements[0].actions"
    assert "matches no known action" in refused.json()["error"]["message"]
    assert (await api.client.get("/api/v1/roles/dev-ops")).json()["policy"][
        "description"
    ] == "dev operators"
    fixed = await api.client.put("/api/v1/roles/admin", json={"policy": {"statements": []}})
    assert fixed.status_code == 409
    assert "built in" in fixed.text
    node_role = await api.client.put("/api/v1/roles/node", json={"policy": {"statements": []}})
    assert node_role.status_code == 200
    names = [r["name"] for r in (await api.client.get("/api/v1/roles")).json()]
    assert names == ["admin", "auditor", "dev-ops", "node", "operator", "viewer"]


async def test_role_with_tag_conditions_filters_and_denies(api: Api) -> None:
    await api.client.post("/api/v1/roles", json={"name": "dev-ops", "policy": OPS_POLICY})
    token = await make_user(api, "carol", "dev-ops")
    dev, _ = await api.register_node({"env": "dev"})
    prod, _ = await api.register_node({"env": "prod"})
    seen = (await api.client.get("/api/v1/nodes", headers=bearer(token))).json()
    assert [n["node_id"] for n in seen] == [dev]
    assert (await api.client.get(f"/api/v1/nodes/{dev}", headers=bearer(token))).status_code == 200
    assert (await api.client.get(f"/api/v1/nodes/{prod}", headers=bearer(token))).status_code == 403

    # Sending to both: the prod node is AccessDenied and never contacted, the dev node runs.
    sent = await api.client.post(
        "/api/v1/commands",
        json={
            "document_name": "Corral-RunShellScript",
            "targets": ["all"],
            "parameters": {"commands": ["true"]},
        },
        headers=bearer(token),
    )
    assert sent.status_code == 201, sent.text
    by_node = {i["node_id"]: (i["status"], i["status_details"]) for i in sent.json()["invocations"]}
    assert by_node == {dev: ("Pending", "Pending"), prod: ("Failed", "AccessDenied")}
    shown = (await api.client.get(f"/api/v1/commands/{sent.json()['command_id']}")).json()
    assert (
        shown["invocations"][1]["status_details"] == "AccessDenied"
        or shown["invocations"][0]["status_details"] == "AccessDenied"
    )
    only_prod = await api.client.post(
        "/api/v1/commands",
        json={
            "document_name": "Corral-RunShellScript",
            "targets": [prod],
            "parameters": {"commands": ["true"]},
        },
        headers=bearer(token),
    )
    assert only_prod.status_code == 403
    assert "may not send Corral-RunShellScript to any of the 1 target node(s)" in only_prod.text

    # Re-tagging a node out of (or into) the caller's scope is refused.
    await api.client.put(
        "/api/v1/roles/dev-ops",
        json={
            "policy": {
                "statements": [
                    *OPS_POLICY["statements"],  # type: ignore[list-item]
                    {
                        "effect": "allow",
                        "actions": ["node:Tag"],
                        "resources": ["node:*"],
                        "conditions": {"node_tags": {"env": "dev"}},
                    },
                ]
            }
        },
    )
    moved = await api.client.patch(
        f"/api/v1/nodes/{dev}/tags", json={"set": {"env": "prod"}}, headers=bearer(token)
    )
    assert moved.status_code == 403
    kept = await api.client.patch(
        f"/api/v1/nodes/{dev}/tags", json={"set": {"team": "web"}}, headers=bearer(token)
    )
    assert kept.status_code == 200
    assert kept.json()["tags"] == {"env": "dev", "team": "web"}


def signed(
    node_id: str,
    key: SigningKey,
    method: str,
    target: str,
    body: bytes = b"",
    ts: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    stamp = int(time.time() if ts is None else ts)
    nonce = nonce or os.urandom(16).hex()
    signature = key.sign(request_payload(method, target, stamp, nonce, body)).signature
    return {"Authorization": authorization_header(node_id, stamp, nonce, signature)}


async def test_a_node_acts_only_as_itself(api: Api) -> None:
    node_id, key = await api.register_node({"env": "dev"})
    other_id, _other_key = await api.register_node({"env": "dev"})
    headers = signed(node_id, key, "GET", "/api/v1/whoami")
    who = await api.client.get("/api/v1/whoami", headers=headers)
    assert who.status_code == 200, who.text
    assert who.json()["principal"] == f"node:{node_id}"
    assert who.json()["node"] == {"node_id": node_id, "tags": {"env": "dev"}}
    # The same signed request cannot be replayed.
    assert (await api.client.get("/api/v1/whoami", headers=headers)).status_code == 401
    # A node's credential cannot call operator endpoints.
    for method, path in [
        ("GET", "/api/v1/nodes"),
        ("GET", f"/api/v1/nodes/{node_id}"),
        ("GET", "/api/v1/commands"),
    ]:
        response = await api.client.request(
            method, path, headers=signed(node_id, key, method, path)
        )
        assert response.status_code == 403, (path, response.text)
    # Its key cannot speak for another node, nor sign a different request.
    forged = signed(other_id, key, "GET", "/api/v1/whoami")
    assert (await api.client.get("/api/v1/whoami", headers=forged)).status_code == 401
    other_path = signed(node_id, key, "GET", "/api/v1/nodes")
    assert (await api.client.get("/api/v1/whoami", headers=other_path)).status_code == 401
    stale = signed(node_id, key, "GET", "/api/v1/whoami", ts=time.time() - 3600)
    assert (await api.client.get("/api/v1/whoami", headers=stale)).status_code == 401
    # A deregistered node is no principal any more.
    await api.client.delete(f"/api/v1/nodes/{node_id}")
    after = await api.client.get(
        "/api/v1/whoami", headers=signed(node_id, key, "GET", "/api/v1/whoami")
    )
    assert after.status_code == 401


async def test_repeated_failures_from_one_source_are_slowed(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data", auth_failure_limit=3, auth_lockout_seconds=30.0)
    async with running_app(config) as api:
        for _ in range(3):
            response = await api.client.get("/api/v1/nodes", headers=bearer("crl_wrong"))
            assert response.status_code == 401
        locked = await api.client.get("/api/v1/nodes", headers=bearer("crl_wrong"))
        assert locked.status_code == 429
        assert locked.json()["error"]["type"] == "RateLimitedError"
        assert int(locked.headers["retry-after"]) >= 1
        # While locked out, even a valid token from that address waits.
        assert (await api.client.get("/api/v1/nodes")).status_code == 429
        # Another address is unaffected.
        transport = httpx.ASGITransport(app=api.app, client=("10.9.9.9", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as other:
            assert (await other.get("/api/v1/nodes", headers=bearer(api.token))).status_code == 200


def test_node_request_payload_covers_the_body() -> None:
    a = request_payload("POST", "/x?y=1", 1, "n" * 32, b"{}")
    assert hashlib.sha256(b"{}").hexdigest().encode() in a
    assert a != request_payload("POST", "/x?y=2", 1, "n" * 32, b"{}")
    assert a != request_payload("POST", "/x?y=1", 1, "n" * 32, b"{ }")


async def test_open_streams_end_on_revocation_disable_and_grant_end(api: Api) -> None:
    """The registry sessions and follows use: ended at once, or by the periodic re-check."""
    context = api.app.state.context
    auth = context.auth
    token = await make_user(api, "sue", "viewer")
    other = await make_user(api, "tom", "viewer")
    principal = await auth.from_token(token, time.time())
    bystander = await auth.from_token(other, time.time())
    ended: list[str] = []
    auth.streams.open(principal, ended.append)
    auth.streams.open(bystander, lambda reason: ended.append("bystander: " + reason))
    assert await auth.recheck_streams() == 0
    await api.client.patch("/api/v1/users/sue", json={"disabled": True})
    assert ended == ["user sue was disabled"]
    assert len(auth.streams) == 1

    # Revoking through another replica (straight in the store) is caught by the re-check.
    auth.streams.open(principal, ended.append)
    await context.store.update_user("sue", disabled=False)
    await context.store.revoke_token(principal.token_id)
    assert await auth.recheck_streams() == 1
    assert ended[-1] == "the token was revoked or expired"
    assert ended.count("bystander: the token was revoked or expired") == 0
