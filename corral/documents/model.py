"""The validated, internal form of a Command document (schema 2.2 and 1.2 alike)."""

from __future__ import annotations

from dataclasses import dataclass

from corral.documents.parameters import ParameterSpec

DEFAULT_TIMEOUT_SECONDS = 3600
MAX_TIMEOUT_SECONDS = 172_800
PLATFORM_TYPES: tuple[str, ...] = ("Linux", "MacOS", "Windows")
SHELL_PLATFORMS: tuple[str, ...] = ("Linux", "MacOS")


@dataclass(frozen=True)
class StepTemplate:
    """One step before parameters are filled in: texts may still hold ``{{ name }}``."""

    name: str
    action: str
    run_command: tuple[str, ...]
    working_directory: str | None
    # An int, or text whose references resolve to an int when rendered.
    timeout: int | str | None
    # A map of variable -> text, or the text of one reference to a StringMap parameter.
    environment: dict[str, str] | str | None
    # The platformType a precondition demands; None runs on every shell platform.
    platform: str | None
    on_failure: str  # "exit" | "continue"
    # Where this step's inputs sit in the document, for error field paths.
    inputs_field: str


@dataclass(frozen=True)
class Document:
    """A completely validated Command document."""

    schema_version: str
    document_type: str
    description: str
    parameters: dict[str, ParameterSpec]
    steps: tuple[StepTemplate, ...]

    def parameters_summary(self) -> dict[str, dict[str, object]]:
        """The JSON-able parameter definitions the API shows (type, description, default, ...)."""
        return {name: spec.summary() for name, spec in self.parameters.items()}

    @property
    def env_var_parameters(self) -> dict[str, str]:
        """Parameter name -> environment variable name, for every ENV_VAR parameter."""
        return {name: f"SSM_{name}" for name, spec in self.parameters.items() if spec.env_var}
