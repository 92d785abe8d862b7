"""Pure parsing of CLI values, table-driven."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.cli.values import (
    DocumentRef,
    extract_global_options,
    extract_output_option,
    load_parameters_file,
    merge_parameters,
    parse_document_ref,
    parse_duration,
    parse_key_values,
    parse_listen,
    parse_params,
    parse_rate,
    validate_targets,
)
from corral.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("24h", 86400),
        ("7d", 604800),
        ("45", 45),
        ("0.5", 0.5),
        ("2H", 7200),
        (" 10s ", 10),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-5", "1h30m", "m", "s10"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["a=b"], {"a": "b"}),
        (["cmd=x=y"], {"cmd": "x=y"}),  # split on the first '='
        (["a="], {"a": ""}),
        (["n=5"], {"n": 5}),
        (["n=-3"], {"n": -3}),
        (["n=007"], {"n": "007"}),  # leading zeros stay a string
        (["f=true", "g=false", "h=True"], {"f": True, "g": False, "h": True}),
        (["s=yes"], {"s": "yes"}),
        (["c=echo a", "c=echo b"], {"c": ["echo a", "echo b"]}),  # repeats build a list
        (["c=a,b"], {"c": "a,b"}),  # no comma splitting
        (["c=1", "c=x"], {"c": [1, "x"]}),
        ([], {}),
    ],
)
def test_params(items: list[str], expected: dict[str, Any]) -> None:
    assert parse_params(items) == expected


@pytest.mark.parametrize("item", ["novalue", "=x", ""])
def test_bad_params(item: str) -> None:
    with pytest.raises(ValidationError):
        parse_params([item])


def test_parameters_merge_order(tmp_path: Path) -> None:
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("commands:\n  - echo file\nlevel: 1\nother: kept\n")
    from_file = load_parameters_file(yaml_file)
    merged = merge_parameters(from_file, {"level": 2}, parse_params(["commands=echo cli"]))
    assert merged == {"commands": "echo cli", "level": 2, "other": "kept"}
    json_file = tmp_path / "p.json"
    json_file.write_text('{"x": [1, 2]}')
    assert load_parameters_file(json_file) == {"x": [1, 2]}


def test_parameters_file_must_be_object(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValidationError):
        load_parameters_file(bad)
    with pytest.raises(ValidationError):
        load_parameters_file(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["mi-0123456789abcdef0"], ["mi-0123456789abcdef0"]),
        (
            ["mi-0123456789abcdef0", "mi-0123456789abcdef1"],
            ["mi-0123456789abcdef0", "mi-0123456789abcdef1"],
        ),
        (["tag:env=prod,dev"], ["tag:env=prod,dev"]),
        (["tag:env=prod", "tag:role=web"], ["tag:env=prod", "tag:role=web"]),
        (["all"], ["all"]),
    ],
)
def test_targets(specs: list[str], expected: list[str]) -> None:
    assert validate_targets(specs) == expected


@pytest.mark.parametrize(
    "specs",
    [
        [],
        ["web-1"],
        ["mi-123"],
        ["tag:env"],
        ["tag:=x"],
        ["tag:env=a,,b"],
        ["mi-0123456789abcdef0", "tag:env=prod"],
        ["all", "tag:env=prod"],
    ],
)
def test_bad_targets(specs: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        validate_targets(specs)
    assert info.value.field == "targets"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("MyDoc", DocumentRef("MyDoc", None)),
        ("MyDoc:3", DocumentRef("MyDoc", 3)),
        ("MyDoc:latest", DocumentRef("MyDoc", "$LATEST")),
        ("MyDoc:$LATEST", DocumentRef("MyDoc", "$LATEST")),
        ("MyDoc:$DEFAULT", DocumentRef("MyDoc", "$DEFAULT")),
        ("Corral-RunShellScript", DocumentRef("Corral-RunShellScript", None)),
    ],
)
def test_document_refs(ref: str, expected: DocumentRef) -> None:
    assert parse_document_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", ":3", "Doc:0", "Doc:x", "Doc:-1"])
def test_bad_document_refs(ref: str) -> None:
    with pytest.raises(ValidationError):
        parse_document_ref(ref)


@pytest.mark.parametrize(
    ("argv", "rest", "fmt"),
    [
        (["nodes", "list"], ["nodes", "list"], None),
        (["-o", "json", "nodes", "list"], ["nodes", "list"], "json"),
        (["nodes", "list", "-o", "json"], ["nodes", "list"], "json"),
        (["nodes", "-o", "json", "list"], ["nodes", "list"], "json"),
        (["nodes", "list", "--output", "json"], ["nodes", "list"], "json"),
        (["nodes", "list", "--output=json"], ["nodes", "list"], "json"),
        (["nodes", "list", "-ojson"], ["nodes", "list"], "json"),
        (["run", "D", "--comment", "-o", "x"], ["run", "D", "--comment", "-o", "x"], None),
        (["run", "D", "--", "-o", "json"], ["run", "D", "--", "-o", "json"], None),
    ],
)
def test_output_option_anywhere(argv: list[str], rest: list[str], fmt: str | None) -> None:
    assert extract_output_option(argv) == (rest, fmt)


@pytest.mark.parametrize(
    ("argv", "rest", "lifted"),
    [
        (["nodes", "list", "--server", "u"], ["nodes", "list"], ["--server", "u"]),
        (["--token=t", "doc", "list"], ["doc", "list"], ["--token=t"]),
        (
            ["run", "D", "--ca-file", "ca.pem", "-t", "all"],
            ["run", "D", "-t", "all"],
            ["--ca-file", "ca.pem"],
        ),
        (["run", "--", "--server", "x"], ["run", "--", "--server", "x"], []),
    ],
)
def test_global_options_anywhere(argv: list[str], rest: list[str], lifted: list[str]) -> None:
    assert extract_global_options(argv) == (rest, lifted)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("50", True),
        ("10%", True),
        ("100%", True),
        ("101%", False),
        ("x", False),
        ("-1", False),
        ("5.5", False),
    ],
)
def test_rates(text: str, ok: bool) -> None:
    if ok:
        assert parse_rate(text, "max_errors") == text
    else:
        with pytest.raises(ValidationError):
            parse_rate(text, "max_errors")


def test_key_values_and_listen() -> None:
    assert parse_key_values(["env=prod", "a=b=c"], "tag") == {"env": "prod", "a": "b=c"}
    with pytest.raises(ValidationError):
        parse_key_values(["env"], "tag")
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":80") == ("0.0.0.0", 80)
    for bad in ("localhost", "h:0", "h:x", "h:70000"):
        with pytest.raises(ValidationError):
            parse_listen(bad)
