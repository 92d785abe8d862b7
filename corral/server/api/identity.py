"""Users, API tokens, roles and `whoami`."""

from __future__ import annotations

import logging
import re
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field

from corral.errors import AccessDeniedError, ConflictError, ValidationError
from corral.identity import IMMUTABLE_ROLES, parse_policy
from corral.server.api.common import RequestModel, iso
from corral.server.auth import Caller, authenticated, authorize
from corral.server.context import Ctx, ServerContext
from corral.store import RoleRecord, TokenRecord, UserRecord

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["identity"])

NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_TOKEN_SECONDS = 366 * 86_400


def _check_name(name: str, pattern: re.Pattern[str], what: str, field: str) -> None:
    if not pattern.match(name):
        raise ValidationError(
            f"{what} name {name[:70]!r} must be 1-64 characters: "
            + (
                "lowercase letters, digits and . _ @ -, starting with a letter or digit"
                if pattern is NAME
                else "letters, digits and . _ -, starting with a letter or digit"
            ),
            field,
        )


def user_json(user: UserRecord) -> dict[str, object]:
    """A user as the API shows it."""
    return {
        "name": user.name,
        "roles": user.roles,
        "disabled": user.disabled,
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
    }


def token_json(token: TokenRecord, user: str | None) -> dict[str, object]:
    """A token's metadata (never the secret)."""
    return {
        "token_id": token.id,
        "user": user,
        "prefix": token.prefix,
        "access_key_id": token.access_key_id,
        "description": token.description,
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
        "expires_at": iso(token.expires_at),
        "revoked": token.revoked,
        "revoked_at": iso(token.revoked_at),
        "expired": token.expires_at is not None and token.expires_at <= time.time(),
    }


def role_json(role: RoleRecord) -> dict[str, object]:
    """A role with its policy."""
    return {
        "name": role.name,
        "description": role.description,
        "builtin": role.builtin,
        "editable": role.name not in IMMUTABLE_ROLES,
        "policy": role.policy,
        "created_at": iso(role.created_at),
        "updated_at": iso(role.updated_at),
    }


# --- users --------------------------------------------------------------------


class UserCreate(RequestModel):
    """Body of `POST /api/v1/users`."""

    name: str = Field(min_length=1, max_length=64)
    roles: list[str] = Field(min_length=1, max_length=20)
    token_description: str = Field(default="", max_length=256)
    token_expires_seconds: int | None = Field(default=None, ge=60, le=MAX_TOKEN_SECONDS)


class UserPatch(RequestModel):
    """Body of `PATCH /api/v1/users/{name}`."""

    disabled: bool | None = None
    roles: list[str] | None = Field(default=None, min_length=1, max_length=20)


@router.post("/users", status_code=201)
async def create_user(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("user:Create"))],
    body: UserCreate,
) -> dict[str, object]:
    """Create a user with its first API token (the token is in this response only)."""
    caller.require("user:Create", f"user:{body.name}")
    _check_name(body.name, NAME, "user", "name")
    user = await context.store.create_user(body.name, body.roles)
    expires = time.time() + body.token_expires_seconds if body.token_expires_seconds else None
    secret, token = await context.store.create_token(
        body.token_description or f"first token of {user.name}", user.id, expires
    )
    caller.note(token_id=token.id)
    logger.info("user created name=%s roles=%s", user.name, ",".join(user.roles))
    return {**user_json(user), "token": secret, "token_id": token.id}


@router.get("/users")
async def list_users(
    context: Ctx, caller: Annotated[Caller, Depends(authorize("user:List"))]
) -> list[dict[str, object]]:
    """Every user the caller may list."""
    return [
        user_json(u)
        for u in await context.store.list_users()
        if caller.decide("user:List", f"user:{u.name}").allowed
    ]


@router.get("/users/{name}", dependencies=[Depends(authorize("user:Read", "user:{name}"))])
async def get_user(context: Ctx, name: str) -> dict[str, object]:
    """One user."""
    return user_json(await context.store.get_user(name))


