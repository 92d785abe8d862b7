"""`corral login`: check a server URL and token, then save them to the config file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from corral.cli import output
from corral.cli.client import (
    ApiClient,
    CliError,
    Connection,
    config_path,
    read_config,
    write_config,
)
from corral.cli.state import app_state


def login(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option("--server", help="Server URL.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="API token.")] = None,
    ca_file: Annotated[
        str | None, typer.Option("--ca-file", help="CA bundle for a private CA.")
    ] = None,
) -> None:
    """Verify SERVER and TOKEN against the server, then write them to the config file."""
    state = app_state(ctx)
    url = server or state.server or os.environ.get("CORRAL_SERVER")
    secret = token or state.token or os.environ.get("CORRAL_TOKEN")
    ca = ca_file or state.ca_file or os.environ.get("CORRAL_CA_FILE")
    if not url:
        raise typer.BadParameter("a server URL is required", param_hint="--server")
    if not secret:
        raise typer.BadParameter("a token is required", param_hint="--token")
    connection = Connection(url.rstrip("/"), secret, ca)
    with ApiClient(connection, timeout_seconds=state.http_timeout_seconds) as client:
        try:
            client.get("/api/v1/commands", params={"limit": 1})
        except CliError as exc:
            # 403: the token is valid but may not list commands; that is still a login.
            if exc.http_status != 403:
                raise
    path = config_path()
    values = read_config(path)
    values.update({"server": connection.server, "token": secret})
    if ca:
        # Absolute, so the saved config works from any directory.
        values["ca_file"] = str(Path(ca).expanduser().resolve())
    write_config(path, values)
    if state.json_output:
        output.emit_json({"server": connection.server, "config_file": str(path)})
    else:
        output.note(f"Logged in to {connection.server}; saved to {path}.")
