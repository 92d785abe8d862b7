"""Sessions: start, list, show, terminate, recordings, and the two session WebSockets."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response, WebSocket
from pydantic import Field

from corral.errors import AccessDeniedError, AuthError, NotFoundError, ValidationError
from corral.server.api.common import RequestModel, iso
from corral.server.auth import Caller, authorize, node_context
from corral.server.context import Ctx, ServerContext, get_context
from corral.sessions.tunnel import DEFAULT_HOST
from corral.store import NewSession, SessionRecord

logger = logging.getLogger(__name__)

router = APIRouter(tags=["sessions"])

_OS_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
DEFAULT_OS_USER = "default"  # the policy resource when no user is asked for: osuser:default
# A host name, an IPv4 address or an IPv6 address (no brackets), as the node resolves it.
_HOST = r"^[A-Za-z0-9_.:%-]{1,255}$"


class SessionCreate(RequestModel):
    """Body of `POST /api/v1/sessions`: a shell, or (`kind` "port") a port forward."""

    node_id: str = Field(pattern=r"^mi-[0-9a-f]{17}$")
    kind: Literal["shell", "port"] = "shell"
    user: str | None = Field(default=None, max_length=32)
    command: str | None = Field(default=None, min_length=1, max_length=4096)
    cols: int = Field(default=80, ge=1, le=10_000)
    rows: int = Field(default=24, ge=1, le=10_000)
    # Port forwards: the target, as seen from the node (host default: localhost).
    host: str | None = Field(default=None, pattern=_HOST)
    port: int | None = Field(default=None, ge=1, le=65535)


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
        "target_host": record.target_host,
        "target_port": record.target_port,
        "connections": record.connections,
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
    """Open a session on a node: `session:Start` on the node, and on the account for a
    shell (`osuser:NAME`) or on the target for a forward (`port:HOST:PORT`)."""
    if caller.principal.kind != "user":
        raise AccessDeniedError(f"{caller.principal.label} cannot start sessions")
    new = _new_session(body, caller.principal.label)
    node = node_context(await context.store.get_node(body.node_id))
    caller.require("session:Start", f"node:{body.node_id}", node)
    if new.kind == "shell":
        caller.require("session:Start", f"osuser:{body.user or DEFAULT_OS_USER}", node)
    else:  # where the forward goes, as the node sees it
        caller.require("session:Start", f"port:{new.target_host}:{new.target_port}", node)
    grant = caller.principal.grants[0].id if caller.principal.grants else None
    new = dataclasses.replace(new, grant_id=grant)
    record = await context.sessions.open(new, body.cols, body.rows)
    caller.check("session:Start", f"session:{record.id}")
    if new.kind == "port":
        caller.note(
            session_id=record.id, kind="port", target=f"{new.target_host}:{new.target_port}"
        )
    else:
        caller.note(session_id=record.id)
    # How long the client may take to reconnect a dropped stream (it is not stored).
    grace = context.config.session_resume_grace_seconds
    return {**session_json(record), "resume_grace_seconds": grace}


def _new_session(body: SessionCreate, owner: str) -> NewSession:
    """The session a valid body asks for (ValidationError naming the field otherwise)."""
    if body.kind == "port":
        for name in ("user", "command"):
            if getattr(body, name) is not None:
                raise ValidationError(f"{name} is for shell sessions, not port forwards", name)
        if body.port is None:
            raise ValidationError("a port session needs the port to forward to", "port")
        return NewSession(
            body.node_id,
            "port",
            owner,
            target_host=body.host or DEFAULT_HOST,
            target_port=body.port,
        )
    for name in ("host", "port"):
        if getattr(body, name) is not None:
            raise ValidationError(f'{name} is for port sessions (kind "port")', name)
    if body.user is not None and not _OS_USER.match(body.user):
        raise ValidationError(f"user {body.user[:40]!r} is not a valid account name", "user")
    return NewSession(body.node_id, "shell", owner, os_user=body.user, command=body.command)


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


async def observe_stream(websocket: WebSocket, session_id: str) -> None:
    """WS /api/v1/sessions/{id}/observe: watch a live shell read-only.

    Needs `session:Observe` on `session:ID` (with the node's tags); the owner is told
    who is watching, and the audit log records it.
    """
    context = get_context(websocket)  # type: ignore[arg-type]
    try:
        principal = await context.auth.authenticate_websocket(websocket)
        record = await context.store.get_session(session_id[:40])
        node = await context.store.get_node(record.node_id, include_deregistered=True)
        caller = Caller(principal, None)
        if record.owner != principal.label:
            caller.require("session:Observe", f"session:{record.id}", node_context(node))
    except (AuthError, NotFoundError) as error:
        logger.warning(
            "session observe refused session_id=%s error=%s", session_id[:40], error.message
        )
        context.audit.event(
            "session:Observe",
            [f"session:{session_id[:40]}"],
            principal="anonymous",
            outcome="denied",
            error=error.message,
        )
        await websocket.close(1008)
        return

    def cancel(reason: str) -> None:
        context.sessions.spawn(websocket.close(1008))

    handle = context.auth.streams.open(principal, cancel)
    try:
        await context.sessions.serve_observer(websocket, record.id, principal.label)
    finally:
        context.auth.streams.close(handle)
