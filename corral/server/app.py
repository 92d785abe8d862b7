"""The FastAPI application: routes, error mapping and the server's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, WebSocket

from corral import __version__
from corral.blobs import LocalBlobStore
from corral.bus import InProcessBus
from corral.errors import CorralError
from corral.server.api import activations, commands, documents, nodes
from corral.server.config import ServerConfig
from corral.server.context import ServerContext
from corral.server.dispatcher import Dispatcher
from corral.server.errors import install_error_handlers
from corral.server.gateway import Gateway
from corral.server.rendering import RenderCache
from corral.server.writer import ChangeWriter
from corral.store import Store, sqlite_url

logger = logging.getLogger(__name__)

ADMIN_TOKEN_SETTING = "bootstrap.admin_token_id"  # noqa: S105 - a setting name


def _prepare_data_dir(config: ServerConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.data_dir, 0o700)
    config.blob_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def _write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")


async def ensure_admin_token(store: Store, config: ServerConfig) -> None:
    """On first start only, create an admin token and write it to DIR/admin-token (0600)."""
    if config.admin_token_path.exists():
        return
    if await store.get_setting(ADMIN_TOKEN_SETTING) is not None:
        return
    token, record = await store.create_token("bootstrap admin token")
    if not await store.add_setting(ADMIN_TOKEN_SETTING, record.id):
        await store.revoke_token(record.id)
        return
    await asyncio.to_thread(_write_secret, config.admin_token_path, token)
    logger.info("admin token written path=%s", config.admin_token_path)


async def build_context(config: ServerConfig) -> ServerContext:
    """Open the store and create every long-lived part (not yet started)."""
    await asyncio.to_thread(_prepare_data_dir, config)
    store = await Store.open(config.database_url or sqlite_url(config.sqlite_path))
    try:
        await ensure_admin_token(store, config)
        await documents.seed_builtins(store)
        blobs = LocalBlobStore(config.blob_dir)
        bus = InProcessBus()
        writer = ChangeWriter(
            store,
            config.last_seen_flush_seconds,
            config.write_batch_seconds,
            config.write_retry_seconds,
        )
        renderer = RenderCache(store)
        dispatcher = Dispatcher(config, store, bus, writer, renderer)
        await dispatcher.load()
        gateway = Gateway(config, store, blobs, bus, dispatcher, writer)
    except BaseException:
        await store.close()
        raise
    return ServerContext(config, store, blobs, bus, writer, renderer, dispatcher, gateway)


async def _presence_loop(context: ServerContext) -> None:
    while True:
        await asyncio.sleep(context.config.presence_check_seconds)
        try:
            await context.gateway.check_silent_nodes()
        except CorralError as error:
            logger.warning("presence check failed error=%s", error.message)


def create_app(config: ServerConfig) -> FastAPI:
    """The Corral server application for `config`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Start the server's parts, and stop them in uvicorn's order."""
        context = await build_context(config)
        app.state.context = context
        context.writer.start()
        context.dispatcher.start()
        presence = asyncio.create_task(_presence_loop(context), name="corral-presence")
        logger.info("server started version=%s", __version__)
        try:
            yield
        finally:
            grace = config.shutdown_grace_seconds
            closed = await context.gateway.close_all(grace)
            presence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await presence
            await context.dispatcher.stop(grace)
            await context.writer.close()
            await context.bus.close()
            await context.store.close()
            logger.info("server stopped agent_connections_closed=%d", closed)

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan)
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: no token needed."""
        return {"status": "ok", "version": __version__}

    @app.websocket("/agent/v1/connect")
    async def agent_connect(websocket: WebSocket) -> None:
        """The agent channel."""
        context = websocket.app.state.context
        assert isinstance(context, ServerContext)
        await context.gateway.serve(websocket)

    for router in (activations.router, nodes.router, documents.router, commands.router):
        app.include_router(router)
    return app
