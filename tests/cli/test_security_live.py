"""Identity, audit and just-in-time access commands against a real server (SQLite).

The server runs in a background thread (tests/cli/liveserver.py); the CLI runs
in-process and reaches it over loopback HTTP, as a user would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tests.cli.liveserver import Live, as_principal, live

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import Result

    Cli = Callable[..., Result]

__all__ = ["live"]  # the fixture, imported for the tests below


def create_user(admin: Cli, name: str, role: str) -> str:
    """Create a user through the CLI; returns its token."""
    created = admin("user", "create", name, "--role", role, "-o", "json")
    assert created.exit_code == 0, created.stderr
    return str(created.json()["token"])


def test_users_tokens_and_whoami(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    created = admin(
        "user", "create", "alice", "--role", "viewer", "--token-expires", "7d", "-o", "json"
    )
    assert created.exit_code == 0, created.stderr
    body = created.json()
    assert body["name"] == "alice"
    assert body["roles"] == ["viewer"]
    alice = as_principal(cli, live, body["token"])

    me = alice("whoami", "-o", "json").json()
    assert me["principal"] == "user:alice"
    assert me["roles"] == ["viewer"]
    assert me["grants"] == []
    assert me["token_id"] == body["token_id"]

    listed = admin("user", "list", "-o", "json").json()
    assert {u["name"] for u in listed} >= {"alice"}
    table = admin("user", "list").stdout
    assert "alice" in table
    assert "viewer" in table
    assert admin("user", "show", "alice", "-o", "json").json()["disabled"] is False

    # unknown user -> 3; a viewer may not list users -> 4
    missing = admin("user", "show", "nobody", "-o", "json")
    assert missing.exit_code == 3
    assert missing.error()["type"] == "NotFoundError"
    denied = alice("user", "list", "-o", "json")
    assert denied.exit_code == 4
    assert denied.error()["type"] == "AccessDeniedError"

    # tokens: alice makes her own, lists, revokes; the revoked token stops working
    token = alice("token", "create", "--expires", "30d", "--description", "laptop", "-o", "json")
    assert token.exit_code == 0, token.stderr
    second = token.json()
    assert {"token_id", "token"} <= set(second)
    own = alice("token", "list", "-o", "json").json()
    assert {t["token_id"] for t in own} == {body["token_id"], second["token_id"]}
    every = admin("token", "list", "--all", "-o", "json").json()
    assert {t["user"] for t in every} >= {"alice", "admin"}
    assert admin("token", "list", "--user", "alice", "-o", "json").json() == own
    revoked = alice("token", "revoke", second["token_id"], "-o", "json")
    assert revoked.json()["revoked"] is True
    assert as_principal(cli, live, second["token"])("whoami").exit_code == 4

    # set-roles, disable/enable, delete
    assert admin("user", "set-roles", "alice", "--role", "auditor", "-o", "json").json()[
        "roles"
    ] == ["auditor"]
    assert alice("whoami", "-o", "json").json()["roles"] == ["auditor"]
    assert admin("user", "disable", "alice", "-o", "json").json()["disabled"] is True
    assert alice("whoami", "-o", "json").exit_code == 4
    assert admin("user", "enable", "alice", "-o", "json").json()["disabled"] is False
    assert alice("whoami", "-o", "json").exit_code == 0
    assert admin("user", "delete", "alice", "-o", "json").exit_code == 2  # needs --yes
    assert admin("user", "delete", "alice", "--yes", "-o", "json").json()["deleted"] is True
    assert admin("user", "show", "alice").exit_code == 3
    assert alice("whoami").exit_code == 4


def test_roles(cli: Cli, live: Live, tmp_path: Path) -> None:
    admin = as_principal(cli, live, live.admin_token)
    policy = tmp_path / "dev.yaml"
    policy.write_text(
        "description: Commands on dev nodes\n"
        "statements:\n"
        "  - sid: dev\n"
        "    effect: allow\n"
        "    actions: ['command:*', 'node:Read']\n"
        "    resources: ['*']\n"
        "    conditions:\n"
        "      node_tags: {env: dev}\n"
    )
    created = admin("role", "create", "dev-ops", "--policy", str(policy), "-o", "json")
    assert created.exit_code == 0, created.stderr
    role = created.json()
    assert role["name"] == "dev-ops"
    assert role["description"] == "Commands on dev nodes"
    assert role["policy"]["statements"][0]["conditions"] == {"node_tags": {"env": ["dev"]}}
    assert "dev-ops" in {r["name"] for r in admin("role", "list", "-o", "json").json()}
    assert "dev-ops" in admin("role", "list").stdout
    shown = admin("role", "show", "dev-ops")
    assert "Description: Commands on dev nodes" in shown.stdout
    assert "- command:*" in shown.stdout

    # a policy the server refuses: its message and field reach the user unchanged
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"statements": [{"effect": "allow", "actions": ["nope:Nope"]}]}))
    refused = admin("role", "update", "dev-ops", "--policy", str(bad), "-o", "json")
    assert refused.exit_code == 2
    assert refused.error()["field"] == "statements[0].actions"
    assert "nope:Nope" in refused.error()["message"]
    human = admin("role", "create", "other", "--policy", str(bad))
    assert human.exit_code == 2
    assert human.stderr.startswith("error: statements[0].actions: ")

    # a file that is not JSON/YAML never reaches the server
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("statements: [\n")
    unparsable = admin("role", "create", "other", "--policy", str(garbage), "-o", "json")
    assert unparsable.exit_code == 2
    assert str(garbage) in unparsable.error()["message"]

    policy.write_text("description: fewer\nstatements: []\n")
    updated = admin("role", "update", "dev-ops", "--policy", str(policy), "-o", "json").json()
    assert updated["description"] == "fewer"
    assert updated["policy"]["statements"] == []
    assert admin("role", "update", "viewer", "--policy", str(policy)).exit_code == 2
    assert admin("role", "delete", "dev-ops", "-o", "json").json()["deleted"] is True
    assert admin("role", "show", "dev-ops").exit_code == 3


def test_audit_list_export_checkpoint_and_verify(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    viewer = as_principal(cli, live, create_user(admin, "vic", "viewer"))
    assert viewer("user", "list").exit_code == 4  # a denied call, audited

    intact = admin("audit", "verify")
    assert intact.exit_code == 0, intact.stdout + intact.stderr
    assert "Result:                intact" in intact.stdout
    report = admin("audit", "verify", "-o", "json").json()
    assert report["ok"] is True
    assert report["records"] >= 3

    checkpoint = admin("audit", "checkpoint", "-o", "json").json()
    assert checkpoint["count"] >= 3
    assert len(checkpoint["head_hash"]) == 64
    assert "Head hash:" in admin("audit", "checkpoint").stdout
    assert admin("audit", "verify", "-o", "json").json()["checkpoints"] >= 2

    records = admin("audit", "list", "--since", "1h", "--limit", "500", "-o", "json").json()
    assert records, "no audit records in the last hour"
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs, reverse=True)
    assert admin("audit", "list", "--until", "1h", "-o", "json").json() == []
    two = admin("audit", "list", "--limit", "2", "-o", "json").json()
    assert len(two) == 2
    paged = admin("audit", "list", "--limit", "3", "-o", "json").json()
    assert len(paged) == 3
    denied = admin(
        "audit", "list", "--principal", "user:vic", "--outcome", "denied", "-o", "json"
    ).json()
    assert [r["action"] for r in denied] == ["user:List"]
    table = admin("audit", "list", "--outcome", "denied").stdout
    assert "user:vic" in table
    assert "denied" in table
    assert viewer("audit", "list", "-o", "json").exit_code == 4

    exported = admin("audit", "export", "--since", "1h")
    assert exported.exit_code == 0, exported.stderr
    lines = exported.stdout.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [r["seq"] for r in parsed] == sorted(r["seq"] for r in parsed)
    assert all(len(r["hash"]) == 64 for r in parsed)
    assert {r["seq"] for r in records} <= {r["seq"] for r in parsed}
    assert exported.stderr == f"Exported {len(lines)} audit records.\n"
    only_denied = admin("audit", "export", "--outcome", "denied", "--principal", "user:vic")
    # oldest first: the denied user list, then the denied audit list
    actions = [json.loads(line)["action"] for line in only_denied.stdout.splitlines()]
    assert actions == ["user:List", "audit:Read"]


def test_audit_verify_detects_an_edited_record(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    for _ in range(3):
        assert admin("whoami").exit_code == 0
    assert admin("audit", "verify").exit_code == 0
    live.sql("UPDATE audit_records SET action='x' WHERE seq=2")
    result = admin("audit", "verify", "-o", "json")
    assert result.exit_code == 1
    assert result.json()["ok"] is False
    assert result.json()["first_bad_seq"] == 2
    assert "record 2" in result.json()["problem"]
    human = admin("audit", "verify")
    assert human.exit_code == 1
    assert "First bad record:      2" in human.stdout
    assert "record 2" in human.stderr


def test_access_request_approve_flow(cli: Cli, live: Live) -> None:
    node = live.register_node({"env": "dev"})
    live.register_node({"env": "prod"})
    admin = as_principal(cli, live, live.admin_token)
    requester = as_principal(cli, live, create_user(admin, "rita", "viewer"))
    approver = as_principal(cli, live, create_user(admin, "andy", "admin"))

    # a viewer may read nodes but not tag them
    assert requester("nodes", "tag", node, "owner=rita").exit_code == 4

    asked = requester(
        "access", "request", "--targets", "tag:env=dev", "--role", "operator",
        "--duration", "1h", "--reason", "tag the dev node", "-o", "json",
    )  # fmt: skip
    assert asked.exit_code == 0, asked.stderr
    request_id = asked.json()["request_id"]
    assert asked.json()["status"] == "pending"
    assert asked.json()["duration_seconds"] == 3600

    mine = requester("access", "list", "--mine", "-o", "json").json()
    assert [r["request_id"] for r in mine] == [request_id]
    pending = approver("access", "list", "--status", "pending", "-o", "json").json()
    assert request_id in {r["request_id"] for r in pending}
    assert request_id in approver("access", "list").stdout

    own = requester("access", "approve", request_id, "-o", "json")
    assert own.exit_code == 4
    assert own.error()["type"] == "AccessDeniedError"

    approved = approver("access", "approve", request_id, "--comment", "go ahead", "-o", "json")
    assert approved.exit_code == 0, approved.stderr
    assert approved.json()["status"] == "approved"
    assert approved.json()["decided_by"] == "user:andy"
    assert approved.json()["comment"] == "go ahead"

    me = requester("whoami", "-o", "json").json()
    [grant] = me["grants"]
    assert grant["request_id"] == request_id
    assert grant["role"] == "operator"
    assert 3500 <= grant["remaining_seconds"] <= 3600
    human = requester("whoami").stdout
    assert request_id in human
    assert "REMAINING" in human

    # the grant works on the dev node
    tagged = requester("nodes", "tag", node, "owner=rita", "-o", "json")
    assert tagged.exit_code == 0, tagged.stderr
    assert tagged.json()["tags"]["owner"] == "rita"

    shown = requester("access", "show", request_id)
    assert "Status:     approved" in shown.stdout
    assert "Decided by: user:andy" in shown.stdout

    # evidence: a viewer may not read the audit log; the approver may
    assert requester("access", "evidence", request_id).exit_code == 4
    evidence = approver("access", "evidence", request_id)
    assert evidence.exit_code == 0, evidence.stderr
    document = evidence.json()
    assert document["request"]["request_id"] == request_id
    assert document["decisions"][0]["by"] == "user:andy"
    actions = {r["action"] for r in document["actions"]}
    assert {"access:Request", "access:Approve", "node:Tag"} <= actions
    assert all(r["grant_id"] == request_id for r in document["actions"])
    linked = approver("audit", "list", "--grant", request_id, "-o", "json").json()
    assert {r["seq"] for r in linked} >= {r["seq"] for r in document["actions"]}

    revoked = requester("access", "revoke", request_id, "-o", "json")
    assert revoked.json()["status"] == "revoked"
    assert requester("whoami", "-o", "json").json()["grants"] == []
    assert requester("nodes", "tag", node, "owner=nobody").exit_code == 4
    assert (
        requester("access", "list", "--status", "revoked", "-o", "json").json()[0]["request_id"]
        == request_id
    )

    # a second request, denied
    again = requester(
        "access", "request", "-t", "tag:env=dev", "--role", "operator", "--duration", "15m",
        "--reason", "once more", "-o", "json",
    ).json()  # fmt: skip
    denied = approver("access", "deny", again["request_id"], "--comment", "no", "-o", "json")
    assert denied.json()["status"] == "denied"
    assert requester("whoami", "-o", "json").json()["grants"] == []
    unknown = approver("access", "show", "ar-0000000000000000", "-o", "json")
    assert unknown.exit_code == 3


def test_since_duration_reaches_the_server_as_a_recent_time(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    assert admin("whoami").exit_code == 0
    start = datetime.now(UTC)
    recent = admin("audit", "list", "--since", "2s", "-o", "json").json()
    for item in recent:
        moment = datetime.fromisoformat(item["time"].replace("Z", "+00:00"))
        assert (start - moment).total_seconds() < 10
