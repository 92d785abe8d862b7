"""Run Command: send a document to nodes, follow, cancel and read output."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from corral.blobs import output_key
from corral.documents import MAX_TIMEOUT_SECONDS, parse_document, render_command, resolve_parameters
from corral.errors import ValidationError
from corral.protocol import counts_as_error, is_final
from corral.protocol.invocation import Detail
from corral.server.api.common import RequestModel, iso
from corral.server.api.documents import parse_version
from corral.server.api.nodes import resolve_targets
from corral.server.auth import authorize
from corral.server.config import ServerConfig
from corral.server.context import Ctx, ServerContext
from corral.server.ratecontrol import validate_limit
from corral.store import CommandRecord, InvocationRecord, NewCommand

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
        "completed_at": iso(record.completed_at),
        "target_count": record.target_count,
        "completed_count": sum(n for (s, _d), n in counts.items() if is_final(s)),
        "error_count": sum(n for (_s, d), n in counts.items() if counts_as_error(d)),
        "delivery_timed_out_count": sum(
            n for (_s, d), n in counts.items() if d == Detail.DELIVERY_TIMED_OUT
        ),
        "status_counts": status_counts,
    }


async def full_command_json(context: ServerContext, command_id: str) -> dict[str, object]:
    """A command with its invocations."""
    record = await context.store.get_command(command_id)
    invocations = await context.store.list_invocations(command_id)
    counts: dict[tuple[str, str], int] = {}
    for inv in invocations:
        key = (inv.status, inv.status_details)
        counts[key] = counts.get(key, 0) + 1
    body = command_json(record, counts)
    body["invocations"] = [invocation_json(i, context.config) for i in invocations]
    return body


@router.post("", status_code=201, dependencies=[Depends(authorize("command:Send"))])
async def send_command(context: Ctx, body: CommandSend) -> dict[str, object]:
    """Validate a command, store it with one Pending invocation per target, dispatch it."""
    number, latest = parse_version(body.document_version, "document_version")
    document = await context.store.get_document(body.document_name, version=number, latest=latest)
    doc = parse_document(document.content, document.format)
    params = resolve_parameters(doc, body.parameters)
    render_command(doc, params, "Linux", body.timeout_seconds)
    max_concurrency = validate_limit(body.max_concurrency, "max_concurrency")
    max_errors = validate_limit(body.max_errors, "max_errors")
    nodes = await resolve_targets(context, body.targets)
    if not nodes:
        raise ValidationError("the targets match no registered node", field="targets")
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
    )
    node_ids = [n.id for n in nodes]
    record = await context.store.create_command(new, node_ids)
    context.dispatcher.add_command(record, node_ids, {n.id: n.platform_type for n in nodes})
    logger.info(
        "command sent command_id=%s document=%s targets=%d",
        record.id,
        record.document_name,
        len(node_ids),
    )
    invocations = [
        InvocationRecord(
            record.id,
            n,
            i,
            "Pending",
            "Pending",
            None,
            "",
            "",
            0,
            0,
            record.requested_at,
            None,
            None,
            None,
            [],
            "",
            record.requested_at,
        )
        for i, n in enumerate(node_ids)
    ]
    result = command_json(record, {("Pending", "Pending"): len(node_ids)})
    result["invocations"] = [invocation_json(i, context.config) for i in invocations]
    return result


@router.get("", dependencies=[Depends(authorize("command:List"))])
async def list_commands(
    context: Ctx,
    limit: int = Query(default=50, ge=1, le=1000),
    status: str | None = Query(default=None, max_length=16),
) -> list[dict[str, object]]:
    """Newest commands first, without invocations."""
    records = await context.store.list_commands(limit, status)
    counts = await context.store.invocation_counts([r.id for r in records])
    return [command_json(r, counts[r.id]) for r in records]


@router.get("/{command_id}", dependencies=[Depends(authorize("command:Read"))])
async def get_command(context: Ctx, command_id: str) -> dict[str, object]:
    """One command with its invocations."""
    return await full_command_json(context, command_id)


@router.post("/{command_id}/cancel", dependencies=[Depends(authorize("command:Cancel"))])
async def cancel_command(
    context: Ctx, command_id: str, body: CancelRequest | None = None
) -> dict[str, object]:
    """Cancel a command, or one node's invocation of it."""
    node_id = body.node_id if body is not None else None
    await context.store.get_command(command_id)
    if node_id is not None:
        await context.store.get_invocation(command_id, node_id)
    await context.dispatcher.cancel(command_id, node_id)
    await context.writer.commit()
    return await full_command_json(context, command_id)


@router.get(
    "/{command_id}/invocations/{node_id}/output",
    dependencies=[Depends(authorize("command:Read"))],
)
async def get_output(
    context: Ctx,
    command_id: str,
    node_id: str,
    stream: str = Query(default="stdout", pattern="^(stdout|stderr)$"),
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=1024 * 1024, ge=1, le=MAX_OUTPUT_PAGE),
) -> dict[str, object]:
    """A page of an invocation's raw output stream."""
    inv = await context.store.get_invocation(command_id, node_id)
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
