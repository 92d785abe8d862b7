"""Documents: versioned Command documents; built-ins are served read-only."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from corral.documents import (
    BUILTIN_DOCUMENTS,
    Document,
    is_reserved_name,
    parse_document,
    validate_document_name,
)
from corral.errors import NotFoundError, ValidationError
from corral.server.api.common import RequestModel, iso
from corral.server.auth import Caller, authorize
from corral.server.context import Ctx
from corral.store import DocumentMeta, DocumentRecord, Store

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/documents", tags=["documents"])
DOCUMENT = "document:{name}"
MAX_VERSION = 2**31 - 1  # versions are 32-bit integers in the database

BUILTIN_OWNER = "Corral"


class DocumentCreate(RequestModel):
    """Body of `POST /api/v1/documents`."""

    name: str
    content: str
    format: str | None = Field(default=None, pattern="^(json|yaml)$")


class DocumentUpdate(RequestModel):
    """Body of `PUT /api/v1/documents/{name}`."""

    content: str
    format: str | None = Field(default=None, pattern="^(json|yaml)$")


class DefaultVersion(BaseModel):
    """Body of `PUT /api/v1/documents/{name}/default-version`."""

    version: int = Field(ge=1, le=2**31 - 1)


def detect_format(content: str, fmt: str | None) -> str:
    """The declared format, or `json` for text that starts with `{`, else `yaml`."""
    if fmt is not None:
        return fmt
    return "json" if content.lstrip().startswith("{") else "yaml"


def meta_of(doc: Document) -> DocumentMeta:
    """What the store keeps about a parsed document."""
    return DocumentMeta(
        schema_version=doc.schema_version,
        document_type=doc.document_type,
        description=doc.description,
        parameters=dict(doc.parameters_summary()),
    )


def document_json(record: DocumentRecord, content: bool) -> dict[str, object]:
    """A document as the API shows it."""
    body: dict[str, object] = {
        "name": record.name,
        "version": record.version,
        "default_version": record.default_version,
        "latest_version": record.latest_version,
        "document_type": record.meta.document_type,
        "schema_version": record.meta.schema_version,
        "description": record.meta.description,
        "parameters": record.meta.parameters,
        "owner": record.owner,
        "created_at": iso(record.created_at),
    }
    if content:
        body["content"] = record.content
        body["format"] = record.format
    return body


def parse_version(value: str | int | None, field: str) -> tuple[int | None, bool]:
    """`3`, `$LATEST`, `$DEFAULT` or None -> (version, latest)."""
    if value is None or value == "$DEFAULT":
        return None, False
    if value == "$LATEST":
        return None, True
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        number = int(value)
        if 1 <= number <= MAX_VERSION:
            return number, False
    raise ValidationError(
        f"version must be a number from 1 to {MAX_VERSION}, $LATEST or $DEFAULT", field=field
    )


def _editable(name: str) -> None:
    if is_reserved_name(name):
        raise ValidationError(f"{name} is a built-in document and cannot be changed", field="name")


async def seed_builtins(store: Store) -> None:
    """Store the built-in documents (a new version when a built-in changed)."""
    for name, content in BUILTIN_DOCUMENTS.items():
        doc = parse_document(content, "json")
        try:
            current = await store.get_document(name, latest=True)
        except NotFoundError:
            await store.create_document(name, content, "json", meta_of(doc), owner=BUILTIN_OWNER)
            continue
        if current.content != content:
            record = await store.add_document_version(name, content, "json", meta_of(doc))
            await store.set_default_version(name, record.version)


@router.post("", status_code=201)
async def create_document(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("document:Create"))],
    body: DocumentCreate,
) -> dict[str, object]:
    """Validate and store version 1 of a document."""
    caller.require("document:Create", f"document:{body.name[:128]}")
    validate_document_name(body.name)
    _editable(body.name)
    doc = parse_document(body.content, body.format)
    fmt = detect_format(body.content, body.format)
    record = await context.store.create_document(body.name, body.content, fmt, meta_of(doc))
    logger.info("document created name=%s", body.name)
    return document_json(record, content=True)


@router.put("/{name}", dependencies=[Depends(authorize("document:Update", DOCUMENT))])
async def update_document(context: Ctx, name: str, body: DocumentUpdate) -> dict[str, object]:
    """Store a new version."""
    _editable(name)
    await context.store.get_document(name)
    doc = parse_document(body.content, body.format)
    fmt = detect_format(body.content, body.format)
    record = await context.store.add_document_version(name, body.content, fmt, meta_of(doc))
    return document_json(record, content=True)


@router.get("")
async def list_documents(
    context: Ctx, caller: Annotated[Caller, Depends(authorize("document:List"))]
) -> list[dict[str, object]]:
    """Every document the caller may list, at its default version."""
    return [
        document_json(r, content=False)
        for r in await context.store.list_documents()
        if caller.decide("document:List", f"document:{r.name}").allowed
    ]


@router.get("/{name}", dependencies=[Depends(authorize("document:Read", DOCUMENT))])
async def get_document(
    context: Ctx, name: str, version: str | None = Query(default=None)
) -> dict[str, object]:
    """One version of a document, with its content."""
    number, latest = parse_version(version, "version")
    record = await context.store.get_document(name, version=number, latest=latest)
    return document_json(record, content=True)


@router.put(
    "/{name}/default-version", dependencies=[Depends(authorize("document:Update", DOCUMENT))]
)
async def set_default_version(context: Ctx, name: str, body: DefaultVersion) -> dict[str, object]:
    """Choose the default version."""
    _editable(name)
    return document_json(await context.store.set_default_version(name, body.version), True)


@router.delete(
    "/{name}", status_code=204, dependencies=[Depends(authorize("document:Delete", DOCUMENT))]
)
async def delete_document(context: Ctx, name: str) -> Response:
    """Delete every version of a document."""
    _editable(name)
    await context.store.delete_document(name)
    return Response(status_code=204)
