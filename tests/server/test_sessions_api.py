"""The sessions API in-process: policy on the node and on the account, offline nodes."""

from __future__ import annotations

from tests.server.conftest import Api
from tests.server.test_identity import bearer, make_user

NO_ROOT = {
    "statements": [
        {"effect": "allow", "actions": ["session:*"], "resources": ["*"]},
        {"effect": "deny", "actions": ["session:Start"], "resources": ["osuser:root"]},
    ]
}


async def test_starting_needs_the_node_and_the_account_and_an_online_node(api: Api) -> None:
    node_id, _key = await api.register_node({"env": "dev"})
    offline = await api.client.post("/api/v1/sessions", json={"node_id": node_id})
    assert offline.status_code == 409
    assert "not connected" in offline.json()["error"]["message"]
    viewer = await make_user(api, "vera", "viewer")
    denied = await api.client.post(
        "/api/v1/sessions", json={"node_id": node_id}, headers=bearer(viewer)
    )
    assert denied.status_code == 403
    assert "session:Start" in denied.json()["error"]["message"]
    await api.client.post("/api/v1/roles", json={"name": "no-root", "policy": NO_ROOT})
    careful = await make_user(api, "cara", "no-root")
    as_root = await api.client.post(
        "/api/v1/sessions", json={"node_id": node_id, "user": "root"}, headers=bearer(careful)
    )
    assert as_root.status_code == 403
    assert "osuser:root" in as_root.json()["error"]["message"]
    bad_user = await api.client.post("/api/v1/sessions", json={"node_id": node_id, "user": "Ro ot"})
    assert bad_user.status_code == 400
    assert (await api.client.get("/api/v1/sessions")).json() == []
    missing = await api.client.get("/api/v1/sessions/ses-00000000000000000")
    assert missing.status_code == 404


SSH_ONLY = {
    "statements": [
        {
            "effect": "allow",
            "actions": ["session:*"],
            "resources": ["node:*", "session:*", "port:localhost:22"],
        },
    ]
}


async def test_a_port_session_needs_the_node_and_its_target_and_a_well_formed_one(
    api: Api,
) -> None:
    node_id, _key = await api.register_node({"env": "dev"})
    for body, field in [
        ({"kind": "port"}, "port"),
        ({"kind": "port", "port": 22, "user": "root"}, "user"),
        ({"kind": "port", "port": 22, "command": "ls"}, "command"),
        ({"port": 22}, "port"),
        ({"host": "db.internal"}, "host"),
    ]:
        refused = await api.client.post("/api/v1/sessions", json={"node_id": node_id, **body})
        assert refused.status_code == 400, body
        assert refused.json()["error"]["field"] == field, body
    for body in [
        {"kind": "port", "port": 0},
        {"kind": "port", "port": 65536},
        {"kind": "port", "port": 22, "host": "db internal"},
        {"kind": "port", "port": 22, "host": "\x1b[2J"},
        {"kind": "tunnel", "port": 22},
    ]:
        refused = await api.client.post("/api/v1/sessions", json={"node_id": node_id, **body})
        assert refused.status_code == 400, body
    # A role allowed the node and one target only may forward there (the node is
    # offline: 409, not 403) ...
    await api.client.post("/api/v1/roles", json={"name": "ssh-only", "policy": SSH_ONLY})
    token = await make_user(api, "finn", "ssh-only")
    ssh = await api.client.post(
        "/api/v1/sessions",
        json={"node_id": node_id, "kind": "port", "port": 22},
        headers=bearer(token),
    )
    assert ssh.status_code == 409
    # ... not anywhere else the node can reach ...
    database = await api.client.post(
        "/api/v1/sessions",
        json={"node_id": node_id, "kind": "port", "host": "10.0.0.5", "port": 5432},
        headers=bearer(token),
    )
    assert database.status_code == 403
    assert "port:10.0.0.5:5432" in database.json()["error"]["message"]
    # ... but not open a shell, which needs osuser:default as well.
    shell = await api.client.post(
        "/api/v1/sessions", json={"node_id": node_id}, headers=bearer(token)
    )
    assert shell.status_code == 403
    assert "osuser:default" in shell.json()["error"]["message"]
    viewer = await make_user(api, "val", "viewer")
    denied = await api.client.post(
        "/api/v1/sessions",
        json={"node_id": node_id, "kind": "port", "port": 22},
        headers=bearer(viewer),
    )
    assert denied.status_code == 403
    assert "session:Start" in denied.json()["error"]["message"]
