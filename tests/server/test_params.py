"""Parameter Store through the native API: rules, SecureString, policy, audit, expiry."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import pytest

from corral.params.service import apply_policies
from tests.server.conftest import Api, fast_config, running_app
from tests.server.test_identity import bearer, make_user
from tests.server.test_identity import signed as node_signed

SECRET = "correct-horse-battery-staple-42"


async def put(api: Api, name: str, value: str, **extra: object) -> dict[str, object]:
    response = await api.client.post(
        "/api/v1/parameters", json={"name": name, "value": value, **extra}
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def get(
    api: Api, selector: str, decrypt: bool = False, token: str | None = None
) -> dict[str, object]:
    headers = bearer(token) if token else None
    response = await api.client.get(
        "/api/v1/parameters/value",
        params={"name": selector, "decrypt": str(decrypt).lower()},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_versions_labels_history_and_rules(api: Api) -> None:
    assert (await put(api, "/app/dev/url", "http://a"))["version"] == 1
    again = await api.client.post("/api/v1/parameters", json={"name": "/app/dev/url", "value": "x"})
    assert again.status_code == 409
    assert (
        again.json()["error"]["message"]
        == "parameter /app/dev/url already exists; use overwrite to add a version"
    )
    assert (await put(api, "/app/dev/url", "http://b", overwrite=True))["version"] == 2
    got = await get(api, "/app/dev/url")
    assert (got["value"], got["version"], got["type"], got["labels"]) == (
        "http://b",
        2,
        "String",
        [],
    )
    assert got["last_modified"].endswith("Z")
    assert (await get(api, "/app/dev/url:1"))["value"] == "http://a"
    labelled = await api.client.post(
        "/api/v1/parameters/label",
        json={"name": "/app/dev/url", "version": 1, "labels": ["stable"]},
    )
    assert labelled.json() == {"name": "/app/dev/url", "version": 1, "invalid_labels": []}
    assert (await get(api, "/app/dev/url:stable"))["version"] == 1
    await api.client.post(
        "/api/v1/parameters/label", json={"name": "/app/dev/url", "labels": ["stable"]}
    )
    assert (await get(api, "/app/dev/url:stable"))["version"] == 2  # the label moved
    missing = await api.client.get("/api/v1/parameters/value", params={"name": "/app/dev/url:9"})
    assert missing.status_code == 404
    history = (
        await api.client.get("/api/v1/parameters/history", params={"name": "/app/dev/url"})
    ).json()
    assert [v["version"] for v in history["versions"]] == [1, 2]
    assert history["versions"][0]["last_modified_by"] == "user:admin"
    # Rules: pattern enforced on every write (also when not repeated), list values, depth.
    await put(api, "/app/dev/port", "8080", allowed_pattern=r"\d+")
    refused = await api.client.post(
        "/api/v1/parameters", json={"name": "/app/dev/port", "value": "eighty", "overwrite": True}
    )
    assert refused.status_code == 400
    assert "allowed pattern" in refused.json()["error"]["message"]
    assert "eighty" not in refused.text
    await put(api, "/app/dev/hosts", "a,b,c", type="StringList")
    deep = await api.client.post(
        "/api/v1/parameters", json={"name": "/" + "/".join("x" * 16), "value": "v"}
    )
    assert deep.status_code == 400
    big = await api.client.post("/api/v1/parameters", json={"name": "/big", "value": "x" * 5000})
    assert big.status_code == 400
    assert (await put(api, "/big", "x" * 5000, tier="Advanced"))["tier"] == "Advanced"
    reserved = await api.client.post("/api/v1/parameters", json={"name": "/aws/x", "value": "v"})
    assert reserved.status_code == 400


async def test_by_path_paging_and_describe_filters(api: Api) -> None:
    for i in range(12):
        await put(api, f"/svc/p{i:02d}", str(i), tags={"team": "a" if i % 2 else "b"})
    await put(api, "/svc/deep/q", "q", type="SecureString")
    names: list[str] = []
    token = None
    while True:
        params = {"path": "/svc", "recursive": "true", "max_results": "5"}
        if token:
            params["next_token"] = token
        page = (await api.client.get("/api/v1/parameters/by-path", params=params)).json()
        names += [p["name"] for p in page["parameters"]]
        token = page["next_token"]
        if not token:
            break
    assert names == sorted([*(f"/svc/p{i:02d}" for i in range(12)), "/svc/deep/q"])
    flat = (
        await api.client.get(
            "/api/v1/parameters/by-path", params={"path": "/svc", "max_results": "50"}
        )
    ).json()
    assert "/svc/deep/q" not in [p["name"] for p in flat["parameters"]]
    described = (
        await api.client.get("/api/v1/parameters", params={"path": "/svc", "tag": "team=a"})
    ).json()
    assert len(described["parameters"]) == 6
    assert all("value" not in p for p in described["parameters"])
    secure = (await api.client.get("/api/v1/parameters", params={"type": "SecureString"})).json()
    assert [p["name"] for p in secure["parameters"]] == ["/svc/deep/q"]
    assert secure["parameters"][0]["key_id"] == "default"
    deleted = (
        await api.client.post(
            "/api/v1/parameters/delete", json={"names": ["/svc/p00", "/svc/none"]}
        )
    ).json()
    assert deleted == {"deleted": ["/svc/p00"], "invalid": ["/svc/none"]}


async def test_secure_strings_policy_and_audit(api: Api, tmp_path: Path) -> None:
    await put(api, "/app/dev/db-password", SECRET, type="SecureString")
    sealed = await get(api, "/app/dev/db-password")
    assert sealed["value"].startswith("corral:v1:default:1:")
    assert SECRET not in json.dumps(sealed)
    opened = await get(api, "/app/dev/db-password", decrypt=True)
    assert (opened["value"], opened["decrypted"]) == (SECRET, True)

    # A viewer may read but not decrypt; the denial names the action.
    viewer = await make_user(api, "val", "viewer")
    assert (await get(api, "/app/dev/db-password", token=viewer))["value"] == sealed["value"]
    denied = await api.client.get(
        "/api/v1/parameters/value",
        params={"name": "/app/dev/db-password", "decrypt": "true"},
        headers=bearer(viewer),
    )
    assert denied.status_code == 403
    assert "parameter:GetDecrypted" in denied.json()["error"]["message"]
    assert SECRET not in denied.text

    # Decryption is its own audited action.
    records = (
        await api.client.get("/api/v1/audit", params={"action": "parameter:GetDecrypted"})
    ).json()["records"]
    assert [r["principal"] for r in records] == ["user:admin"]
    assert records[0]["resources"] == ["parameter:/app/dev/db-password:1"]

    # Rotation re-wraps; old and new versions stay readable.
    await put(api, "/app/dev/db-password", SECRET + "-v2", type="SecureString", overwrite=True)
    rotated = (await api.client.post("/api/v1/keys/default/rotate")).json()
    assert (rotated["current_version"], rotated["rewrapped"]) == (2, 2)
    assert (await get(api, "/app/dev/db-password:1", decrypt=True))["value"] == SECRET
    assert (await get(api, "/app/dev/db-password", decrypt=True))["value"] == SECRET + "-v2"
    assert (await get(api, "/app/dev/db-password"))["value"].startswith("corral:v1:default:2:")
    history = (
        await api.client.get("/api/v1/parameters/history", params={"name": "/app/dev/db-password"})
    ).json()
    assert SECRET not in json.dumps(history)

    # The plaintext is nowhere in the data directory (database, WAL, audit, key files).
    await api.app.state.context.audit.flush()
    for path in api.config.data_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    keys = (await api.client.get("/api/v1/keys")).json()
    assert [(k["name"], k["current_version"], k["versions"]) for k in keys] == [("default", 2, 2)]


async def test_nodes_read_by_policy_on_their_own_tags(api: Api) -> None:
    node_id, key = await api.register_node({"env": "dev"})
    await put(api, "/app/dev/flag", "on")
    await put(api, "/app/prod/flag", "off")
    path = "/api/v1/parameters/value?name=%2Fapp%2Fdev%2Fflag"
    nothing = await api.client.get(path, headers=node_signed(node_id, key, "GET", path))
    assert nothing.status_code == 403  # the node role is empty by default
    node_policy = {
        "statements": [
            {
                "effect": "allow",
                "actions": ["parameter:Get"],
                "resources": ["parameter:/app/${node.tag.env}/*"],
            }
        ]
    }
    assert (
        await api.client.put("/api/v1/roles/node", json={"policy": node_policy})
    ).status_code == 200
    allowed = await api.client.get(path, headers=node_signed(node_id, key, "GET", path))
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["value"] == "on"
    other = "/api/v1/parameters/value?name=%2Fapp%2Fprod%2Fflag"
    assert (
        await api.client.get(other, headers=node_signed(node_id, key, "GET", other))
    ).status_code == 403


async def test_expiry_and_notification_policies(api: Api) -> None:
    context = api.app.state.context
    soon = time.time() + 3600
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon))
    notify = {"Before": "2", "Unit": "Hours"}
    policies = json.dumps(
        [
            {"Type": "Expiration", "Version": "1.0", "Attributes": {"Timestamp": stamp}},
            {"Type": "ExpirationNotification", "Version": "1.0", "Attributes": notify},
        ]
    )
    created = await put(api, "/tmp/token", "t", tier="Advanced", policies=policies)
    assert created["tier"] == "Advanced"
    listed = (await api.client.get("/api/v1/parameters", params={"path": "/tmp"})).json()[
        "parameters"
    ][0]
    assert [(p["type"], p["status"]) for p in listed["policies"]] == [
        ("Expiration", "Pending"),
        ("ExpirationNotification", "Pending"),
    ]
    events: list[tuple[str, list[str]]] = []

    def sink(action: str, resources: list[str], details: dict[str, object]) -> None:
        events.append((action, resources))

    assert await apply_policies(context.params, sink, now=time.time()) == (
        1,
        0,
    )  # notification is due
    assert events == [("parameter:ExpirationNotification", ["parameter:/tmp/token"])]
    listed = (await api.client.get("/api/v1/parameters", params={"path": "/tmp"})).json()[
        "parameters"
    ][0]
    assert listed["policies"][1]["status"] == "Finished"
    assert await apply_policies(context.params, sink, now=soon + 1) == (0, 1)
    assert events[-1] == ("parameter:Expire", ["parameter:/tmp/token"])
    gone = await api.client.get("/api/v1/parameters/value", params={"name": "/tmp/token"})
    assert gone.status_code == 404
    standard = await api.client.post(
        "/api/v1/parameters",
        json={"name": "/tmp/x", "value": "v", "tier": "Standard", "policies": policies},
    )
    assert standard.status_code == 400


async def test_no_plaintext_in_the_database_or_logs(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After put, get, history, rotate and a command referencing it (SQLite and PostgreSQL)."""
    caplog.set_level(logging.DEBUG)
    config = fast_config(tmp_path / "data", database_url=database_url)
    async with running_app(config) as api:
        node_id, _key = await api.register_node({"env": "dev"})
        await put(api, "/db/secret", SECRET, type="SecureString")
        await put(api, "/db/secret", SECRET + "-2", type="SecureString", overwrite=True)
        assert (await get(api, "/db/secret", decrypt=True))["value"] == SECRET + "-2"
        await api.client.get(
            "/api/v1/parameters/history", params={"name": "/db/secret", "decrypt": "true"}
        )
        await api.client.post("/api/v1/keys/default/rotate")
        await api.client.get(
            "/api/v1/parameters/by-path", params={"path": "/db", "decrypt": "true"}
        )
        sent = await api.client.post(
            "/api/v1/commands",
            json={
                "document_name": "Corral-RunShellScript",
                "targets": [node_id],
                "parameters": {"commands": ["echo '{{ssm-secure:/db/secret}}'"]},
            },
        )
        assert sent.status_code == 201, sent.text
        assert SECRET not in sent.text
        await api.app.state.context.audit.flush()
        if database_url.startswith("postgresql"):
            dump = subprocess.run(
                ["pg_dump", "--data-only", database_url], capture_output=True, check=True
            ).stdout
        else:
            dump = b"".join(p.read_bytes() for p in tmp_path.rglob("corral.db*"))
        assert b"/db/secret" in dump  # the dump does hold the parameter...
        assert SECRET.encode() not in dump  # ...but never its plaintext
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text
