"""Parameter Store rules (pure): names, paths, selectors, labels, values, tiers, policies.

They follow Systems Manager's: names are case-sensitive paths of `a-zA-Z0-9_.-`
segments separated by `/` (a hierarchical name starts with `/`), at most 15
levels and 1011 characters, never starting with `aws` or `ssm`; values are at most
4 KB (Standard tier) or 8 KB (Advanced); a version has at most 10 labels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from corral.errors import ValidationError

MAX_NAME_CHARS = 1011
MAX_DEPTH = 15
MAX_LABEL_CHARS = 100
MAX_LABELS_PER_VERSION = 10
MAX_VERSIONS = 100
MAX_DESCRIPTION_CHARS = 1024
MAX_PATTERN_CHARS = 1024
STANDARD_MAX_BYTES = 4096
ADVANCED_MAX_BYTES = 8192
TYPES = ("String", "StringList", "SecureString")
TIERS = ("Standard", "Advanced", "Intelligent-Tiering")

_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")
_LABEL = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RESERVED = ("aws", "ssm")


class HierarchyTooDeep(ValidationError):
    """A name with more than 15 levels (Systems Manager's HierarchyLevelLimitExceededException)."""


def validate_name(raw: str, field: str = "name") -> str:
    """The name, stripped of surrounding spaces; ValidationError naming what is wrong."""
    name = raw.strip()
    if not name:
        raise ValidationError("a parameter name is required", field)
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError(f"a parameter name is at most {MAX_NAME_CHARS} characters", field)
    hierarchical = "/" in name
    if hierarchical and not name.startswith("/"):
        raise ValidationError(
            f"parameter name {name[:80]!r}: a name with '/' must start with '/'", field
        )
    segments = name[1:].split("/") if hierarchical else [name]
    for segment in segments:
        if not segment:
            raise ValidationError(
                f"parameter name {name[:80]!r} has an empty path segment (// or a trailing /)",
                field,
            )
        if not _SEGMENT.match(segment):
            raise ValidationError(
                f"parameter name {name[:80]!r} may contain only letters, digits and _ . - /",
                field,
            )
    if segments[0].lower().startswith(_RESERVED):
        raise ValidationError(
            f"parameter name {name[:80]!r}: names starting with 'aws' or 'ssm' are reserved", field
        )
    if len(segments) > MAX_DEPTH:
        raise HierarchyTooDeep(
            f"parameter name {name[:80]!r} has {len(segments)} levels; at most {MAX_DEPTH}", field
        )
    return name


def validate_path(raw: str, field: str = "path") -> str:
    """A path for by-path queries: `/` or `/a/b` (no trailing slash kept)."""
    path = raw.strip()
    if path == "/":
        return path
    if not path.startswith("/"):
        raise ValidationError(f"path {path[:80]!r} must start with '/'", field)
    trimmed = path.rstrip("/")
    for segment in trimmed[1:].split("/"):
        if not segment or not _SEGMENT.match(segment):
            raise ValidationError(
                f"path {path[:80]!r} may contain only letters, digits and _ . - /", field
            )
    if len(trimmed[1:].split("/")) > MAX_DEPTH:
        raise HierarchyTooDeep(f"path {path[:80]!r} has more than {MAX_DEPTH} levels", field)
    return trimmed


def parent_of(name: str) -> str:
    """The path holding `name`: `/a/b` for `/a/b/c`, `/` for `/c` and for `c`."""
    if "/" not in name:
        return "/"
    head = name.rsplit("/", 1)[0]
    return head or "/"


@dataclass(frozen=True, slots=True)
class Selector:
    """`NAME`, `NAME:VERSION` or `NAME:LABEL`."""

    name: str
    version: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.label is not None:
            return f"{self.name}:{self.label}"
        return self.name


def parse_selector(raw: str, field: str = "name") -> Selector:
    """Split a selector; a numeric suffix is a version, anything else a label."""
    text = raw.strip()
    name, colon, suffix = text.rpartition(":")
    if not colon:
        return Selector(validate_name(text, field))
    name = validate_name(name, field)
    if suffix.isdigit():
        version = int(suffix)
        if not 1 <= version <= 2**31 - 1:
            raise ValidationError(f"version {suffix} is out of range", field)
        return Selector(name, version=version)
    return Selector(name, label=validate_label(suffix, field))


def validate_label(raw: str, field: str = "labels") -> str:
    """A version label: 1-100 of `a-zA-Z0-9_.-`, not starting with a digit, aws or ssm."""
    label = raw.strip()
    if not 1 <= len(label) <= MAX_LABEL_CHARS:
        raise ValidationError(f"a label is 1-{MAX_LABEL_CHARS} characters", field)
    if not _LABEL.match(label):
        raise ValidationError(f"label {label!r} may contain only letters, digits and _ . -", field)
    if label[0].isdigit():
        raise ValidationError(f"label {label!r} cannot start with a digit", field)
    if label.lower().startswith(_RESERVED):
        raise ValidationError(
            f"label {label!r}: labels starting with aws or ssm are reserved", field
        )
    return label


def check_pattern(pattern: str | None, field: str = "allowed_pattern") -> re.Pattern[str] | None:
    """Compile an allowed pattern (the whole value must match it)."""
    if pattern is None or pattern == "":
        return None
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValidationError(f"allowed pattern is at most {MAX_PATTERN_CHARS} characters", field)
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValidationError(
            f"allowed pattern is not a valid regular expression: {error}", field
        ) from None


def check_value(
    value: str, kind: str, pattern: re.Pattern[str] | None, tier: str, field: str = "value"
) -> None:
    """Size (by tier), emptiness and the allowed pattern. Never echoes the value."""
    if kind not in TYPES:
        raise ValidationError(f"type must be one of {', '.join(TYPES)}", "type")
    if value == "":
        raise ValidationError("a parameter value cannot be empty", field)
    size = len(value.encode("utf-8"))
    limit = ADVANCED_MAX_BYTES if tier == "Advanced" else STANDARD_MAX_BYTES
    if size > limit:
        raise ValidationError(
            f"the value is {size} bytes; the {tier} tier allows at most {limit}"
            + (
                " (use --tier Advanced for up to 8 KB)"
                if tier == "Standard" and size <= ADVANCED_MAX_BYTES
                else ""
            ),
            field,
        )
    if pattern is None:
        return
    items = value.split(",") if kind == "StringList" else [value]
    for item in items:
        if pattern.fullmatch(item) is None:
            what = "an item of the value" if kind == "StringList" else "the value"
            raise ValidationError(
                f"{what} does not match the allowed pattern {pattern.pattern!r}", field
            )


def choose_tier(requested: str | None, value: str, has_policies: bool, current: str | None) -> str:
    """The tier a write lands in: Advanced when asked, needed (size, policies) or already."""
    tier = requested or current or "Standard"
    if tier not in TIERS:
        raise ValidationError(f"tier must be one of {', '.join(TIERS)}", "tier")
    if current == "Advanced" and tier == "Standard":
        raise ValidationError(
            "an Advanced parameter cannot move back to the Standard tier; delete and recreate it",
            "tier",
        )
    if tier == "Intelligent-Tiering":
        big = len(value.encode("utf-8")) > STANDARD_MAX_BYTES
        tier = "Advanced" if big or has_policies or current == "Advanced" else "Standard"
    if tier == "Standard" and has_policies:
        raise ValidationError("parameter policies need the Advanced tier", "policies")
    return tier


@dataclass(frozen=True, slots=True)
class Policies:
    """Parsed parameter policies (Systems Manager's JSON form, or Corral's)."""

    expires_at: float | None = None
    notify_before_seconds: float | None = None
    no_change_seconds: float | None = None
    raw: tuple[dict[str, object], ...] = ()

    @property
    def any(self) -> bool:
        """Whether any policy is set."""
        return bool(self.raw)


_UNITS = {"days": 86_400.0, "hours": 3_600.0}


def parse_policies(text: str | None, field: str = "policies") -> Policies:
    """Parse `[{"Type": "Expiration", "Attributes": {"Timestamp": ...}}, ...]`."""
    if text is None or not text.strip():
        return Policies()
    try:
        data = json.loads(text)
    except ValueError:
        raise ValidationError("policies must be a JSON list", field) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data) or len(data) > 10:
        raise ValidationError("policies must be a JSON list of at most 10 objects", field)
    expires_at = notify_before = no_change = None
    seen: set[str] = set()
    for i, policy in enumerate(data):
        kind = policy.get("Type")
        attributes = policy.get("Attributes")
        where = f"{field}[{i}]"
        if not isinstance(attributes, dict):
            raise ValidationError("a policy needs Attributes", where)
        if kind in seen:
            raise ValidationError(f"policy {kind} is given twice", where)
        if kind == "Expiration":
            expires_at = _timestamp(attributes.get("Timestamp"), where)
        elif kind == "ExpirationNotification":
            notify_before = _amount(attributes.get("Before"), attributes.get("Unit"), where)
        elif kind == "NoChangeNotification":
            no_change = _amount(attributes.get("After"), attributes.get("Unit"), where)
        else:
            raise ValidationError(
                "policy Type must be Expiration, ExpirationNotification or NoChangeNotification",
                where,
            )
        seen.add(str(kind))
    if notify_before is not None and expires_at is None:
        raise ValidationError("ExpirationNotification needs an Expiration policy", field)
    return Policies(expires_at, notify_before, no_change, tuple(data))


def _timestamp(value: object, where: str) -> float:
    if not isinstance(value, str):
        raise ValidationError("Expiration needs Attributes.Timestamp (ISO 8601)", where)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"Expiration timestamp {value[:40]!r} is not ISO 8601", where
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _amount(value: object, unit: object, where: str) -> float:
    try:
        number = int(str(value))
    except ValueError:
        raise ValidationError("the policy's amount must be a whole number", where) from None
    factor = _UNITS.get(str(unit).lower())
    if factor is None or number < 1:
        raise ValidationError("the policy needs a positive amount and Unit Days or Hours", where)
    return number * factor