@router.patch("/users/{name}")
async def update_user(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("user:Update", "user:{name}"))],
    name: str,
    body: UserPatch,
) -> dict[str, object]:
    """Disable/enable a user or replace its roles; disabling ends its open streams."""
    if body.disabled and caller.principal.kind == "user" and caller.principal.name == name:
        raise ConflictError("you cannot disable yourself")
    user = await context.store.update_user(name, disabled=body.disabled, roles=body.roles)
    context.auth.invalidate()
    if user.disabled:
        ended = context.auth.streams.end_for(f"user {name} was disabled", user=name)
        caller.note(streams_ended=ended)
    caller.note(disabled=user.disabled, roles=user.roles)
    return user_json(user)


@router.delete("/users/{name}", status_code=204)
async def delete_user(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("user:Delete", "user:{name}"))],
    name: str,
) -> Response:
    """Delete a user; its tokens are revoked and its open streams end."""
    if caller.principal.kind == "user" and caller.principal.name == name:
        raise ConflictError("you cannot delete yourself")
    await context.store.delete_user(name)
    context.auth.invalidate()
    caller.note(streams_ended=context.auth.streams.end_for(f"user {name} was deleted", user=name))
    return Response(status_code=204)


# --- tokens -------------------------------------------------------------------


class TokenCreate(RequestModel):
    """Body of `POST /api/v1/tokens` (`user` defaults to the caller)."""

    user: str | None = Field(default=None, max_length=64)
    description: str = Field(default="", max_length=256)
    expires_seconds: int | None = Field(default=None, ge=60, le=MAX_TOKEN_SECONDS)
    # AWS credentials (access key id and secret access key, for SigV4) instead of a token.
    aws_credentials: bool = False


def _own_user(caller: Caller, user: str | None) -> str:
    if user is not None:
        return user
    if caller.principal.kind != "user":
        raise AccessDeniedError(f"{caller.principal.label} has no user to hold tokens")
    return caller.principal.name


@router.post("/tokens", status_code=201)
async def create_token(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("token:Create"))],
    body: TokenCreate,
) -> dict[str, object]:
    """A new token (or AWS credentials) for the caller or, with the right, another user.

    The secret (`token`, or `secret_access_key`) is in this response only.
    """
    name = _own_user(caller, body.user)
    caller.require("token:Create", f"user:{name}")
    user = await context.store.get_user(name)
    expires = time.time() + body.expires_seconds if body.expires_seconds else None
    if body.aws_credentials:
        if context.auth.access_keys is None:
            raise ValidationError("this server does not issue AWS credentials", "aws_credentials")
        key, token = await context.auth.access_keys.create(body.description, user.id, expires)
        caller.note(token_id=token.id, access_key_id=token.access_key_id)
        return {**token_json(token, user.name), "secret_access_key": key}
    secret, token = await context.store.create_token(body.description, user.id, expires)
    caller.note(token_id=token.id)
    return {**token_json(token, user.name), "token": secret}


@router.get("/tokens")
async def list_tokens(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("token:List"))],
    user: str | None = Query(default=None, max_length=64),
    all_users: bool = Query(default=False, alias="all"),
) -> list[dict[str, object]]:
    """Tokens of the caller, of `user`, or (`all=true`) of every user the caller may see."""
    if all_users:
        tokens = await context.store.list_tokens()
    else:
        name = _own_user(caller, user)
        caller.require("token:List", f"user:{name}")
        tokens = await context.store.list_tokens((await context.store.get_user(name)).id)
    names = await context.store.user_names(sorted({t.user_id for t in tokens if t.user_id}))
    return [
        token_json(t, names.get(t.user_id or ""))
        for t in tokens
        if caller.decide("token:List", f"user:{names.get(t.user_id or '', '?')}").allowed
    ]


