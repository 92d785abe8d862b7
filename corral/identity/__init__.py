"""Identity and access: the policy language, built-in roles and the action catalogue."""

from corral.identity.actions import ACTIONS, RESOURCE_KINDS
from corral.identity.policy import (
    Decision,
    NodeContext,
    Policy,
    PolicySource,
    Scope,
    Statement,
    Subject,
    decide,
    may_ever,
    parse_policy,
    wildcard_match,
)
from corral.identity.roles import BUILTIN_POLICIES, IMMUTABLE_ROLES, NODE_ROLE, builtin_policy

__all__ = [
    "ACTIONS",
    "BUILTIN_POLICIES",
    "IMMUTABLE_ROLES",
    "NODE_ROLE",
    "RESOURCE_KINDS",
    "Decision",
    "NodeContext",
    "Policy",
    "PolicySource",
    "Scope",
    "Statement",
    "Subject",
    "builtin_policy",
    "decide",
    "may_ever",
    "parse_policy",
    "wildcard_match",
]
