"""Document versions through the real CLI and server: create, update, default, run by version."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.harness import Fleet


def write_doc(path: Path, greeting: str) -> Path:
    """A YAML Command document that prints `greeting` and a parameter."""
    path.write_text(
        "schemaVersion: '2.2'\n"
        f"description: says {greeting}\n"
        "parameters:\n"
        "  name:\n"
        "    type: String\n"
        "    default: world\n"
        "    allowedPattern: '^[a-z]+$'\n"
        "mainSteps:\n"
        "  - action: aws:runShellScript\n"
        "    name: greet\n"
        "    inputs:\n"
        f"      runCommand: ['echo {greeting} {{{{ name }}}}']\n"
    )
    return path


def test_versions_defaults_and_running_a_chosen_version(fleet: Fleet, tmp_path: Path) -> None:
    server = fleet.server
    created = server.cli_json("doc", "create", str(write_doc(tmp_path / "v1.yaml", "hello")),
                              "--name", "Greeter")  # fmt: skip
    assert (created["name"], created["version"]) == ("Greeter", 1)
    updated = server.cli_json(
        "doc", "update", "Greeter", str(write_doc(tmp_path / "v2.yaml", "hi"))
    )
    assert (updated["version"], updated["default_version"], updated["latest_version"]) == (2, 1, 2)

    node = fleet.agents[0].node_id
    default = server.cli_json("run", "Greeter", "--targets", node)
    assert default["invocations"][0]["stdout"] == "hello world\n"
    latest = server.cli_json("run", "Greeter:$LATEST", "--targets", node, "--param", "name=corral")
    assert latest["invocations"][0]["stdout"] == "hi corral\n"
    assert latest["document_version"] == 2

    refused = server.cli(
        "run", "Greeter", "--targets", node, "--param", "name=Bad Name", "-o", "json"
    )
    assert refused.returncode == 2
    assert json.loads(refused.stderr)["error"]["field"] == "parameters.name"

    assert server.cli("doc", "set-default", "Greeter", "2").returncode == 0
    shown = server.cli_json("doc", "show", "Greeter")
    assert (shown["version"], shown["description"]) == (2, "says hi")
    first = server.cli_json("doc", "show", "Greeter:1")
    assert "echo hello" in first["content"]
    names = {d["name"] for d in server.cli_json("doc", "list")}
    assert {"Greeter", "Corral-RunShellScript"} <= names

    assert server.cli("doc", "delete", "Corral-RunShellScript").returncode == 2
    assert server.cli("doc", "delete", "Greeter").returncode == 0
    assert server.cli("doc", "show", "Greeter").returncode == 3
