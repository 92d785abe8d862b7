"""The policy language: parsing errors name the field; evaluation follows deny > allow > deny."""

from __future__ import annotations

import pytest

from corral.errors import ValidationError
from corral.identity import (
    ACTIONS,
    BUILTIN_POLICIES,
    NodeContext,
    PolicySource,
    Scope,
    Subject,
    builtin_policy,
    decide,
    may_ever,
    parse_policy,
)

DEV = NodeContext("mi-0000000000000dev0", {"env": "dev", "team": "web"})
PROD = NodeContext("mi-000000000000prod0", {"env": "prod"})
ALICE = Subject("alice")


def source(*statements: dict[str, object], label: str = "role:test") -> PolicySource:
    return PolicySource(label, parse_policy({"statements": list(statements)}).statements)


def test_allow_with_wildcards_and_no_match_means_deny() -> None:
    s = source({"effect": "allow", "actions": ["command:*"], "resources": ["document:AWS-*"]})
    assert decide([s], ALICE, "command:Send", "document:AWS-RunShellScript").allowed
    assert not decide([s], ALICE, "command:Send", "document:Mine").allowed
    denied = decide([s], ALICE, "document:Delete", "document:AWS-X")
    assert not denied.allowed
    assert denied.reason == "no policy allows document:Delete on document:AWS-X"


def test_explicit_deny_beats_allow_from_any_source() -> None:
    allow = source({"effect": "allow", "actions": ["*"], "resources": ["*"]}, label="role:admin")
    deny = source(
        {"effect": "deny", "actions": ["node:Deregister"], "resources": ["node:*"]},
        label="role:careful",
    )
    decision = decide([allow, deny], ALICE, "node:Deregister", "node:" + DEV.node_id, DEV)
    assert (decision.allowed, decision.reason) == (False, "explicitly denied by role:careful")
    assert decide([allow, deny], ALICE, "node:Read", "node:" + DEV.node_id, DEV).allowed


def test_tag_conditions_need_a_matching_node() -> None:
    s = source(
        {
            "effect": "allow",
            "actions": ["command:Send"],
            "resources": ["*"],
            "conditions": {"node_tags": {"env": ["dev", "test*"]}},
        }
    )
    assert decide([s], ALICE, "command:Send", "node:" + DEV.node_id, DEV).allowed
    assert decide([s], ALICE, "command:Send", "x", NodeContext("mi-1", {"env": "test-3"})).allowed
    assert not decide([s], ALICE, "command:Send", "node:" + PROD.node_id, PROD).allowed
    assert not decide([s], ALICE, "command:Send", "node:x", NodeContext("mi-2", {})).allowed
    # A request that touches no node never satisfies a condition.
    assert not decide([s], ALICE, "command:Send", "document:X").allowed


def test_variables_resolve_against_the_acting_node_and_principal() -> None:
    s = source(
        {
            "effect": "allow",
            "actions": ["parameter:Get"],
            "resources": ["parameter:/app/${node.tag.env}/*"],
        },
        {"effect": "allow", "actions": ["token:List"], "resources": ["user:${principal.name}"]},
    )
    node = Subject("node:" + DEV.node_id, acting_node=DEV)
    assert decide([s], node, "parameter:Get", "parameter:/app/dev/db").allowed
    assert not decide([s], node, "parameter:Get", "parameter:/app/prod/db").allowed
    # A user has no acting node: the pattern matches nothing.
    assert not decide([s], ALICE, "parameter:Get", "parameter:/app/dev/db").allowed
    assert decide([s], ALICE, "token:List", "user:alice").allowed
    assert not decide([s], ALICE, "token:List", "user:bob").allowed


def test_wildcards_in_variable_values_are_literal() -> None:
    s = source(
        {
            "effect": "allow",
            "actions": ["parameter:Get"],
            "resources": ["parameter:/app/${node.tag.env}"],
        }
    )
    sneaky = Subject("node:mi-3", NodeContext("mi-3", {"env": "*"}))
    assert not decide([s], sneaky, "parameter:Get", "parameter:/app/prod").allowed
    assert decide([s], sneaky, "parameter:Get", "parameter:/app/*").allowed


