"""The database: SQLAlchemy models, the `Store` repository and locked migrations."""

from corral.store.audit import AuditQuery
from corral.store.base import hash_secret
from corral.store.engine import create_engine, migrate, normalize_url, sqlite_url
from corral.store.identity import TOKEN_PREFIX
from corral.store.records import (
    AccessRequestRecord,
    ActivationRecord,
    AuditEntry,
    AuditRecordRow,
    CheckpointRecord,
    CommandChange,
    CommandRecord,
    DocumentMeta,
    DocumentRecord,
    InvocationChange,
    InvocationRecord,
    NewCommand,
    NodeRecord,
    ParameterRecord,
    ParameterVersionRecord,
    ParameterWrite,
    RoleRecord,
    SessionRecord,
    TokenRecord,
    UserRecord,
    initial_invocations,
)
from corral.store.repository import Store, new_node_id

__all__ = [
    "TOKEN_PREFIX",
    "AccessRequestRecord",
    "ActivationRecord",
    "AuditEntry",
    "AuditQuery",
    "AuditRecordRow",
    "CheckpointRecord",
    "CommandChange",
    "CommandRecord",
    "DocumentMeta",
    "DocumentRecord",
    "InvocationChange",
    "InvocationRecord",
    "NewCommand",
    "NodeRecord",
    "ParameterRecord",
    "ParameterVersionRecord",
    "ParameterWrite",
    "RoleRecord",
    "SessionRecord",
    "Store",
    "TokenRecord",
    "UserRecord",
    "create_engine",
    "hash_secret",
    "initial_invocations",
    "migrate",
    "new_node_id",
    "normalize_url",
    "sqlite_url",
]
