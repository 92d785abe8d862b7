"""Parameter values given by a caller: types, defaults and constraints."""

from __future__ import annotations

import pytest

from corral.documents import parse_document, resolve_parameters
from corral.errors import DocumentError
from tests.documents.conftest import doc22

DOC = parse_document(
    doc22(
        {
            "text": {"type": "String", "default": "d", "minChars": 1, "maxChars": 5},
            "color": {"type": "String", "default": "red", "allowedValues": ["red", "blue"]},
            "ver": {"type": "String", "default": "1.0", "allowedPattern": "[0-9]+\\.[0-9]+"},
            "lines": {"type": "StringList", "default": ["a"], "maxItems": 2, "maxChars": 3},
            "count": {"type": "Integer", "default": 1, "allowedValues": [1, 2, "3"]},
            "flag": {"type": "Boolean", "default": False},
            "env": {"type": "StringMap", "default": {}},
            "items": {"type": "MapList", "default": [], "minItems": 0, "maxItems": 1},
        }
    )
)
REQUIRED = parse_document(doc22({"must": {"type": "String"}}))
DEFAULTS = {
    "text": "d",
    "color": "red",
    "ver": "1.0",
    "lines": ["a"],
    "count": 1,
    "flag": False,
    "env": {},
    "items": [],
}

ACCEPTED = [
    # (given, the resolved values that differ from the defaults)
    ({}, {}),
    ({"text": "hello"}, {"text": "hello"}),
    ({"color": "blue"}, {"color": "blue"}),
    ({"ver": "12.3"}, {"ver": "12.3"}),
    ({"lines": "one"}, {"lines": ["one"]}),
    ({"lines": ["x", "y"]}, {"lines": ["x", "y"]}),
    ({"count": "2"}, {"count": 2}),
    ({"count": 3}, {"count": 3}),
    ({"text": 12345}, {"text": "12345"}),  # the CLI sends --param text=12345 as a number
    ({"text": True}, {"text": "true"}),
    ({"lines": 7}, {"lines": ["7"]}),
    ({"lines": ["a", 1]}, {"lines": ["a", "1"]}),
    ({"count": " 3 "}, {"count": 3}),
    ({"flag": True}, {"flag": True}),
    ({"flag": "true"}, {"flag": True}),
    ({"flag": "false"}, {"flag": False}),
    ({"env": {"A": "1"}}, {"env": {"A": "1"}}),
    ({"items": [{"k": 1}]}, {"items": [{"k": 1}]}),
]


@pytest.mark.parametrize(("given", "changed"), ACCEPTED)
def test_accepted_values_are_typed_and_defaulted(
    given: dict[str, object], changed: dict[str, object]
) -> None:
    assert resolve_parameters(DOC, given) == {**DEFAULTS, **changed}


REFUSED = [
    # (given, field, part of the message)
    ({"nope": "x"}, "parameters.nope", "unknown parameter 'nope'"),
    ({"text": ""}, "parameters.text", "at least 1"),
    ({"text": "toolong"}, "parameters.text", "at most 5"),
    ({"text": 1.5}, "parameters.text", "string"),
    ({"text": None}, "parameters.text", "string"),
    ({"color": "green"}, "parameters.color", "one of red, blue"),
    ({"ver": "1.0beta"}, "parameters.ver", "allowedPattern"),  # full match, not search
    ({"ver": "x1.0"}, "parameters.ver", "allowedPattern"),
    ({"lines": ["a", "b", "c"]}, "parameters.lines", "at most 2 items"),
    ({"lines": ["a", "b", "long"][1:]}, "parameters.lines[1]", "at most 3"),
    ({"lines": ["a", 2.5]}, "parameters.lines[1]", "string"),
    ({"lines": {"a": "b"}}, "parameters.lines", "list"),
    ({"count": "2.5"}, "parameters.count", "integer"),
    ({"count": True}, "parameters.count", "integer"),
    ({"count": 4}, "parameters.count", "one of"),
    ({"flag": "yes"}, "parameters.flag", "boolean"),
    ({"flag": 1}, "parameters.flag", "boolean"),
    ({"env": {"A": 1}}, "parameters.env", "string"),
    ({"env": ["A=1"]}, "parameters.env", "object"),
    ({"items": [{}, {}]}, "parameters.items", "at most 1 items"),
    ({"items": ["x"]}, "parameters.items[0]", "object"),
    ({"text": "{{ssm:/a}}"}, "parameters.text", "Parameter Store references are not available"),
    ({"lines": ["ok", "{{ssm-secure:/s}}"]}, "parameters.lines[1]", "not available yet"),
]


@pytest.mark.parametrize(("given", "field", "message"), REFUSED)
def test_refused_values_name_the_parameter(
    given: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(DocumentError) as info:
        resolve_parameters(DOC, given)
    assert info.value.field == field, info.value.message
    assert message in info.value.message


def test_required_parameter_missing_is_refused() -> None:
    with pytest.raises(DocumentError) as info:
        resolve_parameters(REQUIRED, {})
    assert info.value.field == "parameters.must"
    assert "required" in info.value.message
    assert resolve_parameters(REQUIRED, {"must": ""}) == {"must": ""}


def test_error_messages_do_not_repeat_the_value() -> None:
    with pytest.raises(DocumentError) as info:
        resolve_parameters(DOC, {"ver": "s3cr3t-value"})
    assert "s3cr3t-value" not in info.value.message


def test_parameter_store_default_goes_through_the_hook() -> None:
    doc = parse_document(doc22({"p": {"type": "String", "default": "{{ ssm:/app/x }}"}}))
    with pytest.raises(DocumentError) as info:
        resolve_parameters(doc, {})
    assert info.value.field == "parameters.p"
    assert resolve_parameters(doc, {"p": "given"}) == {"p": "given"}

    seen: list[tuple[str, str]] = []

    def resolver(value: str, field: str) -> str:
        seen.append((value, field))
        return value.replace("{{ ssm:/app/x }}", "resolved")

    assert resolve_parameters(doc, {}, reference_resolver=resolver) == {"p": "resolved"}
    assert seen == [("{{ ssm:/app/x }}", "parameters.p")]
