"""Nodes: registration (by activation code), inventory, tags and deregistration."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field

from corral.errors import AuthError, ValidationError
from corral.identity import NodeContext
from corral.protocol import ErrorMessage
from corral.server.api.common import MAX_TAGS, RequestModel, Tags, iso
from corral.server.auditing import request_audit
from corral.server.auth import Caller, authorize, node_context
from corral.server.context import Ctx, ServerContext
from corral.server.targets import parse_targets, select_nodes
from corral.store import NodeRecord

logger = logging.getLogger(__name__)

NODE = "node:{node_id}"

router = APIRouter(tags=["nodes"])


class Registration(RequestModel):
    """Body of `POST /api/v1/register`."""

    activation_id: str = Field(max_length=64)
    activation_code: str = Field(max_length=256)
    public_key: str = Field(max_length=128)
    tags: Tags = Field(default_factory=dict)


class TagsPatch(RequestModel):
    """Body of `PATCH /api/v1/nodes/{node_id}/tags`."""

    set: Tags = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list, max_length=MAX_TAGS)


def node_json(node: NodeRecord) -> dict[str, object]:
    """A node as the API shows it."""
    return {
        "node_id": node.id,
        "ping_status": node.ping_status,
        "last_seen": iso(node.last_seen),
        "hostname": node.hostname,
        "platform": {
            "type": node.platform_type,
            "name": node.platform_name,
            "version": node.platform_version,
            "kernel": node.kernel,
            "arch": node.arch,
        },
        "ip_addresses": node.ip_addresses,
        "agent_version": node.agent_version,
        "tags": node.tags,
        "registered_at": iso(node.registered_at),
        "activation_id": node.activation_id,
    }


def _public_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValidationError(
            "public_key must be a base64 raw 32-byte Ed25519 key", field="public_key"
        )
    return raw


@router.post("/api/v1/register", status_code=201)
async def register(context: Ctx, request: Request, body: Registration) -> dict[str, object]:
    """Register a node with an activation code (no token; the code is the credential)."""
    audit = request_audit(request)
    activation = f"activation:{body.activation_id[:64]}"
    if audit is not None:
        audit.action, audit.principal = "node:Register", activation
        audit.add_resource(activation)
    source = request.client.host if request.client else "unknown"
    now = time.time()
    context.auth.throttle.check(source, now)
    public_key = _public_key(body.public_key)
    try:
        node = await context.store.register_node(
            body.activation_id, body.activation_code, public_key, body.tags
        )
    except (AuthError, ValidationError):
        context.auth.throttle.failed(source, now)
        raise
    if audit is not None:
        audit.add_resource(f"node:{node.id}")
    logger.info("node registered node_id=%s activation_id=%s", node.id, body.activation_id)
    return {"node_id": node.id}


async def resolve_targets(context: ServerContext, targets: list[str] | None) -> list[NodeRecord]:
    """The registered nodes `targets` select (all nodes for an empty list)."""
    nodes = await context.store.list_nodes()
    if not targets:
        return nodes
    spec = parse_targets(targets)
    chosen = set(select_nodes(spec, ((n.id, n.tags) for n in nodes)))
    return [n for n in nodes if n.id in chosen]


@router.get("/api/v1/nodes")
async def list_nodes(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("node:List"))],
    targets: Annotated[list[str] | None, Query()] = None,
) -> list[dict[str, object]]:
    """The registered nodes (or those `targets` select) the caller may see."""
    nodes = await resolve_targets(context, targets)
    return [
        node_json(n)
        for n in nodes
        if caller.decide("node:List", f"node:{n.id}", node_context(n)).allowed
    ]


@router.get("/api/v1/nodes/{node_id}", dependencies=[Depends(authorize("node:Read", NODE))])
async def get_node(context: Ctx, node_id: str) -> dict[str, object]:
    """One node."""
    return node_json(await context.store.get_node(node_id))


@router.patch("/api/v1/nodes/{node_id}/tags")
async def patch_tags(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("node:Tag", NODE))],
    node_id: str,
    body: TagsPatch,
) -> dict[str, object]:
    """Set and remove tags; the caller must be allowed to tag the node as it ends up, too."""
    node = await context.store.get_node(node_id)
    after = {k: v for k, v in node.tags.items() if k not in body.remove} | body.set
    caller.require("node:Tag", f"node:{node_id}", NodeContext(node_id, after))
    return node_json(await context.store.update_node_tags(node_id, body.set, body.remove))


@router.delete(
    "/api/v1/nodes/{node_id}",
    status_code=204,
    dependencies=[Depends(authorize("node:Deregister", NODE))],
)
async def deregister(context: Ctx, node_id: str) -> Response:
    """Deregister a node: its key stops working and its unfinished work fails."""
    await context.store.deregister_node(node_id)
    context.dispatcher.node_deregistered(node_id)
    await context.bus.publish(node_id, ErrorMessage("deregistered", "the node was deregistered"))
    logger.info("node deregistered node_id=%s", node_id)
    return Response(status_code=204)
