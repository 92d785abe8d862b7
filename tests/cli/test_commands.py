"""Command behaviour against a fake API: stdout JSON, stderr errors, exit codes."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import FakeApi, Result

    Cli = Callable[..., Result]


NODE: dict[str, Any] = {
    "node_id": "mi-0123456789abcdef0",
    "ping_status": "Online",
    "last_seen": "2026-11-29T16:43:53.123Z",
    "hostname": "web-1",
    "platform": {
        "type": "Linux",
        "name": "debian",
        "version": "12",
        "kernel": "6.1.0",
        "arch": "x86_64",
    },
    "ip_addresses": ["10.0.0.5"],
    "agent_version": "0.1.0",
    "tags": {"env": "dev"},
    "registered_at": "2026-11-29T16:00:00Z",
    "activation_id": "a1",
}


@pytest.mark.parametrize(
    "argv",
    [
        ("-o", "json", "nodes", "list"),
        ("nodes", "list", "-o", "json"),
        ("nodes", "-o", "json", "list"),
        ("--output", "json", "nodes", "list"),
    ],
)
def test_json_output_anywhere(api: FakeApi, cli: Cli, argv: tuple[str, ...]) -> None:
    api.on("GET", "/api/v1/nodes", body=[NODE])
    result = cli(*argv)
    assert result.exit_code == 0
    assert result.json() == [NODE]
    assert api.requests[0].headers["authorization"] == "Bearer t0k"


def test_nodes_table_and_targets(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/nodes", body=[NODE])
    result = cli("nodes", "list", "--targets", "tag:env=dev", "--targets", "tag:role=web")
    assert result.exit_code == 0
    for text in (
        "NODE ID",
        "PING",
        "LAST SEEN",
        "HOSTNAME",
        "PLATFORM",
        "TAGS",
        "mi-0123456789abcdef0",
        "Online",
        "web-1",
        "debian 12 x86_64",
        "env=dev",
    ):
        assert text in result.stdout
    assert api.requests[0].url.params.get_list("targets") == ["tag:env=dev", "tag:role=web"]


def test_server_data_is_not_rich_markup(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/nodes", body=[{**NODE, "hostname": "[bold]x[/bold]"}])
    assert "[bold]x[/bold]" in cli("nodes", "list").stdout


@pytest.mark.parametrize(
    ("status", "type_", "exit_code"),
    [
        (400, "ValidationError", 2),
        (422, "ValidationError", 2),
        (409, "ConflictError", 2),
        (401, "AuthError", 4),
        (403, "AuthError", 4),
        (404, "NotFoundError", 3),
        (503, "UnavailableError", 5),
        (500, "InternalError", 1),
    ],
)
def test_http_errors_map_to_exit_codes(
    api: FakeApi, cli: Cli, status: int, type_: str, exit_code: int
) -> None:
    api.fail("GET", "/api/v1/nodes/mi-0123456789abcdef0", status, type_, "it went wrong", "f.g")
    result = cli("nodes", "show", "mi-0123456789abcdef0", "-o", "json")
    assert result.exit_code == exit_code
    assert result.stdout == ""
    assert result.error() == {"type": type_, "message": "it went wrong", "field": "f.g"}


def test_error_without_json_body(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/nodes", status=503)
    result = cli("nodes", "list", "-o", "json")
    assert result.exit_code == 5
    assert result.error()["type"] == "UnavailableError"


def test_connection_refused_names_the_url(cli: Cli) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = cli("nodes", "list", "-o", "json", "--server", url, server=False)
    assert result.exit_code == 5
    assert url in result.error()["message"]
    human = cli("nodes", "list", "--server", url, server=False)
    assert human.exit_code == 5
    assert human.stderr.startswith("error: ")
    assert url in human.stderr


def test_no_server_configured_is_usage_error(cli: Cli) -> None:
    result = cli("nodes", "list", "-o", "json", server=False)
    assert result.exit_code == 2
    assert result.error()["field"] == "server"


def test_usage_errors_exit_2_with_json_error(api: FakeApi, cli: Cli) -> None:
    result = cli("run", "Doc", "-o", "json")  # --targets missing
    assert result.exit_code == 2
    assert "--targets" in result.error()["message"]
    bad = cli("run", "Doc", "--targets", "nonsense", "-o", "json")
    assert bad.exit_code == 2
    assert bad.error()["field"] == "targets"
    assert api.requests == []


def test_activation_create(api: FakeApi, cli: Cli) -> None:
    created = {
        "activation_id": "a1",
        "activation_code": "secret",
        "tags": {"env": "dev"},
        "registration_limit": 5,
        "registrations_count": 0,
        "expired": False,
        "expires_at": "2026-11-30T16:00:00Z",
        "created_at": "2026-11-29T16:00:00Z",
        "description": "lab",
    }
    api.on("POST", "/api/v1/activations", 201, created)
    result = cli(
        "activation",
        "create",
        "--tag",
        "env=dev",
        "--limit",
        "5",
        "--expires",
        "2h",
        "--description",
        "lab",
        "-o",
        "json",
    )
    assert result.exit_code == 0
    assert result.json()["activation_code"] == "secret"
    assert api.bodies("POST", "/api/v1/activations") == [
        {
            "description": "lab",
            "tags": {"env": "dev"},
            "registration_limit": 5,
            "expires_seconds": 7200,
        }
    ]
    human = cli("activation", "create")
    assert "secret" in human.stdout
    assert "only once" in human.stderr


def test_activation_list_and_delete(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/activations", body=[{"activation_id": "a1", "tags": {}}])
    api.on("DELETE", "/api/v1/activations/a1", 204)
    assert cli("activation", "list", "-o", "json").json() == [{"activation_id": "a1", "tags": {}}]
    result = cli("activation", "delete", "a1", "-o", "json")
    assert result.exit_code == 0
    assert result.json() == {"activation_id": "a1", "deleted": True}


def test_nodes_tag_untag_deregister(api: FakeApi, cli: Cli) -> None:
    path = "/api/v1/nodes/mi-0123456789abcdef0"
    api.on("PATCH", path + "/tags", body=NODE)
    api.on("DELETE", path, 204)
    assert cli("nodes", "tag", "mi-0123456789abcdef0", "env=dev", "role=web").exit_code == 0
    assert cli("nodes", "untag", "mi-0123456789abcdef0", "old", "-o", "json").json() == NODE
    assert api.bodies("PATCH", path + "/tags") == [
        {"set": {"env": "dev", "role": "web"}, "remove": []},
        {"set": {}, "remove": ["old"]},
    ]
    result = cli("nodes", "deregister", "mi-0123456789abcdef0", "-o", "json")
    assert result.json() == {"node_id": "mi-0123456789abcdef0", "deregistered": True}


DOC: dict[str, Any] = {
    "name": "MyDoc",
    "version": 3,
    "default_version": 1,
    "latest_version": 3,
    "document_type": "Command",
    "schema_version": "2.2",
    "parameters": {"message": {"type": "String"}},
    "owner": "Self",
    "content": "schemaVersion: '2.2'\n",
    "format": "yaml",
}


@pytest.mark.parametrize(
    ("suffix", "fmt"), [(".yaml", "yaml"), (".yml", "yaml"), (".json", "json"), (".txt", None)]
)
def test_doc_create_format_from_extension(
    api: FakeApi, cli: Cli, tmp_path: Path, suffix: str, fmt: str | None
) -> None:
    path = tmp_path / f"doc{suffix}"
    path.write_text("schemaVersion: '2.2'\n")
    api.on("POST", "/api/v1/documents", 201, DOC)
    result = cli("doc", "create", str(path), "--name", "MyDoc", "-o", "json")
    assert result.exit_code == 0
    assert result.json() == DOC
    assert api.bodies("POST", "/api/v1/documents") == [
        {"name": "MyDoc", "content": "schemaVersion: '2.2'\n", "format": fmt}
    ]


def test_doc_create_validation_error_names_field(api: FakeApi, cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{}")
    api.fail(
        "POST",
        "/api/v1/documents",
        400,
        "ValidationError",
        "is required",
        "mainSteps[0].inputs.runCommand",
    )
    result = cli("doc", "create", str(path), "--name", "Bad")
    assert result.exit_code == 2
    assert result.stderr == "error: mainSteps[0].inputs.runCommand: is required\n"


def test_doc_show_version_and_content(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/documents/MyDoc", body=DOC)
    result = cli("doc", "show", "MyDoc:3")
    assert result.exit_code == 0
    assert "schemaVersion: '2.2'" in result.stdout
    assert "message (String)" in result.stdout
    assert api.requests[0].url.params["version"] == "3"
    cli("doc", "show", "MyDoc:latest", "-o", "json")
    assert api.requests[1].url.params["version"] == "$LATEST"
    cli("doc", "show", "MyDoc")
    assert "version" not in api.requests[2].url.params


def test_doc_update_set_default_delete_list(api: FakeApi, cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("x: 1\n")
    api.on("PUT", "/api/v1/documents/MyDoc", body=DOC)
    api.on("PUT", "/api/v1/documents/MyDoc/default-version", body=DOC)
    api.on("DELETE", "/api/v1/documents/MyDoc", 204)
    api.on("GET", "/api/v1/documents", body=[DOC])
    assert cli("doc", "update", "MyDoc", str(path), "-o", "json").exit_code == 0
    assert api.bodies("PUT", "/api/v1/documents/MyDoc") == [{"content": "x: 1\n", "format": "yaml"}]
    assert cli("doc", "set-default", "MyDoc", "2").exit_code == 0
    assert api.bodies("PUT", "/api/v1/documents/MyDoc/default-version") == [{"version": 2}]
    assert cli("doc", "delete", "MyDoc", "-o", "json").json() == {"name": "MyDoc", "deleted": True}
    listing = cli("doc", "list")
    assert "MyDoc" in listing.stdout
    assert "Command" in listing.stdout


def test_help_lists_agent(cli: Cli) -> None:
    result = cli("--help", server=False)
    assert result.exit_code == 0
    assert "agent" in result.stdout
    assert "run" in result.stdout
