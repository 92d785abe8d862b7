"""HTTP API routes: happy paths and their errors, in-process."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from corral.server.app import create_app
from tests.server.conftest import Api, fast_config, running_app

SIMPLE_DOC = json.dumps(
    {
        "schemaVersion": "2.2",
        "description": "say something",
        "parameters": {"message": {"type": "String", "default": "hi"}},
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "say",
                "inputs": {"runCommand": ["echo {{ message }}"]},
            }
        ],
    }
)
YAML_DOC = """schemaVersion: "2.2"
description: yaml doc
mainSteps:
  - action: aws:runShellScript
    name: run
    inputs:
      runCommand: ["true"]
"""


def error_of(response: httpx.Response) -> dict[str, object]:
    """The error object of an error response."""
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]  # type: ignore[no-any-return]


async def test_healthz_needs_no_token(api: Api) -> None:
    response = await api.client.get("/healthz", headers={"Authorization": ""})
    assert response.json() == {"status": "ok", "version": "0.1.0"}


async def test_first_start_writes_admin_token_once(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data")
    async with running_app(config) as running:
        token = running.token
        assert token.startswith("crl_")
    mode = stat.S_IMODE(os.stat(config.admin_token_path).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(config.data_dir).st_mode) == 0o700
    async with running_app(config) as running:
        assert running.token == token
        assert (await running.client.get("/api/v1/nodes")).status_code == 200


async def test_activations(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/activations",
        json={"description": "lab", "tags": {"env": "dev"}, "registration_limit": 2},
    )
    assert response.status_code == 201
    created = response.json()
    assert created["registration_limit"] == 2
    assert created["expired"] is False
    assert created["activation_code"]
    assert created["expires_at"].endswith("Z")
    listed = (await api.client.get("/api/v1/activations")).json()
    assert [a["activation_id"] for a in listed] == [created["activation_id"]]
    assert "activation_code" not in listed[0]
    path = f"/api/v1/activations/{created['activation_id']}"
    assert (await api.client.delete(path)).status_code == 204
    assert (await api.client.get("/api/v1/activations")).json() == []
    missing = await api.client.delete(path)
    assert (missing.status_code, error_of(missing)["type"]) == (404, "NotFoundError")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"registration_limit": 0}, "registration_limit"),
        ({"registration_limit": 1001}, "registration_limit"),
        ({"expires_seconds": 59}, "expires_seconds"),
        ({"expires_seconds": 31 * 86400}, "expires_seconds"),
        ({"tags": {"env": 5}}, "tags.env"),
        ({"tags": {"": "x"}}, "tags"),
        ({"tags": {"k" * 129: "x"}}, "tags"),
        ({"tags": {"env": "v" * 257}}, "tags"),
        ({"tags": {"env": "prod,dev"}}, "tags"),
        ({"tags": {"bad;key": "x"}}, "tags"),
        ({"tags": {"aws:owner": "x"}}, "tags"),
        ({"tags": {f"k{i}": "v" for i in range(51)}}, "tags"),
        ({"unknown": 1}, "unknown"),
    ],
)
async def test_activation_validation(api: Api, body: dict[str, object], field: str) -> None:
    response = await api.client.post("/api/v1/activations", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["field"]) == ("ValidationError", field)


async def test_node_tags_are_validated_like_activation_tags(api: Api) -> None:
    response = await api.client.patch(
        "/api/v1/nodes/mi-0000000000000000a/tags", json={"set": {"a b;c": "x"}}
    )
    assert response.status_code == 400
    assert error_of(response)["field"] == "set"
    register = await api.client.post(
        "/api/v1/register",
        json={
            "activation_id": "x",
            "activation_code": "y",
            "public_key": "z",
            "tags": {"k": "a,b"},
        },
    )
    assert register.status_code == 400
    assert error_of(register)["field"] == "tags"


async def test_malformed_json_is_a_validation_error(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/activations", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert error_of(response)["type"] == "ValidationError"


async def test_registration_errors_do_not_reveal_which_part_is_wrong(api: Api) -> None:
    created = (await api.client.post("/api/v1/activations", json={})).json()
    key = "A" * 43 + "="
    wrong_code = await api.client.post(
        "/api/v1/register",
        json={"activation_id": created["activation_id"], "activation_code": "x", "public_key": key},
    )
    wrong_id = await api.client.post(
        "/api/v1/register",
        json={"activation_id": "nope", "activation_code": "x", "public_key": key},
    )
    assert wrong_code.status_code == wrong_id.status_code == 400
    assert error_of(wrong_code)["message"] == error_of(wrong_id)["message"]
    bad_key = await api.client.post(
        "/api/v1/register",
        json={
            "activation_id": created["activation_id"],
            "activation_code": created["activation_code"],
            "public_key": "c2hvcnQ=",
        },
    )
    assert error_of(bad_key)["field"] == "public_key"


async def test_registration_limit_and_expiry_messages(api: Api) -> None:
    node_id, _ = await api.register_node({"env": "dev"})
    created = (await api.client.post("/api/v1/activations", json={})).json()
    body = {
        "activation_id": created["activation_id"],
        "activation_code": created["activation_code"],
        "public_key": "A" * 43 + "=",
    }
    assert (await api.client.post("/api/v1/register", json=body)).status_code == 201
    again = await api.client.post("/api/v1/register", json=body)
    assert error_of(again)["message"] == "activation has reached its registration limit"
    assert node_id.startswith("mi-")


async def test_nodes_list_get_tags_and_deregister(api: Api) -> None:
    web, _ = await api.register_node({"role": "web", "env": "dev"})
    db, _ = await api.register_node({"role": "db", "env": "dev"})
    listed = (await api.client.get("/api/v1/nodes")).json()
    assert sorted(n["node_id"] for n in listed) == sorted([web, db])
    node = (await api.client.get(f"/api/v1/nodes/{web}")).json()
    assert node["ping_status"] == "ConnectionLost"
    assert node["platform"]["type"] is None
    assert node["tags"] == {"role": "web", "env": "dev"}
    only_web = (await api.client.get("/api/v1/nodes", params={"targets": "tag:role=web"})).json()
    assert [n["node_id"] for n in only_web] == [web]
    both = await api.client.get(
        "/api/v1/nodes", params=[("targets", "tag:env=dev"), ("targets", "tag:role=db")]
    )
    assert [n["node_id"] for n in both.json()] == [db]
    bad = await api.client.get("/api/v1/nodes", params={"targets": "bogus"})
    assert (bad.status_code, error_of(bad)["field"]) == (400, "targets[0]")
    tagged = await api.client.patch(
        f"/api/v1/nodes/{web}/tags", json={"set": {"tier": "1"}, "remove": ["env"]}
    )
    assert tagged.json()["tags"] == {"role": "web", "tier": "1"}
    assert (await api.client.delete(f"/api/v1/nodes/{web}")).status_code == 204
    for method in ("GET", "DELETE"):
        gone = await api.client.request(method, f"/api/v1/nodes/{web}")
        assert gone.status_code == 404
    gone = await api.client.patch(f"/api/v1/nodes/{web}/tags", json={"set": {}})
    assert gone.status_code == 404


async def test_documents(api: Api) -> None:
    builtins = (await api.client.get("/api/v1/documents")).json()
    shell = next(d for d in builtins if d["name"] == "Corral-RunShellScript")
    assert shell["owner"] == "Corral"
    assert "content" not in shell
    created = await api.client.post(
        "/api/v1/documents", json={"name": "MyDoc", "content": SIMPLE_DOC}
    )
    assert created.status_code == 201, created.text
    doc = created.json()
    assert (doc["version"], doc["format"], doc["owner"]) == (1, "json", "Self")
    assert doc["parameters"]["message"]["default"] == "hi"
    dup = await api.client.post("/api/v1/documents", json={"name": "MyDoc", "content": SIMPLE_DOC})
    assert dup.status_code == 409
    same = await api.client.put("/api/v1/documents/MyDoc", json={"content": SIMPLE_DOC})
    assert same.status_code == 409
    v2 = (await api.client.put("/api/v1/documents/MyDoc", json={"content": YAML_DOC})).json()
    assert (v2["version"], v2["default_version"], v2["format"]) == (2, 1, "yaml")
    got = (await api.client.get("/api/v1/documents/MyDoc")).json()
    assert (got["version"], got["content"]) == (1, SIMPLE_DOC)
    latest = (await api.client.get("/api/v1/documents/MyDoc", params={"version": "$LATEST"})).json()
    assert latest["version"] == 2
    one = (await api.client.get("/api/v1/documents/MyDoc", params={"version": "1"})).json()
    assert one["version"] == 1
    bad = await api.client.get("/api/v1/documents/MyDoc", params={"version": "x"})
    assert error_of(bad)["field"] == "version"
    assert (
        await api.client.get("/api/v1/documents/MyDoc", params={"version": "9"})
    ).status_code == 404
    default = await api.client.put("/api/v1/documents/MyDoc/default-version", json={"version": 2})
    assert default.json()["default_version"] == 2
    missing = await api.client.put("/api/v1/documents/MyDoc/default-version", json={"version": 7})
    assert missing.status_code == 404
    assert (await api.client.delete("/api/v1/documents/MyDoc")).status_code == 204
    assert (await api.client.get("/api/v1/documents/MyDoc")).status_code == 404
    assert (
        await api.client.put("/api/v1/documents/Nope", json={"content": YAML_DOC})
    ).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Corral-Mine", "content": YAML_DOC}, "name"),
        ({"name": "AWS-Mine", "content": YAML_DOC}, "name"),
        ({"name": "no spaces", "content": YAML_DOC}, "name"),
        ({"name": "ab", "content": YAML_DOC}, "name"),
        ({"name": "Good", "content": YAML_DOC, "format": "xml"}, "format"),
        ({"name": "Good", "content": '{"schemaVersion": "2.2", "mainSteps": []}'}, "mainSteps"),
    ],
)
async def test_document_validation(api: Api, body: dict[str, object], field: str) -> None:
    response = await api.client.post("/api/v1/documents", json=body)
    assert response.status_code == 400, response.text
    assert str(error_of(response)["field"]).startswith(field)
    assert (await api.client.get("/api/v1/documents/Good")).status_code == 404


async def test_builtins_are_read_only(api: Api) -> None:
    name = "Corral-RunShellScript"
    for method, path, body in (
        ("PUT", f"/api/v1/documents/{name}", {"content": YAML_DOC}),
        ("PUT", f"/api/v1/documents/{name}/default-version", {"version": 1}),
        ("DELETE", f"/api/v1/documents/{name}", None),
    ):
        response = await api.client.request(method, path, json=body)
        assert response.status_code == 400, (method, path)
    assert (await api.client.get(f"/api/v1/documents/{name}")).json()["owner"] == "Corral"


async def test_commands(api: Api) -> None:
    node_id, _ = await api.register_node({"env": "dev"})
    response = await api.client.post(
        "/api/v1/commands",
        json={
            "document_name": "Corral-RunShellScript",
            "targets": ["tag:env=dev"],
            "parameters": {"commands": ["echo hi"]},
            "comment": "smoke",
        },
    )
    assert response.status_code == 201, response.text
    command = response.json()
    assert (command["target_count"], command["comment"], command["max_concurrency"]) == (
        1,
        "smoke",
        "50",
    )
    [inv] = command["invocations"]
    assert (inv["node_id"], inv["response_code"]) == (node_id, None)
    command_id = command["command_id"]
    got = (await api.client.get(f"/api/v1/commands/{command_id}")).json()
    assert got["command_id"] == command_id
    listed = (await api.client.get("/api/v1/commands", params={"limit": 5})).json()
    assert [c["command_id"] for c in listed] == [command_id]
    assert "invocations" not in listed[0]
    output = await api.client.get(f"/api/v1/commands/{command_id}/invocations/{node_id}/output")
    assert (
        output.json()
        == {"data": "", "offset": 0, "next_offset": 0, "complete": False, "status": "Delayed"}
        or output.json()["status"] == "Pending"
    )
    cancelled = await api.client.post(
        f"/api/v1/commands/{command_id}/cancel", json={"node_id": None}
    )
    assert cancelled.json()["status"] == "Cancelled"
    assert cancelled.json()["invocations"][0]["status"] == "Cancelled"
    for path in (
        "/api/v1/commands/nope",
        f"/api/v1/commands/{command_id}/invocations/mi-0000000000000000a/output",
    ):
        assert (await api.client.get(path)).status_code == 404
    assert (await api.client.post("/api/v1/commands/nope/cancel", json={})).status_code == 404
    bad_stream = await api.client.get(
        f"/api/v1/commands/{command_id}/invocations/{node_id}/output", params={"stream": "x"}
    )
    assert error_of(bad_stream)["field"] == "stream"


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"targets": ["tag:env=prod"]}, 400, "targets"),
        ({"targets": []}, 400, "targets"),
        ({"targets": ["all", "mi-0000000000000000a"]}, 400, "targets"),
        ({"parameters": {}}, 400, "parameters.commands"),
        ({"parameters": {"commands": ["x"], "nope": "1"}}, 400, "parameters.nope"),
        ({"max_concurrency": "x"}, 400, "max_concurrency"),
        ({"max_errors": "200%"}, 400, "max_errors"),
        ({"timeout_seconds": 0}, 400, "timeout_seconds"),
        ({"document_name": "Missing"}, 404, None),
        ({"document_version": 9}, 404, None),
        ({"document_version": "$BAD"}, 400, "document_version"),
    ],
)
async def test_command_validation(
    api: Api, change: dict[str, object], status: int, field: str | None
) -> None:
    await api.register_node({"env": "dev"})
    body: dict[str, object] = {
        "document_name": "Corral-RunShellScript",
        "targets": ["tag:env=dev"],
        "parameters": {"commands": ["echo hi"]},
        **change,
    }
    response = await api.client.post("/api/v1/commands", json=body)
    assert response.status_code == status, response.text
    if field is not None:
        assert error_of(response)["field"] == field
    assert (await api.client.get("/api/v1/commands")).json() == []


async def test_unknown_route_and_internal_errors_have_the_error_shape(api: Api) -> None:
    response = await api.client.get("/api/v1/nothing")
    assert (response.status_code, error_of(response)["type"]) == (404, "NotFoundError")


def test_create_app_builds_routes(tmp_path: Path) -> None:
    app = create_app(fast_config(tmp_path))
    paths = set(app.openapi()["paths"])
    assert {"/healthz", "/api/v1/register", "/api/v1/commands", "/api/v1/nodes"} <= paths


async def test_unexpected_errors_do_not_leak(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    context = api.app.state.context

    async def broken() -> None:
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(context.store, "list_nodes", broken)
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://corral.test", headers=api.client.headers
    ) as client:
        response = await client.get("/api/v1/nodes")
    assert response.status_code == 500
    assert error_of(response) == {
        "type": "InternalError",
        "message": "internal server error",
        "field": None,
    }
    assert "secret" not in response.text
