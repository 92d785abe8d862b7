# ruff: noqa: E501 - the matrix reads best one route per line
"""The authorization matrix, against a real server process.

Every API route × every built-in role × three ways of holding it:

* `plain`: a user with the role itself (no tag condition);
* `grant, matching`: a user who holds the role only through an approved just-in-time
  grant on `tag:env=dev` nodes, acting on a dev node;
* `grant, non-matching`: the same user acting on a prod node.

The expectations are written out by hand from the built-in roles and the rules in
docs/security.md (a grant applies only to requests that touch a node within its
targets), so a change in policy evaluation shows up here as a changed cell.
"""

from __future__ import annotations

import base64
import itertools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from tests.e2e.harness import Server

ROLES = ("admin", "operator", "viewer", "auditor")
ALL = frozenset(ROLES)
READERS = frozenset(ROLES)  # every built-in role reads the fleet
OPERATE = frozenset({"admin", "operator"})
ADMIN = frozenset({"admin"})
AUDIT = frozenset({"admin", "auditor"})
NONE: frozenset[str] = frozenset()

DOC = """{"schemaVersion": "2.2", "description": "m", "mainSteps": [{"action": "aws:runShellScript",
"name": "s", "inputs": {"runCommand": ["true"]}}]}"""
POLICY = {"statements": [{"effect": "allow", "actions": ["node:Read"], "resources": ["node:*"]}]}


@dataclass
class World:
    """The fixture state routes are exercised against."""

    server: Server
    admin: httpx.Client
    # Without credentials of its own: each request names its caller. One client for every
    # cell, since making an httpx client (its TLS context) costs ~50 ms.
    caller: httpx.Client
    nodes: dict[str, str]  # side ("dev"/"prod") -> node id
    commands: dict[str, str]  # side -> a command sent to that side's node
    tokens: dict[str, str]  # user name -> token

    def ok(self, response: httpx.Response) -> Any:
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def node(self, env: str) -> str:
        """Register a fresh node (for destructive calls)."""
        created = self.ok(
            self.admin.post(
                "/api/v1/activations", json={"tags": {"env": env}, "registration_limit": 1}
            )
        )
        key = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
        body = {
            "activation_id": created["activation_id"],
            "activation_code": created["activation_code"],
            "public_key": key,
        }
        return str(self.ok(self.admin.post("/api/v1/register", json=body))["node_id"])

    def document(self) -> str:
        name = "m-" + uuid.uuid4().hex[:10]
        self.ok(self.admin.post("/api/v1/documents", json={"name": name, "content": DOC}))
        return name

    def command(self, side: str) -> str:
        body = {
            "document_name": "Corral-RunShellScript",
            "targets": [self.nodes[side]],
            "parameters": {"commands": ["true"]},
        }
        return str(self.ok(self.admin.post("/api/v1/commands", json=body))["command_id"])

    def parameter(self) -> str:
        name = "/m/" + uuid.uuid4().hex[:10]
        self.ok(self.admin.post("/api/v1/parameters", json={"name": name, "value": "v"}))
        return name

    def user(self, roles: list[str]) -> str:
        name = "u-" + uuid.uuid4().hex[:10]
        self.ok(self.admin.post("/api/v1/users", json={"name": name, "roles": roles}))
        return name

    def ssm_get_decrypted(self) -> Request:
        """A Systems Manager GetParameter call decrypting a SecureString."""
        body = {"name": "/matrix/secret", "value": "s", "type": "SecureString", "overwrite": True}
        self.ok(self.admin.post("/api/v1/parameters", json=body))
        headers = {
            "X-Amz-Target": "AmazonSSM.GetParameter",
            "Content-Type": "application/x-amz-json-1.1",
        }
        return ("POST", "/", {"Name": "/matrix/secret", "WithDecryption": True}, headers)

    def request(self, side: str) -> str:
        """A pending access request by someone else, on `side`'s nodes."""
        body = {
            "targets": [f"tag:env={side}"],
            "role": "viewer",
            "duration_seconds": 600,
            "reason": "matrix",
        }
        response = self.caller.post(
            "/api/v1/access/requests",
            json=body,
            headers={"Authorization": f"Bearer {self.tokens['requester']}"},
        )
        return str(self.ok(response)["request_id"])


