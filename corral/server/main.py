"""`corral server`: run the app under uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import dataclasses
import gc
import logging
from typing import Any

import uvicorn

from corral.server.app import create_app
from corral.server.config import ServerConfig
from corral.server.tls import ServerTls, prepare_server_tls
from corral.server.wsprotocol import AgentWebSocketProtocol

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
# TLS 1.2 suites with forward secrecy and AEAD (TLS 1.3 suites are not affected by this).
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def uvicorn_config(config: ServerConfig) -> uvicorn.Config:
    """The uvicorn settings for `config` (frames above the agent limit are refused by us).

    Prepares the TLS material first (ValidationError when it is unusable).
    """
    tls = prepare_server_tls(config)
    _log_listening(config, tls)
    ssl_options: dict[str, Any] = {}
    if tls is not None:
        ssl_options = {
            "ssl_certfile": str(tls.cert_file),
            "ssl_keyfile": str(tls.key_file),
            "ssl_ciphers": TLS_CIPHERS,
        }
    return uvicorn.Config(
        create_app(config, tls),
        host=config.host,
        port=config.port,
        log_config=None,
        log_level=config.log_level,
        lifespan="on",
        ws=AgentWebSocketProtocol,
        ws_max_size=4 * config.max_message_bytes + 65_536,
        ws_ping_interval=config.ws_ping_interval_seconds,
        ws_ping_timeout=config.ws_ping_timeout_seconds,
        # Frames are small JSON; compressing them costs both ends more CPU than it saves.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=int(max(1, config.shutdown_grace_seconds)),
        access_log=False,
        **ssl_options,
    )


def _log_listening(config: ServerConfig, tls: ServerTls | None) -> None:
    host = f"[{config.host}]" if ":" in config.host else config.host
    if tls is None:
        logger.info("serving url=http://%s:%d tls=off", host, config.port)
        return
    logger.info(
        "serving url=https://%s:%d tls=%s cert=%s ca_fingerprint=%s",
        host,
        config.port,
        tls.source,
        tls.cert_file,
        tls.ca_fingerprint,
    )


# The collector's default first threshold (700 allocations) makes a busy server walk
# its large, long-lived heap (SQLAlchemy, pydantic, FastAPI) many times a second:
# measured as most of the p99 latency of bench/params.py. A higher threshold, plus
# freezing what exists once the server has started (see app.py), keeps collections
# rare and short; cyclic garbage is still collected.
GC_THRESHOLDS = (50_000, 20, 20)


def run(config: ServerConfig) -> None:
    """Run the server in the foreground; returns after a graceful shutdown."""
    gc.set_threshold(*GC_THRESHOLDS)
    config = dataclasses.replace(config, freeze_gc_after_start=True)
    logging.basicConfig(level=config.log_level.upper(), format=LOG_FORMAT)
    server = uvicorn.Server(uvicorn_config(config))
    server.run()
