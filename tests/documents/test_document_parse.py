"""Documents are validated completely when created: each rule accepted and refused."""

from __future__ import annotations

import json

import pytest

from corral.documents import MAX_DOCUMENT_BYTES, parse_document
from corral.errors import DocumentError
from tests.documents.conftest import doc22, shell_step

GOOD_YAML = """
schemaVersion: '2.2'
description: Say hello
parameters:
  message:
    type: String
    default: hi
mainSteps:
  - action: aws:runShellScript
    name: say
    inputs:
      runCommand:
        - echo {{ message }}
"""


def test_yaml_and_json_give_the_same_document() -> None:
    from_yaml = parse_document(GOOD_YAML)
    import yaml

    from_json = parse_document(json.dumps(yaml.safe_load(GOOD_YAML)), "json")
    assert from_yaml == from_json
    assert from_yaml.schema_version == "2.2"
    assert from_yaml.document_type == "Command"
    assert from_yaml.description == "Say hello"
    assert from_yaml.parameters_summary() == {
        "message": {"type": "String", "description": "", "default": "hi"}
    }


def test_unquoted_yaml_schema_version_is_accepted() -> None:
    assert parse_document(GOOD_YAML.replace("'2.2'", "2.2")).schema_version == "2.2"


def test_summary_lists_constraints_with_ssm_names() -> None:
    doc = parse_document(
        doc22(
            {
                "names": {
                    "type": "StringList",
                    "description": "who",
                    "allowedValues": ["a", "b"],
                    "minItems": 1,
                    "maxItems": 2,
                    "displayType": "textarea",
                },
                "n": {"type": "Integer", "description": "count"},
            }
        )
    )
    assert doc.parameters_summary() == {
        "names": {
            "type": "StringList",
            "description": "who",
            "allowedValues": ["a", "b"],
            "minItems": 1,
            "maxItems": 2,
            "displayType": "textarea",
        },
        "n": {"type": "Integer", "description": "count"},
    }


