"""Parameter Store, native API: a thin layer over `corral.params.ParameterService`.

Names travel in query strings and bodies (not paths), since they contain `/`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from corral.errors import ValidationError
from corral.params import HistoryEntry, ParameterValue, PutRequest
from corral.server.api.common import RequestModel, Tags, iso
from corral.server.auth import Caller, authorize
from corral.server.context import Ctx
from corral.store import ParameterRecord
from corral.store.params import ParameterFilter

router = APIRouter(prefix="/api/v1", tags=["parameters"])

NameQuery = Annotated[str, Query(min_length=1, max_length=2100)]


class PutBody(RequestModel):
    """Body of `POST /api/v1/parameters`."""

    name: str = Field(min_length=1, max_length=2100)
    value: str = Field(max_length=8192)
    type: str | None = Field(default=None, pattern="^(String|StringList|SecureString)$")
    key_id: str | None = Field(default=None, max_length=128)
    overwrite: bool = False
    description: str | None = Field(default=None, max_length=1024)
    allowed_pattern: str | None = Field(default=None, max_length=1024)
    tags: Tags = Field(default_factory=dict)
    tier: str | None = Field(default=None, pattern="^(Standard|Advanced|Intelligent-Tiering)$")
    policies: str | None = Field(default=None, max_length=4096)


class NamesBody(RequestModel):
    """Body with several names (get many, delete)."""

    names: list[str] = Field(min_length=1, max_length=10)
    decrypt: bool = False


class LabelBody(RequestModel):
    """Body of label and unlabel."""

    name: str = Field(min_length=1, max_length=2100)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    labels: list[str] = Field(min_length=1, max_length=10)


class TagsBody(RequestModel):
    """Body of `PATCH /api/v1/parameters/tags`."""

    name: str = Field(min_length=1, max_length=2100)
    add: Tags = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list, max_length=50)


class KeyBody(RequestModel):
    """Body of `POST /api/v1/keys`."""

    name: str = Field(min_length=1, max_length=64)


def value_json(v: ParameterValue) -> dict[str, object]:
    """A parameter version as returned (a SecureString's value is sealed unless decrypted)."""
    return {
        "name": v.name,
        "type": v.type,
        "value": v.value,
        "version": v.version,
        "labels": v.labels,
        "last_modified": iso(v.last_modified),
        "data_type": v.data_type,
        "selector": v.selector,
        "decrypted": v.decrypted,
    }


def policy_status(meta: ParameterRecord) -> list[dict[str, object]]:
    """Each policy with its status (Pending until it fired, then Finished)."""
    fired = set(filter(None, meta.notified.split(",")))
    out: list[dict[str, object]] = []
    for policy in meta.policies:
        kind = str(policy.get("Type"))
        out.append(
            {
                "type": kind,
                "status": "Finished" if kind in fired else "Pending",
                "policy_text": json.dumps(policy, sort_keys=True),
            }
        )
    return out


def meta_json(meta: ParameterRecord) -> dict[str, object]:
    """A parameter's metadata (no value)."""
    return {
        "name": meta.name,
        "type": meta.type,
        "key_id": meta.key_id,
        "tier": meta.tier,
        "data_type": meta.data_type,
        "description": meta.description,
        "allowed_pattern": meta.allowed_pattern,
        "version": meta.version,
        "last_modified": iso(meta.last_modified),
        "last_modified_by": meta.last_modified_by,
        "tags": meta.tags,
        "policies": policy_status(meta),
        "expires_at": iso(meta.expires_at),
    }


def history_json(h: HistoryEntry) -> dict[str, object]:
    """One version in a history."""
    return {
        **value_json(h.value),
        "key_id": h.key_id,
        "description": h.description,
        "allowed_pattern": h.allowed_pattern,
        "tier": h.tier,
        "policies": h.policies,
        "last_modified_by": h.last_modified_by,
    }


def tag_filters(tags: list[str] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`K=V1,V2` (one of the values) or `K` (any value) filters."""
    out = []
    for i, spec in enumerate(tags or []):
        key, sep, values = spec.partition("=")
        if not key:
            raise ValidationError(f"tag filter {spec!r} must be KEY or KEY=V1,V2", f"tag[{i}]")
        out.append((key, tuple(v for v in values.split(",") if v) if sep else ()))
    return tuple(out)


@router.post("/parameters", status_code=201)
async def put_parameter(
    context: Ctx, caller: Annotated[Caller, Depends(authorize("parameter:Put"))], body: PutBody
) -> dict[str, object]:
    """Create a parameter, or add a version with `overwrite`."""
    result = await context.params.put(
        caller,
        PutRequest(
            name=body.name,
            value=body.value,
            type=body.type,
            key_id=body.key_id,
            overwrite=body.overwrite,
            description=body.description,
            allowed_pattern=body.allowed_pattern,
            tags=body.tags,
            tier=body.tier,
            policies=body.policies,
        ),
    )
    return {"name": result.name, "version": result.version, "tier": result.tier}


@router.get("/parameters/value")
async def get_parameter(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("parameter:Get"))],
    name: NameQuery,
    decrypt: bool = False,
) -> dict[str, object]:
    """One parameter: `name` is `NAME`, `NAME:VERSION` or `NAME:LABEL`."""
    return value_json(await context.params.get(caller, name, decrypt))


@router.post("/parameters/values")
async def get_parameters(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("parameter:Get"))],
    body: NamesBody,
) -> dict[str, object]:
    """Up to 10 parameters; names that do not resolve are listed as `invalid`."""
    found, invalid = await context.params.get_many(caller, body.names, body.decrypt)
    return {"parameters": [value_json(v) for v in found], "invalid": invalid}


@router.get("/parameters/by-path")
async def get_by_path(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("parameter:Get"))],
    path: NameQuery,
    recursive: bool = False,
    decrypt: bool = False,
    max_results: Annotated[int, Query(ge=1, le=50)] = 10,
    next_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> dict[str, object]:
    """The latest versions under a path (one level, or all with `recursive`)."""
    page = await context.params.get_by_path(
        caller, path, recursive, decrypt, max_results, next_token
    )
    return {"parameters": [value_json(v) for v in page.items], "next_token": page.next_token}


@router.get("/parameters")
async def describe_parameters(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("parameter:List"))],
    path: Annotated[str | None, Query(max_length=2100)] = None,
    recursive: bool = True,
    type: Annotated[str | None, Query(pattern="^(String|StringList|SecureString)$")] = None,
    key_id: Annotated[str | None, Query(max_length=128)] = None,
    tag: Annotated[list[str] | None, Query()] = None,
    max_results: Annotated[int, Query(ge=1, le=50)] = 50,
    next_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> dict[str, object]:
    """Metadata of parameters (no values), filtered by path, type, key and tags."""
    from corral.params.names import validate_path

    filters = ParameterFilter(
        path=validate_path(path) if path else None,
        recursive=recursive,
        types=(type,) if type else (),
        key_ids=(key_id,) if key_id else (),
        tags=tag_filters(tag),
    )
    page = await context.params.describe(caller, filters, max_results, next_token)
    return {"parameters": [meta_json(m) for m in page.items], "next_token": page.next_token}


@router.get("/parameters/history")
async def parameter_history(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("parameter:Get"))],
    name: NameQuery,
    decrypt: bool = False,
    max_results: Annotated[int, Query(ge=1, le=50)] = 50,
    next_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> dict[str, object]:
    """Every kept version, oldest first."""
    page = await context.params.history(caller, name, decrypt, max_results, next_token)
    return {"versions": [history_json(h) for h in page.items], "next_token": page.next_token}


@router.post("/parameters/label")
async def label_parameter(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("parameter:Label"))],
    body: LabelBody,
) -> dict[str, object]:
    """Attach labels to a version (default: the latest); each label moves to it."""
    version, invalid = await context.params.label(caller, body.name, body.version, body.labels)
    return {"name": body.name.strip(), "version": version, "invalid_labels": invalid}


@router.post("/parameters/unlabel")
async def unlabel_parameter(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("parameter:Label"))],
    body: LabelBody,
) -> dict[str, object]:
    """Remove labels from a version."""
    if body.version is None:
        raise ValidationError("version is required to remove labels", "version")
    removed, invalid = await context.params.unlabel(caller, body.name, body.version, body.labels)
    return {"removed_labels": removed, "invalid_labels": invalid}


@router.post("/parameters/delete")
async def delete_parameters(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("parameter:Delete"))],
    body: NamesBody,
) -> dict[str, object]:
    """Delete parameters (every version); unknown names are listed as `invalid`."""
    deleted, invalid = await context.params.delete(caller, body.names)
    return {"deleted": deleted, "invalid": invalid}


@router.get("/parameters/tags")
async def parameter_tags(
    context: Ctx, caller: Annotated[Caller, Depends(authorize("parameter:List"))], name: NameQuery
) -> dict[str, object]:
    """A parameter's tags."""
    return {"tags": await context.params.tags(caller, name)}


@router.patch("/parameters/tags")
async def tag_parameter(
    context: Ctx, caller: Annotated[Caller, Depends(authorize("parameter:Tag"))], body: TagsBody
) -> dict[str, object]:
    """Add and remove tags."""
    return {"tags": await context.params.tag(caller, body.name, body.add, body.remove)}


def key_json(info: object) -> dict[str, object]:
    """A key's metadata (never its material)."""
    from corral.params import KeyInfo

    assert isinstance(info, KeyInfo)
    return {
        "name": info.name,
        "current_version": info.current_version,
        "versions": info.versions,
        "created_at": iso(info.created_at),
        "rotated_at": iso(info.rotated_at),
    }


@router.post("/keys", status_code=201, dependencies=[Depends(authorize("key:Create", "key:*"))])
async def create_key(context: Ctx, body: KeyBody) -> dict[str, object]:
    """Create a key-encryption key (its material stays in the key directory)."""
    return key_json(await asyncio.to_thread(context.params.keyring.create, body.name))


@router.get("/keys", dependencies=[Depends(authorize("key:List", "key:*"))])
async def list_keys(context: Ctx) -> list[dict[str, object]]:
    """Every key-encryption key."""
    return [key_json(k) for k in await asyncio.to_thread(context.params.keyring.list)]


@router.post("/keys/{name}/rotate", dependencies=[Depends(authorize("key:Rotate", "key:{name}"))])
async def rotate_key(context: Ctx, name: str) -> dict[str, object]:
    """Add a new key version and re-wrap every data key under it (reads keep working)."""
    version, rewrapped = await context.params.rotate_key(name)
    info = await asyncio.to_thread(context.params.keyring.info, name)
    return {**key_json(info), "current_version": version, "rewrapped": rewrapped}
