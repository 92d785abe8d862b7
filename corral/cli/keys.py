"""`corral key`: the key-encryption keys that seal SecureString parameters.

Only metadata travels: a key's material stays in the server's key directory.
`rotate` adds a key version and re-wraps every data key under it; values sealed
before stay readable.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from corral.cli import output
from corral.cli.state import app_state

app = typer.Typer(help="Manage the encryption keys of SecureString parameters.")

_COLUMNS = ["NAME", "VERSION", "VERSIONS", "CREATED", "ROTATED"]


def key_path(name: str) -> str:
    """The API path of one key."""
    return f"/api/v1/keys/{quote(name, safe='')}"


def key_row(key: dict[str, Any]) -> list[str]:
    """One row of the keys table (VERSION is the current one; VERSIONS how many are kept)."""
    return [
        str(key.get("name", "")),
        output.text_or_dash(key.get("current_version")),
        output.text_or_dash(key.get("versions")),
        output.format_time(key.get("created_at")),
        output.format_time(key.get("rotated_at")),
    ]


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Key name (1-64 letters, digits, _ . -).")],
) -> None:
    """Create a key (use it with `corral param put --type SecureString --key NAME`)."""
    state = app_state(ctx)
    with state.client() as client:
        key = client.post("/api/v1/keys", {"name": name})
    if state.json_output:
        output.emit_json(key)
        return
    output.print_table(_COLUMNS, [key_row(key)])


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List keys (the `default` key appears once the first SecureString is written)."""
    state = app_state(ctx)
    with state.client() as client:
        keys = client.get("/api/v1/keys")
    if state.json_output:
        output.emit_json(keys)
        return
    output.print_table(_COLUMNS, [key_row(key) for key in keys])


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Key name.")],
) -> None:
    """Add a new key version and re-wrap every value's data key under it (no downtime)."""
    state = app_state(ctx)
    with state.client() as client:
        key = client.post(f"{key_path(name)}/rotate")
    if state.json_output:
        output.emit_json(key)
        return
    output.print_table(_COLUMNS, [key_row(key)])
    count = key.get("rewrapped")
    noun = "value" if count == 1 else "values"
    output.write_raw(
        f"Rotated key {key.get('name', name)} to version {key.get('current_version')}; "
        f"re-wrapped {count} SecureString {noun}.\n"
    )
