"""Run Command: send a document to nodes, follow, cancel and read output."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from corral.blobs import output_key
from corral.documents import MAX_TIMEOUT_SECONDS, parse_document, render_command
from corral.errors import AccessDeniedError, ValidationError
from corral.identity import NodeContext
from corral.protocol import counts_as_error, is_final
from corral.protocol.invocation import Detail
from corral.server.api.common import RequestModel, iso
from corral.server.api.documents import parse_version
from corral.server.api.nodes import resolve_targets
from corral.server.auth import Caller, authorize, node_context
from corral.server.config import ServerConfig
from corral.server.context import Ctx, ServerContext
from corral.server.ratecontrol import validate_limit
from corral.server.references import resolve_command_parameters, resolver
from corral.store import CommandRecord, InvocationRecord, NewCommand, initial_invocations

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/commands", tags=["commands"])

MAX_OUTPUT_PAGE = 4 * 1024 * 1024


class CommandSend(RequestModel):
    """Body of `POST /api/v1/commands`."""

    document_name: str = Field(min_length=1, max_length=128)
    document_version: int | str | None = None
    targets: list[str] = Field(min_length=1, max_length=1000)
    parameters: dict[str, object] = Field(default_factory=dict)
    max_concurrency: str = "50"
    max_errors: str = "0"
    timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_SECONDS)
    delivery_timeout_seconds: int = Field(default=600, ge=1, le=MAX_TIMEOUT_SECONDS)
    comment: str = Field(default="", max_length=256)


class CancelRequest(BaseModel):
    """Body of `POST /api/v1/commands/{command_id}/cancel`."""

    node_id: str | None = None


def utf8_boundary(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: keep looking for the sequence's start
        if byte < 0x80:
            need = 1
        elif byte >> 5 == 0b110:
            need = 2
        elif byte >> 4 == 0b1110:
            need = 3
        else:
            need = 4
        return len(data) if back >= need else len(data) - back
    return len(data)


def invocation_json(inv: InvocationRecord, config: ServerConfig) -> dict[str, object]:
    """An invocation as the API shows it."""
    return {
        "command_id": inv.command_id,
        "node_id": inv.node_id,
        "status": inv.status,
        "status_details": inv.status_details,
        "response_code": inv.response_code,
        "stdout": inv.stdout_head,
        "stderr": inv.stderr_head,
        "stdout_truncated": inv.stdout_bytes > len(inv.stdout_head.encode("utf-8")),
        "stderr_truncated": inv.stderr_bytes > len(inv.stderr_head.encode("utf-8")),
        "stdout_bytes": inv.stdout_bytes,
        "stderr_bytes": inv.stderr_bytes,
        "requested_at": iso(inv.requested_at),
        "started_at": iso(inv.started_at),
        "ended_at": iso(inv.ended_at),
        "dispatched_at": iso(inv.sent_at),
        "updated_at": iso(inv.updated_at),
        "steps": inv.steps,
        "message": inv.message,
    }


def command_json(record: CommandRecord, counts: dict[tuple[str, str], int]) -> dict[str, object]:
    """A command (without invocations) as the API shows it."""
    status_counts: dict[str, int] = {}
    for (status, _detail), number in counts.items():
        status_counts[status] = status_counts.get(status, 0) + number
    return {
        "command_id": record.id,
        "document_name": record.document_name,
        "document_version": record.document_version,
        "comment": record.comment,
        "parameters": record.parameters,
        "targets": record.targets,
        "status": record.status,
        "status_details": record.status_details,
        "max_concurrency": record.max_concurrency,
        "max_errors": record.max_errors,
        "timeout_seconds": record.timeout_seconds,
        "delivery_timeout_seconds": record.delivery_timeout_seconds,
        "requested_at": iso(record.requested_at),
        "requested_by": record.requested_by or None,
        "parameter_references": record.references,
        "completed_at": iso(record.completed_at),
        "target_count": record.target_count,
        "completed_count": sum(n for (s, _d), n in counts.items() if is_final(s)),
        "error_count": sum(n for (_s, d), n in counts.items() if counts_as_error(d)),
        "delivery_timed_out_count": sum(
            n for (_s, d), n in counts.items() if d == Detail.DELIVERY_TIMED_OUT
        ),
        "status_counts": status_counts,
    }


async def _node_contexts(context: ServerContext) -> dict[str, NodeContext]:
    return {n.id: node_context(n) for n in await context.store.list_nodes()}


def _visible(
    caller: Caller,
    action: str,
    record: CommandRecord,
    node_ids: list[str],
    nodes: dict[str, NodeContext],
) -> set[str] | None:
    """The nodes whose invocations the caller may see (None: all of them)."""
    resource = f"command:{record.id}"
    if caller.decide(action, resource).allowed or record.requested_by == caller.principal.label:
        return None
    return {n for n in node_ids if caller.decide(action, resource, nodes.get(n)).allowed}


async def full_command_json(
    context: ServerContext, command_id: str, caller: Caller | None = None
) -> dict[str, object]:
    """A command with its invocations (those the caller may read)."""
    record = await context.store.get_command(command_id)
    invocations = await context.store.list_invocations(command_id)
    if caller is not None:
        nodes = await _node_contexts(context)
        visible = _visible(caller, "command:Read", record, [i.node_id for i in invocations], nodes)
        if visible is not None and not visible:
            caller.require("command:Read", f"command:{command_id}")
        caller.check("command:Read", f"command:{command_id}")
        if visible is not None:
            invocations = [i for i in invocations if i.node_id in visible]
    counts: dict[tuple[str, str], int] = {}
    for inv in invocations:
        key = (inv.status, inv.status_details)
        counts[key] = counts.get(key, 0) + 1
    body = command_json(record, counts)
    body["invocations"] = [invocation_json(i, context.config) for i in invocations]
    return body


@router.post("", status_code=201)
async def send_command(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("command:Send"))],
    body: CommandSend,
) -> dict[str, object]:
    """Validate a command, store it with one invocation per target, dispatch it.

    Every target is checked: `command:Send` on the document and on the node, with the
    node's tags. Nodes the caller may not touch get Failed/AccessDenied and are never
    contacted; when no target may be touched, nothing is stored (HTTP 403).
    """
    number, latest = parse_version(body.document_version, "document_version")
    document = await context.store.get_document(body.document_name, version=number, latest=latest)
    doc = parse_document(document.content, document.format)
    max_concurrency = validate_limit(body.max_concurrency, "max_concurrency")
    max_errors = validate_limit(body.max_errors, "max_errors")
    nodes = await resolve_targets(context, body.targets)
    if not nodes:
        raise ValidationError("the targets match no registered node", field="targets")
    doc_resource = f"document:{document.name}"
    denied: dict[str, str] = {}
    for node in nodes:
        ctx = node_context(node)
        allowed = caller.check("command:Send", doc_resource, ctx) and caller.check(
            "command:Send", f"node:{node.id}", ctx
        )
        if not allowed:
            denied[node.id] = f"{caller.principal.label} may not send {document.name} to this node"
    if len(denied) == len(nodes):
        raise AccessDeniedError(
            f"{caller.principal.label} may not send {document.name} to any of the "
            f"{len(nodes)} target node(s)"
        )
    # Parameter Store references resolve with the sender's rights; secure ones are kept
    # as references in the stored command and decrypted again only for delivery.
    params, references = await resolve_command_parameters(
        context.params, caller, doc, body.parameters
    )
    plain = {r.reference: r.value for r in references}
    render_command(doc, params, "Linux", body.timeout_seconds, reference_resolver=resolver(plain))
    new = NewCommand(
        id=str(uuid.uuid4()),
        document_name=document.name,
        document_version=document.version,
        comment=body.comment,
        parameters=params,
        targets=body.targets,
        max_concurrency=max_concurrency,
        max_errors=max_errors,
        timeout_seconds=body.timeout_seconds,
        delivery_timeout_seconds=body.delivery_timeout_seconds,
        requested_at=time.time(),
        requested_by=caller.principal.label,
        references=[r.record() for r in references],
    )
    node_ids = [n.id for n in nodes]
    record = await context.store.create_command(new, node_ids, denied)
    invocations = initial_invocations(record.id, node_ids, record.requested_at, denied)
    context.dispatcher.add_command(record, invocations, {n.id: n.platform_type for n in nodes})
    caller.check("command:Send", f"command:{record.id}")
    caller.note(command_id=record.id, access_denied_nodes=len(denied))
    logger.info(
        "command sent command_id=%s document=%s targets=%d access_denied=%d",
        record.id,
        record.document_name,
        len(node_ids),
        len(denied),
    )
    counts: dict[tuple[str, str], int] = {}
    for inv in invocations:
        counts[(inv.status, inv.status_details)] = (
            counts.get((inv.status, inv.status_details), 0) + 1
        )
    result = command_json(record, counts)
    result["invocations"] = [invocation_json(i, context.config) for i in invocations]
    return result


@router.get("")
async def list_commands(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("command:List"))],
    limit: int = Query(default=50, ge=1, le=1000),
    status: str | None = Query(default=None, max_length=16),
) -> list[dict[str, object]]:
    """Newest commands first, without invocations: those the caller may list or sent."""
    records = [
        r
        for r in await context.store.list_commands(limit, status)
        if r.requested_by == caller.principal.label
        or caller.decide("command:List", f"command:{r.id}").allowed
    ]
    counts = await context.store.invocation_counts([r.id for r in records])
    return [command_json(r, counts[r.id]) for r in records]


@router.get("/{command_id}")
async def get_command(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("command:Read"))],
    command_id: str,
) -> dict[str, object]:
    """One command with the invocations the caller may read."""
    return await full_command_json(context, command_id, caller)


@router.post("/{command_id}/cancel")
async def cancel_command(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("command:Cancel"))],
    command_id: str,
    body: CancelRequest | None = None,
) -> dict[str, object]:
    """Cancel a command (the caller must be allowed on every unfinished node), or one node's."""
    node_id = body.node_id if body is not None else None
    record = await context.store.get_command(command_id)
    nodes = await _node_contexts(context)
    resource = f"command:{command_id}"
    if node_id is not None:
        await context.store.get_invocation(command_id, node_id)
        caller.require("command:Cancel", resource, nodes.get(node_id))
    elif not caller.decide("command:Cancel", resource).allowed and (
        record.requested_by != caller.principal.label
    ):
        for inv in await context.store.list_invocations(command_id):
            if not is_final(inv.status):
                caller.require("command:Cancel", resource, nodes.get(inv.node_id))
    caller.check("command:Cancel", resource)
    await context.dispatcher.cancel(command_id, node_id)
    await context.writer.commit()
    return await full_command_json(context, command_id, caller)


@router.get(
    "/{command_id}/invocations/{node_id}/output",
)
async def get_output(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("command:Read"))],
    command_id: str,
    node_id: str,
    stream: str = Query(default="stdout", pattern="^(stdout|stderr)$"),
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=1024 * 1024, ge=1, le=MAX_OUTPUT_PAGE),
) -> dict[str, object]:
    """A page of an invocation's raw output stream."""
    record = await context.store.get_command(command_id)
    inv = await context.store.get_invocation(command_id, node_id)
    if record.requested_by != caller.principal.label:
        node = await context.store.get_node(node_id, include_deregistered=True)
        caller.require("command:Read", f"command:{command_id}", node_context(node))
    caller.check("command:Read", f"node:{node_id}")
    key = output_key(command_id, node_id, stream)
    data = await context.blobs.read(key, offset, limit)
    size = await context.blobs.size(key)
    if offset + len(data) < size:
        # Never end a page inside a UTF-8 character; the next page starts with it.
        data = data[: utf8_boundary(data)] or data
    next_offset = offset + len(data)
    return {
        "data": data.decode("utf-8", "replace"),
        "offset": offset,
        "next_offset": next_offset,
        "complete": is_final(inv.status) and next_offset >= size,
        "status": inv.status,
    }
