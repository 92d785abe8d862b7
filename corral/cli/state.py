"""Per-invocation CLI state: the output format and connection overrides from global flags."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from corral.cli.client import ApiClient, resolve_connection


@dataclass(slots=True)
class AppState:
    """Global options shared by every subcommand."""

    json_output: bool = False
    server: str | None = None
    token: str | None = None
    ca_file: str | None = None
    http_timeout_seconds: float = 30.0

    def client(self) -> ApiClient:
        """An API client honouring flags > environment > config file."""
        connection = resolve_connection(self.server, self.token, self.ca_file)
        return ApiClient(connection, timeout_seconds=self.http_timeout_seconds)


def app_state(ctx: typer.Context) -> AppState:
    """The AppState stored by the root callback (a default one if absent)."""
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj
