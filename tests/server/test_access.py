"""Just-in-time access through the API: request, approve, use, expire, revoke, evidence."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.server.conftest import Api, fast_config, running_app
from tests.server.test_identity import bearer, make_user

RUN = {"document_name": "Corral-RunShellScript", "parameters": {"commands": ["true"]}}

DEV_APPROVERS = {
    "statements": [
        {
            "effect": "allow",
            "actions": ["access:Approve"],
            "resources": ["role:operator"],
            "conditions": {"node_tags": {"env": "dev"}},
        }
    ]
}
SELF_SERVICE_DEV = {
    "statements": [
        {
            "effect": "allow",
            "actions": ["access:AutoApprove"],
            "resources": ["role:operator"],
            "conditions": {"node_tags": {"env": "dev"}},
        }
    ]
}


async def request_access(
    api: Api, token: str, targets: list[str], seconds: int = 3600
) -> dict[str, object]:
    response = await api.client.post(
        "/api/v1/access/requests",
        json={
            "targets": targets,
            "role": "operator",
            "duration_seconds": seconds,
            "reason": "incident 42",
        },
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_a_grant_works_on_its_nodes_only_and_expires_without_a_restart(
    tmp_path: Path,
) -> None:
    config = fast_config(tmp_path / "data", access_min_duration_seconds=1.0)
    async with running_app(config) as api:
        dev, _ = await api.register_node({"env": "dev"})
        prod, _ = await api.register_node({"env": "prod"})
        token = await make_user(api, "rita", "viewer")
        send = {**RUN, "targets": [dev]}
        assert (
            await api.client.post("/api/v1/commands", json=send, headers=bearer(token))
        ).status_code == 403

        pending = await request_access(api, token, ["tag:env=dev"], seconds=2)
        assert (pending["status"], pending["requester"]) == ("pending", "rita")
        own = await api.client.post(
            f"/api/v1/access/requests/{pending['request_id']}/approve", headers=bearer(token)
        )
        assert own.status_code == 403
        approved = await api.client.post(
            f"/api/v1/access/requests/{pending['request_id']}/approve", json={"comment": "go"}
        )
        assert approved.json()["status"] == "approved"
        assert approved.json()["decided_by"] == "user:admin"
        who = (await api.client.get("/api/v1/whoami", headers=bearer(token))).json()
        assert [g["request_id"] for g in who["grants"]] == [pending["request_id"]]

        sent = await api.client.post("/api/v1/commands", json=send, headers=bearer(token))
        assert sent.status_code == 201, sent.text
        to_prod = await api.client.post(
            "/api/v1/commands", json={**RUN, "targets": [prod]}, headers=bearer(token)
        )
        assert to_prod.status_code == 403
        # The grant does not reach beyond nodes: no document or user management.
        doc = await api.client.delete(
            "/api/v1/documents/Corral-RunShellScript", headers=bearer(token)
        )
        assert doc.status_code == 403

        await asyncio.sleep(2.2)
        expired = await api.client.post("/api/v1/commands", json=send, headers=bearer(token))
        assert expired.status_code == 403
        shown = (
            await api.client.get(
                f"/api/v1/access/requests/{pending['request_id']}", headers=bearer(token)
            )
        ).json()
        assert shown["status"] == "expired"

        evidence = (
            await api.client.get(f"/api/v1/access/requests/{pending['request_id']}/evidence")
        ).json()
        actions = [(r["action"], r["outcome"]) for r in evidence["actions"]]
        assert ("access:Request", "allowed") in actions
        assert ("access:Approve", "denied") in actions  # the self-approval attempt
        assert ("access:Approve", "allowed") in actions
        assert ("command:Send", "allowed") in actions  # done under the grant
        assert evidence["decisions"][0]["by"] == "user:admin"
        assert evidence["request"]["reason"] == "incident 42"


async def test_approvers_are_scoped_by_node_tags_and_revocation_is_immediate(api: Api) -> None:
    dev, _ = await api.register_node({"env": "dev"})
    await api.register_node({"env": "prod"})
    await api.client.post("/api/v1/roles", json={"name": "dev-approver", "policy": DEV_APPROVERS})
    approver = await make_user(api, "amy", "dev-approver")
    requester = await make_user(api, "ray", "viewer")
    on_prod = await request_access(api, requester, ["tag:env=prod"])
    on_dev = await request_access(api, requester, ["tag:env=dev"])
    listed = (await api.client.get("/api/v1/access/requests", headers=bearer(approver))).json()
    assert [r["request_id"] for r in listed] == [on_dev["request_id"]]  # the one amy may approve
    refused = await api.client.post(
        f"/api/v1/access/requests/{on_prod['request_id']}/approve", headers=bearer(approver)
    )
    assert refused.status_code == 403
    # An approver cannot approve a request of their own.
    both = await make_user(api, "ann", "viewer", "dev-approver")
    ann_own = await request_access(api, both, ["tag:env=dev"])
    own = await api.client.post(
        f"/api/v1/access/requests/{ann_own['request_id']}/approve", headers=bearer(both)
    )
    assert own.status_code == 403
    assert "your own" in own.text
    ok = await api.client.post(
        f"/api/v1/access/requests/{on_dev['request_id']}/approve", headers=bearer(approver)
    )
    assert ok.status_code == 200, ok.text
    again = await api.client.post(
        f"/api/v1/access/requests/{on_dev['request_id']}/deny", headers=bearer(approver)
    )
    assert again.status_code == 409
    assert (
        await api.client.post(
            "/api/v1/commands", json={**RUN, "targets": [dev]}, headers=bearer(requester)
        )
    ).status_code == 201
    revoked = await api.client.post(f"/api/v1/access/requests/{on_dev['request_id']}/revoke")
    assert revoked.json()["status"] == "revoked"
    after = await api.client.post(
        "/api/v1/commands", json={**RUN, "targets": [dev]}, headers=bearer(requester)
    )
    assert after.status_code == 403
    mine = (
        await api.client.get(
            "/api/v1/access/requests", params={"mine": "true"}, headers=bearer(requester)
        )
    ).json()
    assert {r["status"] for r in mine} == {"pending", "revoked"}
    # Someone else's request is not readable to a plain viewer.
    other = await make_user(api, "olga", "viewer")
    hidden = await api.client.get(
        f"/api/v1/access/requests/{on_prod['request_id']}", headers=bearer(other)
    )
    assert hidden.status_code == 403


async def test_auto_approval_rules_and_request_validation(api: Api) -> None:
    await api.register_node({"env": "dev"})
    await api.register_node({"env": "prod"})
    await api.client.post(
        "/api/v1/roles", json={"name": "self-service", "policy": SELF_SERVICE_DEV}
    )
    token = await make_user(api, "sid", "viewer", "self-service")
    auto = await request_access(api, token, ["tag:env=dev"])
    assert (auto["status"], auto["decided_by"]) == ("approved", "auto-approval")
    manual = await request_access(api, token, ["all"])
    assert manual["status"] == "pending"  # the prod node is outside the rule
    too_long = await api.client.post(
        "/api/v1/access/requests",
        json={"targets": ["all"], "role": "operator", "duration_seconds": 10**7, "reason": "x"},
        headers=bearer(token),
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["field"] == "duration_seconds"
    nowhere = await api.client.post(
        "/api/v1/access/requests",
        json={
            "targets": ["tag:env=none"],
            "role": "operator",
            "duration_seconds": 600,
            "reason": "x",
        },
        headers=bearer(token),
    )
    assert nowhere.status_code == 400
    assert nowhere.json()["error"]["field"] == "targets"
    blank = await api.client.post(
        "/api/v1/access/requests",
        json={"targets": ["all"], "role": "operator", "duration_seconds": 600, "reason": "   "},
        headers=bearer(token),
    )
    assert blank.status_code == 400


async def test_custom_roles_without_self_service_cannot_request(api: Api) -> None:
    await api.register_node({"env": "dev"})
    await api.client.post("/api/v1/roles", json={"name": "dev-approver", "policy": DEV_APPROVERS})
    approver = await make_user(api, "abe", "dev-approver")
    response = await api.client.post(
        "/api/v1/access/requests",
        json={"targets": ["all"], "role": "operator", "duration_seconds": 600, "reason": "x"},
        headers=bearer(approver),
    )
    assert response.status_code == 403
