"""Helpers shared by the document tests."""

from __future__ import annotations

import json

import pytest

from corral.errors import DocumentError


def doc22(parameters: dict[str, object] | None = None, *steps: dict[str, object]) -> str:
    """A 2.2 document as JSON text; one plain step unless steps are given."""
    body: dict[str, object] = {
        "schemaVersion": "2.2",
        "description": "test",
        "parameters": parameters or {},
        "mainSteps": list(steps)
        or [{"action": "aws:runShellScript", "name": "run", "inputs": {"runCommand": ["true"]}}],
    }
    return json.dumps(body)


def shell_step(name: str = "run", **inputs: object) -> dict[str, object]:
    """A runShellScript step with the given inputs (runCommand defaults to `true`)."""
    inputs.setdefault("runCommand", ["true"])
    return {"action": "aws:runShellScript", "name": name, "inputs": inputs}


@pytest.fixture
def expect_field():
    """Assert that a call raises DocumentError naming exactly this field."""

    def check(call, field, message_part=""):
        with pytest.raises(DocumentError) as info:
            call()
        assert info.value.field == field, info.value.message
        assert message_part in info.value.message
        return info.value

    return check
