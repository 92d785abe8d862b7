"""Activations, registration and node management through the real CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import PYTHON, Agent, Fleet, base_env, wait_for


def register(
    fleet: Fleet, activation_id: str, code: str, state_dir: Path
) -> subprocess.CompletedProcess[str]:
    """Run `corral agent register` and return the finished process."""
    return subprocess.run(
        [PYTHON, "-m", "corral", "agent", "register", "--server", fleet.server.url,
         "--activation-id", activation_id, "--activation-code", code,
         "--state-dir", str(state_dir)],
        capture_output=True, text=True, env=base_env(), check=False,
    )  # fmt: skip


def test_admin_token_is_private(fresh_fleet: Fleet) -> None:
    token_file = fresh_fleet.server.data_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_health_needs_no_token_but_the_api_does(fresh_fleet: Fleet) -> None:
    with urllib.request.urlopen(fresh_fleet.server.url + "/healthz", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read())["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(fresh_fleet.server.url + "/api/v1/nodes", timeout=5)
    assert refused.value.code == 401
    refused.value.close()
    unauthenticated = fresh_fleet.server.cli("nodes", "list", env={"CORRAL_TOKEN": "crl_wrong"})
    assert unauthenticated.returncode == 4


def test_registration_shows_the_node_with_platform_and_tags(fresh_fleet: Fleet) -> None:
    activation = fresh_fleet.server.cli_json(
        "activation", "create", "--tag", "env=lab", "--limit", "2", "--expires", "1h"
    )
    agent = Agent(fresh_fleet.server, fresh_fleet.root / "a", fresh_fleet.root / "a.log")
    fresh_fleet.agents.append(agent)
    node_id = agent.register(
        activation["activation_id"], activation["activation_code"], ["role=web"]
    )
    assert node_id.startswith("mi-")
    assert len(node_id) == 20
    assert all(c in "0123456789abcdef" for c in node_id[3:])
    for path in agent.state_dir.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    agent.start()
    fresh_fleet.wait_online([node_id])
    (node,) = fresh_fleet.server.cli_json("nodes", "list")
    assert node["node_id"] == node_id
    assert node["tags"] == {"env": "lab", "role": "web"}
    assert node["platform"]["type"] == "Linux"
    assert node["platform"]["kernel"] == os.uname().release
    assert node["platform"]["arch"] == os.uname().machine
    assert node["last_seen"].endswith("Z")

    tagged = fresh_fleet.server.cli_json("nodes", "tag", node_id, "team=sre")
    assert tagged["tags"]["team"] == "sre"
    untagged = fresh_fleet.server.cli_json("nodes", "untag", node_id, "team")
    assert "team" not in untagged["tags"]
    assert fresh_fleet.server.cli_json("nodes", "list", "--targets", "tag:role=db") == []

    agent.stop()
    fresh_fleet.wait_offline(node_id)
    (node,) = fresh_fleet.server.cli_json("nodes", "list")
    assert node["ping_status"] == "ConnectionLost"


def test_activation_codes_are_refused_when_wrong_or_used_up(fresh_fleet: Fleet) -> None:
    activation = fresh_fleet.server.cli_json("activation", "create", "--limit", "1")
    wrong = register(
        fresh_fleet, activation["activation_id"], "not-the-code", fresh_fleet.root / "w"
    )
    assert wrong.returncode == 2
    assert "activation" in wrong.stderr.lower()
    first = register(
        fresh_fleet,
        activation["activation_id"],
        activation["activation_code"],
        fresh_fleet.root / "x",
    )
    assert first.returncode == 0, first.stderr
    second = register(
        fresh_fleet,
        activation["activation_id"],
        activation["activation_code"],
        fresh_fleet.root / "y",
    )
    assert second.returncode == 2
    assert "limit" in second.stderr.lower()
    listed = fresh_fleet.server.cli_json("activation", "list")
    assert listed[0]["registrations_count"] == 1
    assert "activation_code" not in listed[0]
    assert activation["activation_code"] not in json.dumps(listed)


def test_deregistered_node_can_no_longer_connect(fresh_fleet: Fleet) -> None:
    (agent,) = fresh_fleet.add_agents(1)
    removed = fresh_fleet.server.cli("nodes", "deregister", agent.node_id)
    assert removed.returncode == 0, removed.stderr
    wait_for(lambda: fresh_fleet.server.cli("nodes", "show", agent.node_id).returncode == 3)
    assert fresh_fleet.server.cli_json("nodes", "list") == []


def test_activation_code_and_tokens_leave_no_trace_on_the_server(fresh_fleet: Fleet) -> None:
    activation = fresh_fleet.server.cli_json("activation", "create", "--limit", "1")
    agent = Agent(fresh_fleet.server, fresh_fleet.root / "a", fresh_fleet.root / "a.log")
    fresh_fleet.agents.append(agent)
    agent.register(activation["activation_id"], activation["activation_code"])
    agent.start()
    fresh_fleet.wait_online([agent.node_id])
    code = activation["activation_code"].encode()
    token = fresh_fleet.server.token.encode()
    fresh_fleet.server.stop()  # flush everything the server writes
    for path in fresh_fleet.server.data_dir.rglob("*"):
        if path.is_file() and path.name != "admin-token":
            data = path.read_bytes()
            assert code not in data, path
            assert token not in data, path
    log = fresh_fleet.server.log().encode()
    assert code not in log
    assert token not in log
    private_key = (agent.state_dir / "node.key").read_bytes().strip()
    assert private_key not in log
