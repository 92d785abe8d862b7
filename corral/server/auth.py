"""Authentication and the one place where every route's action is authorised.

Each route declares its action (`node:List`, `command:Send`, ...) with `authorize()`.
Policy plugs in here later; today every valid token may do every action.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from corral.errors import AuthError, NotFoundError
from corral.server.context import Ctx

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id and the action being performed."""

    token_id: str
    action: str


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("a bearer token is required")
    return token.strip()


def authorize(action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and authorises `action`."""

    async def dependency(context: Ctx, request: Request) -> Principal:
        """Authenticate the bearer token and record the principal on the request."""
        token = _bearer(request)
        try:
            record = await context.store.authenticate_token(token)
        except NotFoundError:
            raise AuthError("the token is unknown, revoked or expired") from None
        principal = Principal(token_id=record.id, action=action)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"authorize_{action.replace(':', '_')}"
    return dependency
