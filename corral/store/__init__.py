"""The database: SQLAlchemy models, the `Store` repository and locked migrations."""

from corral.store.engine import create_engine, migrate, normalize_url, sqlite_url
from corral.store.records import (
    ActivationRecord,
    CommandChange,
    CommandRecord,
    DocumentMeta,
    DocumentRecord,
    InvocationChange,
    InvocationRecord,
    NewCommand,
    NodeRecord,
    TokenRecord,
)
from corral.store.repository import TOKEN_PREFIX, Store, hash_secret, new_node_id

__all__ = [
    "TOKEN_PREFIX",
    "ActivationRecord",
    "CommandChange",
    "CommandRecord",
    "DocumentMeta",
    "DocumentRecord",
    "InvocationChange",
    "InvocationRecord",
    "NewCommand",
    "NodeRecord",
    "Store",
    "TokenRecord",
    "create_engine",
    "hash_secret",
    "migrate",
    "new_node_id",
    "normalize_url",
    "sqlite_url",
]
