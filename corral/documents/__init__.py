"""Command documents: schema models, validation, parameter interpolation and built-ins.

The public surface is what this module re-exports; everything else is private.
"""

from corral.documents.builtin_documents import BUILTIN_DOCUMENTS
from corral.documents.model import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TIMEOUT_SECONDS,
    PLATFORM_TYPES,
    Document,
    StepTemplate,
)
from corral.documents.names import is_reserved_name, validate_document_name
from corral.documents.parameters import ParameterSpec, ParameterType
from corral.documents.parsing import (
    MAX_DOCUMENT_BYTES,
    SUPPORTED_ACTIONS,
    SUPPORTED_SCHEMA_VERSIONS,
    parse_document,
)
from corral.documents.references import ReferenceResolver, refuse_parameter_store_references
from corral.documents.rendering import RenderedCommand, render_command
from corral.documents.resolution import resolve_parameters

__all__ = [
    "BUILTIN_DOCUMENTS",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_DOCUMENT_BYTES",
    "MAX_TIMEOUT_SECONDS",
    "PLATFORM_TYPES",
    "SUPPORTED_ACTIONS",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Document",
    "ParameterSpec",
    "ParameterType",
    "ReferenceResolver",
    "RenderedCommand",
    "StepTemplate",
    "is_reserved_name",
    "parse_document",
    "refuse_parameter_store_references",
    "render_command",
    "resolve_parameters",
    "validate_document_name",
]