def test_grants_apply_only_to_nodes_in_their_scope() -> None:
    operator = builtin_policy("operator").statements
    grant = PolicySource("grant:ar-1", operator, Scope(tags={"env": frozenset({"dev"})}), "ar-1")
    on_dev = decide([grant], ALICE, "command:Send", "node:" + DEV.node_id, DEV)
    assert (on_dev.allowed, on_dev.grant_id) == (True, "ar-1")
    assert not decide([grant], ALICE, "command:Send", "node:" + PROD.node_id, PROD).allowed
    assert not decide([grant], ALICE, "document:Create", "document:X").allowed
    by_id = PolicySource("grant:ar-2", operator, Scope(node_ids=frozenset({PROD.node_id})), "ar-2")
    assert decide([by_id], ALICE, "node:Read", "node:" + PROD.node_id, PROD).allowed
    # A role that allows the same thing takes precedence: the action was not done under the grant.
    viewer = PolicySource("role:viewer", builtin_policy("viewer").statements)
    both = decide([grant, viewer], ALICE, "node:Read", "node:" + DEV.node_id, DEV)
    assert (both.allowed, both.grant_id) == (True, None)


def test_builtin_roles() -> None:
    roles = {
        name: [PolicySource(f"role:{name}", builtin_policy(name).statements)]
        for name in BUILTIN_POLICIES
    }
    assert all(decide(roles["admin"], ALICE, a, "anything:x").allowed for a in ACTIONS)
    assert decide(roles["operator"], ALICE, "command:Send", "node:x", DEV).allowed
    assert not decide(roles["operator"], ALICE, "user:Create", "user:bob").allowed
    assert not decide(roles["operator"], ALICE, "audit:Read", "audit:*").allowed
    assert not decide(roles["viewer"], ALICE, "command:Send", "node:x", DEV).allowed
    assert not decide(roles["viewer"], ALICE, "parameter:GetDecrypted", "parameter:/a").allowed
    assert decide(roles["viewer"], ALICE, "token:Create", "user:alice").allowed
    assert not decide(roles["viewer"], ALICE, "token:Create", "user:bob").allowed
    assert decide(roles["auditor"], ALICE, "audit:Read", "audit:log").allowed
    assert not decide(roles["auditor"], ALICE, "document:Delete", "document:X").allowed
    assert not any(may_ever(roles["node"], a) for a in ACTIONS)
    assert may_ever(roles["viewer"], "node:List")
    assert not may_ever(roles["viewer"], "node:Tag")


@pytest.mark.parametrize(
    ("policy", "field", "words"),
    [
        (
            {"statements": [{"effect": "allow", "actions": ["comand:Send"]}]},
            "statements[0].actions",
            "matches no known action",
        ),
        (
            {"statements": [{"effect": "maybe", "actions": ["*"]}]},
            "statements[0].effect",
            "'allow' or 'deny'",
        ),
        (
            {"statements": [{"effect": "allow", "actions": []}]},
            "statements[0].actions",
            "at least 1",
        ),
        (
            {"statements": [{"effect": "allow", "actions": ["*"], "resources": ["nod:x"]}]},
            "statements[0].resources",
            "KIND:NAME",
        ),
        (
            {
                "statements": [
                    {"effect": "allow", "actions": ["*"], "resources": ["node:${node.name}"]}
                ]
            },
            "statements[0].resources",
            "unknown variable",
        ),
        (
            {"statements": [{"effect": "allow", "actions": ["*"], "extra": 1}]},
            "statements[0].extra",
            "Extra inputs",
        ),
        (
            {
                "statements": [
                    {"effect": "allow", "actions": ["*"], "conditions": {"node_tags": {"env": []}}}
                ]
            },
            "statements[0].conditions.node_tags",
            "at least one value",
        ),
        ({"statement": []}, "statements", "Field required"),
        ([1], "statements", "must be an object"),
    ],
)
def test_bad_policies_name_the_field(policy: object, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_policy(policy)
    assert caught.value.field is not None
    assert caught.value.field.startswith(field)
    assert words in caught.value.message
