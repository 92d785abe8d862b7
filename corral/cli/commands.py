"""`corral commands`: list, show, read output of and cancel Run Command commands."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any
from urllib.parse import quote

import typer

from corral.cli import output
from corral.cli.client import EXIT_NOT_FOUND, ApiClient, CliError
from corral.cli.state import app_state
from corral.cli.values import parse_duration

app = typer.Typer(help="List, inspect, read the output of and cancel commands.")

FINAL_STATUSES = frozenset({"Success", "Failed", "TimedOut", "Cancelled"})
_LIST_COLUMNS = ["COMMAND ID", "DOCUMENT", "STATUS", "TARGETS", "DONE", "ERRORS", "REQUESTED"]
_INVOCATION_COLUMNS = ["NODE", "STATUS", "DETAIL", "CODE", "OUTPUT"]
_OUTPUT_PAGE_BYTES = 1024 * 1024
_PREVIEW_LINES = 2
_PREVIEW_WIDTH = 100


def poll_interval(option: str | None) -> float:
    """Seconds between polls: --poll-interval, else CORRAL_POLL_INTERVAL, else 0.5."""
    raw = option or os.environ.get("CORRAL_POLL_INTERVAL") or "0.5"
    return parse_duration(raw, "poll_interval")


def command_path(command_id: str) -> str:
    """API path of one command."""
    return f"/api/v1/commands/{quote(command_id, safe='')}"


def is_finished(command: dict[str, Any]) -> bool:
    """True once the command and every one of its invocations are final."""
    invocations = command.get("invocations") or []
    if command.get("status") in FINAL_STATUSES and command.get("completed_at"):
        return all(inv.get("status") in FINAL_STATUSES for inv in invocations)
    return bool(invocations) and all(inv.get("status") in FINAL_STATUSES for inv in invocations)


def all_succeeded(command: dict[str, Any]) -> bool:
    """True when the command has invocations and every one ended Success."""
    invocations = command.get("invocations") or []
    return bool(invocations) and all(inv.get("status") == "Success" for inv in invocations)


def output_preview(invocation: dict[str, Any]) -> str:
    """The first lines of an invocation's output (stdout, else stderr) for a table cell."""
    text = invocation.get("stdout") or invocation.get("stderr") or ""
    lines = [line[:_PREVIEW_WIDTH] for line in str(text).splitlines() if line.strip()]
    preview = "\n".join(lines[:_PREVIEW_LINES])
    if len(lines) > _PREVIEW_LINES:
        preview += "\n…"
    return preview or "-"


def print_invocations(command: dict[str, Any]) -> None:
    """Print the per-node summary table of a command."""
    rows = [
        [
            str(inv.get("node_id")),
            output.text_or_dash(inv.get("status")),
            output.text_or_dash(inv.get("status_details")),
            output.text_or_dash(inv.get("response_code")),
            output_preview(inv),
        ]
        for inv in command.get("invocations") or []
    ]
    output.print_table(_INVOCATION_COLUMNS, rows)


def status_counts_text(command: dict[str, Any]) -> str:
    """`Success 2 · InProgress 1 (2/3 done)` for progress and summaries."""
    counts = command.get("status_counts") or {}
    if not counts:
        for inv in command.get("invocations") or []:
            status = str(inv.get("status"))
            counts[status] = counts.get(status, 0) + 1
    parts = " · ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    done = command.get("completed_count", 0)
    total = command.get("target_count", len(command.get("invocations") or []))
    return f"{parts or 'Pending'} ({done}/{total} done)"


@app.command("list")
def list_(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many, newest first.", min=1)] = 50,
    status: Annotated[str | None, typer.Option(help="Only commands with this status.")] = None,
) -> None:
    """List recent commands, newest first."""
    state = app_state(ctx)
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    with state.client() as client:
        items = client.get("/api/v1/commands", params=params)
    if state.json_output:
        output.emit_json(items)
        return
    rows = [
        [
            str(cmd.get("command_id")),
            f"{cmd.get('document_name')}:{cmd.get('document_version')}",
            output.text_or_dash(cmd.get("status")),
            output.text_or_dash(cmd.get("target_count")),
            output.text_or_dash(cmd.get("completed_count")),
            output.text_or_dash(cmd.get("error_count")),
            output.format_ago(cmd.get("requested_at")),
        ]
        for cmd in items
    ]
    output.print_table(_LIST_COLUMNS, rows)


