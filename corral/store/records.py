"""Plain, immutable records the store hands out (no ORM object leaves the store)."""

from __future__ import annotations

from dataclasses import dataclass, field

JsonValue = object


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token's metadata (never the token itself)."""

    id: str
    prefix: str
    description: str
    created_at: float
    last_used_at: float | None
    expires_at: float | None
    revoked: bool
    user_id: str | None = None
    revoked_at: float | None = None
    # Set for AWS credentials (SigV4): the access key id; the secret is never in a record.
    access_key_id: str | None = None


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user: a name, roles, and whether it is disabled."""

    id: str
    name: str
    roles: list[str]
    disabled: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class RoleRecord:
    """A named policy (the policy as stored: a validated JSON object)."""

    name: str
    description: str
    policy: dict[str, object]
    builtin: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class AccessRequestRecord:
    """A just-in-time access request and, once approved, its grant."""

    id: str
    requester: str
    role: str
    targets: list[str]
    duration_seconds: int
    reason: str
    status: str  # pending, approved, denied, revoked (expiry is derived from expires_at)
    created_at: float
    decided_at: float | None
    decided_by: str | None
    comment: str
    expires_at: float | None
    revoked_at: float | None
    revoked_by: str | None

    def active(self, now: float) -> bool:
        """Whether this is an approved grant that has not expired or been revoked."""
        return self.status == "approved" and self.expires_at is not None and now < self.expires_at

    def effective_status(self, now: float) -> str:
        """The status a user sees: an approved grant past its expiry is `expired`."""
        if self.status == "approved" and not self.active(now):
            return "expired"
        return self.status


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What happened, before it is numbered and chained."""

    time_us: int
    request_id: str
    principal: str
    action: str
    outcome: str  # allowed, denied, failed
    resources: list[str] = field(default_factory=list)
    token_id: str | None = None
    source: str | None = None
    error: str | None = None
    grant_id: str | None = None
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecordRow:
    """A stored audit record: the entry, its position in the chain and its keyed hash."""

    seq: int
    entry: AuditEntry
    hash: str


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A signed statement that the chain held `count` records ending in `head_hash`."""

    count: int
    head_hash: str
    time_us: int
    signature: str


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """An activation (its code is stored only as a hash)."""

    id: str
    description: str
    tags: dict[str, str]
    registration_limit: int
    registrations_count: int
    expires_at: float
    created_at: float
    deleted: bool


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A managed node."""

    id: str
    public_key: bytes
    activation_id: str
    tags: dict[str, str]
    hostname: str | None
    platform_type: str | None
    platform_name: str | None
    platform_version: str | None
    kernel: str | None
    arch: str | None
    ip_addresses: list[str]
    agent_version: str | None
    registered_at: float
    last_seen: float | None
    ping_status: str
    deregistered: bool


@dataclass(frozen=True, slots=True)
class DocumentMeta:
    """What the documents module extracted from a document's content."""

    schema_version: str
    document_type: str
    description: str
    parameters: dict[str, dict[str, JsonValue]]


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """One version of a document together with its name's head information."""

    name: str
    version: int
    content: str
    format: str
    content_hash: str
    meta: DocumentMeta
    created_at: float
    default_version: int
    latest_version: int
    owner: str


@dataclass(frozen=True, slots=True)
class NewCommand:
    """What the API validated and wants stored as a command."""

    id: str
    document_name: str
    document_version: int
    comment: str
    parameters: dict[str, JsonValue]
    targets: list[str]
    max_concurrency: str
    max_errors: str
    timeout_seconds: int | None
    delivery_timeout_seconds: int
    requested_at: float
    requested_by: str = ""
    references: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A stored command."""

    id: str
    document_name: str
    document_version: int
    comment: str
    parameters: dict[str, JsonValue]
    targets: list[str]
    max_concurrency: str
    max_errors: str
    timeout_seconds: int | None
    delivery_timeout_seconds: int
    requested_at: float
    completed_at: float | None
    status: str
    status_details: str
    cancelling: bool
    target_count: int
    requested_by: str = ""
    references: list[dict[str, object]] = field(default_factory=list)

    @property
    def secure_references(self) -> list[dict[str, object]]:
        """The `{{ssm-secure:...}}` references, resolved only when sending to a node."""
        return [r for r in self.references if r.get("secure")]


@dataclass(frozen=True, slots=True)
class InvocationRecord:
    """A stored invocation: one command on one node."""

    command_id: str
    node_id: str
    seq: int
    status: str
    status_details: str
    response_code: int | None
    stdout_head: str
    stderr_head: str
    stdout_bytes: int
    stderr_bytes: int
    requested_at: float
    sent_at: float | None
    started_at: float | None
    ended_at: float | None
    steps: list[dict[str, JsonValue]]
    message: str
    updated_at: float = 0.0


def initial_invocations(
    command_id: str,
    node_ids: list[str],
    requested_at: float,
    denied: dict[str, str] | None = None,
) -> list[InvocationRecord]:
    """A new command's invocations: Pending, or Failed/AccessDenied (with the reason)."""
    denied = denied or {}
    out = []
    for seq, node_id in enumerate(node_ids):
        reason = denied.get(node_id)
        out.append(
            InvocationRecord(
                command_id=command_id,
                node_id=node_id,
                seq=seq,
                status="Pending" if reason is None else "Failed",
                status_details="Pending" if reason is None else "AccessDenied",
                response_code=None,
                stdout_head="",
                stderr_head="",
                stdout_bytes=0,
                stderr_bytes=0,
                requested_at=requested_at,
                sent_at=None,
                started_at=None,
                ended_at=None if reason is None else requested_at,
                steps=[],
                message="" if reason is None else reason,
                updated_at=requested_at,
            )
        )
    return out


