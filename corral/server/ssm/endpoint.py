"""`POST /`: the Systems Manager wire endpoint, dispatching on `X-Amz-Target`.

The route declares one action, `ssm:Call`: any valid credential (AWS credentials
signing with SigV4, or any other Corral credential) may reach it, and each operation
is then checked by the domain service against the caller's policy, as through the
native API. The call's audit record carries the operation's Corral action (e.g.
`parameter:Get`) and `details.ssm_operation`.

A request without `X-Amz-Target` is not a Systems Manager call: it is answered in
the native API's error shape, like every other route.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from corral.errors import CorralError, ValidationError
from corral.server.auditing import request_audit
from corral.server.auth import ACTION_ATTRIBUTE, Caller
from corral.server.context import Ctx, get_context
from corral.server.sigv4 import ALGORITHM, parse_authorization
from corral.server.ssm import parameters
from corral.server.ssm.wire import (
    ACCEPTED_CONTENT_TYPES,
    CONTENT_TYPE,
    DEFAULT_REGION,
    DENIED_CODES,
    TARGET_PREFIX,
    Call,
    Operation,
    SsmError,
    wire_error,
)

# The route's declared action; every operation is then checked by the domain service.
CALL_ACTION = "ssm:Call"

# Every supported operation, by name. A new group (documents, commands, ...) adds its
# module's OPERATIONS here.
REGISTRY: dict[str, Operation[Any]] = {op.name: op for op in (*parameters.OPERATIONS,)}

router = APIRouter(tags=["ssm"])


def is_wire_call(request: Request) -> bool:
    """Whether the request speaks Systems Manager's protocol (has X-Amz-Target)."""
    return "x-amz-target" in request.headers


def _operation_name(request: Request) -> str:
    return request.headers.get("x-amz-target", "").removeprefix(TARGET_PREFIX)[:64]


async def wire_caller(request: Request) -> Caller:
    """Authenticate the call (any credential); errors of a wire call in its own shape."""
    context = get_context(request)
    audit = request_audit(request)
    if audit is not None:
        audit.action = CALL_ACTION
        if is_wire_call(request):
            audit.details["ssm_operation"] = _operation_name(request)
    try:
        principal = await context.auth.authenticate(request)
    except CorralError as error:
        if is_wire_call(request):
            raise wire_error(error) from None
        raise
    if audit is not None:
        audit.principal = principal.label
        audit.token_id = principal.token_id
    return Caller(principal, audit, context.audit)


setattr(wire_caller, ACTION_ATTRIBUTE, CALL_ACTION)


def _region(request: Request) -> str:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme != ALGORITHM:
        return DEFAULT_REGION
    return parse_authorization(credentials).region  # already verified by authentication


def _find(request: Request) -> Operation[Any]:
    target = request.headers.get("x-amz-target", "")
    operation = REGISTRY.get(target.removeprefix(TARGET_PREFIX))
    if not target.startswith(TARGET_PREFIX) or operation is None:
        raise SsmError(
            "UnknownOperationException",
            f"Corral does not support the operation {target[:80]!r}; it serves "
            + ", ".join(sorted(REGISTRY)),
        )
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ACCEPTED_CONTENT_TYPES:
        raise SsmError("ValidationException", f"Content-Type must be {CONTENT_TYPE}")
    return operation


def _response(request: Request, status: int, body: dict[str, object]) -> Response:
    audit = request_audit(request)
    headers = {"x-amzn-RequestId": audit.request_id} if audit is not None else {}
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type=CONTENT_TYPE,
        headers=headers,
    )


@router.post("/", include_in_schema=False)
async def ssm_call(
    request: Request, context: Ctx, caller: Annotated[Caller, Depends(wire_caller)]
) -> Response:
    """One Systems Manager call: `X-Amz-Target: AmazonSSM.<Operation>`."""
    if not is_wire_call(request):
        raise ValidationError(
            "POST / is the Systems Manager API: send X-Amz-Target: AmazonSSM.<Operation>",
            "X-Amz-Target",
        )
    try:
        operation = _find(request)
        audit = request_audit(request)
        if audit is not None:
            audit.action = operation.action
            audit.details["ssm_operation"] = operation.name
        call = Call(context, caller, _region(request))
        result = await operation.run(call, await request.body())
    except Exception as error:
        raise wire_error(error) from None
    return _response(request, 200, result)


async def handle_wire_error(request: Request, error: Exception) -> Response:
    """Render an SsmError (and note it in the audit record)."""
    assert isinstance(error, SsmError)
    audit = request_audit(request)
    if audit is not None:
        audit.error = f"{error.code}: {error.message}"[:2000]
        if error.code in DENIED_CODES:
            audit.error_outcome = "denied"
    response = _response(request, error.status, error.body())
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return response
