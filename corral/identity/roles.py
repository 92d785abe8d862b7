"""The built-in roles every server starts with.

`admin`, `operator`, `viewer` and `auditor` cannot be changed or deleted (so their
meaning is the same on every Corral server); `node` is the role every node principal
holds, empty by default, and may be edited (e.g. to let nodes read their
environment's parameters: `parameter:/app/${node.tag.env}/*`).
"""

from __future__ import annotations

from typing import Any

from corral.identity.policy import Policy, parse_policy

# Every principal may manage its own tokens and see who it is.
_SELF: list[dict[str, Any]] = [
    {
        "sid": "self-service",
        "effect": "allow",
        "actions": ["identity:WhoAmI", "token:Create", "token:List", "token:Revoke"],
        "resources": ["user:${principal.name}"],
    },
    {
        "sid": "request-access",
        "effect": "allow",
        "actions": ["access:Request"],
        "resources": ["role:*"],
    },
    {
        "sid": "own-access-requests",
        "effect": "allow",
        "actions": ["access:List", "access:Read", "access:Revoke"],
        "resources": ["access:${principal.name}/*"],
    },
]

_READ_FLEET: dict[str, Any] = {
    "sid": "read-fleet",
    "effect": "allow",
    "actions": [
        "node:List",
        "node:Read",
        "document:List",
        "document:Read",
        "command:List",
        "command:Read",
        "activation:List",
        "session:List",
        "session:Read",
        "parameter:List",
        "parameter:Get",
        "key:List",
        "role:List",
        "role:Read",
    ],
    "resources": ["*"],
}

BUILTIN_POLICIES: dict[str, dict[str, Any]] = {
    "admin": {
        "description": "Everything, everywhere.",
        "statements": [{"sid": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]}],
    },
    "operator": {
        "description": "Runs the fleet: nodes, documents, commands, sessions, parameters.",
        "statements": [
            *_SELF,
            {
                "sid": "operate-fleet",
                "effect": "allow",
                "actions": [
                    "activation:*",
                    "node:*",
                    "document:*",
                    "command:*",
                    "session:*",
                    "file:*",
                    "parameter:*",
                    "key:List",
                    "role:List",
                    "role:Read",
                ],
                "resources": ["*"],
            },
        ],
    },
    "viewer": {
        "description": "Reads the fleet's state; changes nothing and decrypts nothing.",
        "statements": [*_SELF, _READ_FLEET],
    },
    "auditor": {
        "description": "Reads the fleet's state, the audit log and access evidence.",
        "statements": [
            *_SELF,
            _READ_FLEET,
            {
                "sid": "audit",
                "effect": "allow",
                "actions": [
                    "audit:*",
                    "access:List",
                    "access:Read",
                    "user:List",
                    "user:Read",
                    "token:List",
                ],
                "resources": ["*"],
            },
        ],
    },
    "node": {
        "description": "What every node may do as itself through the API (nothing by default).",
        "statements": [],
    },
}

IMMUTABLE_ROLES = frozenset({"admin", "operator", "viewer", "auditor"})
NODE_ROLE = "node"


def builtin_policy(name: str) -> Policy:
    """The parsed built-in policy `name`."""
    return parse_policy(BUILTIN_POLICIES[name])
