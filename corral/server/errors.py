"""The one mapping from errors to HTTP responses (shape in docs/api.md)."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from corral.errors import (
    AccessDeniedError,
    AuthError,
    ConflictError,
    CorralError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
    ValidationError,
)
from corral.server.auditing import request_audit

# Routes reachable without credentials (each authenticates in its own way, or is public).
PUBLIC_PATHS = frozenset({"/healthz", "/ca.pem", "/api/v1/register", "/"})

logger = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[CorralError], int, str], ...] = (
    (ValidationError, 400, "ValidationError"),
    (NotFoundError, 404, "NotFoundError"),
    (ConflictError, 409, "ConflictError"),
    (AccessDeniedError, 403, "AccessDeniedError"),
    (RateLimitedError, 429, "RateLimitedError"),
    (AuthError, 401, "AuthError"),
    (UnavailableError, 503, "UnavailableError"),
)


def error_body(kind: str, message: str, field: str | None = None) -> dict[str, object]:
    """The JSON error body."""
    return {"error": {"type": kind, "message": message, "field": field}}


def _respond(
    status: int, kind: str, message: str, field: str | None = None, request: Request | None = None
) -> JSONResponse:
    if request is not None:
        audit = request_audit(request)
        if audit is not None:
            audit.error = f"{kind}: {message}"[:2000]
    return JSONResponse(error_body(kind, message, field), status_code=status)


def field_path(location: tuple[object, ...] | list[object]) -> str | None:
    """`("body", "targets", 0)` -> `targets[0]`; None for the body as a whole."""
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or None


async def _corral_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, CorralError)
    for cls, status, kind in _STATUS:
        if isinstance(error, cls):
            field = error.field if isinstance(error, ValidationError) else None
            response = _respond(status, kind, error.message, field, request)
            if isinstance(error, RateLimitedError):
                response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
            return response
    logger.error("unmapped error type=%s", type(error).__name__)
    return _respond(500, "InternalError", "internal server error", request=request)


async def _authenticated_first(request: Request) -> JSONResponse | None:
    """A 401/429 for a caller that is not authenticated yet, before any 400 is given.

    FastAPI parses the body before a route's dependencies run, so a malformed body
    would otherwise be answered (and not count as a failed authentication) for a
    caller without valid credentials.
    """
    audit = request_audit(request)
    if request.url.path in PUBLIC_PATHS or (audit is not None and audit.principal != "anonymous"):
        return None
    context = getattr(request.app.state, "context", None)
    auth = getattr(context, "auth", None)
    if auth is None:
        return None
    try:
        principal = await auth.authenticate(request)
    except AuthError as auth_error:
        return await _corral_error(request, auth_error)
    if audit is not None:
        audit.principal = principal.label
        audit.token_id = principal.token_id
    return None


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    refused = await _authenticated_first(request)
    if refused is not None:
        return refused
    errors = error.errors()
    if not errors:
        return _respond(400, "ValidationError", "invalid request", request=request)
    first = errors[0]
    field = field_path(tuple(first.get("loc", ())))
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return _respond(400, "ValidationError", "request body is not valid JSON", request=request)
    message = str(first.get("msg", "invalid value"))
    text = f"{field}: {message}" if field else message
    return _respond(400, "ValidationError", text, field, request)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    if 400 <= error.status_code < 500 and error.status_code not in (401, 403, 404, 405):
        refused = await _authenticated_first(request)
        if refused is not None:
            return refused
    if error.status_code == 404:
        return _respond(404, "NotFoundError", "no such route", request=request)
    if error.status_code == 405:
        return _respond(405, "ValidationError", "method not allowed", request=request)
    if error.status_code in (401, 403):
        return _respond(error.status_code, "AuthError", "access denied", request=request)
    if 400 <= error.status_code < 500:
        return _respond(error.status_code, "ValidationError", "invalid request", request=request)
    return _respond(500, "InternalError", "internal server error", request=request)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.error(
        "unexpected error path=%s error=%s", request.url.path, type(error).__name__, exc_info=error
    )
    return _respond(500, "InternalError", "internal server error", request=request)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(CorralError, _corral_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
