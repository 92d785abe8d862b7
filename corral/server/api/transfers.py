"""File transfers: start an upload or a download, and the two transfer WebSockets.

Policy: uploading needs `file:Upload`, downloading `file:Download`, each on
`node:ID` and on `file:PATH` (the normalised path), with the node's tags. The paths
the node resolves and every entry of a tree are checked again as the transfer runs
(corral/server/transfers.py).
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, WebSocket
from pydantic import Field

from corral.errors import AccessDeniedError, AuthError, ProtocolError, ValidationError
from corral.protocol.transfer import (
    DIRECTORY,
    DOWNLOAD,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    UPLOAD,
    failed,
    normalize_path,
    relative_parts,
)
from corral.server.api.common import RequestModel
from corral.server.auditing import request_audit
from corral.server.auth import Caller, authorize, node_context
from corral.server.context import Ctx, ServerContext, get_context
from corral.server.transfers import ACTIONS, Live, TransferRequest

logger = logging.getLogger(__name__)

router = APIRouter(tags=["transfers"])

_NODE_ID = r"^mi-[0-9a-f]{17}$"


class UploadCreate(RequestModel):
    """Body of `POST /api/v1/transfers/upload`."""

    node_id: str = Field(pattern=_NODE_ID)
    path: str = Field(min_length=1, max_length=MAX_PATH_BYTES)
    recursive: bool = False
    source_kind: Literal["file", "directory"] = "file"
    source_name: str = Field(min_length=1, max_length=MAX_NAME_BYTES)


class DownloadCreate(RequestModel):
    """Body of `POST /api/v1/transfers/download`."""

    node_id: str = Field(pattern=_NODE_ID)
    path: str = Field(min_length=1, max_length=MAX_PATH_BYTES)
    recursive: bool = False


def transfer_json(live: Live) -> dict[str, object]:
    """A transfer as the API shows it."""
    request = live.request
    return {
        "transfer_id": live.id,
        "node_id": request.node.node_id,
        "direction": request.direction,
        "path": request.path,
        "recursive": request.recursive,
        "owner": live.owner,
        "status": "Pending",
    }


async def _start(
    context: ServerContext, caller: Caller, http: Request, direction: str, body: RequestModel
) -> dict[str, object]:
    assert isinstance(body, UploadCreate | DownloadCreate)
    if caller.principal.kind != "user":
        raise AccessDeniedError(f"{caller.principal.label} cannot transfer files")
    path = normalize_path(body.path)
    kind, name = "", ""
    if isinstance(body, UploadCreate):
        kind, name = body.source_kind, body.source_name
        try:
            if len(relative_parts(name)) != 1:
                raise ProtocolError("not a single name")
        except ProtocolError:
            raise ValidationError(
                f"source_name {name[:40]!r} must be one file name", "source_name"
            ) from None
        if kind == DIRECTORY and not body.recursive:
            raise ValidationError("a directory is copied only with recursive", "recursive")
    node = node_context(await context.store.get_node(body.node_id))
    action = ACTIONS[direction]
    caller.require(action, f"node:{node.node_id}", node)
    caller.require(action, f"file:{path}", node)
    audit = request_audit(http)
    live = await context.transfers.open(
        TransferRequest(
            principal=caller.principal,
            node=node,
            direction=direction,
            path=path,
            recursive=body.recursive,
            source_kind=kind,
            source_name=name,
            request_id=audit.request_id if audit is not None else "",
            grant_id=caller.decide(action, f"file:{path}", node).grant_id,
        )
    )
    caller.note(transfer_id=live.id, direction=direction, path=path)
    return transfer_json(live)


@router.post("/api/v1/transfers/upload", status_code=201)
async def start_upload(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("file:Upload"))],
    http: Request,
    body: UploadCreate,
) -> dict[str, object]:
    """Copy to a node: `file:Upload` on `node:ID` and on `file:PATH`."""
    return await _start(context, caller, http, UPLOAD, body)


@router.post("/api/v1/transfers/download", status_code=201)
async def start_download(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("file:Download"))],
    http: Request,
    body: DownloadCreate,
) -> dict[str, object]:
    """Copy from a node: `file:Download` on `node:ID` and on `file:PATH`."""
    return await _start(context, caller, http, DOWNLOAD, body)


async def operator_stream(websocket: WebSocket, transfer_id: str) -> None:
    """WS /api/v1/transfers/{id}/stream: the principal that started the transfer attaches."""
    context = get_context(websocket)  # type: ignore[arg-type]
    transfer_id = transfer_id[:40]
    try:
        principal = await context.auth.authenticate_websocket(websocket)
        live = context.transfers.live(transfer_id)
        if live is None or live.owner != principal.label:
            raise AuthError(f"{principal.label} has no transfer {transfer_id}")
    except AuthError as error:
        logger.warning(
            "transfer stream refused transfer_id=%s error=%s", transfer_id, error.message
        )
        await websocket.close(1008)
        return

    def cancel(reason: str) -> None:
        refusal = failed("denied", f"the transfer was stopped: {reason}")
        context.transfers.spawn(context.transfers.end(transfer_id, refusal))

    handle = context.auth.streams.open(principal, cancel)
    try:
        await context.transfers.serve_operator(websocket, transfer_id, principal.label)
    finally:
        context.auth.streams.close(handle)


async def agent_stream(websocket: WebSocket, transfer_id: str) -> None:
    """WS /agent/v1/transfers/{id}: the node joins a transfer it was asked to open."""
    context = get_context(websocket)  # type: ignore[arg-type]
    try:
        principal = await context.auth.authenticate_websocket(websocket)
        if principal.kind != "node":
            raise AuthError("only a node may join its transfer")
    except AuthError as error:
        logger.warning(
            "agent transfer refused transfer_id=%s error=%s", transfer_id[:40], error.message
        )
        await websocket.close(1008)
        return
    await context.transfers.serve_agent(websocket, transfer_id[:40], principal.name)
