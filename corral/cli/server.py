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
_TLS_MODES = ("auto", "on", "off")


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
    tls: Annotated[
        str,
        typer.Option(
            "--tls",
            envvar="CORRAL_TLS",
            help="auto (HTTPS unless listening on loopback), on or off.",
        ),
    ] = "auto",
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar="CORRAL_TLS_CERT",
            help="Server certificate (PEM; chain after it). Default: generated.",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", envvar="CORRAL_TLS_KEY", help="Key of --tls-cert (PEM)."),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            envvar="CORRAL_TLS_CA",
            help="CA that issued --tls-cert, published for agents to pin.",
        ),
    ] = None,
    tls_san: Annotated[
        list[str] | None,
        typer.Option(
            "--tls-san", help="Extra DNS name or IP for the generated certificate (repeatable)."
        ),
    ] = None,
) -> None:
    """Run the Corral server (HTTP API and agent endpoint) until interrupted."""
    if log_level.lower() not in _LOG_LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(_LOG_LEVELS)}", param_hint="--log-level")
    if tls.lower() not in _TLS_MODES:
        raise typer.BadParameter(f"use one of {', '.join(_TLS_MODES)}", param_hint="--tls")
    config = build_config(data_dir, listen, database_url, heartbeat, log_level)
    config = dataclasses.replace(
        config,
        tls=tls.lower(),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        tls_san=tuple(tls_san or ()),
    )
    # Imported lazily so the rest of the CLI never loads the web framework.
    server_main = importlib.import_module("corral.server.main")
    result = server_main.run(config)
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable: object) -> None:
    assert inspect.isawaitable(awaitable)
    await awaitable
