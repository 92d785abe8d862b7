"""Document names: what is allowed, and which prefixes belong to the built-ins."""

from __future__ import annotations

import re

from corral.errors import DocumentError

_NAME = re.compile(r"[A-Za-z0-9_.\-]{3,128}")
RESERVED_PREFIXES: tuple[str, ...] = ("corral-", "aws-")


def validate_document_name(name: str) -> None:
    """Refuse a document name that is not 3-128 characters of ``A-Za-z0-9_.-``."""
    if not _NAME.fullmatch(name):
        raise DocumentError(
            "document names are 3-128 characters of letters, digits, '_', '.' and '-'",
            field="name",
        )


def is_reserved_name(name: str) -> bool:
    """Tell whether ``name`` uses a prefix reserved for built-in documents (case-insensitive)."""
    lowered = name.lower()
    return any(lowered.startswith(prefix) for prefix in RESERVED_PREFIXES)
