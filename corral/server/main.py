"""`corral server`: run the app under uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

import uvicorn

from corral.server.app import create_app
from corral.server.config import ServerConfig
from corral.server.wsprotocol import AgentWebSocketProtocol

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def uvicorn_config(config: ServerConfig) -> uvicorn.Config:
    """The uvicorn settings for `config` (frames above the agent limit are refused by us)."""
    return uvicorn.Config(
        create_app(config),
        host=config.host,
        port=config.port,
        log_config=None,
        log_level=config.log_level,
        lifespan="on",
        ws=AgentWebSocketProtocol,
        ws_max_size=4 * config.max_message_bytes + 65_536,
        ws_ping_interval=None,
        # Frames are small JSON; compressing them costs both ends more CPU than it saves.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=int(max(1, config.shutdown_grace_seconds)),
        access_log=False,
    )


def run(config: ServerConfig) -> None:
    """Run the server in the foreground; returns after a graceful shutdown."""
    logging.basicConfig(level=config.log_level.upper(), format=LOG_FORMAT)
    server = uvicorn.Server(uvicorn_config(config))
    server.run()
