"""`corral run` and `corral commands`: request body, waiting, exit status, output."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import FakeApi, Result

    Cli = Callable[..., Result]


CMD = "/api/v1/commands/c1"
N1 = "mi-0123456789abcdef0"
N2 = "mi-0123456789abcdef1"


def invocation(
    node: str, status: str, stdout: str = "", code: int | None = None, **extra: Any
) -> dict[str, Any]:
    """An invocation as the API returns it."""
    return {
        "command_id": "c1",
        "node_id": node,
        "status": status,
        "status_details": status,
        "response_code": code,
        "stdout": stdout,
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        **extra,
    }


def command(status: str, *invocations: dict[str, Any]) -> dict[str, Any]:
    """A command as the API returns it."""
    final = status not in ("Pending", "InProgress")
    return {
        "command_id": "c1",
        "document_name": "Corral-RunShellScript",
        "document_version": 1,
        "status": status,
        "status_details": status,
        "target_count": len(invocations),
        "completed_count": sum(i["status"] != "InProgress" for i in invocations),
        "completed_at": "2026-11-29T16:45:00Z" if final else None,
        "invocations": list(invocations),
    }


def test_run_request_body(api: FakeApi, cli: Cli, tmp_path: Path) -> None:
    params_file = tmp_path / "p.yaml"
    params_file.write_text("workingDirectory: /tmp\nexecutionTimeout: 60\n")
    api.on("POST", "/api/v1/commands", 201, command("Success", invocation(N1, "Success")))
    result = cli(
        "run",
        "Corral-RunShellScript:latest",
        "--targets",
        "tag:env=dev",
        "--targets",
        "tag:role=web",
        "--param",
        "commands=echo a=b",
        "--param",
        "commands=id",
        "--param",
        "executionTimeout=30",
        "--parameters-file",
        str(params_file),
        "--parameters-json",
        '{"flag": true}',
        "--max-concurrency",
        "10%",
        "--max-errors",
        "1",
        "--timeout",
        "5m",
        "--delivery-timeout",
        "1h",
        "--comment",
        "smoke",
        "--no-wait",
        "-o",
        "json",
    )
    assert result.exit_code == 0
    assert result.json()["command_id"] == "c1"
    assert api.bodies("POST", "/api/v1/commands") == [
        {
            "document_name": "Corral-RunShellScript",
            "document_version": "$LATEST",
            "targets": ["tag:env=dev", "tag:role=web"],
            "parameters": {
                "commands": ["echo a=b", "id"],
                "executionTimeout": 30,
                "workingDirectory": "/tmp",
                "flag": True,
            },
            "max_concurrency": "10%",
            "max_errors": "1",
            "timeout_seconds": 300,
            "delivery_timeout_seconds": 3600,
            "comment": "smoke",
        }
    ]


def test_run_waits_until_final_then_exits_0(api: FakeApi, cli: Cli) -> None:
    api.on(
        "POST",
        "/api/v1/commands",
        201,
        command("InProgress", invocation(N1, "Pending"), invocation(N2, "Pending")),
    )
    api.on(
        "GET",
        CMD,
        body=command("InProgress", invocation(N1, "InProgress"), invocation(N2, "Pending")),
    )
    api.on(
        "GET",
        CMD,
        body=command(
            "InProgress", invocation(N1, "Success", "hi\n", 0), invocation(N2, "InProgress")
        ),
    )
    api.on(
        "GET",
        CMD,
        body=command(
            "Success", invocation(N1, "Success", "hi\n", 0), invocation(N2, "Success", "there\n", 0)
        ),
    )
    result = cli(
        "run", "Corral-RunShellScript", "--targets", "all", "-p", "commands=echo hi", "-o", "json"
    )
    assert result.exit_code == 0
    doc = result.json()
    assert doc["status"] == "Success"
    assert [i["status"] for i in doc["invocations"]] == ["Success", "Success"]
    assert len(api.bodies("GET", CMD)) == 3


def test_run_exits_1_when_any_invocation_fails(api: FakeApi, cli: Cli) -> None:
    api.on(
        "POST",
        "/api/v1/commands",
        201,
        command("InProgress", invocation(N1, "InProgress"), invocation(N2, "InProgress")),
    )
    api.on(
        "GET",
        CMD,
        body=command(
            "Failed",
            invocation(N1, "Success", "ok\n", 0),
            invocation(N2, "Failed", "boom\nmore\nlines\n", 2),
        ),
    )
    result = cli("run", "Corral-RunShellScript", "--targets", "all")
    assert result.exit_code == 1
    for text in ("NODE", "STATUS", N1, N2, "Failed", "boom", "2"):
        assert text in result.stdout
    assert "more" in result.stdout
    assert "lines" not in result.stdout
    assert "Failed" in result.stderr


def test_run_timed_out_exits_1_json(api: FakeApi, cli: Cli) -> None:
    api.on("POST", "/api/v1/commands", 201, command("TimedOut", invocation(N1, "TimedOut")))
    result = cli("run", "D1x", "--targets", N1, "-o", "json")
    assert result.exit_code == 1
    assert result.json()["status"] == "TimedOut"


def test_run_validation_error_from_server(api: FakeApi, cli: Cli) -> None:
    api.fail("POST", "/api/v1/commands", 400, "ValidationError", "targets match no node", "targets")
    result = cli("run", "Doc", "--targets", "tag:env=none", "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == "targets"


def test_run_ctrl_c_stops_waiting(api: FakeApi, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    api.on("POST", "/api/v1/commands", 201, command("InProgress", invocation(N1, "InProgress")))

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("corral.cli.run.time.sleep", interrupt)
    result = cli("run", "Doc", "--targets", "all")
    assert result.exit_code == 130
    assert "corral commands show c1" in result.stderr
    assert result.stdout == ""


def test_commands_list_show_cancel(api: FakeApi, cli: Cli) -> None:
    done = command("Success", invocation(N1, "Success", "hi\n", 0))
    api.on("GET", "/api/v1/commands", body=[{k: v for k, v in done.items() if k != "invocations"}])
    api.on("GET", CMD, body=done)
    api.on("POST", CMD + "/cancel", body=done)
    listing = cli("commands", "list", "--limit", "5", "--status", "Success")
    assert "c1" in listing.stdout
    assert dict(api.requests[0].url.params) == {"limit": "5", "status": "Success"}
    assert cli("commands", "show", "c1", "-o", "json").json() == done
    assert N1 in cli("commands", "show", "c1").stdout
    assert cli("commands", "cancel", "c1", "--node", N1, "-o", "json").exit_code == 0
    assert api.bodies("POST", CMD + "/cancel") == [{"node_id": N1}]


def test_output_inline_is_raw_with_truncation_note(api: FakeApi, cli: Cli) -> None:
    inv = invocation(
        N1,
        "Success",
        "[red]raw[/red]\n",
        0,
        stdout_truncated=True,
        stdout_bytes=99999,
        stderr="warn\n",
    )
    api.on("GET", CMD, body=command("Success", inv))
    result = cli("commands", "output", "c1", N1)
    assert result.stdout == "[red]raw[/red]\n"
    assert "truncated" in result.stderr
    assert cli("commands", "output", "c1", N1, "--stderr").stdout == "warn\n"
    missing = cli("commands", "output", "c1", N2, "-o", "json")
    assert missing.exit_code == 3


def test_output_full_pages_through(api: FakeApi, cli: Cli) -> None:
    path = CMD + f"/invocations/{N1}/output"
    api.on(
        "GET",
        path,
        body={
            "data": "part1 ",
            "offset": 0,
            "next_offset": 6,
            "complete": True,
            "status": "Success",
        },
    )
    api.on(
        "GET",
        path,
        body={
            "data": "part2",
            "offset": 6,
            "next_offset": 11,
            "complete": True,
            "status": "Success",
        },
    )
    api.on(
        "GET",
        path,
        body={"data": "", "offset": 11, "next_offset": 11, "complete": True, "status": "Success"},
    )
    result = cli("commands", "output", "c1", N1, "--full")
    assert result.exit_code == 0
    assert result.stdout == "part1 part2"
    offsets = [r.url.params["offset"] for r in api.requests]
    assert offsets == ["0", "6", "11"]
    assert all(r.url.params["stream"] == "stdout" for r in api.requests)


def test_output_follow_until_complete(api: FakeApi, cli: Cli) -> None:
    path = CMD + f"/invocations/{N1}/output"
    api.on(
        "GET",
        path,
        body={
            "data": "a",
            "offset": 0,
            "next_offset": 1,
            "complete": False,
            "status": "InProgress",
        },
    )
    api.on(
        "GET",
        path,
        body={"data": "", "offset": 1, "next_offset": 1, "complete": False, "status": "InProgress"},
    )
    api.on(
        "GET",
        path,
        body={
            "data": "b",
            "offset": 1,
            "next_offset": 2,
            "complete": False,
            "status": "InProgress",
        },
    )
    api.on(
        "GET",
        path,
        body={"data": "", "offset": 2, "next_offset": 2, "complete": True, "status": "Success"},
    )
    result = cli("commands", "output", "c1", N1, "--follow", "--stderr", "-o", "json")
    assert result.exit_code == 0
    assert result.json() == {
        "command_id": "c1",
        "node_id": N1,
        "stream": "stderr",
        "data": "ab",
        "truncated": False,
        "complete": True,
    }
    assert len(api.requests) == 4


def test_progress_only_on_a_terminal(
    api: FakeApi, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    buffer = io.StringIO()
    monkeypatch.setattr(
        "corral.cli.output.stderr_console",
        lambda: Console(file=buffer, force_terminal=True, width=120),
    )
    api.on("POST", "/api/v1/commands", 201, command("InProgress", invocation(N1, "InProgress")))
    api.on("GET", CMD, body=command("InProgress", invocation(N1, "InProgress")))
    api.on("GET", CMD, body=command("Success", invocation(N1, "Success", "ok\n", 0)))
    result = cli("run", "Doc", "--targets", "all", "-o", "json")
    assert result.exit_code == 0
    assert "InProgress 1 (0/1 done)" in buffer.getvalue()
    assert "done" not in result.stdout
    assert result.json()["status"] == "Success"


def test_progress_absent_when_not_a_terminal(api: FakeApi, cli: Cli) -> None:
    api.on("POST", "/api/v1/commands", 201, command("InProgress", invocation(N1, "InProgress")))
    api.on("GET", CMD, body=command("Success", invocation(N1, "Success", "ok\n", 0)))
    result = cli("run", "Doc", "--targets", "all", "-o", "json")
    assert result.exit_code == 0
    assert result.stderr == ""
