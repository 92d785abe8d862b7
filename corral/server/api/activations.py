"""Activations: one-time codes with which agents register their nodes."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Response
from pydantic import Field

from corral.server.api.common import RequestModel, Tags, iso
from corral.server.auth import authorize
from corral.server.context import Ctx
from corral.store import ActivationRecord

router = APIRouter(prefix="/api/v1/activations", tags=["activations"])

DEFAULT_EXPIRES_SECONDS = 86_400
MIN_EXPIRES_SECONDS = 60
MAX_EXPIRES_SECONDS = 30 * 86_400


class ActivationCreate(RequestModel):
    """Body of `POST /api/v1/activations`."""

    description: str = Field(default="", max_length=256)
    tags: Tags = Field(default_factory=dict)
    registration_limit: int = Field(default=1, ge=1, le=1000)
    expires_seconds: int = Field(
        default=DEFAULT_EXPIRES_SECONDS, ge=MIN_EXPIRES_SECONDS, le=MAX_EXPIRES_SECONDS
    )


def activation_json(record: ActivationRecord, now: float) -> dict[str, object]:
    """An activation as the API shows it (never its code)."""
    return {
        "activation_id": record.id,
        "description": record.description,
        "tags": record.tags,
        "registration_limit": record.registration_limit,
        "registrations_count": record.registrations_count,
        "expires_at": iso(record.expires_at),
        "created_at": iso(record.created_at),
        "expired": record.expires_at <= now,
    }


@router.post(
    "", status_code=201, dependencies=[Depends(authorize("activation:Create", "activation:*"))]
)
async def create_activation(context: Ctx, body: ActivationCreate) -> dict[str, object]:
    """Create an activation; the code is in this response only.

    `ca_fingerprint` is what agents pin (`agent register --ca-fingerprint`); null without TLS.
    """
    now = time.time()
    code, record = await context.store.create_activation(
        body.description, body.tags, body.registration_limit, now + body.expires_seconds
    )
    fingerprint = context.tls.ca_fingerprint if context.tls is not None else None
    return {"activation_code": code, **activation_json(record, now), "ca_fingerprint": fingerprint}


@router.get("", dependencies=[Depends(authorize("activation:List", "activation:*"))])
async def list_activations(context: Ctx) -> list[dict[str, object]]:
    """Every activation that was not deleted."""
    now = time.time()
    return [activation_json(r, now) for r in await context.store.list_activations()]


@router.delete(
    "/{activation_id}",
    status_code=204,
    dependencies=[Depends(authorize("activation:Delete", "activation:{activation_id}"))],
)
async def delete_activation(context: Ctx, activation_id: str) -> Response:
    """Delete an activation; its code stops working."""
    await context.store.delete_activation(activation_id)
    return Response(status_code=204)
