"""Reading document text (JSON or YAML) into a completely validated `Document`.

Everything is checked here, once, when a document is created: the schema, every
step, every parameter definition and default, and every ``{{ ... }}`` reference.
A document that parses can always be rendered for valid parameters, except where
a value only known at run time (a ``timeoutSeconds`` built from a parameter) is out
of range; `render_command` reports that with the same kind of field path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pydantic
import yaml

from corral.documents.model import (
    MAX_TIMEOUT_SECONDS,
    PLATFORM_TYPES,
    Document,
    StepTemplate,
)
from corral.documents.parameters import ParameterSpec, check_spec, check_value
from corral.documents.references import (
    PARAMETER_REFERENCE,
    check_reference_syntax,
    has_parameter_store_reference,
    parameter_names,
)
from corral.errors import DocumentError

MAX_DOCUMENT_BYTES = 64 * 1024
SUPPORTED_SCHEMA_VERSIONS: tuple[str, ...] = ("2.2", "1.2")
SUPPORTED_ACTIONS: tuple[str, ...] = ("aws:runShellScript",)

_STEP_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOP_LEVEL = {
    "2.2": ("schemaVersion", "description", "parameters", "mainSteps"),
    "1.2": ("schemaVersion", "description", "parameters", "runtimeConfig"),
}
_STEP_KEYS = (
    "action",
    "name",
    "inputs",
    "precondition",
    "onFailure",
    "timeoutSeconds",
    "maxAttempts",
)
_INPUT_KEYS = ("runCommand", "workingDirectory", "timeoutSeconds", "environment")
_SCALAR_TYPES = ("String", "Integer", "Boolean")


def parse_document(
    content: str, fmt: str | None = None, *, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Document:
    """Parse and completely validate a Command document; raise DocumentError naming the field."""
    size = len(content.encode("utf-8"))
    if size > max_bytes:
        raise DocumentError(
            f"document is {size} bytes; the limit is {max_bytes} bytes", field="content"
        )
    data = _load(content, fmt)
    if not isinstance(data, dict):
        raise DocumentError("a document must be a JSON or YAML object (a mapping)")
    version = _schema_version(data)
    for key in data:
        if key not in _TOP_LEVEL[version]:
            raise DocumentError(f"unknown field for schemaVersion {version}", field=str(key))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise DocumentError("expected a string", field="description")
    parameters = _parse_parameters(data.get("parameters", {}))
    if version == "2.2":
        steps = _parse_main_steps(data.get("mainSteps"))
    else:
        steps = _parse_runtime_config(data.get("runtimeConfig"))
    for step in steps:
        _check_step_references(step, parameters)
    return Document(version, "Command", description, parameters, tuple(steps))


def _load(content: str, fmt: str | None) -> object:
    if fmt not in (None, "json", "yaml"):
        raise DocumentError('format must be "json", "yaml" or null (detect)', field="format")
    if fmt == "json" or (fmt is None and content.lstrip().startswith("{")):
        try:
            return json.loads(content)
        except json.JSONDecodeError as exc:
            raise DocumentError(
                f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                field="content",
            ) from None
    try:
        return yaml.safe_load(content)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DocumentError(f"invalid YAML{where}: {exc.problem}", field="content") from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"invalid YAML: {exc}", field="content") from None


def _schema_version(data: Mapping[Any, Any]) -> str:
    if "schemaVersion" not in data:
        raise DocumentError("schemaVersion is required", field="schemaVersion")
    raw = data["schemaVersion"]
    version = str(raw) if isinstance(raw, str | float) else None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise DocumentError(
            f"unsupported schemaVersion {raw!r}; Command documents use "
            + " or ".join(SUPPORTED_SCHEMA_VERSIONS),
            field="schemaVersion",
        )
    return version


def _pydantic_error(exc: pydantic.ValidationError, prefix: str) -> DocumentError:
    error = exc.errors()[0]
    path = prefix
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    messages = {"missing": "this field is required", "extra_forbidden": "unknown field"}
    return DocumentError(messages.get(error["type"], error["msg"]), field=path)


def _parse_parameters(raw: object) -> dict[str, ParameterSpec]:
    if not isinstance(raw, dict):
        raise DocumentError("expected an object of parameter definitions", field="parameters")
    parameters: dict[str, ParameterSpec] = {}
    for name, definition in raw.items():
        field = f"parameters.{name}"
        if not isinstance(definition, dict):
            raise DocumentError("expected an object with at least a type", field=field)
        try:
            spec = ParameterSpec.model_validate(definition)
        except pydantic.ValidationError as exc:
            raise _pydantic_error(exc, field) from None
        check_spec(str(name), spec)
        if spec.has_default:
            _check_default(spec, f"{field}.default")
        parameters[str(name)] = spec
    return parameters


def _check_default(spec: ParameterSpec, field: str) -> None:
    default = spec.default
    texts = [default] if isinstance(default, str) else default if isinstance(default, list) else []
    if any(isinstance(text, str) and has_parameter_store_reference(text) for text in texts):
        # Checked against the type once Parameter Store resolves it; only its form is checked now.
        if spec.type not in ("String", "StringList"):
            raise DocumentError(
                "Parameter Store references may only be defaults of String or StringList",
                field=field,
            )
        for text in texts:
            if isinstance(text, str):
                check_reference_syntax(text, field, allow_parameter_store=True)
        return
    check_value(spec, default, field)


def _parse_main_steps(raw: object) -> list[StepTemplate]:
    if raw is None:
        raise DocumentError("mainSteps is required", field="mainSteps")
    if not isinstance(raw, list) or not raw:
        raise DocumentError("expected a non-empty list of steps", field="mainSteps")
    steps: list[StepTemplate] = []
    for index, step in enumerate(raw):
        steps.append(_parse_step(step, f"mainSteps[{index}]"))
    _check_unique_names(steps, [f"mainSteps[{i}].name" for i in range(len(steps))])
    return steps


def _parse_step(raw: object, field: str) -> StepTemplate:
    if not isinstance(raw, dict):
        raise DocumentError("expected a step object", field=field)
    for key in raw:
        if key not in _STEP_KEYS:
            raise DocumentError("unknown field", field=f"{field}.{key}")
    for key in ("action", "name", "inputs"):
        if key not in raw:
            raise DocumentError("this field is required", field=f"{field}.{key}")
    name = raw["name"]
    if not isinstance(name, str) or not _STEP_NAME.fullmatch(name):
        raise DocumentError(
            "step names are 1-128 characters of letters, digits, '_', '.' and '-'",
            field=f"{field}.name",
        )
    action = _check_action(raw["action"], f"{field}.action")
    inputs = raw["inputs"]
    if not isinstance(inputs, dict):
        raise DocumentError("expected an object", field=f"{field}.inputs")
    template = _parse_inputs(inputs, f"{field}.inputs", name, action, allowed_extra=())
    step_timeout = raw.get("timeoutSeconds")
    if step_timeout is not None:
        step_timeout = _check_timeout(step_timeout, f"{field}.timeoutSeconds")
    max_attempts = raw.get("maxAttempts", 1)
    if max_attempts != 1 or isinstance(max_attempts, bool):
        raise DocumentError("only maxAttempts 1 is supported", field=f"{field}.maxAttempts")
    return StepTemplate(
        name=name,
        action=action,
        run_command=template.run_command,
        working_directory=template.working_directory,
        timeout=template.timeout if template.timeout is not None else step_timeout,
        environment=template.environment,
        platform=_parse_precondition(raw.get("precondition"), f"{field}.precondition"),
        on_failure=_parse_on_failure(raw.get("onFailure"), f"{field}.onFailure"),
        inputs_field=f"{field}.inputs",
    )


def _check_action(action: object, field: str) -> str:
    if not isinstance(action, str) or action not in SUPPORTED_ACTIONS:
        raise DocumentError(
            f"unsupported action {action!r}; supported actions: {', '.join(SUPPORTED_ACTIONS)}",
            field=field,
        )
    return action


def _parse_precondition(raw: object, field: str) -> str | None:
    if raw is None:
        return None
    operands = raw.get("StringEquals") if isinstance(raw, dict) and len(raw) == 1 else None
    if (
        not isinstance(operands, list)
        or len(operands) != 2
        or operands[0] != "platformType"
        or operands[1] not in PLATFORM_TYPES
    ):
        raise DocumentError(
            'precondition must be {"StringEquals": ["platformType", P]} with P one of '
            + ", ".join(PLATFORM_TYPES),
            field=field,
        )
    return str(operands[1])


def _parse_on_failure(raw: object, field: str) -> str:
    if raw is None:
        return "continue"  # Systems Manager runs the next step unless told to exit
    if raw == "exit":
        return "exit"
    raise DocumentError('onFailure supports only "exit" for Command documents', field=field)


def _check_timeout(raw: object, field: str) -> int:
    if isinstance(raw, str) and re.fullmatch(r"[0-9]+", raw.strip()):
        raw = int(raw.strip())
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= MAX_TIMEOUT_SECONDS:
        raise DocumentError(
            f"timeoutSeconds must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}",
            field=field,
        )
    return raw


def _parse_inputs(
    raw: Mapping[Any, Any], field: str, name: str, action: str, allowed_extra: tuple[str, ...]
) -> StepTemplate:
    for key in raw:
        if key not in _INPUT_KEYS and key not in allowed_extra:
            raise DocumentError(f"unknown input for {action}", field=f"{field}.{key}")
    if "runCommand" not in raw:
        raise DocumentError("runCommand is required", field=f"{field}.runCommand")
    command = raw["runCommand"]
    lines = [command] if isinstance(command, str) else command
    if not isinstance(lines, list) or not lines or not all(isinstance(x, str) for x in lines):
        raise DocumentError(
            "runCommand must be a string or a non-empty list of strings",
            field=f"{field}.runCommand",
        )
    directory = raw.get("workingDirectory")
    if directory is not None and not isinstance(directory, str):
        raise DocumentError("expected a string", field=f"{field}.workingDirectory")
    timeout = raw.get("timeoutSeconds")
    if timeout is not None and not (isinstance(timeout, str) and parameter_names(timeout)):
        timeout = _check_timeout(timeout, f"{field}.timeoutSeconds")
    return StepTemplate(
        name=name,
        action=action,
        run_command=tuple(lines),
        working_directory=directory,
        timeout=timeout,
        environment=_parse_environment(raw.get("environment"), f"{field}.environment"),
        platform=None,
        on_failure="continue",
        inputs_field=field,
    )


def _parse_environment(raw: object, field: str) -> dict[str, str] | str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        if not PARAMETER_REFERENCE.fullmatch(raw.strip()):
            raise DocumentError(
                "environment must be an object, or one {{ name }} of a StringMap parameter",
                field=field,
            )
        return raw.strip()
    if not isinstance(raw, dict):
        raise DocumentError("expected an object of variable names to strings", field=field)
    for key, value in raw.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise DocumentError("not a valid environment variable name", field=f"{field}.{key}")
        if not isinstance(value, str):
            raise DocumentError("expected a string", field=f"{field}.{key}")
    return dict(raw)


def _parse_runtime_config(raw: object) -> list[StepTemplate]:
    if raw is None:
        raise DocumentError("runtimeConfig is required", field="runtimeConfig")
    if not isinstance(raw, dict) or not raw:
        raise DocumentError("expected a non-empty object of plugins", field="runtimeConfig")
    steps: list[StepTemplate] = []
    fields: list[str] = []
    for plugin, config in raw.items():
        base = f"runtimeConfig.{plugin}"
        action = _check_action(plugin, base)
        if not isinstance(config, dict) or set(config) != {"properties"}:
            raise DocumentError("expected an object with only properties", field=base)
        properties = config["properties"]
        items = [properties] if isinstance(properties, dict) else properties
        if not isinstance(items, list) or not items:
            raise DocumentError("expected a non-empty list", field=f"{base}.properties")
        for index, item in enumerate(items):
            field = f"{base}.properties[{index}]"
            if not isinstance(item, dict):
                raise DocumentError("expected an object", field=field)
            name = item.get("id", f"{index}.{action}")
            if not isinstance(name, str) or not name:
                raise DocumentError("expected a non-empty string", field=f"{field}.id")
            steps.append(_parse_inputs(item, field, name, action, allowed_extra=("id",)))
            fields.append(f"{field}.id")
    _check_unique_names(steps, fields)
    return steps


def _check_unique_names(steps: list[StepTemplate], fields: list[str]) -> None:
    seen: set[str] = set()
    for step, field in zip(steps, fields, strict=True):
        if step.name in seen:
            raise DocumentError(f"duplicate step name {step.name!r}", field=field)
        seen.add(step.name)


def _check_step_references(step: StepTemplate, parameters: Mapping[str, ParameterSpec]) -> None:
    field = f"{step.inputs_field}.runCommand"
    for number, line in enumerate(step.run_command, start=1):
        whole = PARAMETER_REFERENCE.fullmatch(line.strip())
        allowed = ("StringList", *_SCALAR_TYPES) if whole else _SCALAR_TYPES
        where = f" (line {number})" if len(step.run_command) > 1 else ""
        _check_text(line, field, parameters, allowed, where)
    scalar_texts: list[tuple[str, str]] = []
    if step.working_directory is not None:
        scalar_texts.append((step.working_directory, f"{step.inputs_field}.workingDirectory"))
    if isinstance(step.timeout, str):
        scalar_texts.append((step.timeout, f"{step.inputs_field}.timeoutSeconds"))
    if isinstance(step.environment, dict):
        for key, value in step.environment.items():
            scalar_texts.append((value, f"{step.inputs_field}.environment.{key}"))
    elif isinstance(step.environment, str):
        scalar_texts.append((step.environment, f"{step.inputs_field}.environment"))
    for text, text_field in scalar_texts:
        map_ok = text_field.endswith(".environment")
        _check_text(text, text_field, parameters, ("StringMap",) if map_ok else _SCALAR_TYPES, "")


def _check_text(
    text: str,
    field: str,
    parameters: Mapping[str, ParameterSpec],
    allowed: tuple[str, ...],
    where: str,
) -> None:
    check_reference_syntax(text, field, allow_parameter_store=False)
    for name in parameter_names(text):
        spec = parameters.get(name)
        if spec is None:
            raise DocumentError(
                f"{{{{ {name} }}}}{where} references a parameter that is not declared",
                field=field,
            )
        if spec.type not in allowed:
            hint = (
                "; a StringList may only stand alone as a whole runCommand line"
                if spec.type == "StringList"
                else ""
            )
            raise DocumentError(
                f"{{{{ {name} }}}}{where} is a {spec.type} parameter and cannot be used here{hint}",
                field=field,
            )