SPEC = {"type": "String"}
REFUSED = [
    # (document text, field, part of the message)
    ("{", "content", "invalid JSON at line 1"),
    ("a: [1, 2", "content", "invalid YAML at line"),
    ("- 1\n- 2\n", None, "object"),
    (json.dumps({"description": "x", "mainSteps": []}), "schemaVersion", "required"),
    (json.dumps({"schemaVersion": "0.3", "mainSteps": []}), "schemaVersion", "2.2 or 1.2"),
    (json.dumps({"schemaVersion": "2.2", "parameters": {}}), "mainSteps", "required"),
    (json.dumps({"schemaVersion": "2.2", "mainSteps": []}), "mainSteps", "non-empty"),
    (doc22().replace('"test"', "5"), "description", "string"),
    (
        json.dumps({"schemaVersion": "2.2", "outputs": [], "mainSteps": [shell_step()]}),
        "outputs",
        "unknown field",
    ),
    (doc22(None, {"action": "aws:runShellScript", "inputs": {}}), "mainSteps[0].name", "required"),
    (doc22(None, {"name": "x", "inputs": {}}), "mainSteps[0].action", "required"),
    (doc22(None, shell_step("bad name!")), "mainSteps[0].name", "step names"),
    (doc22(None, shell_step("a"), shell_step("a")), "mainSteps[1].name", "duplicate step name"),
    (
        doc22(None, {**shell_step(), "action": "aws:runPowerShellScript"}),
        "mainSteps[0].action",
        "supported actions: aws:runShellScript",
    ),
    (doc22(None, {**shell_step(), "retries": 2}), "mainSteps[0].retries", "unknown field"),
    (doc22(None, {**shell_step(), "maxAttempts": 3}), "mainSteps[0].maxAttempts", "maxAttempts"),
    (doc22(None, {**shell_step(), "onFailure": "Abort"}), "mainSteps[0].onFailure", '"exit"'),
    (doc22(None, {**shell_step(), "timeoutSeconds": 0}), "mainSteps[0].timeoutSeconds", "1 to"),
    (
        doc22(None, {**shell_step(), "precondition": {"StringEquals": ["platformType", "BeOS"]}}),
        "mainSteps[0].precondition",
        "platformType",
    ),
    (
        doc22(None, {**shell_step(), "precondition": {"StringLike": ["platformType", "Linux"]}}),
        "mainSteps[0].precondition",
        "StringEquals",
    ),
    (
        doc22(None, {"action": "aws:runShellScript", "name": "s", "inputs": {}}),
        "mainSteps[0].inputs.runCommand",
        "required",
    ),
    (doc22(None, shell_step(runCommand=[])), "mainSteps[0].inputs.runCommand", "non-empty"),
    (doc22(None, shell_step(runCommand=[1])), "mainSteps[0].inputs.runCommand", "string"),
    (doc22(None, shell_step(script="x")), "mainSteps[0].inputs.script", "unknown input"),
    (doc22(None, shell_step(workingDirectory=5)), "mainSteps[0].inputs.workingDirectory", "string"),
    (doc22(None, shell_step(timeoutSeconds="soon")), "mainSteps[0].inputs.timeoutSeconds", "1 to"),
    (
        doc22(None, shell_step(timeoutSeconds=172801)),
        "mainSteps[0].inputs.timeoutSeconds",
        "172800",
    ),
    (
        doc22(None, shell_step(environment={"BAD-NAME": "x"})),
        "mainSteps[0].inputs.environment.BAD-NAME",
        "variable name",
    ),
    (
        doc22(None, shell_step(environment={"A": 1})),
        "mainSteps[0].inputs.environment.A",
        "string",
    ),
    (
        doc22(None, shell_step(runCommand=["echo {{ nope }}"])),
        "mainSteps[0].inputs.runCommand",
        "not declared",
    ),
    (
        doc22(None, shell_step(runCommand=["true", "echo {{nope}}"])),
        "mainSteps[0].inputs.runCommand",
        "(line 2)",
    ),
    (
        doc22(None, shell_step(workingDirectory="{{ dir }}")),
        "mainSteps[0].inputs.workingDirectory",
        "not declared",
    ),
    (
        doc22(None, shell_step(environment={"A": "{{ a }}"})),
        "mainSteps[0].inputs.environment.A",
        "not declared",
    ),
    (
        doc22(None, shell_step(runCommand=["echo {{ two words }}"])),
        "mainSteps[0].inputs.runCommand",
        "malformed reference",
    ),
    (
        doc22(None, shell_step(runCommand=["echo {{ssm:/db/password}}"])),
        "mainSteps[0].inputs.runCommand",
        "Parameter Store references are not available yet",
    ),
    (
        doc22({"l": {"type": "StringList"}}, shell_step(runCommand=["echo {{ l }}"])),
        "mainSteps[0].inputs.runCommand",
        "whole runCommand line",
    ),
    (
        doc22({"m": {"type": "StringMap"}}, shell_step(runCommand=["{{ m }}"])),
        "mainSteps[0].inputs.runCommand",
        "StringMap parameter",
    ),
    (
        doc22({"s": SPEC}, shell_step(environment="{{ s }}")),
        "mainSteps[0].inputs.environment",
        "String parameter",
    ),
    (
        doc22(None, shell_step(environment="A=1")),
        "mainSteps[0].inputs.environment",
        "StringMap",
    ),
    # parameter definitions
    (doc22({"p": {}}), "parameters.p.type", "required"),
    (doc22({"p": "String"}), "parameters.p", "object"),
    (doc22({"p": {"type": "Float"}}), "parameters.p.type", "String"),
    (doc22({"p": {**SPEC, "color": "red"}}), "parameters.p.color", "unknown field"),
    (doc22({"bad-name": SPEC}), "parameters.bad-name", "parameter names"),
    (doc22({"p": {**SPEC, "minChars": -1}}), "parameters.p.minChars", "greater than or equal"),
    (doc22({"p": {**SPEC, "minChars": "2"}}), "parameters.p.minChars", "integer"),
    (doc22({"p": {**SPEC, "minChars": 5, "maxChars": 2}}), "parameters.p.minChars", "greater"),
    (doc22({"p": {**SPEC, "minItems": 1}}), "parameters.p.minItems", "applies only to"),
    (
        doc22({"p": {"type": "Integer", "allowedPattern": "x"}}),
        "parameters.p.allowedPattern",
        "applies only to",
    ),
    (
        doc22({"p": {"type": "StringList", "interpolationType": "ENV_VAR"}}),
        "parameters.p.interpolationType",
        "applies only to String",
    ),
    (doc22({"p": {**SPEC, "interpolationType": "SHELL"}}), "parameters.p.interpolationType", ""),
    (
        doc22({"p": {**SPEC, "allowedPattern": "([a-z"}}),
        "parameters.p.allowedPattern",
        "not a valid regular expression",
    ),
    (
        doc22({"p": {**SPEC, "allowedValues": ["a", 3]}}),
        "parameters.p.allowedValues[1]",
        "string",
    ),
    (
        doc22({"p": {"type": "Integer", "allowedValues": [1, "x"]}}),
        "parameters.p.allowedValues[1]",
        "integer",
    ),
    # defaults must satisfy their own parameter
    (doc22({"p": {**SPEC, "default": 5}}), "parameters.p.default", "string"),
    (doc22({"p": {**SPEC, "default": None}}), "parameters.p.default", "string"),
    (
        doc22({"p": {**SPEC, "default": "abc", "allowedPattern": "[0-9]+"}}),
        "parameters.p.default",
        "allowedPattern",
    ),
    (
        doc22({"p": {**SPEC, "default": "c", "allowedValues": ["a", "b"]}}),
        "parameters.p.default",
        "one of a, b",
    ),
    (doc22({"p": {**SPEC, "default": "", "minChars": 1}}), "parameters.p.default", "at least 1"),
    (
        doc22({"p": {"type": "StringList", "default": ["ok", "toolong"], "maxChars": 3}}),
        "parameters.p.default[1]",
        "at most 3",
    ),
    (
        doc22({"p": {"type": "StringList", "default": [], "minItems": 1}}),
        "parameters.p.default",
        "at least 1 items",
    ),
    (doc22({"p": {"type": "Integer", "default": "ten"}}), "parameters.p.default", "integer"),
    (doc22({"p": {"type": "Boolean", "default": "yes"}}), "parameters.p.default", "boolean"),
    (doc22({"p": {"type": "StringMap", "default": {"a": 1}}}), "parameters.p.default", "string"),
    (doc22({"p": {"type": "MapList", "default": [1]}}), "parameters.p.default[0]", "object"),
    (
        doc22({"p": {"type": "Integer", "default": "{{ssm:/count}}"}}),
        "parameters.p.default",
        "String or StringList",
    ),
    (
        doc22({"p": {**SPEC, "default": "{{ssm:bad path}}"}}),
        "parameters.p.default",
        "malformed Parameter Store reference",
    ),
    ("a: b: c", "content", "invalid YAML at line 1"),
    ("\t- x", "content", "invalid YAML"),
    # schema 1.2
    (json.dumps({"schemaVersion": "1.2"}), "runtimeConfig", "required"),
    (json.dumps({"schemaVersion": "1.2", "runtimeConfig": {}}), "runtimeConfig", "non-empty"),
    (
        json.dumps({"schemaVersion": "1.2", "runtimeConfig": {"aws:runShellScript": {}}}),
        "runtimeConfig.aws:runShellScript",
        "only properties",
    ),
    (
        json.dumps(
            {"schemaVersion": "1.2", "runtimeConfig": {"aws:runShellScript": {"properties": []}}}
        ),
        "runtimeConfig.aws:runShellScript.properties",
        "non-empty",
    ),
    (
        json.dumps(
            {"schemaVersion": "1.2", "runtimeConfig": {"aws:runShellScript": {"properties": [1]}}}
        ),
        "runtimeConfig.aws:runShellScript.properties[0]",
        "object",
    ),
    (
        json.dumps(
            {
                "schemaVersion": "1.2",
                "runtimeConfig": {
                    "aws:runShellScript": {"properties": [{"id": 5, "runCommand": "x"}]}
                },
            }
        ),
        "runtimeConfig.aws:runShellScript.properties[0].id",
        "non-empty string",
    ),
    (doc22(None, shell_step(environment=["A=1"])), "mainSteps[0].inputs.environment", "object"),
    (doc22(None, {**shell_step(), "inputs": []}), "mainSteps[0].inputs", "object"),
    (doc22(None, "step"), "mainSteps[0]", "step object"),
    (
        json.dumps(
            {"schemaVersion": "1.2", "runtimeConfig": {"aws:runScript": {"properties": []}}}
        ),
        "runtimeConfig.aws:runScript",
        "supported actions",
    ),
    (
        json.dumps({"schemaVersion": "1.2", "mainSteps": [shell_step()]}),
        "mainSteps",
        "unknown field for schemaVersion 1.2",
    ),
    (
        json.dumps(
            {
                "schemaVersion": "1.2",
                "runtimeConfig": {"aws:runShellScript": {"properties": [{"id": "0.x"}]}},
            }
        ),
        "runtimeConfig.aws:runShellScript.properties[0].runCommand",
        "required",
    ),
    (
        json.dumps(
            {
                "schemaVersion": "1.2",
                "runtimeConfig": {
                    "aws:runShellScript": {
                        "properties": [
                            {"id": "a", "runCommand": ["true"]},
                            {"id": "a", "runCommand": ["true"]},
                        ]
                    }
                },
            }
        ),
        "runtimeConfig.aws:runShellScript.properties[1].id",
        "duplicate step name",
    ),
]