# (method, path, JSON body) and optionally extra headers.
Request = tuple[str, str, dict[str, Any] | None] | tuple[str, str, dict[str, Any], dict[str, str]]
Build = Callable[[World, str, str], Request]  # (world, side, caller user name) -> request


@dataclass(frozen=True)
class Case:
    """One route: how to call it, and which roles may (plain / via a dev grant)."""

    name: str
    build: Build
    plain: frozenset[str]
    # Roles for which a dev-grant holder is allowed on the dev side / the prod side.
    grant_dev: frozenset[str] = NONE
    grant_prod: frozenset[str] = NONE


def node_scoped(name: str, build: Build, roles: frozenset[str]) -> Case:
    """A route that touches one node: a grant works on its targets only."""
    return Case(name, build, roles, grant_dev=roles)


def listing(name: str, build: Build, roles: frozenset[str]) -> Case:
    """A list route: a grant holder may call it (results are filtered) on either side."""
    return Case(name, build, roles, grant_dev=roles, grant_prod=roles)


def fleet_wide(name: str, build: Build, roles: frozenset[str]) -> Case:
    """A route that touches no node: grants never apply."""
    return Case(name, build, roles)


def everyone(name: str, build: Build) -> Case:
    """Any valid credential (whoami, the API description, listing access requests)."""
    return Case(name, build, ALL, grant_dev=ALL, grant_prod=ALL)


