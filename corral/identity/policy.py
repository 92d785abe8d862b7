"""The policy language and its evaluation (pure: no I/O).

A policy is a list of statements:

```yaml
statements:
  - effect: allow                 # or deny
    actions: ["command:*"]        # wildcards: * (any run of characters), ? (one)
    resources: ["document:*", "node:*"]
    conditions:                   # optional; every key must match
      node_tags: {env: [dev, test]}
```

A request is (action, resource, node): `node` is the node the request touches, if
any. Conditions on node tags hold only when the request touches a node whose tags
match; a request that touches no node never satisfies a condition. Resource patterns
may use `${principal.name}`, and, for a node acting as itself, `${node.id}` and
`${node.tag.KEY}`; a variable that cannot be resolved makes the pattern match nothing.

Explicit deny beats allow; no matching allow means deny. A grant (just-in-time
access) contributes its role's statements only to requests that touch a node within
the grant's targets.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from corral.errors import ValidationError
from corral.identity.actions import ACTIONS, RESOURCE_KINDS

MAX_STATEMENTS = 100
MAX_PATTERNS = 100
MAX_PATTERN_CHARS = 512

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_NAME = re.compile(r"principal\.name|node\.id|node\.tag\.[A-Za-z0-9_.:/=+\-@ ]{1,128}")
_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


def _check_pattern(pattern: str, what: str) -> str:
    if not pattern or len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"{what} pattern must be 1-{MAX_PATTERN_CHARS} characters")
    if not _SAFE.fullmatch(_VARIABLE.sub("x", pattern)):
        raise ValueError(f"{what} pattern {pattern!r} has spaces or non-printable characters")
    return pattern


class NodeTagCondition(BaseModel):
    """Conditions on the tags of the node a request touches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_tags: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("node_tags", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("node_tags")
    @classmethod
    def _non_empty(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, values in value.items():
            if not key or not values:
                raise ValueError(f"node_tags.{key or '?'} needs a key and at least one value")
        return value


class Statement(BaseModel):
    """One allow or deny rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sid: str | None = Field(default=None, max_length=128)
    effect: Literal["allow", "deny"]
    actions: list[str] = Field(min_length=1, max_length=MAX_PATTERNS)
    resources: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=100)
    conditions: NodeTagCondition | None = None

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _check_pattern(pattern, "action")
            if "${" in pattern:
                raise ValueError(f"action pattern {pattern!r} cannot use variables")
            regex = _compile(pattern)
            if not any(regex.fullmatch(action) for action in ACTIONS):
                raise ValueError(f"action pattern {pattern!r} matches no known action")
        return value

    @field_validator("resources")
    @classmethod
    def _known_resources(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _check_pattern(pattern, "resource")
            for name in _VARIABLE.findall(pattern):
                if not _VARIABLE_NAME.fullmatch(name):
                    raise ValueError(
                        f"resource pattern {pattern!r}: unknown variable ${{{name}}} "
                        "(use ${principal.name}, ${node.id} or ${node.tag.KEY})"
                    )
            if pattern == "*":
                continue
            kind, colon, _ = pattern.partition(":")
            if not colon or kind not in RESOURCE_KINDS:
                kinds = ", ".join(sorted(RESOURCE_KINDS))
                raise ValueError(
                    f"resource pattern {pattern!r} must be '*' or KIND:NAME "
                    f"with KIND one of {kinds}"
                )
        return value


class Policy(BaseModel):
    """A role's statements."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = Field(default=None, max_length=1024)
    statements: list[Statement] = Field(max_length=MAX_STATEMENTS)


def parse_policy(data: object) -> Policy:
    """Validate a policy document (already parsed from JSON/YAML); errors name the field."""
    if not isinstance(data, dict):
        raise ValidationError("a policy must be an object with a 'statements' list", "statements")
    try:
        return Policy.model_validate(data)
    except PydanticValidationError as error:
        first = error.errors()[0]
        path = ""
        for part in first.get("loc", ()):
            path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ValidationError(f"{path}: {message}" if path else message, path or None) from None


# --- matching ---------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    """`*` matches any run of characters (including `/` and `:`), `?` one character."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def wildcard_match(pattern: str, value: str) -> bool:
    """Whether `value` matches the wildcard `pattern` as a whole."""
    return _compile(pattern).fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class NodeContext:
    """A node a request touches (or a node acting as itself): its id and tags."""

    node_id: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Subject:
    """Who acts: the principal's name and, for a node principal, the node itself."""

    name: str
    acting_node: NodeContext | None = None


def _resolve(pattern: str, subject: Subject) -> str | None:
    """Substitute variables; wildcard characters in values are escaped as literals."""
    if "${" not in pattern:
        return pattern
    out: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(pattern):
        out.append(pattern[position : match.start()])
        name = match.group(1)
        value: str | None
        if name == "principal.name":
            value = subject.name
        elif subject.acting_node is None:
            value = None
        elif name == "node.id":
            value = subject.acting_node.node_id
        else:
            value = subject.acting_node.tags.get(name.removeprefix("node.tag."))
        if value is None:
            return None
        out.append(value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?"))
        position = match.end()
    out.append(pattern[position:])
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _compile_resolved(pattern: str) -> re.Pattern[str]:
    """Like `_compile`, honouring `\\*`, `\\?` and `\\\\` escapes left by `_resolve`."""
    parts = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        elif char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _resource_matches(pattern: str, resource: str, subject: Subject) -> bool:
    resolved = _resolve(pattern, subject)
    if resolved is None:
        return False
    if resolved is pattern:
        return _compile(pattern).fullmatch(resource) is not None
    return _compile_resolved(resolved).fullmatch(resource) is not None


def _conditions_hold(conditions: NodeTagCondition | None, node: NodeContext | None) -> bool:
    if conditions is None or not conditions.node_tags:
        return True
    if node is None:
        return False
    for key, patterns in conditions.node_tags.items():
        value = node.tags.get(key)
        if value is None or not any(wildcard_match(p, value) for p in patterns):
            return False
    return True


def statement_matches(
    statement: Statement, action: str, resource: str, node: NodeContext | None, subject: Subject
) -> bool:
    """Whether `statement` speaks about this request (whatever its effect)."""
    if not any(_compile(p).fullmatch(action) for p in statement.actions):
        return False
    if not any(_resource_matches(p, resource, subject) for p in statement.resources):
        return False
    return _conditions_hold(statement.conditions, node)


# --- scopes and sources -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """The nodes a grant covers: explicit ids, or tag specs (all keys must match), or all."""

    node_ids: frozenset[str] = frozenset()
    tags: Mapping[str, frozenset[str]] = field(default_factory=dict)
    everything: bool = False

    def covers(self, node: NodeContext | None) -> bool:
        """Whether `node` is within the scope (a request touching no node never is)."""
        if node is None:
            return False
        if self.everything:
            return True
        if self.node_ids:
            return node.node_id in self.node_ids
        if not self.tags:
            return False
        return all(node.tags.get(key) in values for key, values in self.tags.items())


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Statements from one role, or from one role granted through an access request."""

    label: str  # "role:operator" or "grant:ar-..."
    statements: Sequence[Statement]
    scope: Scope | None = None  # grants only
    grant_id: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check; `grant_id` names the grant an allow came through."""

    allowed: bool
    reason: str
    grant_id: str | None = None


def decide(
    sources: Iterable[PolicySource],
    subject: Subject,
    action: str,
    resource: str,
    node: NodeContext | None = None,
) -> Decision:
    """Evaluate one request: explicit deny wins, then any allow, else deny."""
    allowed_by: PolicySource | None = None
    for source in sources:
        if source.scope is not None and not source.scope.covers(node):
            continue
        for statement in source.statements:
            if not statement_matches(statement, action, resource, node, subject):
                continue
            if statement.effect == "deny":
                return Decision(False, f"explicitly denied by {source.label}")
            if allowed_by is None or (allowed_by.grant_id is not None and source.grant_id is None):
                allowed_by = source
    if allowed_by is None:
        return Decision(False, f"no policy allows {action} on {resource}")
    return Decision(True, f"allowed by {allowed_by.label}", allowed_by.grant_id)


def may_ever(sources: Iterable[PolicySource], action: str) -> bool:
    """Whether any allow statement names `action` at all (a coarse first check)."""
    for source in sources:
        for statement in source.statements:
            if statement.effect == "allow" and any(
                _compile(p).fullmatch(action) for p in statement.actions
            ):
                return True
    return False
