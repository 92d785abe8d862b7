"""`corral run`: send a document to nodes and (by default) wait for every invocation.

While waiting, live progress goes to stderr only when stderr is a terminal. The exit
status is 0 only when every invocation succeeded, 1 otherwise; Ctrl-C stops waiting
(the command keeps running) and exits 130.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.text import Text

from corral.cli import output
from corral.cli.client import EXIT_FAILED, EXIT_INTERRUPTED, ApiClient
from corral.cli.commands import (
    all_succeeded,
    command_path,
    is_finished,
    poll_interval,
    print_invocations,
    status_counts_text,
)
from corral.cli.state import app_state
from corral.cli.values import (
    load_parameters_file,
    merge_parameters,
    parse_document_ref,
    parse_duration,
    parse_parameters_json,
    parse_params,
    parse_rate,
    validate_targets,
)


def build_request(
    document: str,
    targets: list[str],
    params: list[str],
    parameters_json: str | None,
    parameters_file: Path | None,
) -> dict[str, Any]:
    """The POST /api/v1/commands body for a document, targets and parameters."""
    ref = parse_document_ref(document)
    parameters = merge_parameters(
        load_parameters_file(parameters_file) if parameters_file else None,
        parse_parameters_json(parameters_json) if parameters_json else None,
        parse_params(params),
    )
    return {
        "document_name": ref.name,
        "document_version": ref.version,
        "targets": validate_targets(targets),
        "parameters": parameters,
    }


def wait_for(client: ApiClient, command: dict[str, Any], interval: float) -> dict[str, Any]:
    """Poll the command until it is finished, showing progress on a terminal stderr."""
    path = command_path(str(command["command_id"]))
    console = output.stderr_console()
    if not console.is_terminal:
        while not is_finished(command):
            time.sleep(interval)
            command = client.get(path)
        return command
    with Live(Text(status_counts_text(command)), console=console, transient=True) as live:
        while not is_finished(command):
            time.sleep(interval)
            command = client.get(path)
            live.update(Text(status_counts_text(command)))
    return command


def run(
    ctx: typer.Context,
    document: Annotated[
        str,
        typer.Argument(
            metavar="DOCUMENT[:VERSION]", help="Document: NAME, NAME:3, NAME:latest, NAME:$DEFAULT."
        ),
    ],
    targets: Annotated[
        list[str],
        typer.Option("--targets", "-t", help="Node id, tag:KEY=V1,V2 or all (repeatable)."),
    ],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="NAME=VALUE; repeat a NAME to build a list."),
    ] = None,
    parameters_json: Annotated[
        str | None, typer.Option("--parameters-json", help="Parameters as a JSON object.")
    ] = None,
    parameters_file: Annotated[
        Path | None, typer.Option("--parameters-file", help="Parameters file (JSON or YAML).")
    ] = None,
    max_concurrency: Annotated[
        str | None, typer.Option("--max-concurrency", help="N or N% (default 50).")
    ] = None,
    max_errors: Annotated[
        str | None, typer.Option("--max-errors", help="N or N% (default 0).")
    ] = None,
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="Execution timeout per step (e.g. 10m).")
    ] = None,
    delivery_timeout: Annotated[
        str | None,
        typer.Option("--delivery-timeout", help="How long to wait for offline nodes (e.g. 10m)."),
    ] = None,
    comment: Annotated[str | None, typer.Option("--comment", help="Free text.")] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Print the command and return at once.")
    ] = False,
    poll: Annotated[
        str | None,
        typer.Option("--poll-interval", help="Seconds between polls (env CORRAL_POLL_INTERVAL)."),
    ] = None,
) -> None:
    """Run a document on nodes and wait for the result (exit 0 only if all succeed)."""
    state = app_state(ctx)
    body = build_request(document, targets, param or [], parameters_json, parameters_file)
    if max_concurrency is not None:
        body["max_concurrency"] = parse_rate(max_concurrency, "max_concurrency")
    if max_errors is not None:
        body["max_errors"] = parse_rate(max_errors, "max_errors")
    if timeout is not None:
        body["timeout_seconds"] = round(parse_duration(timeout, "timeout"))
    if delivery_timeout is not None:
        body["delivery_timeout_seconds"] = round(
            parse_duration(delivery_timeout, "delivery_timeout")
        )
    if comment is not None:
        body["comment"] = comment
    interval = poll_interval(poll)
    with state.client() as client:
        command = client.post("/api/v1/commands", body)
        command_id = str(command.get("command_id"))
        if no_wait:
            if state.json_output:
                output.emit_json(command)
            else:
                sys.stdout.write(command_id + "\n")
                output.note(f"Follow it with: corral commands show {command_id}")
            return
        try:
            command = wait_for(client, command, interval)
        except KeyboardInterrupt:
            output.note(
                f"\nStopped waiting; command {command_id} keeps running.\n"
                f"Follow it with: corral commands show {command_id}"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if state.json_output:
        output.emit_json(command)
    else:
        print_invocations(command)
        output.note(
            f"Command {command_id}: {command.get('status')} — {status_counts_text(command)}"
        )
    if not all_succeeded(command):
        raise typer.Exit(EXIT_FAILED)
