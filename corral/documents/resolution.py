"""Checking the parameter values a caller gives against a document."""

from __future__ import annotations

from collections.abc import Mapping

from corral.documents.model import Document
from corral.documents.parameters import check_value
from corral.documents.references import ReferenceResolver, refuse_parameter_store_references
from corral.errors import DocumentError


def resolve_parameters(
    doc: Document,
    given: Mapping[str, object],
    *,
    reference_resolver: ReferenceResolver = refuse_parameter_store_references,
) -> dict[str, object]:
    """Validate ``given`` against ``doc``, apply defaults, and return the typed values."""
    unknown = sorted(name for name in given if name not in doc.parameters)
    if unknown:
        takes = ", ".join(sorted(doc.parameters)) or "no parameters"
        raise DocumentError(
            f"unknown parameter {unknown[0]!r}; this document takes: {takes}",
            field=f"parameters.{unknown[0]}",
        )
    resolved: dict[str, object] = {}
    for name, spec in doc.parameters.items():
        field = f"parameters.{name}"
        if name in given:
            value = given[name]
        elif spec.has_default:
            value = spec.default
        else:
            raise DocumentError(f"parameter {name!r} is required", field=field)
        value = _resolve_references(value, field, reference_resolver)
        resolved[name] = check_value(spec, value, field, from_caller=name in given)
    return resolved


def _resolve_references(value: object, field: str, resolver: ReferenceResolver) -> object:
    if isinstance(value, str):
        return resolver(value, field)
    if isinstance(value, list):
        return [
            _resolve_references(item, f"{field}[{i}]", resolver) for i, item in enumerate(value)
        ]
    if isinstance(value, dict):
        return {
            key: _resolve_references(item, f"{field}.{key}", resolver)
            for key, item in value.items()
        }
    return value
