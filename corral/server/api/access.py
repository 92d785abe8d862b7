"""Just-in-time access: requests, approvals, grants and evidence.

A request asks for a role on target nodes for a duration, with a reason. Approvers
need `access:Approve` on `role:ROLE` for every node the targets match now (so tag
conditions scope who may approve what); nobody approves their own request. A
requester whose policy allows `access:AutoApprove` on the role for every target node
is approved at once. An approved request is a grant: the role's statements apply to
the target nodes until it expires or is revoked. Records of everything done under a
grant, and of the request's own life, carry its id (`grant_id`) in the audit log.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from corral.errors import AccessDeniedError, ConflictError, ValidationError
from corral.server.api.audit import record_json
from corral.server.api.common import RequestModel, iso
from corral.server.api.nodes import resolve_targets
from corral.server.auth import Caller, authenticated, authorize, node_context
from corral.server.context import Ctx, ServerContext
from corral.server.targets import parse_targets
from corral.store import AccessRequestRecord, AuditQuery

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/access/requests", tags=["access"])

AUTO_APPROVER = "auto-approval"
STATUSES = ("pending", "approved", "denied", "revoked", "expired")


class AccessRequestCreate(RequestModel):
    """Body of `POST /api/v1/access/requests`."""

    targets: list[str] = Field(min_length=1, max_length=1000)
    role: str = Field(min_length=1, max_length=64)
    duration_seconds: int = Field(ge=1, le=10**9)
    reason: str = Field(min_length=1, max_length=1024)


class Decision(RequestModel):
    """Body of approve and deny."""

    comment: str = Field(default="", max_length=1024)


def resource_of(request: AccessRequestRecord) -> str:
    """The policy resource naming a request: `access:REQUESTER/ID`."""
    return f"access:{request.requester}/{request.id}"


def access_json(request: AccessRequestRecord, now: float | None = None) -> dict[str, object]:
    """A request as the API shows it."""
    now = time.time() if now is None else now
    return {
        "request_id": request.id,
        "requester": request.requester,
        "role": request.role,
        "targets": request.targets,
        "duration_seconds": request.duration_seconds,
        "reason": request.reason,
        "status": request.effective_status(now),
        "created_at": iso(request.created_at),
        "decided_at": iso(request.decided_at),
        "decided_by": request.decided_by,
        "comment": request.comment,
        "expires_at": iso(request.expires_at),
        "revoked_at": iso(request.revoked_at),
        "revoked_by": request.revoked_by,
    }


def _requester(caller: Caller) -> str:
    if caller.principal.kind != "user":
        raise AccessDeniedError(f"{caller.principal.label} cannot request access")
    return caller.principal.name


async def _may_decide(context: ServerContext, caller: Caller, request: AccessRequestRecord) -> None:
    """AccessDeniedError unless the caller may approve this request on every target node."""
    if caller.principal.kind == "user" and caller.principal.name == request.requester:
        raise AccessDeniedError("you cannot approve or deny your own access request")
    nodes = await resolve_targets(context, request.targets)
    if not nodes:
        raise ConflictError(f"the targets of {request.id} match no registered node any more")
    for node in nodes:
        caller.require("access:Approve", f"role:{request.role}", node_context(node))


@router.post("", status_code=201)
async def create_request(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("access:Request"))],
    body: AccessRequestCreate,
) -> dict[str, object]:
    """Ask for a role on target nodes; approved at once when an auto-approval rule allows."""
    requester = _requester(caller)
    caller.require("access:Request", f"role:{body.role}")
    parse_targets(body.targets)
    limit = context.config.access_max_duration_seconds
    if body.duration_seconds > limit:
        raise ValidationError(
            f"duration_seconds must be at most {int(limit)} (the server's limit)",
            "duration_seconds",
        )
    if not body.reason.strip():
        raise ValidationError("a reason is required", "reason")
    await context.store.get_role(body.role)
    nodes = await resolve_targets(context, body.targets)
    if not nodes:
        raise ValidationError("the targets match no registered node", "targets")
    request = await context.store.create_access_request(
        requester, body.role, body.targets, body.duration_seconds, body.reason.strip()
    )
    _link(caller, request)
    auto = all(
        caller.decide("access:AutoApprove", f"role:{body.role}", node_context(n)).allowed
        for n in nodes
    )
    if auto:
        request = await context.store.decide_access_request(
            request.id, True, AUTO_APPROVER, "approved by an auto-approval rule"
        )
        context.auth.invalidate()
        context.audit.event(
            "access:Approve",
            [resource_of(request), f"role:{request.role}"],
            principal=AUTO_APPROVER,
            details={"grant_id": request.id, "requester": requester},
        )
        caller.note(auto_approved=True)
    logger.info(
        "access requested request_id=%s requester=%s role=%s status=%s",
        request.id,
        requester,
        request.role,
        request.status,
    )
    return access_json(request)


def _link(caller: Caller, request: AccessRequestRecord) -> None:
    """Tie this call's audit record to the request (its evidence lists it)."""
    caller.link(resource_of(request), request.id)