@dataclass(slots=True)
class InvocationChange:
    """Fields to change on one invocation; None means unchanged."""

    command_id: str
    node_id: str
    status: str | None = None
    status_details: str | None = None
    response_code: int | None = None
    stdout_head: str | None = None
    stderr_head: str | None = None
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    sent_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    steps: list[dict[str, JsonValue]] | None = None
    message: str | None = None

    def merge(self, other: InvocationChange) -> None:
        """Overlay the fields `other` sets onto this change."""
        for name in _CHANGE_FIELDS:
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)

    def values(self) -> dict[str, JsonValue]:
        """The set fields as column -> value."""
        return {n: getattr(self, n) for n in _CHANGE_FIELDS if getattr(self, n) is not None}


_CHANGE_FIELDS = (
    "status",
    "status_details",
    "response_code",
    "stdout_head",
    "stderr_head",
    "stdout_bytes",
    "stderr_bytes",
    "sent_at",
    "started_at",
    "ended_at",
    "steps",
    "message",
)


@dataclass(slots=True)
class CommandChange:
    """Fields to change on one command; None means unchanged."""

    command_id: str
    status: str | None = None
    status_details: str | None = None
    completed_at: float | None = None
    cancelling: bool | None = None

    def values(self) -> dict[str, JsonValue]:
        """The set fields as column -> value."""
        names = ("status", "status_details", "completed_at", "cancelling")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True, slots=True)
class ParameterRecord:
    """A parameter's latest metadata."""

    name: str
    type: str
    key_id: str | None
    tier: str
    data_type: str
    description: str
    allowed_pattern: str | None
    version: int
    last_modified: float
    last_modified_by: str
    tags: dict[str, str]
    policies: list[dict[str, object]]
    expires_at: float | None
    notify_at: float | None
    notified: str


@dataclass(frozen=True, slots=True)
class ParameterVersionRecord:
    """One stored version (a SecureString's value is sealed)."""

    name: str
    version: int
    value: str
    type: str
    key_id: str | None
    tier: str
    data_type: str
    description: str
    allowed_pattern: str | None
    labels: list[str]
    policies: list[dict[str, object]]
    last_modified: float
    last_modified_by: str


@dataclass(frozen=True, slots=True)
class ParameterWrite:
    """A validated write: the store numbers it and keeps at most `max_versions`."""

    name: str
    parent: str
    type: str
    key_id: str | None
    tier: str
    data_type: str
    description: str
    allowed_pattern: str | None
    value: str
    tags: dict[str, str]
    policies: list[dict[str, object]]
    expires_at: float | None
    notify_at: float | None
    by: str
    at: float


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session and what became of it."""

    id: str
    node_id: str
    kind: str
    owner: str
    os_user: str | None
    command: str | None
    status: str  # Pending, Connected, Terminated, Failed
    reason: str
    exit_code: int | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    bytes_in: int
    bytes_out: int
    recording_key: str | None
    grant_id: str | None
    target_host: str | None = None
    target_port: int | None = None
    connections: int = 0

    @property
    def active(self) -> bool:
        """Pending or Connected."""
        return self.status in ("Pending", "Connected")


@dataclass(frozen=True, slots=True)
class NewSession:
    """What a new session is: where, by whom, and as what (a shell or a port forward)."""

    node_id: str
    kind: str  # "shell" or "port"
    owner: str
    os_user: str | None = None
    command: str | None = None
    # `{session_id}` is filled in with the new session's id.
    recording_key: str | None = None
    grant_id: str | None = None
    target_host: str | None = None
    target_port: int | None = None
