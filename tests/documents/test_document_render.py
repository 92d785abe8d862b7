"""Rendering: the exact steps the agent runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.documents import parse_document, render_command
from corral.errors import DocumentError
from corral.protocol import Step
from tests.documents.conftest import doc22, shell_step

BASH = shutil.which("bash")


def run(step: Step, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a rendered step the way an agent would: bash, the step's env added to a clean one."""
    assert BASH is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **step.env}
    return subprocess.run(
        [BASH, "-c", step.script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_interpolation_of_every_scalar_type() -> None:
    doc = parse_document(
        doc22(
            {
                "who": {"type": "String"},
                "n": {"type": "Integer", "default": 3},
                "loud": {"type": "Boolean", "default": True},
                "dir": {"type": "String", "default": "/srv"},
            },
            shell_step(
                runCommand=["echo {{who}} {{ n }} {{  loud  }}"],
                workingDirectory="{{ dir }}/app",
                environment={"WHO": "{{ who }}", "FIXED": "1"},
                timeoutSeconds="{{ n }}0",
            ),
        )
    )
    (step,) = render_command(doc, {"who": "world"}).steps
    assert step == Step(
        name="run",
        script="echo world 3 true",
        env={"WHO": "world", "FIXED": "1"},
        working_directory="/srv/app",
        timeout_seconds=30,
        on_failure="continue",
    )


def test_string_list_expands_into_lines() -> None:
    doc = parse_document(
        doc22(
            {"commands": {"type": "StringList"}},
            shell_step(runCommand=["set -e", "  {{ commands }}  ", "echo done"]),
        )
    )
    (step,) = render_command(doc, {"commands": ["echo a", "echo {{ b }}"]}).steps
    assert step.script == "set -e\necho a\necho {{ b }}\necho done"


def test_string_map_becomes_the_environment() -> None:
    doc = parse_document(doc22({"vars": {"type": "StringMap"}}, shell_step(environment="{{vars}}")))
    (step,) = render_command(doc, {"vars": {"A": "1", "B": "two"}}).steps
    assert step.env == {"A": "1", "B": "two"}


def test_builtin_style_document_with_defaults() -> None:
    doc = parse_document(
        doc22(
            {
                "commands": {"type": "StringList"},
                "workingDirectory": {"type": "String", "default": ""},
                "executionTimeout": {"type": "String", "default": "3600"},
            },
            shell_step(
                runCommand="{{ commands }}",
                workingDirectory="{{ workingDirectory }}",
                timeoutSeconds="{{ executionTimeout }}",
            ),
        )
    )
    rendered = render_command(doc, {"commands": "uptime"})
    assert rendered.steps == [
        Step(name="run", script="uptime", timeout_seconds=3600, on_failure="continue")
    ]
    assert rendered.timeout_seconds is None
    with pytest.raises(DocumentError) as info:
        render_command(doc, {"commands": "uptime", "executionTimeout": "0"})
    assert info.value.field == "mainSteps[0].inputs.timeoutSeconds"


def test_timeouts_default_step_level_and_override() -> None:
    doc = parse_document(
        doc22(
            None,
            shell_step("plain"),
            {**shell_step("step_level"), "timeoutSeconds": 50},
            {**shell_step("inputs_win", timeoutSeconds=20), "timeoutSeconds": 50},
        )
    )
    assert [s.timeout_seconds for s in render_command(doc, {}).steps] == [3600, 50, 20]
    overridden = render_command(doc, {}, timeout_override=7)
    assert overridden.timeout_seconds == 7
    assert [s.timeout_seconds for s in overridden.steps] == [7, 7, 7]
    with pytest.raises(DocumentError) as info:
        render_command(doc, {}, timeout_override=0)
    assert info.value.field == "timeout_seconds"


def test_on_failure_follows_systems_manager() -> None:
    doc = parse_document(doc22(None, shell_step("a"), {**shell_step("b"), "onFailure": "exit"}))
    assert [s.on_failure for s in render_command(doc, {}).steps] == ["continue", "exit"]


def linux_only(name: str) -> dict[str, object]:
    return {**shell_step(name), "precondition": {"StringEquals": ["platformType", "Linux"]}}


def mac_only(name: str) -> dict[str, object]:
    return {**shell_step(name), "precondition": {"StringEquals": ["platformType", "MacOS"]}}


@pytest.mark.parametrize(
    ("platform", "ran", "skipped"),
    [
        ("Linux", ["any", "linux"], ["mac"]),
        ("MacOS", ["any", "mac"], ["linux"]),
        ("Windows", [], ["any", "linux", "mac"]),
    ],
)
def test_preconditions_leave_steps_out(platform: str, ran: list[str], skipped: list[str]) -> None:
    doc = parse_document(doc22(None, shell_step("any"), linux_only("linux"), mac_only("mac")))
    rendered = render_command(doc, {}, platform_type=platform)
    assert [s.name for s in rendered.steps] == ran
    assert rendered.skipped_steps == skipped


def test_unknown_platform_is_refused() -> None:
    with pytest.raises(DocumentError) as info:
        render_command(parse_document(doc22()), {}, platform_type="Plan9")
    assert info.value.field == "platform_type"


def test_render_validates_parameters_again() -> None:
    doc = parse_document(doc22({"must": {"type": "String"}}))
    with pytest.raises(DocumentError) as info:
        render_command(doc, {})
    assert info.value.field == "parameters.must"


def test_schema_12_renders_like_22() -> None:
    content = json.dumps(
        {
            "schemaVersion": "1.2",
            "parameters": {"commands": {"type": "StringList"}},
            "runtimeConfig": {
                "aws:runShellScript": {
                    "properties": {"runCommand": "{{ commands }}", "timeoutSeconds": 60}
                }
            },
        }
    )
    rendered = render_command(parse_document(content), {"commands": ["echo 1", "echo 2"]})
    assert rendered.steps == [
        Step(
            name="0.aws:runShellScript",
            script="echo 1\necho 2",
            timeout_seconds=60,
            on_failure="continue",
        )
    ]


# --- ENV_VAR: values reach the script only as SSM_<name> -----------------------

ENV_DOC = parse_document(
    doc22(
        {"Message": {"type": "String", "interpolationType": "ENV_VAR", "default": "Hello"}},
        shell_step(
            runCommand=[
                "echo {{ Message }}",
                'echo "dq:{{Message}}:"',
                "echo 'sq:{{ Message }}:'",
                "echo $'ansi:{{ Message }}:'",
                'echo "sub:$(echo {{ Message }}):"',
                "echo `echo bt:{{ Message }}`",
                "cat <<EOF",
                "heredoc:{{ Message }}:",
                "EOF",
                "# it's a comment with {{ Message }}",
                "echo 'after comment'",
            ],
            workingDirectory="/tmp",
            environment={"COPY": "{{ Message }}"},
        ),
    )
)

HOSTILE = [
    "x; touch {marker}",
    "$(touch {marker})",
    "`touch {marker}`",
    '"; touch {marker}; echo "',
    "'; touch {marker}; echo '",
    "\ntouch {marker}\n",
    "EOF\ntouch {marker}\ncat <<EOF",
    "*",
    "$HOME ${{PATH}}",
]


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize("template", HOSTILE)
def test_env_var_values_stay_inert(template: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    value = template.format(marker=marker)
    (step,) = render_command(ENV_DOC, {"Message": value}).steps
    assert value not in step.script
    assert "touch" not in step.script
    assert step.env["SSM_Message"] == value
    assert step.env["COPY"] == value  # environment values never pass through a shell
    (tmp_path / "decoy").write_text("")
    result = run(step, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    out = result.stdout
    assert out.startswith(value + "\n")  # the unquoted reference printed the value verbatim
    substituted = value.rstrip("\n")  # $( ) drops trailing newlines, as bash always does
    for expected in (f"dq:{value}:", f"sub:{substituted}:", f"heredoc:{value}:", "after comment"):
        assert expected in out
    assert f"sq:{value}:" in out
    assert f"ansi:{value}:" in out


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_env_var_unquoted_reference_is_one_literal_word(tmp_path: Path) -> None:
    doc = parse_document(
        doc22(
            {"p": {"type": "String", "interpolationType": "ENV_VAR"}},
            shell_step(runCommand=["printf '<%s>' {{ p }}"]),
        )
    )
    (tmp_path / "a").write_text("")
    (step,) = render_command(doc, {"p": "two  words *"}).steps
    assert step.script == "printf '<%s>' \"${SSM_p}\""
    assert run(step, tmp_path).stdout == "<two  words *>"


def test_plain_parameters_are_pasted_as_systems_manager_does() -> None:
    doc = parse_document(
        doc22(
            {
                "plain": {"type": "String"},
                "safe": {"type": "String", "interpolationType": "ENV_VAR"},
            },
            shell_step(runCommand=["echo {{ plain }} {{ safe }}"]),
        )
    )
    # A pasted value cannot change how a later ENV_VAR reference is written.
    (step,) = render_command(doc, {"plain": "'", "safe": "v"}).steps
    assert step.script == 'echo \' "${SSM_safe}"'
    assert step.env == {"SSM_safe": "v"}


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_quoted_heredoc_keeps_the_reference_literal(tmp_path: Path) -> None:
    doc = parse_document(
        doc22(
            {"p": {"type": "String", "interpolationType": "ENV_VAR"}},
            shell_step(runCommand=["cat <<-'END'", "\tvalue={{ p }}", "\tEND", "echo ok"]),
        )
    )
    marker = tmp_path / "pwned"
    (step,) = render_command(doc, {"p": f"$(touch {marker})"}).steps
    result = run(step, tmp_path)
    assert result.stdout == "value=${SSM_p}\nok\n"
    assert not marker.exists()