# fmt: off
CASES = [
    everyone("GET /whoami", lambda w, s, u: ("GET", "/api/v1/whoami", None)),
    everyone("GET /openapi.json", lambda w, s, u: ("GET", "/api/v1/openapi.json", None)),
    fleet_wide("POST /activations", lambda w, s, u: ("POST", "/api/v1/activations", {}), OPERATE),
    fleet_wide("GET /activations", lambda w, s, u: ("GET", "/api/v1/activations", None), READERS),
    fleet_wide(
        "DELETE /activations/{id}",
        lambda w, s, u: ("DELETE", "/api/v1/activations/" + w.ok(w.admin.post("/api/v1/activations", json={}))["activation_id"], None),
        OPERATE,
    ),
    listing("GET /nodes", lambda w, s, u: ("GET", "/api/v1/nodes", None), READERS),
    node_scoped("GET /nodes/{id}", lambda w, s, u: ("GET", f"/api/v1/nodes/{w.nodes[s]}", None), READERS),
    node_scoped(
        "PATCH /nodes/{id}/tags",
        lambda w, s, u: ("PATCH", f"/api/v1/nodes/{w.nodes[s]}/tags", {"set": {"touched": "yes"}}),
        OPERATE,
    ),
    node_scoped("DELETE /nodes/{id}", lambda w, s, u: ("DELETE", f"/api/v1/nodes/{w.node(s)}", None), OPERATE),
    fleet_wide(
        "POST /documents",
        lambda w, s, u: ("POST", "/api/v1/documents", {"name": "n-" + uuid.uuid4().hex[:8], "content": DOC}),
        OPERATE,
    ),
    listing("GET /documents", lambda w, s, u: ("GET", "/api/v1/documents", None), READERS),
    fleet_wide("GET /documents/{name}", lambda w, s, u: ("GET", "/api/v1/documents/Corral-RunShellScript", None), READERS),
    fleet_wide(
        "PUT /documents/{name}",
        lambda w, s, u: ("PUT", f"/api/v1/documents/{w.document()}", {"content": DOC}),
        OPERATE,
    ),
    fleet_wide(
        "PUT /documents/{name}/default-version",
        lambda w, s, u: ("PUT", f"/api/v1/documents/{w.document()}/default-version", {"version": 1}),
        OPERATE,
    ),
    fleet_wide("DELETE /documents/{name}", lambda w, s, u: ("DELETE", f"/api/v1/documents/{w.document()}", None), OPERATE),
    node_scoped(
        "POST /commands",
        lambda w, s, u: ("POST", "/api/v1/commands", {"document_name": "Corral-RunShellScript",
                         "targets": [w.nodes[s]], "parameters": {"commands": ["true"]}}),
        OPERATE,
    ),
    listing("GET /commands", lambda w, s, u: ("GET", "/api/v1/commands", None), READERS),
    node_scoped("GET /commands/{id}", lambda w, s, u: ("GET", f"/api/v1/commands/{w.commands[s]}", None), READERS),
    node_scoped(
        "POST /commands/{id}/cancel",
        lambda w, s, u: ("POST", f"/api/v1/commands/{w.command(s)}/cancel", {}),
        OPERATE,
    ),
    node_scoped(
        "GET /commands/{id}/invocations/{node}/output",
        lambda w, s, u: ("GET", f"/api/v1/commands/{w.commands[s]}/invocations/{w.nodes[s]}/output", None),
        READERS,
    ),
    fleet_wide(
        "POST /users",
        lambda w, s, u: ("POST", "/api/v1/users", {"name": "x-" + uuid.uuid4().hex[:8], "roles": ["viewer"]}),
        ADMIN,
    ),
    listing("GET /users", lambda w, s, u: ("GET", "/api/v1/users", None), AUDIT),
    fleet_wide("GET /users/{name}", lambda w, s, u: ("GET", "/api/v1/users/requester", None), AUDIT),
    fleet_wide(
        "PATCH /users/{name}",
        lambda w, s, u: ("PATCH", f"/api/v1/users/{w.user(['viewer'])}", {"disabled": True}),
        ADMIN,
    ),
    fleet_wide("DELETE /users/{name}", lambda w, s, u: ("DELETE", f"/api/v1/users/{w.user(['viewer'])}", None), ADMIN),
    fleet_wide("POST /tokens (own)", lambda w, s, u: ("POST", "/api/v1/tokens", {"description": "m"}), ALL),
    fleet_wide("GET /tokens (own)", lambda w, s, u: ("GET", "/api/v1/tokens", None), ALL),
    fleet_wide(
        "DELETE /tokens/{id} (own)",
        lambda w, s, u: ("DELETE", "/api/v1/tokens/" + w.ok(w.admin.post("/api/v1/tokens", json={"user": u}))["token_id"], None),
        ALL,
    ),
    fleet_wide("POST /roles", lambda w, s, u: ("POST", "/api/v1/roles", {"name": "r-" + uuid.uuid4().hex[:8], "policy": POLICY}), ADMIN),
    listing("GET /roles", lambda w, s, u: ("GET", "/api/v1/roles", None), READERS),
    fleet_wide("GET /roles/{name}", lambda w, s, u: ("GET", "/api/v1/roles/viewer", None), READERS),
    fleet_wide("PUT /roles/{name}", lambda w, s, u: ("PUT", "/api/v1/roles/custom", {"policy": POLICY}), ADMIN),
    fleet_wide(
        "DELETE /roles/{name}",
        lambda w, s, u: ("DELETE", "/api/v1/roles/" + w.ok(w.admin.post("/api/v1/roles", json={"name": "d-" + uuid.uuid4().hex[:8], "policy": POLICY}))["name"], None),
        ADMIN,
    ),
    fleet_wide("GET /audit", lambda w, s, u: ("GET", "/api/v1/audit", None), AUDIT),
    fleet_wide("GET /audit/export", lambda w, s, u: ("GET", "/api/v1/audit/export?since=2999-01-01T00:00:00Z", None), AUDIT),
    fleet_wide("POST /audit/verify", lambda w, s, u: ("POST", "/api/v1/audit/verify", None), AUDIT),
    fleet_wide("POST /audit/checkpoint", lambda w, s, u: ("POST", "/api/v1/audit/checkpoint", None), AUDIT),
    fleet_wide(
        "POST /access/requests",
        lambda w, s, u: ("POST", "/api/v1/access/requests", {"targets": [f"tag:env={s}"], "role": "viewer",
                         "duration_seconds": 600, "reason": "matrix"}),
        ALL,
    ),
    everyone("GET /access/requests", lambda w, s, u: ("GET", "/api/v1/access/requests", None)),
    # Reading, approving and denying someone else's request: approvers are scoped by the
    # request's target nodes, so an admin grant on dev nodes may approve dev requests.
    Case("GET /access/requests/{id}", lambda w, s, u: ("GET", f"/api/v1/access/requests/{w.request(s)}", None), AUDIT, grant_dev=ADMIN),
    Case("POST /access/requests/{id}/approve", lambda w, s, u: ("POST", f"/api/v1/access/requests/{w.request(s)}/approve", {}), ADMIN, grant_dev=ADMIN),
    Case("POST /access/requests/{id}/deny", lambda w, s, u: ("POST", f"/api/v1/access/requests/{w.request(s)}/deny", {}), ADMIN, grant_dev=ADMIN),
    fleet_wide("POST /access/requests/{id}/revoke", lambda w, s, u: ("POST", f"/api/v1/access/requests/{w.request(s)}/revoke", None), ADMIN),
    fleet_wide("POST /parameters", lambda w, s, u: ("POST", "/api/v1/parameters", {"name": "/m/" + uuid.uuid4().hex[:8], "value": "v"}), OPERATE),
    fleet_wide("GET /parameters/value", lambda w, s, u: ("GET", "/api/v1/parameters/value?name=/m/p", None), READERS),
    fleet_wide("POST /parameters/values", lambda w, s, u: ("POST", "/api/v1/parameters/values", {"names": ["/m/p"]}), READERS),
    listing("GET /parameters/by-path", lambda w, s, u: ("GET", "/api/v1/parameters/by-path?path=/m", None), READERS),
    listing("GET /parameters", lambda w, s, u: ("GET", "/api/v1/parameters", None), READERS),
    fleet_wide("GET /parameters/history", lambda w, s, u: ("GET", "/api/v1/parameters/history?name=/m/p", None), READERS),
    fleet_wide("POST /parameters/label", lambda w, s, u: ("POST", "/api/v1/parameters/label", {"name": w.parameter(), "labels": ["x"]}), OPERATE),
    fleet_wide("POST /parameters/unlabel", lambda w, s, u: ("POST", "/api/v1/parameters/unlabel", {"name": w.parameter(), "version": 1, "labels": ["x"]}), OPERATE),
    fleet_wide("POST /parameters/delete", lambda w, s, u: ("POST", "/api/v1/parameters/delete", {"names": [w.parameter()]}), OPERATE),
    fleet_wide("GET /parameters/tags", lambda w, s, u: ("GET", "/api/v1/parameters/tags?name=/m/p", None), READERS),
    fleet_wide("PATCH /parameters/tags", lambda w, s, u: ("PATCH", "/api/v1/parameters/tags", {"name": w.parameter(), "add": {"k": "v"}}), OPERATE),
    fleet_wide("POST /keys", lambda w, s, u: ("POST", "/api/v1/keys", {"name": "k" + uuid.uuid4().hex[:8]}), ADMIN),
    fleet_wide("GET /keys", lambda w, s, u: ("GET", "/api/v1/keys", None), READERS),
    fleet_wide("POST /keys/{name}/rotate", lambda w, s, u: ("POST", "/api/v1/keys/default/rotate", None), ADMIN),
    # Sessions need a connected node; this world's nodes are offline, so starting one is a
    # 409 after the policy check, and the id-based routes meet a session that does not
    # exist (404 after the route's coarse check). tests/e2e/test_sessions.py covers the rest.
    node_scoped("POST /sessions", lambda w, s, u: ("POST", "/api/v1/sessions", {"node_id": w.nodes[s]}), OPERATE),
    listing("GET /sessions", lambda w, s, u: ("GET", "/api/v1/sessions", None), READERS),
    listing("GET /sessions/{id}", lambda w, s, u: ("GET", "/api/v1/sessions/ses-00000000000000000", None), READERS),
    listing("GET /sessions/{id}/recording", lambda w, s, u: ("GET", "/api/v1/sessions/ses-00000000000000000/recording", None), READERS),
    listing("POST /sessions/{id}/terminate", lambda w, s, u: ("POST", "/api/v1/sessions/ses-00000000000000000/terminate", None), OPERATE),
    # File transfers: policy on the node and on the path, then 409 (the node is offline).
    node_scoped("POST /transfers/upload", lambda w, s, u: ("POST", "/api/v1/transfers/upload", {"node_id": w.nodes[s], "path": "/tmp/m", "source_name": "m"}), OPERATE),
    node_scoped("POST /transfers/download", lambda w, s, u: ("POST", "/api/v1/transfers/download", {"node_id": w.nodes[s], "path": "/tmp/m"}), OPERATE),
    fleet_wide("GET /access/requests/{id}/evidence", lambda w, s, u: ("GET", f"/api/v1/access/requests/{w.request(s)}/evidence", None), AUDIT),
    # The Systems Manager wire API: any credential reaches it; the operation's own
    # actions decide (decrypting needs parameter:GetDecrypted; parameters touch no node).
    fleet_wide("POST / (ssm GetParameter, decrypted)", lambda w, s, u: w.ssm_get_decrypted(), OPERATE),
]
# fmt: on


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root: Path = tmp_path_factory.mktemp("matrix")
    server = Server(root / "data", root / "server.log")
    server.start()
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"})
    caller = httpx.Client(base_url=server.url, timeout=30)
    try:
        w = World(server, admin, caller, {}, {}, {})
        w.nodes = {"dev": w.node("dev"), "prod": w.node("prod")}
        w.commands = {side: w.command(side) for side in ("dev", "prod")}
        w.ok(admin.post("/api/v1/roles", json={"name": "baseline", "policy": {"statements": []}}))
        w.ok(admin.post("/api/v1/roles", json={"name": "custom", "policy": POLICY}))
        w.ok(admin.post("/api/v1/parameters", json={"name": "/m/p", "value": "v"}))
        w.ok(
            admin.post(
                "/api/v1/parameters", json={"name": "/m/s", "value": "v", "type": "SecureString"}
            )
        )
        created = w.ok(admin.post("/api/v1/users", json={"name": "requester", "roles": ["viewer"]}))
        w.tokens["requester"] = created["token"]
        for role in ROLES:
            plain = w.ok(
                admin.post("/api/v1/users", json={"name": f"{role}-plain", "roles": [role]})
            )
            w.tokens[f"{role}-plain"] = plain["token"]
            # The grant holder asks (as a viewer) for the role on dev nodes, an admin
            # approves, and then the holder keeps only an empty role: all it may do
            # comes from the grant.
            name = f"{role}-grant"
            holder = w.ok(admin.post("/api/v1/users", json={"name": name, "roles": ["viewer"]}))
            w.tokens[name] = holder["token"]
            body = {
                "targets": ["tag:env=dev"],
                "role": role,
                "duration_seconds": 3600,
                "reason": "matrix",
            }
            asked = w.ok(
                caller.post(
                    "/api/v1/access/requests",
                    json=body,
                    headers={"Authorization": f"Bearer {holder['token']}"},
                )
            )
            w.ok(admin.post(f"/api/v1/access/requests/{asked['request_id']}/approve", json={}))
            w.ok(admin.patch(f"/api/v1/users/{name}", json={"roles": ["baseline"]}))
        yield w
    except BaseException:
        print(server.log())  # noqa: T201 - shown by pytest only when the test fails
        raise
    finally:
        admin.close()
        caller.close()
        server.stop()