@router.get("")
async def list_requests(
    context: Ctx,
    caller: Annotated[Caller, Depends(authenticated("access:List"))],
    status: Annotated[str | None, Query(max_length=16)] = None,
    mine: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, object]]:
    """Requests the caller may see: its own, all with `access:List`, pending ones it may approve.

    Any principal may call this (the filter is the policy): approvers whose role only
    allows `access:Approve` still see what waits for them.
    """
    if status is not None and status not in STATUSES:
        raise ValidationError(f"status must be one of {', '.join(STATUSES)}", "status")
    now = time.time()
    stored_status = "approved" if status == "expired" else status
    requester = caller.principal.name if mine and caller.principal.kind == "user" else None
    out: list[dict[str, object]] = []
    offset = 0
    page_size = max(limit, 100)
    # Filter page by page (visibility and expiry are decided here, not in the query)
    # until `limit` requests are found or none are left.
    while len(out) < limit:
        page = await context.store.list_access_requests(requester, stored_status, page_size, offset)
        offset += len(page)
        for r in page:
            if status is not None and r.effective_status(now) != status:
                continue
            own = caller.principal.kind == "user" and r.requester == caller.principal.name
            if (
                own
                or caller.decide("access:List", resource_of(r)).allowed
                or (r.status == "pending" and await _could_approve(context, caller, r))
            ):
                out.append(access_json(r, now))
                if len(out) == limit:
                    break
        if len(page) < page_size:
            break
    return out


async def _could_approve(
    context: ServerContext, caller: Caller, request: AccessRequestRecord
) -> bool:
    if caller.principal.kind == "user" and caller.principal.name == request.requester:
        return False
    nodes = await resolve_targets(context, request.targets)
    return bool(nodes) and all(
        caller.decide("access:Approve", f"role:{request.role}", node_context(n)).allowed
        for n in nodes
    )


async def _readable(context: ServerContext, caller: Caller, request_id: str) -> AccessRequestRecord:
    request = await context.store.get_access_request(request_id[:64])
    own = caller.principal.kind == "user" and request.requester == caller.principal.name
    if not own and not await _could_approve(context, caller, request):
        caller.require("access:Read", resource_of(request))
    _link(caller, request)
    return request


@router.get("/{request_id}")
async def get_request(
    context: Ctx,
    caller: Annotated[Caller, Depends(authenticated("access:Read"))],
    request_id: str,
) -> dict[str, object]:
    """One request."""
    return access_json(await _readable(context, caller, request_id))


async def _decide(
    context: ServerContext, caller: Caller, request_id: str, approve: bool, body: Decision | None
) -> dict[str, object]:
    request = await context.store.get_access_request(request_id[:64])
    _link(caller, request)
    await _may_decide(context, caller, request)
    comment = body.comment if body is not None else ""
    request = await context.store.decide_access_request(
        request.id, approve, caller.principal.label, comment
    )
    context.auth.invalidate()
    return access_json(request)


@router.post("/{request_id}/approve")
async def approve_request(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("access:Approve", grant_param="request_id"))],
    request_id: str,
    body: Decision | None = None,
) -> dict[str, object]:
    """Approve a pending request: the grant starts now and ends after its duration."""
    return await _decide(context, caller, request_id, True, body)


@router.post("/{request_id}/deny")
async def deny_request(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("access:Approve", grant_param="request_id"))],
    request_id: str,
    body: Decision | None = None,
) -> dict[str, object]:
    """Deny a pending request."""
    return await _decide(context, caller, request_id, False, body)


@router.post("/{request_id}/revoke")
async def revoke_request(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("access:Revoke", grant_param="request_id"))],
    request_id: str,
) -> dict[str, object]:
    """End a grant now (or withdraw a pending request); open streams under it end."""
    request = await context.store.get_access_request(request_id[:64])
    _link(caller, request)
    caller.require("access:Revoke", resource_of(request))
    request = await context.store.revoke_access_request(request.id, caller.principal.label)
    context.auth.invalidate()
    ended = context.auth.streams.end_for(f"grant {request.id} was revoked", grant_id=request.id)
    caller.note(streams_ended=ended)
    return access_json(request)


@router.get("/{request_id}/evidence")
async def evidence(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("access:Read"))],
    request_id: str,
) -> dict[str, object]:
    """The request, its decisions and every audited action linked to it, as one document."""
    request = await _readable(context, caller, request_id)
    caller.require("audit:Read", "audit:log")
    await context.audit.flush()
    records: list[dict[str, object]] = []
    after = 0
    while True:
        page = await context.store.list_audit(
            AuditQuery(grant_id=request.id, after_seq=after), 1000, newest_first=False
        )
        records.extend(record_json(r) for r in page)
        if len(page) < 1000:
            break
        after = page[-1].seq
    decisions = []
    if request.decided_at is not None:
        decisions.append(
            {
                "decision": "approved" if request.expires_at is not None else "denied",
                "by": request.decided_by,
                "at": iso(request.decided_at),
                "comment": request.comment,
            }
        )
    return {
        "request": access_json(request),
        "decisions": decisions,
        "revocation": (
            {"by": request.revoked_by, "at": iso(request.revoked_at)}
            if request.revoked_at is not None
            else None
        ),
        "actions": records,
        "exported_at": iso(time.time()),
    }
