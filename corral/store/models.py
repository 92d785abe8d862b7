"""Database tables. Times are UNIX epoch seconds (float) so SQLite and PostgreSQL agree."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every Corral table."""


class ApiToken(Base):
    """An API token (only its sha256 is stored), or AWS credentials (secret sealed)."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # None for AWS credentials, which have no bearer token.
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    prefix: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # The user the token acts for (None only for tokens from before users existed).
    user_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # AWS credentials: the access key id, and the secret access key sealed under the
    # `aws-credentials` key-encryption key (it must be readable to check signatures).
    access_key_id: Mapped[str | None] = mapped_column(
        String(32), nullable=True, unique=True, index=True
    )
    secret_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)


class User(Base):
    """A person or an automation; acts through its API tokens."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Role(Base):
    """A named policy."""

    __tablename__ = "roles"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class AccessRequest(Base):
    """A just-in-time access request; once approved, a grant until it expires."""

    __tablename__ = "access_requests"
    __table_args__ = (Index("ix_access_requests_requester_status", "requester", "status"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    requester: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(64))
    targets: Mapped[list[str]] = mapped_column(JSON)
    duration_seconds: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    decided_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(96), nullable=True)


class AuditRecord(Base):
    """One audit record, chained to the previous one by a keyed hash."""

    __tablename__ = "audit_records"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time_us: Mapped[int] = mapped_column(BigInteger, index=True)
    request_id: Mapped[str] = mapped_column(String(64))
    principal: Mapped[str] = mapped_column(String(96), index=True)
    token_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    resources: Mapped[list[str]] = mapped_column(JSON)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(8), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    grant_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed (record count, head hash) pair; the trusted copy is also written to a file."""

    __tablename__ = "audit_checkpoints"
    count: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    time_us: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(String(128))


class Activation(Base):
    """A registration code (stored hashed) with an expiry and a use limit."""

    __tablename__ = "activations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, str]] = mapped_column(JSON)
    registration_limit: Mapped[int] = mapped_column(Integer)
    registrations_count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Node(Base):
    """A managed node."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    activation_id: Mapped[str] = mapped_column(String(36))
    tags: Mapped[dict[str, str]] = mapped_column(JSON)
    hostname: Mapped[str | None] = mapped_column(Text, nullable=True)
    platform_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    platform_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    platform_version: Mapped[str | None] = mapped_column(Text, nullable=True)
    kernel: Mapped[str | None] = mapped_column(Text, nullable=True)
    arch: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ip_addresses: Mapped[list[str]] = mapped_column(JSON)
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    registered_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    ping_status: Mapped[str] = mapped_column(String(32), default="ConnectionLost")
    deregistered: Mapped[bool] = mapped_column(Boolean, default=False)


class DocumentVersion(Base):
    """One immutable version of a document."""

    __tablename__ = "documents"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(8))
    content_hash: Mapped[str] = mapped_column(String(64))
    schema_version: Mapped[str] = mapped_column(String(16))
    document_type: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class DocumentHead(Base):
    """Per document name: default and latest version, owner."""

    __tablename__ = "document_heads"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    default_version: Mapped[int] = mapped_column(Integer)
    latest_version: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(32))


class Command(Base):
    """A Run Command request."""

    __tablename__ = "commands"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    document_name: Mapped[str] = mapped_column(String(128))
    document_version: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    targets: Mapped[list[str]] = mapped_column(JSON)
    max_concurrency: Mapped[str] = mapped_column(String(16))
    max_errors: Mapped[str] = mapped_column(String(16))
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    delivery_timeout_seconds: Mapped[int] = mapped_column(Integer)
    requested_at: Mapped[float] = mapped_column(Float, index=True)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_details: Mapped[str] = mapped_column(String(32))
    cancelling: Mapped[bool] = mapped_column(Boolean, default=False)
    target_count: Mapped[int] = mapped_column(Integer)
    # Who sent it ("user:alice"); empty for commands from before principals were recorded.
    requested_by: Mapped[str] = mapped_column(String(96), default="")
    # Parameter Store references resolved when it was sent: reference, name, version, secure.
    references: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)


class Invocation(Base):
    """One command on one node."""

    __tablename__ = "invocations"
    __table_args__ = (
        Index("ix_invocations_node_status", "node_id", "status"),
        Index("ix_invocations_status", "status"),
    )
    command_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str] = mapped_column(String(32))
    response_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stdout_head: Mapped[str] = mapped_column(Text, default="")
    stderr_head: Mapped[str] = mapped_column(Text, default="")
    stdout_bytes: Mapped[int] = mapped_column(Integer, default=0)
    stderr_bytes: Mapped[int] = mapped_column(Integer, default=0)
    requested_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When the row was last written (a result's updated_at is when it was stored).
    updated_at: Mapped[float] = mapped_column(Float)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    message: Mapped[str] = mapped_column(Text, default="")


class Setting(Base):
    """Key/value state shared by every replica."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Parameter(Base):
    """A Parameter Store parameter: its latest metadata (versions are in parameter_versions)."""

    __tablename__ = "parameters"
    name: Mapped[str] = mapped_column(String(1011), primary_key=True)
    parent: Mapped[str] = mapped_column(String(1011), index=True)
    type: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tier: Mapped[str] = mapped_column(String(16))
    data_type: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    allowed_pattern: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int] = mapped_column(Integer)
    last_modified: Mapped[float] = mapped_column(Float)
    last_modified_by: Mapped[str] = mapped_column(String(96))
    tags: Mapped[dict[str, str]] = mapped_column(JSON)
    policies: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    notify_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    notified: Mapped[str] = mapped_column(String(32), default="")


class ParameterVersion(Base):
    """One version of a parameter; a SecureString's value is stored sealed."""

    __tablename__ = "parameter_versions"
    name: Mapped[str] = mapped_column(String(1011), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    tier: Mapped[str] = mapped_column(String(16))
    data_type: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    allowed_pattern: Mapped[str | None] = mapped_column(Text, nullable=True)
    labels: Mapped[list[str]] = mapped_column(JSON)
    policies: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    last_modified: Mapped[float] = mapped_column(Float)
    last_modified_by: Mapped[str] = mapped_column(String(96))


class Session(Base):
    """An interactive shell or a port forward (`kind` "shell" or "port") through a node's agent."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_node_status", "node_id", "status"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(96), index=True)
    os_user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    command: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    recording_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    grant_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Port forwards only: the one host:port (as seen from the node) they may open.
    target_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    target_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # TCP connections a port forward carried (0 for shells).
    connections: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
