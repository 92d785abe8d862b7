"""The ``{{ ... }}`` references a document may contain, and the Parameter Store hook.

``{{ name }}`` (spaces optional) names a document parameter. ``{{ssm:/path}}`` and
``{{ssm-secure:/path}}`` name Parameter Store values; resolving them is a later
feature, so every value that reaches `resolve_parameters` goes through one hook,
`refuse_parameter_store_references`, which the Parameter Store engineer replaces
by passing their own `ReferenceResolver`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from corral.errors import DocumentError

PARAMETER_REFERENCE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
PARAMETER_STORE_REFERENCE = re.compile(r"\{\{\s*(ssm|ssm-secure):([^{}]*?)\s*\}\}")
_PARAMETER_STORE_NAME = re.compile(r"/?[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+){0,14}(:[0-9]+)?")
_ANY_REFERENCE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

ReferenceResolver = Callable[[str, str], str]
"""(value, field) -> the value with its Parameter Store references resolved."""


def parameter_names(text: str) -> list[str]:
    """Names of the document parameters that ``text`` references, in order of appearance."""
    return [match.group(1) for match in PARAMETER_REFERENCE.finditer(text)]


def has_parameter_store_reference(text: str) -> bool:
    """Tell whether ``text`` holds a ``{{ssm:...}}`` or ``{{ssm-secure:...}}`` reference."""
    return PARAMETER_STORE_REFERENCE.search(text) is not None


def check_reference_syntax(text: str, field: str, *, allow_parameter_store: bool) -> None:
    """Refuse malformed references in ``text``, and Parameter Store ones unless allowed."""
    for match in _ANY_REFERENCE.finditer(text):
        whole = match.group(0)
        if PARAMETER_REFERENCE.fullmatch(whole):
            continue
        store = PARAMETER_STORE_REFERENCE.fullmatch(whole)
        if store is None:
            raise DocumentError(
                f"malformed reference {whole!r}: use {{{{ name }}}} with a declared parameter name",
                field=field,
            )
        if not allow_parameter_store:
            raise DocumentError(
                "Parameter Store references are not available yet; "
                "they may only appear in parameter defaults",
                field=field,
            )
        if not _PARAMETER_STORE_NAME.fullmatch(store.group(2)):
            raise DocumentError(f"malformed Parameter Store reference {whole!r}", field=field)


def refuse_parameter_store_references(value: str, field: str) -> str:
    """The Parameter Store hook of this version: refuse any value that holds a reference."""
    if has_parameter_store_reference(value):
        raise DocumentError("Parameter Store references are not available yet", field=field)
    return value
