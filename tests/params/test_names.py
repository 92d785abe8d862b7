"""Parameter Store rules (pure)."""

from __future__ import annotations

import pytest

from corral.errors import ValidationError
from corral.params.names import (
    HierarchyTooDeep,
    Selector,
    check_pattern,
    check_value,
    choose_tier,
    parent_of,
    parse_policies,
    parse_selector,
    validate_label,
    validate_name,
    validate_path,
)


@pytest.mark.parametrize(
    "name", ["MyParam", "/app/dev/db-url", "/a", "a.b_c-d", "/" + "/".join("x" * 15)]
)
def test_valid_names(name: str) -> None:
    assert validate_name(f"  {name} ") == name


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "required"),
        ("app/dev", "must start with '/'"),
        ("/app//dev", "empty path segment"),
        ("/app/dev/", "empty path segment"),
        ("/app/d ev", "only letters"),
        ("/app/dév", "only letters"),
        ("/aws/x", "reserved"),
        ("SSMparam", "reserved"),
        ("/" + "a" * 1011, "at most 1011"),
    ],
)
def test_invalid_names(name: str, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        validate_name(name)


def test_depth_limit_has_its_own_error() -> None:
    with pytest.raises(HierarchyTooDeep, match="16 levels"):
        validate_name("/" + "/".join("x" * 16))
    with pytest.raises(HierarchyTooDeep):
        validate_path("/" + "/".join("x" * 16))


def test_paths_parents_and_selectors() -> None:
    assert validate_path("/app/dev/") == "/app/dev"
    assert validate_path("/") == "/"
    assert parent_of("/app/dev/db") == "/app/dev"
    assert parent_of("/db") == "/"
    assert parent_of("db") == "/"
    assert parse_selector("/a/b") == Selector("/a/b")
    assert parse_selector("/a/b:3") == Selector("/a/b", version=3)
    assert parse_selector("/a/b:prod") == Selector("/a/b", label="prod")
    assert str(parse_selector("/a/b:prod")) == "/a/b:prod"
    with pytest.raises(ValidationError):
        parse_selector("/a/b:9bad")


@pytest.mark.parametrize(
    ("label", "ok"),
    [
        ("prod", True),
        ("v1.2-rc_3", True),
        ("1st", False),
        ("awsx", False),
        ("a/b", False),
        ("x" * 101, False),
    ],
)
def test_labels(label: str, ok: bool) -> None:
    if ok:
        assert validate_label(label) == label
    else:
        with pytest.raises(ValidationError):
            validate_label(label)


def test_values_sizes_and_patterns_never_echo_the_value() -> None:
    check_value("x" * 4096, "String", None, "Standard")
    with pytest.raises(
        ValidationError, match="4097 bytes; the Standard tier allows at most 4096"
    ) as caught:
        check_value("s3cr3t" + "x" * 4091, "SecureString", None, "Standard")
    assert "s3cr3t" not in caught.value.message
    check_value("x" * 8192, "String", None, "Advanced")
    with pytest.raises(ValidationError, match="8193 bytes"):
        check_value("x" * 8193, "String", None, "Advanced")
    with pytest.raises(ValidationError, match="cannot be empty"):
        check_value("", "String", None, "Standard")
    digits = check_pattern(r"\d+")
    check_value("123", "String", digits, "Standard")
    with pytest.raises(ValidationError, match="does not match the allowed pattern") as caught:
        check_value("12a-secret", "SecureString", digits, "Standard")
    assert "12a-secret" not in caught.value.message
    check_value("1,2,3", "StringList", digits, "Standard")
    with pytest.raises(ValidationError, match="an item of the value"):
        check_value("1,x", "StringList", digits, "Standard")
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        check_pattern("(")


def test_tiers_and_policies() -> None:
    assert choose_tier(None, "x", False, None) == "Standard"
    assert choose_tier("Intelligent-Tiering", "x" * 5000, False, None) == "Advanced"
    assert choose_tier("Intelligent-Tiering", "x", True, None) == "Advanced"
    with pytest.raises(ValidationError, match="cannot move back"):
        choose_tier("Standard", "x", False, "Advanced")
    with pytest.raises(ValidationError, match="need the Advanced tier"):
        choose_tier("Standard", "x", True, None)
    policies = parse_policies(
        '[{"Type":"Expiration","Version":"1.0","Attributes":{"Timestamp":"2030-01-01T00:00:00Z"}},'
        '{"Type":"ExpirationNotification","Attributes":{"Before":"2","Unit":"Days"}},'
        '{"Type":"NoChangeNotification","Attributes":{"After":"3","Unit":"Hours"}}]'
    )
    assert policies.expires_at == 1893456000.0
    assert (policies.notify_before_seconds, policies.no_change_seconds) == (172800.0, 10800.0)
    for bad in (
        "nope",
        '[{"Type":"Other","Attributes":{}}]',
        '[{"Type":"ExpirationNotification","Attributes":{"Before":"1","Unit":"Days"}}]',
        '[{"Type":"NoChangeNotification","Attributes":{"After":"0","Unit":"Days"}}]',
    ):
        with pytest.raises(ValidationError):
            parse_policies(bad)
