"""`corral user`, `token`, `role` and `whoami` against a fake API: bodies, output, errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from corral.cli.whoami import format_remaining

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import FakeApi, Result

    Cli = Callable[..., Result]


USER: dict[str, Any] = {
    "name": "alice",
    "roles": ["viewer", "auditor"],
    "disabled": False,
    "created_at": "2026-11-29T16:00:00.000Z",
    "updated_at": "2026-11-29T16:05:00.000Z",
}
TOKEN: dict[str, Any] = {
    "token_id": "7f0c7d2e-0000-4000-8000-000000000001",
    "user": "alice",
    "prefix": "crl_AbCd",
    "description": "ci",
    "created_at": "2026-11-29T16:00:00.000Z",
    "last_used_at": None,
    "expires_at": "2026-12-29T16:00:00.000Z",
    "revoked": False,
    "revoked_at": None,
    "expired": False,
}
POLICY: dict[str, Any] = {
    "description": "Runs commands on dev nodes.",
    "statements": [
        {
            "sid": "dev",
            "effect": "allow",
            "actions": ["command:*"],
            "resources": ["*"],
            "conditions": {"node_tags": {"env": ["dev"]}},
        }
    ],
}
ROLE: dict[str, Any] = {
    "name": "dev-ops",
    "description": "Runs commands on dev nodes.",
    "builtin": False,
    "editable": True,
    "policy": POLICY,
    "created_at": "2026-11-29T16:00:00.000Z",
    "updated_at": "2026-11-29T16:00:00.000Z",
}
WHOAMI: dict[str, Any] = {
    "principal": "user:alice",
    "kind": "user",
    "name": "alice",
    "roles": ["viewer"],
    "token_id": TOKEN["token_id"],
    "grants": [
        {
            "request_id": "ar-0123456789abcdef",
            "role": "operator",
            "targets": ["tag:env=dev"],
            "expires_at": "2030-01-01T00:00:00.000Z",
            "remaining_seconds": 3900,
        }
    ],
}


class Tty(io.StringIO):
    """A stdin that claims to be a terminal, answering prompts from its text."""

    def isatty(self) -> bool:
        return True


# --- user ---------------------------------------------------------------------


def test_user_create_json_prints_the_token(api: FakeApi, cli: Cli) -> None:
    created = {**USER, "token": "crl_secret", "token_id": TOKEN["token_id"]}
    api.on("POST", "/api/v1/users", 201, created)
    result = cli(
        "user", "create", "alice", "--role", "viewer", "--role", "auditor",
        "--token-expires", "30d", "--token-description", "first", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.json() == created
    assert result.json()["token"] == "crl_secret"
    assert api.bodies("POST", "/api/v1/users") == [
        {
            "name": "alice",
            "roles": ["viewer", "auditor"],
            "token_expires_seconds": 30 * 86400,
            "token_description": "first",
        }
    ]


def test_user_create_human_says_the_token_is_shown_once(api: FakeApi, cli: Cli) -> None:
    api.on("POST", "/api/v1/users", 201, {**USER, "token": "crl_secret", "token_id": "t1"})
    result = cli("user", "create", "alice", "--role", "viewer")
    assert result.exit_code == 0
    assert "crl_secret" in result.stdout
    assert "shown only once" in result.stderr
    assert api.bodies("POST", "/api/v1/users") == [{"name": "alice", "roles": ["viewer"]}]


def test_user_create_needs_a_role(api: FakeApi, cli: Cli) -> None:
    result = cli("user", "create", "alice")
    assert result.exit_code == 2
    assert api.requests == []


def test_user_create_bad_duration(api: FakeApi, cli: Cli) -> None:
    result = cli("user", "create", "a", "--role", "viewer", "--token-expires", "soon", "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == "token_expires"
    assert api.requests == []


def test_user_list_and_show(api: FakeApi, cli: Cli) -> None:
    disabled = {**USER, "name": "bob", "roles": ["admin"], "disabled": True}
    api.on("GET", "/api/v1/users", body=[USER, disabled])
    api.on("GET", "/api/v1/users/alice", body=USER)
    assert cli("user", "list", "-o", "json").json() == [USER, disabled]
    table = cli("user", "list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLES", "STATUS", "CREATED", "UPDATED"]
    assert "alice" in lines[1]
    assert "viewer, auditor" in lines[1]
    assert "active" in lines[1]
    assert "bob" in lines[2]
    assert "disabled" in lines[2]
    assert cli("user", "show", "alice", "-o", "json").json() == USER
    shown = cli("user", "show", "alice")
    assert "Name:    alice" in shown.stdout
    assert "Roles:   viewer, auditor" in shown.stdout
    assert "Status:  active" in shown.stdout
    assert "Created: 2026-11-29T16:00:00Z" in shown.stdout


def test_user_show_unknown_exits_3(api: FakeApi, cli: Cli) -> None:
    api.fail("GET", "/api/v1/users/nobody", 404, "NotFoundError", "user nobody does not exist")
    result = cli("user", "show", "nobody", "-o", "json")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.error()["type"] == "NotFoundError"
    assert cli("user", "show", "nobody").stderr == "error: user nobody does not exist\n"


@pytest.mark.parametrize(
    ("argv", "body"),
    [
        (("disable", "alice"), {"disabled": True}),
        (("enable", "alice"), {"disabled": False}),
        (("set-roles", "alice", "--role", "operator", "--role", "auditor"),
         {"roles": ["operator", "auditor"]}),
    ],
)  # fmt: skip
def test_user_patch(api: FakeApi, cli: Cli, argv: tuple[str, ...], body: dict[str, Any]) -> None:
    api.on("PATCH", "/api/v1/users/alice", body=USER)
    result = cli("user", *argv, "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == USER
    assert api.bodies("PATCH", "/api/v1/users/alice") == [body]
    human = cli("user", *argv)
    assert "Name:    alice" in human.stdout
    assert "alice" in human.stderr


def test_user_set_roles_needs_a_role(api: FakeApi, cli: Cli) -> None:
    assert cli("user", "set-roles", "alice").exit_code == 2
    assert api.requests == []


def test_user_delete_with_yes(api: FakeApi, cli: Cli) -> None:
    api.on("DELETE", "/api/v1/users/alice", 204)
    result = cli("user", "delete", "alice", "--yes", "-o", "json")
    assert result.exit_code == 0
    assert result.json() == {"name": "alice", "deleted": True}
    assert cli("user", "delete", "alice", "-y").stderr == "Deleted user alice.\n"


def test_user_delete_without_a_terminal_needs_yes(api: FakeApi, cli: Cli) -> None:
    result = cli("user", "delete", "alice", "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == "yes"
    assert api.requests == []


@pytest.mark.parametrize(("answer", "exit_code", "deleted"), [("y\n", 0, 1), ("n\n", 1, 0)])
def test_user_delete_asks_on_a_terminal(
    api: FakeApi,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    exit_code: int,
    deleted: int,
) -> None:
    api.on("DELETE", "/api/v1/users/alice", 204)
    monkeypatch.setattr(sys, "stdin", Tty(answer))
    result = cli("user", "delete", "alice")
    assert result.exit_code == exit_code
    assert "Delete user alice" in result.stderr
    assert result.stdout == ""
    assert len(api.bodies("DELETE", "/api/v1/users/alice")) == deleted


# --- token --------------------------------------------------------------------


def test_token_create(api: FakeApi, cli: Cli) -> None:
    created = {**TOKEN, "token": "crl_AbCdsecret"}
    api.on("POST", "/api/v1/tokens", 201, created)
    result = cli(
        "token", "create", "--user", "alice", "--expires", "30d", "--description", "ci",
        "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0
    assert result.json()["token_id"] == TOKEN["token_id"]
    assert result.json()["token"] == "crl_AbCdsecret"
    assert api.bodies("POST", "/api/v1/tokens") == [
        {"user": "alice", "expires_seconds": 2592000, "description": "ci"}
    ]
    human = cli("token", "create")
    assert api.bodies("POST", "/api/v1/tokens")[-1] == {}
    assert "crl_AbCdsecret" in human.stdout
    assert "shown only once" in human.stderr


def test_token_list(api: FakeApi, cli: Cli) -> None:
    revoked = {**TOKEN, "token_id": "t2", "revoked": True, "expires_at": None}
    api.on("GET", "/api/v1/tokens", body=[TOKEN, revoked])
    assert cli("token", "list", "-o", "json").json() == [TOKEN, revoked]
    assert "user" not in api.requests[-1].url.params
    cli("token", "list", "--user", "bob")
    assert api.requests[-1].url.params["user"] == "bob"
    table = cli("token", "list", "--all")
    assert api.requests[-1].url.params["all"] == "true"
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["TOKEN", "ID", "USER"]
    assert TOKEN["token_id"] in lines[1]
    assert "active" in lines[1]
    assert "2026-12-29" in lines[1]
    assert "revoked" in lines[2]
    assert "never" in lines[2]


def test_token_create_aws_credentials_and_list_shows_the_access_key_id(
    api: FakeApi, cli: Cli
) -> None:
    aws = {
        **TOKEN,
        "token_id": "t3",
        "prefix": "CRLKABCD",
        "access_key_id": "CRLKABCDEFGHIJKLMNOP",
    }
    api.on("POST", "/api/v1/tokens", 201, {**aws, "secret_access_key": "s" * 40})
    result = cli("token", "create", "--aws-credentials", "--expires", "1d", "-o", "json")
    assert result.exit_code == 0
    assert result.json()["access_key_id"] == "CRLKABCDEFGHIJKLMNOP"
    assert result.json()["secret_access_key"] == "s" * 40
    assert api.bodies("POST", "/api/v1/tokens") == [
        {"aws_credentials": True, "expires_seconds": 86400}
    ]
    human = cli("token", "create", "--aws-credentials")
    assert "Access key ID:" in human.stdout
    assert "s" * 40 in human.stdout
    assert "Token:" not in human.stdout
    assert "shown only once" in human.stderr
    assert "AWS_ENDPOINT_URL_SSM" in human.stderr

    api.on("GET", "/api/v1/tokens", body=[TOKEN, aws])
    lines = cli("token", "list").stdout.splitlines()
    assert "PREFIX/KEY ID" in lines[0]
    assert TOKEN["prefix"] in lines[1]
    assert "CRLKABCDEFGHIJKLMNOP" in lines[2]


def test_token_list_user_and_all_conflict(api: FakeApi, cli: Cli) -> None:
    result = cli("token", "list", "--user", "bob", "--all", "-o", "json")
    assert result.exit_code == 2
    assert api.requests == []


def test_token_revoke(api: FakeApi, cli: Cli) -> None:
    revoked = {**TOKEN, "revoked": True, "revoked_at": "2026-11-29T17:00:00.000Z"}
    api.on("DELETE", f"/api/v1/tokens/{TOKEN['token_id']}", body=revoked)
    result = cli("token", "revoke", TOKEN["token_id"], "-o", "json")
    assert result.exit_code == 0
    assert result.json() == revoked
    human = cli("token", "revoke", TOKEN["token_id"])
    assert human.stderr == f"Revoked token {TOKEN['token_id']} of user alice.\n"


def test_token_revoke_unknown(api: FakeApi, cli: Cli) -> None:
    api.fail("DELETE", "/api/v1/tokens/nope", 404, "NotFoundError", "token nope does not exist")
    assert cli("token", "revoke", "nope").exit_code == 3


# --- role ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".txt"])
def test_role_create_sends_the_policy_object(
    api: FakeApi, cli: Cli, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"policy{suffix}"
    if suffix == ".yaml":
        path.write_text(
            "description: Runs commands on dev nodes.\nstatements:\n"
            "  - sid: dev\n    effect: allow\n    actions: ['command:*']\n"
            "    resources: ['*']\n    conditions:\n      node_tags: {env: [dev]}\n"
        )
    else:
        path.write_text(json.dumps(POLICY, indent="\t"))
    api.on("POST", "/api/v1/roles", 201, ROLE)
    result = cli("role", "create", "dev-ops", "--policy", str(path), "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == ROLE
    assert api.bodies("POST", "/api/v1/roles") == [{"name": "dev-ops", "policy": POLICY}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("statements: [unclosed\n", "is neither valid JSON nor valid YAML"),
        ("- effect: allow\n", "must contain an object"),
        ("", "must contain an object"),
        ("description: 2026-01-01\nstatements: []\n", "JSON cannot represent"),
    ],
)
def test_role_bad_policy_file_is_a_usage_error(
    api: FakeApi, cli: Cli, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    for command in (("create", "x"), ("update", "x")):
        result = cli("role", *command, "--policy", str(path), "-o", "json")
        assert result.exit_code == 2
        assert result.error()["field"] == "policy"
        assert str(path) in result.error()["message"]
        assert message in result.error()["message"]
    human = cli("role", "create", "x", "--policy", str(path))
    assert human.exit_code == 2
    assert str(path) in human.stderr
    assert api.requests == []


def test_role_missing_policy_file(api: FakeApi, cli: Cli, tmp_path: Path) -> None:
    result = cli("role", "create", "x", "--policy", str(tmp_path / "none.yaml"), "-o", "json")
    assert result.exit_code == 2
    assert "none.yaml" in result.error()["message"]
    assert api.requests == []


def test_role_server_validation_error_reaches_the_user(
    api: FakeApi, cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"statements": [{"effect": "allow", "actions": ["nope:X"]}]}))
    message = "statements[0].actions: action pattern 'nope:X' matches no known action"
    api.fail("POST", "/api/v1/roles", 400, "ValidationError", message, "statements[0].actions")
    result = cli("role", "create", "x", "--policy", str(path), "-o", "json")
    assert result.exit_code == 2
    assert result.error() == {
        "type": "ValidationError",
        "message": message,
        "field": "statements[0].actions",
    }
    human = cli("role", "create", "x", "--policy", str(path))
    assert human.stderr == f"error: {message}\n"


def test_role_list_show_update_delete(api: FakeApi, cli: Cli, tmp_path: Path) -> None:
    builtin = {**ROLE, "name": "viewer", "builtin": True, "editable": False}
    api.on("GET", "/api/v1/roles", body=[builtin, ROLE])
    api.on("GET", "/api/v1/roles/dev-ops", body=ROLE)
    api.on("PUT", "/api/v1/roles/dev-ops", body=ROLE)
    api.on("DELETE", "/api/v1/roles/dev-ops", 204)
    assert cli("role", "list", "-o", "json").json() == [builtin, ROLE]
    table = cli("role", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "KIND", "STATEMENTS", "DESCRIPTION", "UPDATED"]
    assert table[1].split()[:2] == ["viewer", "built-in"]
    assert table[2].split()[:3] == ["dev-ops", "custom", "1"]
    assert cli("role", "show", "dev-ops", "-o", "json").json() == ROLE
    shown = cli("role", "show", "dev-ops").stdout
    assert "Name:        dev-ops" in shown
    assert "Kind:        custom" in shown
    policy_text = shown.split("Policy:\n", 1)[1]
    assert "- sid: dev\n  effect: allow\n" in policy_text
    assert yaml.safe_load(policy_text) == POLICY
    path = tmp_path / "p.yaml"
    path.write_text("statements: []\n")
    updated = cli("role", "update", "dev-ops", "--policy", str(path), "-o", "json")
    assert updated.json() == ROLE
    assert api.bodies("PUT", "/api/v1/roles/dev-ops") == [{"policy": {"statements": []}}]
    assert cli("role", "delete", "dev-ops", "-o", "json").json() == {
        "name": "dev-ops",
        "deleted": True,
    }


def test_role_update_builtin_conflict(api: FakeApi, cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("statements: []\n")
    api.fail("PUT", "/api/v1/roles/admin", 409, "ConflictError", "role admin is built in")
    result = cli("role", "update", "admin", "--policy", str(path), "-o", "json")
    assert result.exit_code == 2
    assert result.error()["type"] == "ConflictError"


# --- whoami -------------------------------------------------------------------


def test_whoami(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/whoami", body=WHOAMI)
    result = cli("whoami", "-o", "json")
    assert result.exit_code == 0
    assert result.json() == WHOAMI
    assert {"principal", "roles", "grants"} <= set(result.json())
    human = cli("whoami").stdout
    assert "Principal: user:alice" in human
    assert "Roles:     viewer" in human
    assert "Grants:    1" in human
    grant_line = next(line for line in human.splitlines() if "ar-0123456789abcdef" in line)
    assert "operator" in grant_line
    assert "tag:env=dev" in grant_line
    assert "1h 5m" in grant_line


def test_whoami_without_grants(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/whoami", body={**WHOAMI, "grants": []})
    human = cli("whoami").stdout
    assert "Grants:    none" in human
    assert "REMAINING" not in human


def test_whoami_bad_token_exits_4(api: FakeApi, cli: Cli) -> None:
    api.fail("GET", "/api/v1/whoami", 401, "AuthError", "invalid or expired token")
    result = cli("whoami", "-o", "json")
    assert result.exit_code == 4
    assert result.error()["type"] == "AuthError"


def test_format_remaining() -> None:
    assert format_remaining(0) == "0s"
    assert format_remaining(59) == "59s"
    assert format_remaining(3600) == "1h"
    assert format_remaining(3900) == "1h 5m"
    assert format_remaining(90061) == "1d 1h"
    assert format_remaining(None) == "-"
