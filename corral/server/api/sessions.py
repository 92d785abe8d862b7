"""Sessions: start, list, show, terminate, recordings, and the two session WebSockets."""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, WebSocket
from pydantic import Field

from corral.errors import AccessDeniedError, AuthError, NotFoundError
from corral.server.api.common import RequestModel, iso
from corral.server.auth import Caller, authorize, node_context
from corral.server.context import Ctx, ServerContext, get_context
from corral.store import SessionRecord

logger = logging.getLogger(__name__)

router = APIRouter(tags=["sessions"])

_OS_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
DEFAULT_OS_USER = "default"  # the policy resource when no user is asked for: osuser:default


class SessionCreate(RequestModel):
    """Body of `POST /api/v1/sessions`."""

    node_id: str = Field(pattern=r"^mi-[0-9a-f]{17}$")
    user: str | None = Field(default=None, max_length=32)
    command: str | None = Field(default=None, min_length=1, max_length=4096)
    cols: int = Field(default=80, ge=1, le=10_000)
    rows: int = Field(default=24, ge=1, le=10_000)


def session_json(record: SessionRecord) -> dict[str, object]:
    """A session as the API shows it."""
    return {
        "session_id": record.id,
        "node_id": record.node_id,
        "kind": record.kind,
        "owner": record.owner,
        "user": record.os_user,
        "command": record.command,
        "status": record.status,
        "reason": record.reason,
        "exit_code": record.exit_code,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at),
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "recording": record.recording_key,
        "grant_id": record.grant_id,
    }


async def _readable(
    context: ServerContext, caller: Caller, session_id: str, action: str
) -> SessionRecord:
    record = await context.store.get_session(session_id[:40])
    if record.owner != caller.principal.label:
        node = await context.store.get_node(record.node_id, include_deregistered=True)
        caller.require(action, f"session:{record.id}", node_context(node))
    caller.check(action, f"session:{record.id}")
    return record


@router.post("/api/v1/sessions", status_code=201)
async def start_session(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("session:Start"))],
    body: SessionCreate,
) -> dict[str, object]:
    """Open a shell on a node: `session:Start` on the node and on `osuser:USER`."""
    if caller.principal.kind != "user":
        raise AccessDeniedError(f"{caller.principal.label} cannot start sessions")
    if body.user is not None and not _OS_USER.match(body.user):
        from corral.errors import ValidationError

        raise ValidationError(f"user {body.user[:40]!r} is not a valid account name", "user")
    node = node_context(await context.store.get_node(body.node_id))
    caller.require("session:Start", f"node:{body.node_id}", node)
    caller.require("session:Start", f"osuser:{body.user or DEFAULT_OS_USER}", node)
    grant = caller.principal.grants[0].id if caller.principal.grants else None
    record = await context.sessions.open(
        body.node_id, caller.principal.label, body.user, body.command, body.cols, body.rows, grant
    )
    caller.check("session:Start", f"session:{record.id}")
    caller.note(session_id=record.id)
    return session_json(record)


@router.get("/api/v1/sessions")
async def list_sessions(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("session:List"))],
    active: bool = False,
    node_id: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, object]]:
    """Sessions newest first: the caller's own, and those policy lets it list."""
    nodes = {n.id: node_context(n) for n in await context.store.list_nodes()}
    out = []
    for record in await context.store.list_sessions(active, node_id, limit):
        if (
            record.owner == caller.principal.label
            or caller.decide(
                "session:List", f"session:{record.id}", nodes.get(record.node_id)
            ).allowed
        ):
            out.append(session_json(record))
    return out


@router.get("/api/v1/sessions/{session_id}")
async def show_session(
    context: Ctx, caller: Annotated[Caller, Depends(authorize("session:Read"))], session_id: str
) -> dict[str, object]:
    """One session."""
    return session_json(await _readable(context, caller, session_id, "session:Read"))


@router.get("/api/v1/sessions/{session_id}/recording")
async def session_recording(
    context: Ctx, caller: Annotated[Caller, Depends(authorize("session:Read"))], session_id: str
) -> Response:
    """The asciicast v2 recording (as far as it has been written)."""
    record = await _readable(context, caller, session_id, "session:Read")
    if record.recording_key is None:
        raise NotFoundError(f"session {session_id} has no recording")
    data = await context.blobs.read(record.recording_key)
    return Response(data, media_type="application/x-asciicast")


@router.post("/api/v1/sessions/{session_id}/terminate")
async def terminate_session(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("session:Terminate"))],
    session_id: str,
) -> dict[str, object]:
    """End a session now (its owner, or whoever policy allows)."""
    record = await _readable(context, caller, session_id, "session:Terminate")
    return session_json(await context.sessions.terminate(record.id, caller.principal.label))


async def operator_stream(websocket: WebSocket, session_id: str) -> None:
    """WS /api/v1/sessions/{id}/stream: the session's owner attaches its terminal."""
    context = get_context(websocket)  # type: ignore[arg-type]
    try:
        principal = await context.auth.authenticate_websocket(websocket)
        record = await context.store.get_session(session_id[:40])
        if record.owner != principal.label:
            raise AuthError(f"{principal.label} does not own session {record.id}")
    except (AuthError, NotFoundError) as error:
        logger.warning(
            "session stream refused session_id=%s error=%s", session_id[:40], error.message
        )
        await websocket.close(1008)
        return

    def cancel(reason: str) -> None:
        context.sessions.spawn(context.sessions.end(record.id, "Terminated", reason))

    handle = context.auth.streams.open(principal, cancel)
    try:
        await context.sessions.serve_operator(websocket, record.id)
    finally:
        context.auth.streams.close(handle)


async def agent_stream(websocket: WebSocket, session_id: str) -> None:
    """WS /agent/v1/sessions/{id}: the node joins a session it was asked to open."""
    context = get_context(websocket)  # type: ignore[arg-type]
    try:
        principal = await context.auth.authenticate_websocket(websocket)
        if principal.kind != "node":
            raise AuthError("only a node may join its session")
    except AuthError as error:
        logger.warning(
            "agent session refused session_id=%s error=%s", session_id[:40], error.message
        )
        await websocket.close(1008)
        return
    await context.sessions.serve_agent(websocket, session_id[:40], principal.name)