def print_command(command: dict[str, Any]) -> None:
    """Human view of one command: summary fields then the invocations table."""
    output.print_fields(
        [
            ("Command ID", str(command.get("command_id"))),
            ("Document", f"{command.get('document_name')}:{command.get('document_version')}"),
            ("Status", f"{command.get('status')} ({command.get('status_details')})"),
            ("Progress", status_counts_text(command)),
            ("Errors", output.text_or_dash(command.get("error_count"))),
            ("Targets", ", ".join(str(t) for t in command.get("targets") or []) or "-"),
            ("Comment", output.text_or_dash(command.get("comment"))),
            ("Requested", output.format_time(command.get("requested_at"))),
            ("Completed", output.format_time(command.get("completed_at"))),
        ]
    )
    if command.get("invocations"):
        output.write_raw("\n")
        print_invocations(command)


@app.command("show")
def show(
    ctx: typer.Context, command_id: Annotated[str, typer.Argument(help="Command id.")]
) -> None:
    """Show a command and its invocations."""
    state = app_state(ctx)
    with state.client() as client:
        command = client.get(command_path(command_id))
    if state.json_output:
        output.emit_json(command)
    else:
        print_command(command)


def _find_invocation(command: dict[str, Any], node_id: str) -> dict[str, Any]:
    for inv in command.get("invocations") or []:
        if inv.get("node_id") == node_id:
            return dict(inv)
    raise CliError(
        f"command {command.get('command_id')} has no invocation on node {node_id}",
        type_="NotFoundError",
        field="node",
        exit_code=EXIT_NOT_FOUND,
    )


def _read_stream(
    client: ApiClient,
    path: str,
    stream: str,
    follow: bool,
    interval: float,
    sink: list[str] | None,
) -> bool:
    """Page (and with `follow`, poll) the output endpoint; return the final `complete`."""
    offset = 0
    while True:
        page = client.get(
            path, params={"stream": stream, "offset": offset, "limit": _OUTPUT_PAGE_BYTES}
        )
        data = str(page.get("data") or "")
        next_offset = int(page.get("next_offset", offset))
        if data:
            if sink is None:
                output.write_raw(data)
            else:
                sink.append(data)
        complete = bool(page.get("complete"))
        progressed = next_offset > offset
        offset = next_offset
        if progressed:
            continue
        if complete or not follow:
            return complete
        time.sleep(interval)


@app.command("output")
def output_(
    ctx: typer.Context,
    command_id: Annotated[str, typer.Argument(help="Command id.")],
    node_id: Annotated[str, typer.Argument(help="Node id.")],
    full: Annotated[bool, typer.Option("--full", help="Print the whole stream.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print new output until complete.")
    ] = False,
    stderr: Annotated[bool, typer.Option("--stderr", help="Show stderr, not stdout.")] = False,
    poll: Annotated[
        str | None, typer.Option("--poll-interval", help="Seconds between polls (--follow).")
    ] = None,
) -> None:
    """Print one node's output of a command (raw bytes, exactly as produced)."""
    state = app_state(ctx)
    stream = "stderr" if stderr else "stdout"
    interval = poll_interval(poll)
    path = f"{command_path(command_id)}/invocations/{quote(node_id, safe='')}/output"
    sink: list[str] | None = [] if state.json_output else None
    with state.client() as client:
        if full or follow:
            try:
                complete = _read_stream(client, path, stream, follow, interval, sink)
            except KeyboardInterrupt:
                output.note("\nStopped following; the command keeps running.")
                raise typer.Exit(130) from None
            truncated = False
        else:
            invocation = _find_invocation(client.get(command_path(command_id)), node_id)
            text = str(invocation.get(stream) or "")
            truncated = bool(invocation.get(f"{stream}_truncated"))
            complete = invocation.get("status") in FINAL_STATUSES
            if sink is None:
                output.write_raw(text)
                if truncated:
                    output.note(
                        f"[{stream} truncated at {len(text)} characters of "
                        f"{invocation.get(f'{stream}_bytes')} bytes; use --full for all of it]"
                    )
            else:
                sink.append(text)
    if sink is not None:
        output.emit_json(
            {
                "command_id": command_id,
                "node_id": node_id,
                "stream": stream,
                "data": "".join(sink),
                "truncated": truncated,
                "complete": complete,
            }
        )


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    command_id: Annotated[str, typer.Argument(help="Command id.")],
    node: Annotated[str | None, typer.Option("--node", help="Cancel on this node only.")] = None,
) -> None:
    """Cancel a command (or its invocation on one node)."""
    state = app_state(ctx)
    with state.client() as client:
        command = client.post(f"{command_path(command_id)}/cancel", {"node_id": node})
    if state.json_output:
        output.emit_json(command)
    else:
        target = f" on {node}" if node else ""
        output.note(f"Cancellation requested for {command_id}{target}.")
        print_command(command)
