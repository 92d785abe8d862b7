"""The API's own description, for authenticated callers."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from corral.server.auth import authenticated

router = APIRouter(prefix="/api/v1", tags=["meta"])


@router.get("/openapi.json", dependencies=[Depends(authenticated("identity:DescribeApi"))])
async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI description of this server's API."""
    return JSONResponse(request.app.openapi())