def test_matrix(world: World) -> None:
    """Every cell; failures are collected so one run shows every wrong cell."""
    wrong = []
    checked = 0
    for case, role, (holding, side) in itertools.product(
        CASES, ROLES, [("plain", "dev"), ("grant", "dev"), ("grant", "prod")]
    ):
        user = f"{role}-{holding}"
        if holding == "plain":
            expected = role in case.plain
        else:
            expected = role in (case.grant_dev if side == "dev" else case.grant_prod)
        method, path, body, *extra = case.build(world, side, user)
        response = world.caller.request(
            method,
            path,
            json=body,
            headers={
                "Authorization": f"Bearer {world.tokens[user]}",
                **(extra[0] if extra else {}),
            },
        )
        checked += 1
        allowed = response.status_code not in (401, 403) and not wire_denied(response)
        assert response.status_code < 500, (case.name, user, side, response.text)
        if allowed != expected:
            wrong.append(
                f"{case.name} as {user} on {side}: {response.status_code} {response.text[:200]}"
            )
    assert wrong == [], "\n".join(wrong)
    assert checked == len(CASES) * len(ROLES) * 3


def wire_denied(response: httpx.Response) -> bool:
    """Systems Manager's API answers "denied" with HTTP 400 and an error type."""
    if not response.headers.get("content-type", "").startswith("application/x-amz-json"):
        return False
    return response.json().get("__type") in (
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
    )


def _shape(method: str, path: str) -> str:
    path = re.sub(r"\{[^}]+\}", "{}", path.removeprefix("/api/v1"))
    return f"{method} {path}"


def test_the_matrix_covers_every_route() -> None:
    from tests.server.test_routes import ROUTES, UNAUTHENTICATED

    routes = {_shape(m, p) for m, p, _ in ROUTES if (m, p) not in UNAUTHENTICATED}
    cases = {_shape(*c.name.split(" (")[0].split(" ", 1)) for c in CASES}
    assert routes == cases
