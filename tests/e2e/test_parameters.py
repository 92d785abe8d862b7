"""Parameter Store end to end: references in commands, masking on the node, no plaintext
anywhere on the server, and a node reading its own parameters with its key."""

from __future__ import annotations

import json
import subprocess

from tests.e2e.harness import PYTHON, Fleet, base_env

SECRET = "tr0ub4dor&3-horse-staple"


def test_references_resolve_and_secrets_are_masked_and_never_stored(fresh_fleet: Fleet) -> None:
    server = fresh_fleet.server
    [agent] = fresh_fleet.add_agents(1, tags=["env=dev"])
    assert server.cli("param", "put", "/app/dev/greeting", "hello-from-store").returncode == 0
    put = server.cli("param", "put", "/app/dev/db-password", SECRET, "--type", "SecureString")
    assert put.returncode == 0, put.stderr
    script = (
        "echo plain={{ssm:/app/dev/greeting}}; "
        "echo 'secret={{ssm-secure:/app/dev/db-password}}'; "
        'printf "%s" "{{ssm-secure:/app/dev/db-password}}" | cut -c1-5; '
        'printf "%s\\n" "{{ssm-secure:/app/dev/db-password}}" | rev'
    )
    result = server.cli(
        "run", "Corral-RunShellScript", "--targets", agent.node_id,
        "--param", f"commands={script}", "-o", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    command = json.loads(result.stdout)
    [invocation] = command["invocations"]
    stdout = invocation["stdout"]
    assert "plain=hello-from-store" in stdout
    assert "secret=" + "*" * len(SECRET) in stdout  # masked on the node, same length
    assert SECRET not in stdout
    assert SECRET[:5] in stdout  # a fragment is not the secret (documented limit)
    refs = {r["name"]: r for r in command["parameter_references"]}
    assert refs["/app/dev/db-password"]["secure"] is True
    assert refs["/app/dev/db-password"]["version"] == 1
    assert refs["/app/dev/greeting"]["version"] == 1
    shown = server.cli_json("commands", "show", command["command_id"])
    assert SECRET not in json.dumps(shown)
    assert "{{ssm-secure:/app/dev/db-password}}" in json.dumps(shown["parameters"])
    full = server.cli("commands", "output", command["command_id"], agent.node_id, "--full")
    assert SECRET not in full.stdout

    # Nothing on the server side holds the plaintext: database, blobs, audit, logs.
    fresh_fleet.stop()
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in server.log()


def test_a_node_reads_its_parameters_with_its_own_key(fresh_fleet: Fleet) -> None:
    server = fresh_fleet.server
    [agent] = fresh_fleet.add_agents(1, tags=["env=dev"], start=False)
    server.cli("param", "put", "/app/dev/token", SECRET, "--type", "SecureString")
    server.cli("param", "put", "/app/prod/token", "prod-secret", "--type", "SecureString")

    def agent_get(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "corral", "agent", "param", "get", name, "--state-dir",
             str(agent.state_dir), *extra],
            capture_output=True, text=True, env=base_env(), check=False, timeout=60,
        )  # fmt: skip

    assert agent_get("/app/dev/token").returncode == 4  # the node role allows nothing yet
    policy = {
        "statements": [
            {
                "effect": "allow",
                "actions": ["parameter:Get", "parameter:GetDecrypted"],
                "resources": ["parameter:/app/${node.tag.env}/*"],
            }
        ]
    }
    policy_file = fresh_fleet.root / "node-policy.json"
    policy_file.write_text(json.dumps(policy))
    assert server.cli("role", "update", "node", "--policy", str(policy_file)).returncode == 0
    plain = agent_get("/app/dev/token", "--decrypt")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == SECRET + "\n"
    sealed = agent_get("/app/dev/token", "-o", "json")
    assert json.loads(sealed.stdout)["value"].startswith("corral:v1:")
    assert agent_get("/app/prod/token", "--decrypt").returncode == 4
    audited = server.cli_json("audit", "list", "--action", "parameter:GetDecrypted")
    assert f"node:{agent.node_id}" in {r["principal"] for r in audited}
