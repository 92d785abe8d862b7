"""Pure logic: targets, rate control, error paths and timestamps."""

from __future__ import annotations

import pytest

from corral.errors import ValidationError
from corral.server.api.commands import utf8_boundary
from corral.server.api.common import iso
from corral.server.errors import field_path
from corral.server.ratecontrol import (
    concurrency_limit,
    error_limit,
    errors_exceeded,
    sendable,
    validate_limit,
)
from corral.server.targets import TargetSpec, parse_targets, select_nodes

A = "mi-0000000000000000a"
B = "mi-0000000000000000b"
C = "mi-0000000000000000c"
NODES = [
    (A, {"env": "prod", "role": "web"}),
    (B, {"env": "dev", "role": "web"}),
    (C, {"env": "prod", "role": "db"}),
]


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["all"], [A, B, C]),
        ([A], [A]),
        ([C, A, A], [A, C]),
        (["tag:role=web"], [A, B]),
        (["tag:env=prod,dev"], [A, B, C]),
        (["tag:env=prod", "tag:role=web"], [A]),
        (["tag:env=prod", "tag:role=web,db"], [A, C]),
        (["tag:env=staging"], []),
        (["mi-0000000000000000f"], []),
    ],
)
def test_targets_select(specs: list[str], expected: list[str]) -> None:
    assert select_nodes(parse_targets(specs), NODES) == expected


@pytest.mark.parametrize(
    ("specs", "field"),
    [
        ([], "targets"),
        (["mi-123"], "targets[0]"),
        (["all", "bogus"], "targets[1]"),
        (["tag:env"], "targets[0]"),
        (["tag:=x"], "targets[0]"),
        (["tag:env="], "targets[0]"),
        ([A, "tag:env=prod"], "targets"),
        (["all", A], "targets"),
    ],
)
def test_targets_refused(specs: list[str], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_targets(specs)
    assert error.value.field == field


def test_target_spec_kinds() -> None:
    assert parse_targets(["all"]) == TargetSpec(all_nodes=True)
    assert parse_targets(["tag:k=a", "tag:k=b"]).tags == {"k": frozenset({"a", "b"})}


@pytest.mark.parametrize(
    ("spec", "targets", "concurrency", "errors"),
    [
        ("50", 1000, 50, 50),
        ("0", 10, 1, 0),
        ("10%", 1000, 100, 100),
        ("10%", 5, 1, 0),
        ("100%", 7, 7, 7),
        ("1%", 50, 1, 0),
        ("25%", 8, 2, 2),
    ],
)
def test_limits(spec: str, targets: int, concurrency: int, errors: int) -> None:
    assert concurrency_limit(spec, targets) == concurrency
    assert error_limit(spec, targets) == errors


@pytest.mark.parametrize("spec", ["", "-1", "1.5", "abc", "101%", "%", "5 %"])
def test_invalid_limits(spec: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_limit(spec, "max_errors")
    assert error.value.field == "max_errors"


@pytest.mark.parametrize(
    ("errors", "limit", "exceeded"),
    [(0, 0, False), (1, 0, True), (5, 5, False), (6, 5, True)],
)
def test_max_errors_threshold(errors: int, limit: int, exceeded: bool) -> None:
    assert errors_exceeded(errors, limit) is exceeded


@pytest.mark.parametrize(
    ("in_flight", "limit", "queued", "expected"),
    [(0, 50, 1000, 50), (49, 50, 1000, 1), (50, 50, 10, 0), (0, 50, 3, 3), (60, 50, 3, 0)],
)
def test_sendable(in_flight: int, limit: int, queued: int, expected: int) -> None:
    assert sendable(in_flight, limit, queued) == expected


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("body", "targets", 0), "targets[0]"),
        (("body", "tags", "env"), "tags.env"),
        (("query", "limit"), "limit"),
        (("body",), None),
    ],
)
def test_field_path(loc: tuple[object, ...], path: str | None) -> None:
    assert field_path(loc) == path


def test_iso_timestamps() -> None:
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_796_000_000.1234) == "2026-11-30T00:53:20.123Z"
    assert iso(None) is None


@pytest.mark.parametrize(
    ("data", "length"),
    [
        (b"", 0),
        (b"abc", 3),
        ("é".encode(), 2),
        ("é".encode()[:1], 0),
        (b"a" + "€".encode()[:2], 1),
        (b"a" + "€".encode(), 4),
        (b"ab" + "😀".encode()[:3], 2),
        (b"ab" + "😀".encode(), 6),
        (b"\x80\x80", 2),
    ],
)
def test_utf8_boundary(data: bytes, length: int) -> None:
    assert utf8_boundary(data) == length
