"""Security end to end, with a real server and agents: secrets stay out of everything
written, revocation stops a running follow, the audit log verifies, and a node's
credential reaches only what a node may do."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from corral.agent.api import call
from corral.agent.identity import load_identity
from corral.errors import AuthError
from tests.e2e.harness import PYTHON, Fleet, base_env, wait_for


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_secrets_appear_nowhere_and_revocation_stops_a_follow(fresh_fleet: Fleet) -> None:
    server = fresh_fleet.server
    [agent] = fresh_fleet.add_agents(1, tags=["env=dev"])
    user = server.cli_json("user", "create", "sre-sam", "--role", "operator")
    token = user["token"]
    extra = server.cli_json("token", "create", "--user", "sre-sam", "--description", "ci")
    activation = server.cli_json("activation", "create", "--description", "unused")
    secrets = {
        "admin token": server.token,
        "user token": token,
        "second token": extra["token"],
        "activation code": activation["activation_code"],
    }

    # A long-running command, followed by sre-sam with their own token.
    env = base_env()
    env.update(CORRAL_SERVER=server.url, CORRAL_TOKEN=token, CORRAL_POLL_INTERVAL="0.2")
    sent = subprocess.run(
        [PYTHON, "-m", "corral", "run", "Corral-RunShellScript", "--targets", agent.node_id,
         "--param", "commands=for i in $(seq 300); do echo tick $i; sleep 0.1; done",
         "--no-wait", "-o", "json"],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    command_id = json.loads(sent.stdout)["command_id"]
    follow = subprocess.Popen(
        [PYTHON, "-m", "corral", "commands", "output", command_id, agent.node_id, "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: "tick" in _peek(server, command_id, agent.node_id), timeout=20)
        revoked = server.cli("token", "revoke", user["token_id"])
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        out, err = follow.communicate(timeout=15)
        assert follow.returncode == 4, (out, err)
        assert time.monotonic() - started < 5
        assert "tick" in out
        assert "unknown, revoked or expired" in err
    finally:
        if follow.poll() is None:
            follow.kill()
        server.cli("commands", "cancel", command_id)

    # A failed login attempt with a near-miss token is recorded without the token.
    with httpx.Client(base_url=server.url) as client:
        near_miss = token[:-2] + "xx"
        assert (
            client.get(
                "/api/v1/nodes", headers={"Authorization": f"Bearer {near_miss}"}
            ).status_code
            == 401
        )
        secrets["near-miss token"] = near_miss
    verified = server.cli_json("audit", "verify")
    assert verified["ok"] is True
    # What the system did by itself is in the log too: the node connecting, the dispatch.
    for action in ("node:Connect", "command:Dispatch", "node:Register", "token:Revoke"):
        assert server.cli_json("audit", "list", "--action", action), action
    exported = server.cli("audit", "export")
    assert exported.returncode == 0
    assert (
        '"action": "token:Revoke"' in exported.stdout
        or '"action":"token:Revoke"' in exported.stdout
    )

    # Stop everything so every byte is on disk, then grep the data directory and logs.
    fresh_fleet.stop()
    audit_key = (server.data_dir / "audit.key").read_text().strip()
    secrets["audit key"] = audit_key
    allowed = {
        server.data_dir / "admin-token": "admin token",
        server.data_dir / "audit.key": "audit key",
    }
    found = []
    for path in files_under(fresh_fleet.root):
        data = path.read_bytes()
        for name, secret in secrets.items():
            if allowed.get(path) == name:
                continue
            if secret.encode() in data:
                found.append(f"{name} in {path.relative_to(fresh_fleet.root)}")
    for name, secret in secrets.items():
        if secret in exported.stdout or secret in exported.stderr:
            found.append(f"{name} in the audit export")
    assert found == []
    assert os.stat(server.data_dir / "audit.key").st_mode & 0o077 == 0


def _peek(server: object, command_id: str, node_id: str) -> str:
    result = server.cli("commands", "output", command_id, node_id)  # type: ignore[attr-defined]
    return str(result.stdout)


def test_a_nodes_own_credential_reaches_only_what_a_node_may(fresh_fleet: Fleet) -> None:
    server = fresh_fleet.server
    [agent] = fresh_fleet.add_agents(1, tags=["env=dev"], start=False)
    who = subprocess.run(
        [PYTHON, "-m", "corral", "agent", "whoami", "--state-dir", str(agent.state_dir),
         "-o", "json"],
        capture_output=True, text=True, env=base_env(), check=False, timeout=60,
    )  # fmt: skip
    assert who.returncode == 0, who.stderr
    body = json.loads(who.stdout)
    assert body["principal"] == f"node:{agent.node_id}"
    assert body["node"]["tags"] == {"env": "dev"}
    identity = load_identity(agent.state_dir)
    for path in (
        "/api/v1/nodes",
        f"/api/v1/nodes/{agent.node_id}",
        "/api/v1/audit",
        "/api/v1/users",
    ):
        with pytest.raises(AuthError, match="may not"):
            call(identity, "GET", path)
    # Deregistered, the node's key opens nothing.
    assert server.cli("nodes", "deregister", agent.node_id).returncode == 0
    with pytest.raises(AuthError):
        call(identity, "GET", "/api/v1/whoami")
    audited = server.cli_json("audit", "list", "--principal", f"node:{agent.node_id}")
    assert {r["outcome"] for r in audited} == {"allowed", "denied"}