@pytest.mark.parametrize(("content", "field", "message"), REFUSED)
def test_refused_documents_name_the_field(content: str, field: str | None, message: str) -> None:
    with pytest.raises(DocumentError) as info:
        parse_document(content)
    assert info.value.field == field, info.value.message
    assert message in info.value.message


ACCEPTED = [
    doc22({"p": {**SPEC, "default": "{{ssm:/app/greeting}}"}}),
    doc22({"p": {"type": "StringList", "default": ["{{ssm-secure:/app/list}}"]}}),
    doc22({"p": {"type": "Integer", "default": "7", "allowedValues": ["7", 8]}}),
    doc22({"p": {"type": "Boolean", "default": False}}),
    doc22({"p": {"type": "StringMap", "default": {"A": "1"}}}),
    doc22({"p": {"type": "MapList", "default": [{"a": [1]}], "maxItems": 1}}),
    doc22({"p": {**SPEC, "interpolationType": "ENV_VAR", "allowedPattern": '^[^"]*$'}}),
    doc22(None, {**shell_step(), "onFailure": "exit", "timeoutSeconds": 10}),
    doc22(None, shell_step(runCommand="echo one string", timeoutSeconds="60")),
    doc22({"m": {"type": "StringMap"}}, shell_step(environment="{{ m }}")),
    doc22({"n": {"type": "Integer"}}, shell_step(timeoutSeconds="{{ n }}")),
    doc22(None, shell_step(runCommand=["echo '{ not a reference }'"])),
]


