"""Turning a document and its parameter values into the exact steps an agent runs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from corral.documents.model import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TIMEOUT_SECONDS,
    PLATFORM_TYPES,
    SHELL_PLATFORMS,
    Document,
    StepTemplate,
)
from corral.documents.references import (
    PARAMETER_REFERENCE,
    ReferenceResolver,
    refuse_parameter_store_references,
)
from corral.documents.resolution import resolve_parameters
from corral.documents.shell import substitute
from corral.errors import DocumentError
from corral.protocol import Step


@dataclass(frozen=True)
class RenderedCommand:
    """The steps to send for one platform; no steps means the platform cannot run the document."""

    steps: list[Step]
    skipped_steps: list[str]
    timeout_seconds: int | None


def render_command(
    doc: Document,
    params: Mapping[str, object],
    platform_type: str = "Linux",
    timeout_override: int | None = None,
    reference_resolver: ReferenceResolver = refuse_parameter_store_references,
) -> RenderedCommand:
    """Render ``doc`` with ``params`` for ``platform_type`` (params are validated again here).

    ``reference_resolver`` resolves Parameter Store references left in ``params`` (a
    command stores ``{{ssm-secure:...}}`` unresolved; it is resolved only for delivery).
    """
    if platform_type not in PLATFORM_TYPES:
        raise DocumentError(
            f"unknown platform type; expected one of {', '.join(PLATFORM_TYPES)}",
            field="platform_type",
        )
    if timeout_override is not None and (
        isinstance(timeout_override, bool) or not 1 <= timeout_override <= MAX_TIMEOUT_SECONDS
    ):
        raise DocumentError(
            f"timeout must be from 1 to {MAX_TIMEOUT_SECONDS} seconds", field="timeout_seconds"
        )
    values = resolve_parameters(doc, params, reference_resolver=reference_resolver)
    steps: list[Step] = []
    skipped: list[str] = []
    for template in doc.steps:
        if not _runs_on(template, platform_type):
            skipped.append(template.name)
            continue
        step = _render_step(doc, template, values)
        if timeout_override is not None:
            step = Step(
                name=step.name,
                script=step.script,
                env=step.env,
                working_directory=step.working_directory,
                timeout_seconds=timeout_override,
                on_failure=step.on_failure,
            )
        steps.append(step)
    return RenderedCommand(steps=steps, skipped_steps=skipped, timeout_seconds=timeout_override)


def _runs_on(template: StepTemplate, platform_type: str) -> bool:
    if template.platform is not None:
        return template.platform == platform_type
    return platform_type in SHELL_PLATFORMS


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "\n".join(str(item) for item in value)
    return str(value)


def _fill(text: str, values: Mapping[str, object]) -> str:
    """Paste values as plain text: for fields that never reach a shell."""
    return PARAMETER_REFERENCE.sub(lambda match: _text(values[match.group(1)]), text)


def _render_step(doc: Document, template: StepTemplate, values: Mapping[str, object]) -> Step:
    env_names = doc.env_var_parameters
    pasted = {name: _text(value) for name, value in values.items() if name not in env_names}
    # A line that is one whole reference (a StringList expanding into lines) loses its padding.
    lines = [
        line.strip() if PARAMETER_REFERENCE.fullmatch(line.strip()) else line
        for line in template.run_command
    ]
    script = substitute("\n".join(lines), pasted, env_names)
    env: dict[str, str] = {}
    if isinstance(template.environment, str):
        whole = PARAMETER_REFERENCE.fullmatch(template.environment)
        mapping = values[whole.group(1)] if whole else {}
        env.update(mapping if isinstance(mapping, dict) else {})
    elif template.environment is not None:
        env.update({key: _fill(value, values) for key, value in template.environment.items()})
    env.update({variable: _text(values[name]) for name, variable in env_names.items()})
    directory = _fill(template.working_directory or "", values) or None
    return Step(
        name=template.name,
        script=script,
        env=env,
        working_directory=directory,
        timeout_seconds=_timeout(template, values),
        on_failure=template.on_failure,
    )


def _timeout(template: StepTemplate, values: Mapping[str, object]) -> int:
    if template.timeout is None:
        return DEFAULT_TIMEOUT_SECONDS
    if isinstance(template.timeout, int):
        return template.timeout
    text = _fill(template.timeout, values).strip()
    seconds = int(text) if re.fullmatch(r"[0-9]+", text) else 0
    if not 1 <= seconds <= MAX_TIMEOUT_SECONDS:
        raise DocumentError(
            f"timeoutSeconds must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}",
            field=f"{template.inputs_field}.timeoutSeconds",
        )
    return seconds
