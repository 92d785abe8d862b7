"""Parameter definitions and the rules a parameter value must satisfy.

Which constraint applies to which type (anything else is refused when the
document is created):

| constraint                  | applies to                                 |
|-----------------------------|--------------------------------------------|
| allowedValues               | String, StringList (each item), Integer    |
| allowedPattern (full match) | String, StringList (each item)             |
| minChars / maxChars         | String, StringList (each item)             |
| minItems / maxItems         | StringList, MapList (the list)             |
| interpolationType ENV_VAR   | String                                     |

Error messages never repeat the offending value: it may be a secret.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt

from corral.errors import DocumentError

ParameterType = Literal["String", "StringList", "Integer", "Boolean", "StringMap", "MapList"]
_NonNegative = Annotated[StrictInt, Field(ge=0)]

PARAMETER_NAME = re.compile(r"[A-Za-z0-9_]{1,128}")
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")

_APPLIES_TO: dict[str, tuple[str, ...]] = {
    "allowedValues": ("String", "StringList", "Integer"),
    "allowedPattern": ("String", "StringList"),
    "minChars": ("String", "StringList"),
    "maxChars": ("String", "StringList"),
    "minItems": ("StringList", "MapList"),
    "maxItems": ("StringList", "MapList"),
    "interpolationType": ("String",),
}


class ParameterSpec(BaseModel):
    """One entry of a document's ``parameters`` block, as Systems Manager defines it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: ParameterType
    description: str = ""
    default: JsonValue = None
    allowed_values: list[JsonValue] | None = Field(default=None, alias="allowedValues")
    allowed_pattern: str | None = Field(default=None, alias="allowedPattern")
    min_chars: _NonNegative | None = Field(default=None, alias="minChars")
    max_chars: _NonNegative | None = Field(default=None, alias="maxChars")
    min_items: _NonNegative | None = Field(default=None, alias="minItems")
    max_items: _NonNegative | None = Field(default=None, alias="maxItems")
    display_type: Literal["textarea", "textfield"] | None = Field(default=None, alias="displayType")
    interpolation_type: Literal["ENV_VAR"] | None = Field(default=None, alias="interpolationType")

    @property
    def has_default(self) -> bool:
        """True when the document gives a default, so callers may leave the parameter out."""
        return "default" in self.model_fields_set

    @property
    def env_var(self) -> bool:
        """True when the value reaches scripts only through the ``SSM_<name>`` variable."""
        return self.interpolation_type == "ENV_VAR"

    def summary(self) -> dict[str, object]:
        """The JSON-able description of this parameter that the API shows."""
        out: dict[str, object] = {"type": self.type, "description": self.description}
        out.update(
            self.model_dump(by_alias=True, exclude_none=True, exclude={"type", "description"})
        )
        if self.has_default:
            out["default"] = self.default
        return out


def check_spec(name: str, spec: ParameterSpec) -> None:
    """Refuse a parameter definition whose constraints contradict its type or each other."""
    field = f"parameters.{name}"
    if not PARAMETER_NAME.fullmatch(name):
        raise DocumentError(
            "parameter names are 1-128 characters of letters, digits and '_'", field=field
        )
    present = spec.model_dump(by_alias=True, exclude_none=True)
    for key, types in _APPLIES_TO.items():
        if key in present and spec.type not in types:
            raise DocumentError(
                f"{key} applies only to {', '.join(types)} parameters, not {spec.type}",
                field=f"{field}.{key}",
            )
    for low, high in (("min_chars", "max_chars"), ("min_items", "max_items")):
        low_value, high_value = getattr(spec, low), getattr(spec, high)
        if low_value is not None and high_value is not None and low_value > high_value:
            alias = ParameterSpec.model_fields[low].alias
            raise DocumentError(f"{alias} is greater than its maximum", field=f"{field}.{alias}")
    if spec.allowed_pattern is not None:
        try:
            re.compile(spec.allowed_pattern)
        except re.error as exc:
            raise DocumentError(
                f"allowedPattern is not a valid regular expression: {exc}",
                field=f"{field}.allowedPattern",
            ) from None
    for index, allowed in enumerate(spec.allowed_values or []):
        item_type = "Integer" if spec.type == "Integer" else "String"
        _check_scalar(item_type, allowed, f"{field}.allowedValues[{index}]")


def _check_scalar(kind: str, value: JsonValue, field: str) -> str | int:
    if kind == "Integer":
        return _as_integer(value, field)
    if not isinstance(value, str):
        raise DocumentError("expected a string", field=field)
    return value


def _as_integer(value: object, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    raise DocumentError("expected an integer (a number or a decimal string)", field=field)


def _as_boolean(value: object, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise DocumentError('expected a boolean (true/false or "true"/"false")', field=field)


def _check_text(spec: ParameterSpec, value: object, field: str, *, lenient: bool = False) -> str:
    if lenient and isinstance(value, bool):
        value = "true" if value else "false"
    elif lenient and isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise DocumentError("expected a string", field=field)
    if spec.min_chars is not None and len(value) < spec.min_chars:
        raise DocumentError(f"must be at least {spec.min_chars} characters", field=field)
    if spec.max_chars is not None and len(value) > spec.max_chars:
        raise DocumentError(f"must be at most {spec.max_chars} characters", field=field)
    if spec.allowed_values is not None and value not in spec.allowed_values:
        raise DocumentError(f"must be one of {_listing(spec.allowed_values)}", field=field)
    if spec.allowed_pattern is not None and not re.fullmatch(spec.allowed_pattern, value):
        raise DocumentError(f"must match allowedPattern {spec.allowed_pattern}", field=field)
    return value


def _check_count(spec: ParameterSpec, count: int, field: str) -> None:
    if spec.min_items is not None and count < spec.min_items:
        raise DocumentError(f"must have at least {spec.min_items} items", field=field)
    if spec.max_items is not None and count > spec.max_items:
        raise DocumentError(f"must have at most {spec.max_items} items", field=field)


def _listing(values: list[JsonValue]) -> str:
    return ", ".join(str(value) for value in values)


def check_value(
    spec: ParameterSpec, value: object, field: str, *, from_caller: bool = False
) -> object:
    """Validate ``value`` against ``spec`` and return it in its typed form.

    Values from a caller may give a number or a boolean for a String (it becomes its
    text, as Systems Manager passes every value as text); document defaults may not.
    """
    if spec.type == "String":
        return _check_text(spec, value, field, lenient=from_caller)
    if spec.type == "StringList":
        single = isinstance(value, str | int) and not isinstance(value, list)
        items = [value] if single else value
        if not isinstance(items, list):
            raise DocumentError("expected a list of strings (or one string)", field=field)
        _check_count(spec, len(items), field)
        return [
            _check_text(spec, item, f"{field}[{i}]", lenient=from_caller)
            for i, item in enumerate(items)
        ]
    if spec.type == "Integer":
        number = _as_integer(value, field)
        allowed = spec.allowed_values
        if allowed is not None and number not in [_as_integer(a, field) for a in allowed]:
            raise DocumentError(f"must be one of {_listing(allowed)}", field=field)
        return number
    if spec.type == "Boolean":
        return _as_boolean(value, field)
    if spec.type == "StringMap":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise DocumentError("expected an object of string keys and string values", field=field)
        return dict(value)
    if not isinstance(value, list):
        raise DocumentError("expected a list of objects", field=field)
    _check_count(spec, len(value), field)
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not all(isinstance(k, str) for k in item):
            raise DocumentError("expected an object with string keys", field=f"{field}[{index}]")
    return list(value)
