"""Parameter Store: names and limits, envelope encryption, and the domain service."""

from corral.params.keys import DEFAULT_KEY, DecryptionError, KeyInfo, Keyring, key_name
from corral.params.service import (
    Authorizer,
    HistoryEntry,
    Page,
    ParameterService,
    ParameterValue,
    PutRequest,
    PutResult,
    resource,
)

__all__ = [
    "DEFAULT_KEY",
    "Authorizer",
    "DecryptionError",
    "HistoryEntry",
    "KeyInfo",
    "Keyring",
    "Page",
    "ParameterService",
    "ParameterValue",
    "PutRequest",
    "PutResult",
    "key_name",
    "resource",
]
