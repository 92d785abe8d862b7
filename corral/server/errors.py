"""The one mapping from errors to HTTP responses (shape in docs/api.md)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from corral.errors import (
    AuthError,
    ConflictError,
    CorralError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)

logger = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[CorralError], int, str], ...] = (
    (ValidationError, 400, "ValidationError"),
    (NotFoundError, 404, "NotFoundError"),
    (ConflictError, 409, "ConflictError"),
    (AuthError, 401, "AuthError"),
    (UnavailableError, 503, "UnavailableError"),
)


def error_body(kind: str, message: str, field: str | None = None) -> dict[str, object]:
    """The JSON error body."""
    return {"error": {"type": kind, "message": message, "field": field}}


def _respond(status: int, kind: str, message: str, field: str | None = None) -> JSONResponse:
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


async def _corral_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, CorralError)
    for cls, status, kind in _STATUS:
        if isinstance(error, cls):
            field = error.field if isinstance(error, ValidationError) else None
            return _respond(status, kind, error.message, field)
    logger.error("unmapped error type=%s", type(error).__name__)
    return _respond(500, "InternalError", "internal server error")


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    errors = error.errors()
    if not errors:
        return _respond(400, "ValidationError", "invalid request")
    first = errors[0]
    field = field_path(tuple(first.get("loc", ())))
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return _respond(400, "ValidationError", "request body is not valid JSON")
    message = str(first.get("msg", "invalid value"))
    return _respond(400, "ValidationError", f"{field}: {message}" if field else message, field)


async def _http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        return _respond(404, "NotFoundError", "no such route")
    if error.status_code == 405:
        return _respond(405, "ValidationError", "method not allowed")
    if error.status_code in (401, 403):
        return _respond(error.status_code, "AuthError", "access denied")
    if 400 <= error.status_code < 500:
        return _respond(error.status_code, "ValidationError", "invalid request")
    return _respond(500, "InternalError", "internal server error")


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.error(
        "unexpected error path=%s error=%s", request.url.path, type(error).__name__, exc_info=error
    )
    return _respond(500, "InternalError", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(CorralError, _corral_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
