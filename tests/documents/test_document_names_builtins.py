"""Document names, reserved prefixes, built-in documents and the public surface."""

from __future__ import annotations

import json

import pytest

import corral.documents
from corral.documents import (
    BUILTIN_DOCUMENTS,
    is_reserved_name,
    parse_document,
    render_command,
    resolve_parameters,
    validate_document_name,
)
from corral.errors import DocumentError
from corral.protocol import Step


@pytest.mark.parametrize("name", ["abc", "My.Doc_1-2", "a" * 128, "Corral-RunShellScript"])
def test_valid_names(name: str) -> None:
    validate_document_name(name)


@pytest.mark.parametrize("name", ["ab", "a" * 129, "has space", "slash/name", "ümlaut", ""])
def test_invalid_names(name: str) -> None:
    with pytest.raises(DocumentError) as info:
        validate_document_name(name)
    assert info.value.field == "name"


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        ("Corral-X", True),
        ("corral-x", True),
        ("AWS-RunShellScript", True),
        ("aws-thing", True),
        ("CorralX", False),
        ("MyAWS-doc", False),
    ],
)
def test_reserved_prefixes(name: str, reserved: bool) -> None:
    assert is_reserved_name(name) is reserved


@pytest.mark.parametrize("name", sorted(BUILTIN_DOCUMENTS))
def test_every_builtin_parses_and_is_reserved(name: str) -> None:
    validate_document_name(name)
    assert is_reserved_name(name)
    assert parse_document(BUILTIN_DOCUMENTS[name], "json").steps


def test_run_shell_script_builtin() -> None:
    doc = parse_document(BUILTIN_DOCUMENTS["Corral-RunShellScript"])
    summary = doc.parameters_summary()
    assert summary["commands"]["type"] == "StringList"
    assert "default" not in summary["commands"]
    assert summary["workingDirectory"]["default"] == ""
    assert summary["executionTimeout"]["default"] == "3600"
    with pytest.raises(DocumentError) as info:
        resolve_parameters(doc, {})
    assert info.value.field == "parameters.commands"
    rendered = render_command(
        doc, {"commands": ["cd /", "pwd"], "workingDirectory": "/var", "executionTimeout": "60"}
    )
    assert rendered.steps == [
        Step(
            name="runShellScript",
            script="cd /\npwd",
            working_directory="/var",
            timeout_seconds=60,
            on_failure="continue",
        )
    ]


@pytest.mark.parametrize(
    ("timeout", "ok"),
    [
        ("1", True),
        ("172800", True),
        ("99999", True),
        ("0", False),
        ("172801", False),
        ("1h", False),
    ],
)
def test_run_shell_script_timeout_pattern(timeout: str, ok: bool) -> None:
    doc = parse_document(BUILTIN_DOCUMENTS["Corral-RunShellScript"])
    given = {"commands": "true", "executionTimeout": timeout}
    if ok:
        assert resolve_parameters(doc, given)["executionTimeout"] == timeout
    else:
        with pytest.raises(DocumentError) as info:
            resolve_parameters(doc, given)
        assert info.value.field == "parameters.executionTimeout"


def test_builtins_are_json_objects() -> None:
    for content in BUILTIN_DOCUMENTS.values():
        assert isinstance(json.loads(content), dict)


def test_public_surface_is_pinned() -> None:
    assert corral.documents.__all__ == [
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
