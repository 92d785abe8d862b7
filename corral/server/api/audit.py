"""The audit log: list, export, verify and checkpoint."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from corral.errors import ValidationError
from corral.server.auth import authorize
from corral.server.context import Ctx
from corral.store import AuditQuery, AuditRecordRow

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])

AUDIT = "audit:log"
OUTCOMES = ("allowed", "denied", "failed")


def iso_us(time_us: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC with microseconds and a `Z`."""
    moment = datetime.fromtimestamp(time_us / 1_000_000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None, field: str) -> int | None:
    """An ISO 8601 time (naive means UTC) as epoch microseconds."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"{field} must be an ISO 8601 time, got {value[:40]!r}", field
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def record_json(row: AuditRecordRow) -> dict[str, object]:
    """One record as the API and the export show it."""
    e = row.entry
    return {
        "seq": row.seq,
        "time": iso_us(e.time_us),
        "time_us": e.time_us,
        "request_id": e.request_id,
        "principal": e.principal,
        "token_id": e.token_id,
        "action": e.action,
        "resources": e.resources,
        "source": e.source,
        "outcome": e.outcome,
        "error": e.error,
        "grant_id": e.grant_id,
        "details": e.details,
        "hash": row.hash,
    }


def _query(
    since: str | None,
    until: str | None,
    principal: str | None,
    action: str | None,
    outcome: str | None,
    grant_id: str | None,
) -> AuditQuery:
    if outcome is not None and outcome not in OUTCOMES:
        raise ValidationError(f"outcome must be one of {', '.join(OUTCOMES)}", "outcome")
    return AuditQuery(
        since_us=parse_time(since, "since"),
        until_us=parse_time(until, "until"),
        principal=principal,
        action=action,
        outcome=outcome,
        grant_id=grant_id,
    )


Filter = Annotated[str | None, Query(max_length=128)]


@router.get("", dependencies=[Depends(authorize("audit:Read", AUDIT))])
async def list_audit(
    context: Ctx,
    since: Filter = None,
    until: Filter = None,
    principal: Filter = None,
    action: Filter = None,
    outcome: Filter = None,
    grant_id: Filter = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, object]:
    """Newest records first; pass `next_before` back as `before` for the next page."""
    query = _query(since, until, principal, action, outcome, grant_id)
    query = dataclasses.replace(query, before_seq=before)
    rows = await context.store.list_audit(query, limit + 1)  # one more: is there a next page?
    page = rows[:limit]
    return {
        "records": [record_json(r) for r in page],
        "next_before": page[-1].seq if len(rows) > limit else None,
    }


@router.get("/export", dependencies=[Depends(authorize("audit:Read", AUDIT))])
async def export_audit(
    context: Ctx,
    since: Filter = None,
    until: Filter = None,
    principal: Filter = None,
    action: Filter = None,
    outcome: Filter = None,
    grant_id: Filter = None,
) -> StreamingResponse:
    """Every matching record, oldest first, one JSON object per line (with its hash)."""
    base = _query(since, until, principal, action, outcome, grant_id)
    await context.audit.flush()

    async def lines() -> AsyncIterator[bytes]:
        after = 0
        while True:
            page = await context.store.list_audit(
                dataclasses.replace(base, after_seq=after), 1000, newest_first=False
            )
            for row in page:
                yield (json.dumps(record_json(row), ensure_ascii=False) + "\n").encode()
            if len(page) < 1000:
                return
            after = page[-1].seq

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/verify", dependencies=[Depends(authorize("audit:Verify", AUDIT))])
async def verify_audit(context: Ctx) -> dict[str, object]:
    """Recompute the chain and check it against every signed checkpoint."""
    report = await context.audit.verify()
    return {
        "ok": report.ok,
        "records": report.records,
        "head_hash": report.head_hash,
        "checkpoints": report.checkpoints,
        "first_bad_seq": report.first_bad_seq,
        "problem": report.problem,
        "checkpoint_public_key": context.audit.public_key_hex,
    }


@router.post("/checkpoint", dependencies=[Depends(authorize("audit:Checkpoint", AUDIT))])
async def checkpoint_audit(context: Ctx) -> dict[str, object]:
    """Write a signed checkpoint of the current head now."""
    checkpoint = await context.audit.checkpoint()
    return {
        "count": checkpoint.count,
        "head_hash": checkpoint.head_hash,
        "time": iso_us(checkpoint.time_us),
        "signature": checkpoint.signature,
        "checkpoint_public_key": context.audit.public_key_hex,
    }
