"""`corral server`: start the Corral server in this process."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Annotated

import typer

from corral.cli.values import parse_duration, parse_listen
from corral.server.config import ServerConfig

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def build_config(
    data_dir: Path,
    listen: str,
    database_url: str | None,
    heartbeat: str | None,
    log_level: str,
) -> ServerConfig:
    """The ServerConfig described by `corral server`'s options."""
    host, port = parse_listen(listen)
    config = ServerConfig(
        data_dir=data_dir,
        host=host,
        port=port,
        database_url=database_url,
        log_level=log_level.lower(),
    )
    if heartbeat is not None:
        seconds = parse_duration(heartbeat, "heartbeat")
        # An agent is only declared lost after several missed heartbeats.
        config = dataclasses.replace(
            config,
            heartbeat_seconds=seconds,
            connection_lost_seconds=max(config.connection_lost_seconds, 3 * seconds),
        )
    return config


def server(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar="CORRAL_DATA_DIR", help="Server data directory.")
    ],
    listen: Annotated[
        str, typer.Option("--listen", envvar="CORRAL_LISTEN", help="HOST:PORT to listen on.")
    ] = "127.0.0.1:8443",
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="CORRAL_DATABASE_URL",
            help="postgresql://... (default: SQLite in the data directory).",
        ),
    ] = None,
    heartbeat: Annotated[
        str | None, typer.Option("--heartbeat", help="Agent heartbeat interval (e.g. 30s).")
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical, error, warning, info or debug.")
    ] = "info",
) -> None:
    """Run the Corral server (HTTP API and agent endpoint) until interrupted."""
    if log_level.lower() not in _LOG_LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(_LOG_LEVELS)}", param_hint="--log-level")
    config = build_config(data_dir, listen, database_url, heartbeat, log_level)
    # Imported lazily so the rest of the CLI never loads the web framework.
    server_main = importlib.import_module("corral.server.main")
    result = server_main.run(config)
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable: object) -> None:
    assert inspect.isawaitable(awaitable)
    await awaitable
