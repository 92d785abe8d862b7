"""The FastAPI application: routes, error mapping and the server's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Response, WebSocket

from corral import __version__
from corral.audit.log import AuditLog, load_audit_key
from corral.blobs import LocalBlobStore
from corral.bus import InProcessBus
from corral.errors import ConflictError, CorralError, NotFoundError
from corral.identity import BUILTIN_POLICIES, NODE_ROLE
from corral.params import Keyring, ParameterService
from corral.params.service import apply_policies
from corral.server import ssm
from corral.server.accesskeys import AccessKeys
from corral.server.api import (
    access,
    activations,
    audit,
    commands,
    documents,
    identity,
    meta,
    nodes,
    params,
    sessions,
    transfers,
)
from corral.server.auditing import AuditMiddleware
from corral.server.auth import Authenticator, stream_recheck_loop
from corral.server.config import ServerConfig
from corral.server.context import ServerContext
from corral.server.dispatcher import Dispatcher
from corral.server.errors import install_error_handlers
from corral.server.gateway import Gateway
from corral.server.rendering import RenderCache
from corral.server.sessions import SessionHub
from corral.server.tls import ServerTls
from corral.server.transfers import TransferHub
from corral.server.writer import ChangeWriter
from corral.store import Store, sqlite_url

logger = logging.getLogger(__name__)

ADMIN_TOKEN_SETTING = "bootstrap.admin_token_id"  # noqa: S105 - a setting name
BOOTSTRAP_USER = "admin"


def _prepare_data_dir(config: ServerConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.data_dir, 0o700)
    config.blob_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def _write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")


async def ensure_admin_token(store: Store, config: ServerConfig) -> None:
    """On first start only: an `admin` user and its token, written to DIR/admin-token (0600)."""
    if config.admin_token_path.exists():
        return
    if await store.get_setting(ADMIN_TOKEN_SETTING) is not None:
        return
    try:
        admin = await store.get_user(BOOTSTRAP_USER)
    except NotFoundError:
        try:
            admin = await store.create_user(BOOTSTRAP_USER, ["admin"])
        except ConflictError:  # another replica created it first
            admin = await store.get_user(BOOTSTRAP_USER)
    token, record = await store.create_token("bootstrap admin token", user_id=admin.id)
    if not await store.add_setting(ADMIN_TOKEN_SETTING, record.id):
        await store.revoke_token(record.id)
        return
    await asyncio.to_thread(_write_secret, config.admin_token_path, token)
    logger.info("admin token written path=%s", config.admin_token_path)


async def open_audit_log(store: Store, config: ServerConfig) -> AuditLog:
    """The audit log with its key (created only while the log is empty)."""
    count, _head = await store.audit_head()
    key = await asyncio.to_thread(load_audit_key, config.audit_key_path, count == 0)
    return AuditLog(
        store,
        key,
        config.audit_checkpoint_path,
        batch_seconds=config.audit_batch_seconds,
        checkpoint_seconds=config.audit_checkpoint_seconds,
        retry_seconds=config.write_retry_seconds,
    )


async def build_context(config: ServerConfig) -> ServerContext:
    """Open the store and create every long-lived part (not yet started)."""
    await asyncio.to_thread(_prepare_data_dir, config)
    store = await Store.open(config.database_url or sqlite_url(config.sqlite_path))
    try:
        await store.sync_builtin_roles(BUILTIN_POLICIES, editable=[NODE_ROLE])
        await ensure_admin_token(store, config)
        await documents.seed_builtins(store)
        audit = await open_audit_log(store, config)
        blobs = LocalBlobStore(config.blob_dir)
        bus = InProcessBus()
        writer = ChangeWriter(
            store,
            config.last_seen_flush_seconds,
            config.write_batch_seconds,
            config.write_retry_seconds,
        )
        parameters = ParameterService(
            store, Keyring(config.key_path), cache_seconds=config.parameter_cache_seconds
        )
        renderer = RenderCache(store, parameters.open_version)
        dispatcher = Dispatcher(config, store, bus, writer, renderer, audit)
        await dispatcher.load()
        gateway = Gateway(config, store, blobs, bus, dispatcher, writer, audit)
    except BaseException:
        await store.close()
        raise
    sessions = SessionHub(config, store, blobs, bus, audit)
    gateway.on_connect = sessions.node_connected
    return ServerContext(
        config=config,
        store=store,
        blobs=blobs,
        bus=bus,
        writer=writer,
        renderer=renderer,
        dispatcher=dispatcher,
        gateway=gateway,
        audit=audit,
        auth=Authenticator(
            config,
            store,
            access_keys=AccessKeys(store, parameters.keyring, config.sigv4_max_skew_seconds),
        ),
        params=parameters,
        sessions=sessions,
        transfers=TransferHub(bus, audit, config.session_connect_timeout_seconds),
    )


async def _parameter_policy_loop(context: ServerContext) -> None:
    def event(action: str, resources: list[str], details: dict[str, object]) -> None:
        context.audit.event(action, resources, details=details)

    while True:
        await asyncio.sleep(context.config.parameter_policy_seconds)
        try:
            await apply_policies(context.params, event)
        except CorralError as error:
            logger.warning("parameter policies failed error=%s", error.message)


async def _presence_loop(context: ServerContext) -> None:
    while True:
        await asyncio.sleep(context.config.presence_check_seconds)
        try:
            await context.gateway.check_silent_nodes()
        except CorralError as error:
            logger.warning("presence check failed error=%s", error.message)


def create_app(config: ServerConfig, tls: ServerTls | None = None) -> FastAPI:
    """The Corral server application for `config`; `tls` is what the server in front serves."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Start the server's parts, and stop them in uvicorn's order."""
        context = await build_context(config)
        context.tls = tls
        app.state.context = context
        await context.audit.start()
        stale = await context.store.fail_stale_sessions("the server restarted")
        if stale:
            logger.warning("sessions left active by the previous run ended count=%d", stale)
        context.writer.start()
        context.dispatcher.start()
        presence = asyncio.create_task(_presence_loop(context), name="corral-presence")
        recheck = asyncio.create_task(
            stream_recheck_loop(context.auth, config.stream_recheck_seconds),
            name="corral-stream-recheck",
        )
        policies = asyncio.create_task(
            _parameter_policy_loop(context), name="corral-parameter-policies"
        )
        if config.freeze_gc_after_start:
            gc.collect()
            gc.freeze()
        logger.info("server started version=%s", __version__)
        try:
            yield
        finally:
            grace = config.shutdown_grace_seconds
            await context.sessions.close_all()
            await context.transfers.close_all()
            closed = await context.gateway.close_all(grace)
            for task in (presence, recheck, policies):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await context.dispatcher.stop(grace)
            await context.writer.close()
            await context.audit.close()
            await context.bus.close()
            await context.store.close()
            logger.info("server stopped agent_connections_closed=%d", closed)

    # The OpenAPI description is served to authenticated callers only (api/meta.py).
    app = FastAPI(
        title="Corral",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(AuditMiddleware)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: no token needed."""
        return {"status": "ok", "version": __version__}

    @app.get("/ca.pem", tags=["tls"], response_class=Response)
    async def ca_certificate() -> Response:
        """The CA certificate agents pin (public; no token needed); 404 without TLS."""
        if tls is None:
            raise NotFoundError("this server does not serve TLS, so it has no CA certificate")
        return Response(tls.ca_pem, media_type="application/x-pem-file")

    app.add_api_websocket_route("/api/v1/sessions/{session_id}/stream", sessions.operator_stream)
    app.add_api_websocket_route("/agent/v1/sessions/{session_id}", sessions.agent_stream)
    app.add_api_websocket_route("/api/v1/sessions/{session_id}/observe", sessions.observe_stream)
    app.add_api_websocket_route("/api/v1/transfers/{transfer_id}/stream", transfers.operator_stream)
    app.add_api_websocket_route("/agent/v1/transfers/{transfer_id}", transfers.agent_stream)

    @app.websocket("/agent/v1/connect")
    async def agent_connect(websocket: WebSocket) -> None:
        """The agent channel."""
        context = websocket.app.state.context
        assert isinstance(context, ServerContext)
        await context.gateway.serve(websocket)

    # Routes match in this order: the hottest (parameter reads) first.
    for router in (
        params.router,
        commands.router,
        nodes.router,
        documents.router,
        activations.router,
        identity.router,
        access.router,
        audit.router,
        meta.router,
        sessions.router,
        transfers.router,
    ):
        app.include_router(router)
    ssm.install(app)  # POST /: the Systems Manager wire API
    return app
