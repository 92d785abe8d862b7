"""`corral nodes`: list, show, tag, untag and deregister managed nodes."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from corral.cli import output
from corral.cli.state import app_state
from corral.cli.values import parse_key_values, validate_targets

app = typer.Typer(help="List, inspect, tag and deregister managed nodes.")

_COLUMNS = ["NODE ID", "PING", "LAST SEEN", "HOSTNAME", "PLATFORM", "TAGS"]


def format_platform(platform: Any) -> str:
    """Render a node's platform as `debian 12 x86_64`."""
    if not isinstance(platform, dict):
        return "-"
    parts = [platform.get("name"), platform.get("version"), platform.get("arch")]
    text = " ".join(str(part) for part in parts if part)
    return text or "-"


def node_row(node: dict[str, Any]) -> list[str]:
    """One row of the nodes table."""
    return [
        str(node.get("node_id", "")),
        output.text_or_dash(node.get("ping_status")),
        output.format_ago(node.get("last_seen")),
        output.text_or_dash(node.get("hostname")),
        format_platform(node.get("platform")),
        output.format_tags(node.get("tags")),
    ]


def _node_path(node_id: str) -> str:
    return f"/api/v1/nodes/{quote(node_id, safe='')}"


def _show_node(node: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json(node)
        return
    platform = node.get("platform") if isinstance(node.get("platform"), dict) else {}
    assert isinstance(platform, dict)
    ips = node.get("ip_addresses") or []
    output.print_fields(
        [
            ("Node ID", str(node.get("node_id"))),
            ("Ping status", output.text_or_dash(node.get("ping_status"))),
            ("Last seen", output.format_ago(node.get("last_seen"))),
            ("Hostname", output.text_or_dash(node.get("hostname"))),
            ("Platform", format_platform(platform)),
            ("Kernel", output.text_or_dash(platform.get("kernel"))),
            ("IP addresses", ", ".join(str(ip) for ip in ips) or "-"),
            ("Agent version", output.text_or_dash(node.get("agent_version"))),
            ("Tags", output.format_tags(node.get("tags"))),
            ("Registered", output.format_time(node.get("registered_at"))),
            ("Activation", output.text_or_dash(node.get("activation_id"))),
        ]
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    targets: Annotated[
        list[str] | None,
        typer.Option("--targets", help="Filter: node id, tag:KEY=V1,V2 or all (repeatable)."),
    ] = None,
) -> None:
    """List nodes, optionally only those matching --targets."""
    state = app_state(ctx)
    params = {"targets": validate_targets(targets)} if targets else None
    with state.client() as client:
        nodes = client.get("/api/v1/nodes", params=params)
    if state.json_output:
        output.emit_json(nodes)
        return
    output.print_table(_COLUMNS, [node_row(node) for node in nodes])


@app.command("show")
def show(ctx: typer.Context, node_id: Annotated[str, typer.Argument(help="Node id.")]) -> None:
    """Show one node."""
    state = app_state(ctx)
    with state.client() as client:
        node = client.get(_node_path(node_id))
    _show_node(node, state.json_output)


@app.command("tag")
def tag(
    ctx: typer.Context,
    node_id: Annotated[str, typer.Argument(help="Node id.")],
    tags: Annotated[list[str], typer.Argument(help="Tags to set, KEY=VALUE.")],
) -> None:
    """Set tags on a node."""
    state = app_state(ctx)
    body = {"set": parse_key_values(tags, "tag"), "remove": []}
    with state.client() as client:
        node = client.patch(f"{_node_path(node_id)}/tags", body)
    _show_node(node, state.json_output)


@app.command("untag")
def untag(
    ctx: typer.Context,
    node_id: Annotated[str, typer.Argument(help="Node id.")],
    keys: Annotated[list[str], typer.Argument(help="Tag keys to remove.")],
) -> None:
    """Remove tags from a node."""
    state = app_state(ctx)
    body = {"set": {}, "remove": list(keys)}
    with state.client() as client:
        node = client.patch(f"{_node_path(node_id)}/tags", body)
    _show_node(node, state.json_output)


@app.command("deregister")
def deregister(
    ctx: typer.Context, node_id: Annotated[str, typer.Argument(help="Node id.")]
) -> None:
    """Deregister a node: its key stops working and its unfinished work fails."""
    state = app_state(ctx)
    with state.client() as client:
        client.delete(_node_path(node_id))
    if state.json_output:
        output.emit_json({"node_id": node_id, "deregistered": True})
    else:
        output.note(f"Deregistered {node_id}.")