@pytest.mark.parametrize("content", ACCEPTED)
def test_accepted_documents(content: str) -> None:
    assert parse_document(content).steps


def test_size_limit_is_enforced_and_configurable() -> None:
    padding = "x" * MAX_DOCUMENT_BYTES
    with pytest.raises(DocumentError) as info:
        parse_document(doc22().replace('"test"', json.dumps(padding)))
    assert info.value.field == "content"
    assert "limit" in info.value.message
    small = doc22()
    with pytest.raises(DocumentError):
        parse_document(small, max_bytes=len(small) - 1)
    assert parse_document(small, max_bytes=len(small)).steps


def test_format_is_checked() -> None:
    with pytest.raises(DocumentError) as info:
        parse_document(doc22(), "xml")
    assert info.value.field == "format"
    with pytest.raises(DocumentError) as info:
        parse_document(GOOD_YAML, "json")
    assert info.value.field == "content"
    assert "invalid JSON" in info.value.message


def test_schema_12_steps_without_id_are_numbered() -> None:
    content = json.dumps(
        {
            "schemaVersion": "1.2",
            "runtimeConfig": {
                "aws:runShellScript": {"properties": [{"runCommand": "a"}, {"runCommand": "b"}]}
            },
        }
    )
    names = [step.name for step in parse_document(content).steps]
    assert names == ["0.aws:runShellScript", "1.aws:runShellScript"]


def test_schema_12_is_read_into_the_same_step_form() -> None:
    content = json.dumps(
        {
            "schemaVersion": "1.2",
            "description": "old style",
            "parameters": {"commands": {"type": "StringList"}},
            "runtimeConfig": {
                "aws:runShellScript": {
                    "properties": [
                        {
                            "id": "0.aws:runShellScript",
                            "runCommand": "{{ commands }}",
                            "workingDirectory": "/tmp",
                            "timeoutSeconds": "120",
                        }
                    ]
                }
            },
        }
    )
    doc = parse_document(content)
    assert doc.schema_version == "1.2"
    (step,) = doc.steps
    assert step.name == "0.aws:runShellScript"
    assert step.run_command == ("{{ commands }}",)
    assert step.working_directory == "/tmp"
    assert step.timeout == 120
    assert step.platform is None
