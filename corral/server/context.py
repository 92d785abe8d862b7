"""Everything a request handler may use, built once per server process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from corral.audit.log import AuditLog
from corral.blobs import BlobStore
from corral.bus import NodeBus
from corral.params import ParameterService
from corral.server.auth import Authenticator
from corral.server.config import ServerConfig
from corral.server.dispatcher import Dispatcher
from corral.server.gateway import Gateway
from corral.server.rendering import RenderCache
from corral.server.sessions import SessionHub
from corral.server.tls import ServerTls
from corral.server.transfers import TransferHub
from corral.server.writer import ChangeWriter
from corral.store import Store


@dataclass(slots=True)
class ServerContext:
    """The server's long-lived parts; owned and closed by the app's lifespan."""

    config: ServerConfig
    store: Store
    blobs: BlobStore
    bus: NodeBus
    writer: ChangeWriter
    renderer: RenderCache
    dispatcher: Dispatcher
    gateway: Gateway
    audit: AuditLog
    auth: Authenticator
    params: ParameterService
    sessions: SessionHub
    transfers: TransferHub
    # What the server serves over TLS (None: plain HTTP); agents pin its CA.
    tls: ServerTls | None = None


def get_context(request: Request) -> ServerContext:
    """The server context of the app handling `request`."""
    context = request.app.state.context
    assert isinstance(context, ServerContext)
    return context


async def _context_dependency(request: Request) -> ServerContext:
    # Async on purpose: FastAPI runs a sync dependency in a thread pool, a costly hop
    # on every request for what is an attribute lookup.
    return get_context(request)


Ctx = Annotated[ServerContext, Depends(_context_dependency)]
