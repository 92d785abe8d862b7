"""`corral activation`: create, list and delete activation codes for registering nodes."""

from __future__ import annotations

import shlex
from typing import Annotated, Any
from urllib.parse import quote

import typer

from corral.cli import output
from corral.cli.state import app_state
from corral.cli.values import parse_duration, parse_key_values

app = typer.Typer(help="Create, list and delete activations (codes that register nodes).")


def _row(item: dict[str, Any]) -> list[str]:
    return [
        str(item.get("activation_id", "")),
        output.text_or_dash(item.get("description")),
        f"{item.get('registrations_count', 0)}/{item.get('registration_limit', '-')}",
        output.format_tags(item.get("tags")),
        "expired" if item.get("expired") else output.format_time(item.get("expires_at")),
        output.format_time(item.get("created_at")),
    ]


_COLUMNS = ["ACTIVATION ID", "DESCRIPTION", "USED", "TAGS", "EXPIRES", "CREATED"]


@app.command("create")
def create(
    ctx: typer.Context,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Tag K=V given to registered nodes.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="How many nodes may register (1-1000).")] = None,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime: 30s, 15m, 24h, 7d (default 24h).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
) -> None:
    """Create an activation; its code is shown once."""
    state = app_state(ctx)
    body: dict[str, Any] = {}
    if description is not None:
        body["description"] = description
    if tag:
        body["tags"] = parse_key_values(tag, "tag")
    if limit is not None:
        body["registration_limit"] = limit
    if expires is not None:
        body["expires_seconds"] = int(parse_duration(expires, "expires"))
    with state.client() as client:
        created = client.post("/api/v1/activations", body)
        server_url = client.connection.server
    if state.json_output:
        output.emit_json(created)
        return
    fingerprint = created.get("ca_fingerprint")
    output.print_fields(
        [
            ("Activation ID", str(created.get("activation_id"))),
            ("Activation code", str(created.get("activation_code"))),
            ("Registrations", f"0/{created.get('registration_limit')}"),
            ("Tags", output.format_tags(created.get("tags"))),
            ("Expires", output.format_time(created.get("expires_at"))),
            ("CA fingerprint", str(fingerprint) if fingerprint else "- (the server has no TLS)"),
        ]
    )
    output.write_raw("\nOn each node, run:\n  " + register_command(server_url, created) + "\n")
    output.note("The activation code is shown only once; store it now.")


def register_command(server_url: str, created: dict[str, Any]) -> str:
    """The `corral agent register` line that uses activation `created` (CA pinned if any)."""
    words = [
        "corral", "agent", "register", "--server", server_url,
        "--activation-id", str(created.get("activation_id")),
        "--activation-code", str(created.get("activation_code")),
    ]  # fmt: skip
    if created.get("ca_fingerprint"):
        words += ["--ca-fingerprint", str(created["ca_fingerprint"])]
    words += ["--state-dir", "/var/lib/corral-agent"]
    return shlex.join(words)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List activations."""
    state = app_state(ctx)
    with state.client() as client:
        items = client.get("/api/v1/activations")
    if state.json_output:
        output.emit_json(items)
        return
    output.print_table(_COLUMNS, [_row(item) for item in items])


@app.command("delete")
def delete(
    ctx: typer.Context,
    activation_id: Annotated[str, typer.Argument(help="The activation to delete.")],
) -> None:
    """Delete an activation; nodes already registered stay registered."""
    state = app_state(ctx)
    with state.client() as client:
        client.delete(f"/api/v1/activations/{quote(activation_id, safe='')}")
    if state.json_output:
        output.emit_json({"activation_id": activation_id, "deleted": True})
    else:
        output.note(f"Deleted activation {activation_id}.")