@router.delete("/tokens/{token_id}")
async def revoke_token(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("token:Revoke"))],
    token_id: str,
) -> dict[str, object]:
    """Revoke a token now; requests and open streams using it stop."""
    token = await context.store.get_token(token_id[:64])
    owner = (await context.store.user_names([token.user_id] if token.user_id else [])).get(
        token.user_id or "", "?"
    )
    caller.require("token:Revoke", f"user:{owner}")
    token = await context.store.revoke_token(token.id)
    context.auth.invalidate()
    ended = context.auth.streams.end_for("the token was revoked", token_id=token.id)
    caller.note(token_id=token.id, streams_ended=ended)
    return token_json(token, owner)


# --- roles --------------------------------------------------------------------


class RoleBody(RequestModel):
    """Body of `POST /api/v1/roles` and `PUT /api/v1/roles/{name}`."""

    name: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=1024)
    policy: dict[str, object]


def _description(body: RoleBody) -> str:
    if body.description is not None:
        return body.description
    return str(body.policy.get("description") or "")


@router.post("/roles", status_code=201)
async def create_role(
    context: Ctx,
    caller: Annotated[Caller, Depends(authorize("role:Create"))],
    body: RoleBody,
) -> dict[str, object]:
    """Create a role from a validated policy."""
    if body.name is None:
        raise ValidationError("name is required", "name")
    caller.require("role:Create", f"role:{body.name}")
    _check_name(body.name, ROLE_NAME, "role", "name")
    policy = parse_policy(body.policy)
    return role_json(
        await context.store.create_role(
            body.name, _description(body), policy.model_dump(exclude_none=True)
        )
    )


@router.get("/roles")
async def list_roles(
    context: Ctx, caller: Annotated[Caller, Depends(authorize("role:List"))]
) -> list[dict[str, object]]:
    """Every role the caller may list."""
    return [
        role_json(r)
        for r in await context.store.list_roles()
        if caller.decide("role:List", f"role:{r.name}").allowed
    ]


@router.get("/roles/{name}", dependencies=[Depends(authorize("role:Read", "role:{name}"))])
async def get_role(context: Ctx, name: str) -> dict[str, object]:
    """One role with its policy."""
    return role_json(await context.store.get_role(name))


@router.put("/roles/{name}", dependencies=[Depends(authorize("role:Update", "role:{name}"))])
async def update_role(context: Ctx, name: str, body: RoleBody) -> dict[str, object]:
    """Replace a role's policy (the built-in admin, operator, viewer and auditor are fixed)."""
    if name in IMMUTABLE_ROLES:
        raise ConflictError(f"role {name} is built in and cannot be changed; create a new role")
    if body.name is not None and body.name != name:
        raise ValidationError("a role cannot be renamed", "name")
    policy = parse_policy(body.policy)
    role = await context.store.update_role(
        name, _description(body), policy.model_dump(exclude_none=True)
    )
    context.auth.invalidate()
    return role_json(role)


@router.delete(
    "/roles/{name}",
    status_code=204,
    dependencies=[Depends(authorize("role:Delete", "role:{name}"))],
)
async def delete_role(context: Ctx, name: str) -> Response:
    """Delete a custom role no user holds."""
    await context.store.delete_role(name)
    context.auth.invalidate()
    return Response(status_code=204)


# --- whoami -------------------------------------------------------------------


async def whoami_json(context: ServerContext, caller: Caller) -> dict[str, object]:
    """Who the caller is, its roles and its active grants."""
    p = caller.principal
    now = time.time()
    body: dict[str, object] = {
        "principal": p.label,
        "kind": p.kind,
        "name": p.name,
        "roles": list(p.roles),
        "token_id": p.token_id,
        "grants": [
            {
                "request_id": g.id,
                "role": g.role,
                "targets": g.targets,
                "expires_at": iso(g.expires_at),
                "remaining_seconds": max(0, round((g.expires_at or now) - now)),
            }
            for g in p.grants
        ],
    }
    if p.acting_node is not None:
        body["node"] = {"node_id": p.acting_node.node_id, "tags": dict(p.acting_node.tags)}
    return body


@router.get("/whoami")
async def whoami(
    context: Ctx, caller: Annotated[Caller, Depends(authenticated("identity:WhoAmI"))]
) -> dict[str, object]:
    """The calling principal (any valid credential may ask)."""
    return await whoami_json(context, caller)
