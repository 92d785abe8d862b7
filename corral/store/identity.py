"""Users, API tokens, roles and just-in-time access requests."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Mapping, Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import AuthError, ConflictError, NotFoundError, ValidationError
from corral.store import models as m
from corral.store.base import RepositoryBase, hash_secret
from corral.store.records import AccessRequestRecord, RoleRecord, TokenRecord, UserRecord

TOKEN_PREFIX = "crl_"  # noqa: S105 - a public marker, not a secret
ACCESS_REQUEST_PREFIX = "ar-"
# A token's last use is written at most this often, so authenticated reads stay reads.
LAST_USED_RESOLUTION_SECONDS = 60.0


def new_token_secret() -> str:
    """A fresh API token: `crl_` and 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class IdentityRepository(RepositoryBase):
    """Identity tables; the `Store` inherits these methods."""

    # --- users ---------------------------------------------------------------

    async def create_user(self, name: str, roles: Sequence[str]) -> UserRecord:
        """A new enabled user; ConflictError if the name is taken or a role is unknown."""
        now = time.time()
        async with self._tx() as s:
            await self._check_roles(s, roles)
            if (await s.execute(select(m.User).where(m.User.name == name))).first():
                raise ConflictError(f"user {name} already exists")
            row = m.User(
                id=str(uuid.uuid4()),
                name=name,
                roles=list(dict.fromkeys(roles)),
                disabled=False,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            return _user(row)

    async def get_user(self, name: str) -> UserRecord:
        """One user by name."""
        async with self._tx() as s:
            row = (await s.execute(select(m.User).where(m.User.name == name))).scalar_one_or_none()
            if row is None:
                raise NotFoundError(f"user {name} does not exist")
            return _user(row)

    async def list_users(self) -> list[UserRecord]:
        """Every user, by name."""
        async with self._tx() as s:
            rows = (await s.execute(select(m.User).order_by(m.User.name))).scalars()
            return [_user(r) for r in rows]

    async def update_user(
        self, name: str, *, disabled: bool | None = None, roles: Sequence[str] | None = None
    ) -> UserRecord:
        """Enable/disable a user or replace its roles."""
        async with self._tx() as s:
            row = (await s.execute(select(m.User).where(m.User.name == name))).scalar_one_or_none()
            if row is None:
                raise NotFoundError(f"user {name} does not exist")
            if roles is not None:
                await self._check_roles(s, roles)
                row.roles = list(dict.fromkeys(roles))
            if disabled is not None:
                row.disabled = disabled
            row.updated_at = time.time()
            return _user(row)

    async def delete_user(self, name: str) -> UserRecord:
        """Delete a user and revoke every token it had."""
        now = time.time()
        async with self._tx() as s:
            row = (await s.execute(select(m.User).where(m.User.name == name))).scalar_one_or_none()
            if row is None:
                raise NotFoundError(f"user {name} does not exist")
            record = _user(row)
            await s.execute(
                update(m.ApiToken)
                .where(m.ApiToken.user_id == row.id, m.ApiToken.revoked.is_(False))
                .values(revoked=True, revoked_at=now)
            )
            await s.delete(row)
            return record

    async def _check_roles(self, s: AsyncSession, roles: Sequence[str]) -> None:
        if not roles:
            raise ValidationError("a user needs at least one role", "roles")
        known = set((await s.execute(select(m.Role.name).where(m.Role.name.in_(roles)))).scalars())
        unknown = [r for r in roles if r not in known]
        if unknown:
            raise ValidationError(f"no such role: {', '.join(unknown)}", "roles")

    # --- API tokens -------------------------------------------------------------

    async def create_token(
        self, description: str, user_id: str | None = None, expires_at: float | None = None
    ) -> tuple[str, TokenRecord]:
        """Create a token for a user; returns the secret (shown once) and its record."""
        token = new_token_secret()
        row = m.ApiToken(
            id=str(uuid.uuid4()),
            token_hash=hash_secret(token),
            prefix=token[:8],
            description=description,
            created_at=time.time(),
            last_used_at=None,
            expires_at=expires_at,
            revoked=False,
            user_id=user_id,
            revoked_at=None,
        )
        async with self._tx() as s:
            if user_id is not None and await s.get(m.User, user_id) is None:
                raise NotFoundError("the token's user does not exist")
            s.add(row)
        return token, _token(row)

    async def create_access_key(
        self,
        description: str,
        user_id: str,
        expires_at: float | None,
        access_key_id: str,
        secret_sealed: str,
    ) -> TokenRecord:
        """AWS credentials for a user: a token with an access key id and a sealed secret."""
        row = m.ApiToken(
            id=str(uuid.uuid4()),
            token_hash=None,
            prefix=access_key_id[:8],
            description=description,
            created_at=time.time(),
            last_used_at=None,
            expires_at=expires_at,
            revoked=False,
            user_id=user_id,
            revoked_at=None,
            access_key_id=access_key_id,
            secret_sealed=secret_sealed,
        )
        async with self._tx() as s:
            if await s.get(m.User, user_id) is None:
                raise NotFoundError("the token's user does not exist")
            s.add(row)
        return _token(row)

    async def access_key(
        self, access_key_id: str, now: float | None = None
    ) -> tuple[TokenRecord, UserRecord, str]:
        """The token, user and sealed secret of a usable access key (AuthError otherwise).

        Unlike `authenticate_token` this does not mark the key used: the caller checks
        the signature first, then calls `mark_token_used`.
        """
        now = time.time() if now is None else now
        async with self._tx() as s:
            found = (
                await s.execute(
                    select(m.ApiToken, m.User)
                    .join(m.User, m.User.id == m.ApiToken.user_id)
                    .where(m.ApiToken.access_key_id == access_key_id)
                )
            ).first()
            if found is None:
                raise AuthError("the access key is unknown, revoked or expired")
            row, user = found
            if (
                row.revoked
                or row.secret_sealed is None
                or (row.expires_at is not None and row.expires_at <= now)
            ):
                raise AuthError("the access key is unknown, revoked or expired")
            if user.disabled:
                raise AuthError(f"user {user.name} is disabled")
            return _token(row), _user(user), row.secret_sealed

    async def mark_token_used(self, token: TokenRecord, now: float) -> None:
        """Record a token's use (at most once per LAST_USED_RESOLUTION_SECONDS)."""
        if token.last_used_at is not None and now - token.last_used_at <= (
            LAST_USED_RESOLUTION_SECONDS
        ):
            return
        async with self._tx() as s:
            await s.execute(
                update(m.ApiToken).where(m.ApiToken.id == token.id).values(last_used_at=now)
            )

    async def authenticate_token(
        self, token: str, now: float | None = None
    ) -> tuple[TokenRecord, UserRecord]:
        """The token and its user; AuthError for unknown, revoked, expired or disabled."""
        now = time.time() if now is None else now
        if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            raise AuthError("the token is unknown, revoked or expired")
        async with self._tx() as s:
            found = (
                await s.execute(
                    select(m.ApiToken, m.User)
                    .join(m.User, m.User.id == m.ApiToken.user_id)
                    .where(m.ApiToken.token_hash == hash_secret(token))
                )
            ).first()
            if found is None:
                raise AuthError("the token is unknown, revoked or expired")
            row, user = found
            if row.revoked or (row.expires_at is not None and row.expires_at <= now):
                raise AuthError("the token is unknown, revoked or expired")
            if user.disabled:
                raise AuthError(f"user {user.name} is disabled")
            if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION_SECONDS:
                row.last_used_at = now
            return _token(row), _user(user)

    async def get_token(self, token_id: str) -> TokenRecord:
        """One token's metadata."""
        async with self._tx() as s:
            row = await s.get(m.ApiToken, token_id)
            if row is None:
                raise NotFoundError(f"token {token_id} does not exist")
            return _token(row)

    async def revoke_token(self, token_id: str) -> TokenRecord:
        """Revoke a token by id (revoking twice is harmless)."""
        async with self._tx() as s:
            row = await s.get(m.ApiToken, token_id)
            if row is None:
                raise NotFoundError(f"token {token_id} does not exist")
            if not row.revoked:
                row.revoked = True
                row.revoked_at = time.time()
            return _token(row)

    async def list_tokens(self, user_id: str | None = None) -> list[TokenRecord]:
        """Token metadata (of one user, or of everyone), oldest first."""
        query = select(m.ApiToken).order_by(m.ApiToken.created_at)
        if user_id is not None:
            query = query.where(m.ApiToken.user_id == user_id)
        async with self._tx() as s:
            return [_token(r) for r in (await s.execute(query)).scalars()]

    async def user_names(self, user_ids: Sequence[str]) -> dict[str, str]:
        """user id -> name, for the ids that exist."""
        if not user_ids:
            return {}
        async with self._tx() as s:
            rows = await s.execute(select(m.User.id, m.User.name).where(m.User.id.in_(user_ids)))
            return {str(row[0]): str(row[1]) for row in rows}

    # --- roles ------------------------------------------------------------------

    async def sync_builtin_roles(
        self, policies: Mapping[str, Mapping[str, object]], editable: Sequence[str]
    ) -> None:
        """Create built-in roles; reset the immutable ones to this release's definition."""
        now = time.time()
        async with self._tx() as s:
            existing = {r.name: r for r in (await s.execute(select(m.Role))).scalars()}
            for name, policy in policies.items():
                row = existing.get(name)
                description = str(policy.get("description") or "")
                if row is None:
                    s.add(
                        m.Role(
                            name=name,
                            description=description,
                            policy=dict(policy),
                            builtin=True,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                elif name not in editable and (row.policy != dict(policy) or not row.builtin):
                    row.policy = dict(policy)
                    row.description = description
                    row.builtin = True
                    row.updated_at = now

    async def create_role(
        self, name: str, description: str, policy: Mapping[str, object]
    ) -> RoleRecord:
        """A new custom role; ConflictError if the name is taken."""
        now = time.time()
        async with self._tx() as s:
            if await s.get(m.Role, name) is not None:
                raise ConflictError(f"role {name} already exists")
            row = m.Role(
                name=name,
                description=description,
                policy=dict(policy),
                builtin=False,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            return _role(row)

    async def update_role(
        self, name: str, description: str, policy: Mapping[str, object]
    ) -> RoleRecord:
        """Replace a role's policy (callers refuse the immutable built-ins first)."""
        async with self._tx() as s:
            row = await s.get(m.Role, name)
            if row is None:
                raise NotFoundError(f"role {name} does not exist")
            row.policy = dict(policy)
            row.description = description
            row.updated_at = time.time()
            return _role(row)

    async def get_role(self, name: str) -> RoleRecord:
        """One role."""
        async with self._tx() as s:
            row = await s.get(m.Role, name)
            if row is None:
                raise NotFoundError(f"role {name} does not exist")
            return _role(row)

    async def get_roles(self, names: Sequence[str]) -> list[RoleRecord]:
        """The roles among `names` that exist."""
        if not names:
            return []
        async with self._tx() as s:
            rows = (await s.execute(select(m.Role).where(m.Role.name.in_(names)))).scalars()
            return [_role(r) for r in rows]

    async def list_roles(self) -> list[RoleRecord]:
        """Every role, by name."""
        async with self._tx() as s:
            rows = (await s.execute(select(m.Role).order_by(m.Role.name))).scalars()
            return [_role(r) for r in rows]

    async def delete_role(self, name: str) -> None:
        """Delete a custom role that no user holds."""
        async with self._tx() as s:
            row = await s.get(m.Role, name)
            if row is None:
                raise NotFoundError(f"role {name} does not exist")
            if row.builtin:
                raise ConflictError(f"role {name} is built in and cannot be deleted")
            holders = [
                u.name for u in (await s.execute(select(m.User))).scalars() if name in u.roles
            ]
            if holders:
                raise ConflictError(f"role {name} is held by: {', '.join(sorted(holders))}")
            await s.delete(row)

    # --- access requests and grants --------------------------------------------

    async def create_access_request(
        self,
        requester: str,
        role: str,
        targets: Sequence[str],
        duration_seconds: int,
        reason: str,
        now: float | None = None,
    ) -> AccessRequestRecord:
        """A pending request."""
        now = time.time() if now is None else now
        row = m.AccessRequest(
            id=ACCESS_REQUEST_PREFIX + secrets.token_hex(8),
            requester=requester,
            role=role,
            targets=list(targets),
            duration_seconds=duration_seconds,
            reason=reason,
            status="pending",
            created_at=now,
            decided_at=None,
            decided_by=None,
            comment="",
            expires_at=None,
            revoked_at=None,
            revoked_by=None,
        )
        async with self._tx() as s:
            if await s.get(m.Role, role) is None:
                raise ValidationError(f"no such role: {role}", "role")
            s.add(row)
            return _access(row)

    async def get_access_request(self, request_id: str) -> AccessRequestRecord:
        """One request."""
        async with self._tx() as s:
            row = await s.get(m.AccessRequest, request_id)
            if row is None:
                raise NotFoundError(f"access request {request_id} does not exist")
            return _access(row)

    async def list_access_requests(
        self,
        requester: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AccessRequestRecord]:
        """Newest first."""
        query = (
            select(m.AccessRequest)
            .order_by(m.AccessRequest.created_at.desc(), m.AccessRequest.id)
            .limit(limit)
            .offset(offset)
        )
        if requester is not None:
            query = query.where(m.AccessRequest.requester == requester)
        if status is not None:
            query = query.where(m.AccessRequest.status == status)
        async with self._tx() as s:
            return [_access(r) for r in (await s.execute(query)).scalars()]

    async def decide_access_request(
        self, request_id: str, approve: bool, by: str, comment: str, now: float | None = None
    ) -> AccessRequestRecord:
        """Approve (the grant starts now) or deny a pending request."""
        now = time.time() if now is None else now
        async with self._tx() as s:
            row = await s.get(m.AccessRequest, request_id)
            if row is None:
                raise NotFoundError(f"access request {request_id} does not exist")
            if row.status != "pending":
                raise ConflictError(f"access request {request_id} is already {row.status}")
            row.status = "approved" if approve else "denied"
            row.decided_at = now
            row.decided_by = by
            row.comment = comment
            if approve:
                row.expires_at = now + row.duration_seconds
            return _access(row)

    async def revoke_access_request(
        self, request_id: str, by: str, now: float | None = None
    ) -> AccessRequestRecord:
        """End an approved grant (or withdraw a pending request) now."""
        now = time.time() if now is None else now
        async with self._tx() as s:
            row = await s.get(m.AccessRequest, request_id)
            if row is None:
                raise NotFoundError(f"access request {request_id} does not exist")
            if row.status not in ("approved", "pending"):
                raise ConflictError(f"access request {request_id} is already {row.status}")
            if row.status == "approved" and row.expires_at is not None and row.expires_at <= now:
                raise ConflictError(f"access request {request_id} has already expired")
            row.status = "revoked"
            row.revoked_at = now
            row.revoked_by = by
            return _access(row)

    async def active_grants(
        self, requester: str, now: float | None = None
    ) -> list[AccessRequestRecord]:
        """A user's approved, unexpired grants."""
        now = time.time() if now is None else now
        query = select(m.AccessRequest).where(
            m.AccessRequest.requester == requester,
            m.AccessRequest.status == "approved",
            m.AccessRequest.expires_at > now,
        )
        async with self._tx() as s:
            return [_access(r) for r in (await s.execute(query)).scalars()]


def _user(r: m.User) -> UserRecord:
    return UserRecord(r.id, r.name, list(r.roles), r.disabled, r.created_at, r.updated_at)


def _token(r: m.ApiToken) -> TokenRecord:
    return TokenRecord(
        r.id,
        r.prefix,
        r.description,
        r.created_at,
        r.last_used_at,
        r.expires_at,
        r.revoked,
        r.user_id,
        r.revoked_at,
        r.access_key_id,
    )


def _role(r: m.Role) -> RoleRecord:
    return RoleRecord(r.name, r.description, dict(r.policy), r.builtin, r.created_at, r.updated_at)


def _access(r: m.AccessRequest) -> AccessRequestRecord:
    return AccessRequestRecord(
        id=r.id,
        requester=r.requester,
        role=r.role,
        targets=list(r.targets),
        duration_seconds=r.duration_seconds,
        reason=r.reason,
        status=r.status,
        created_at=r.created_at,
        decided_at=r.decided_at,
        decided_by=r.decided_by,
        comment=r.comment,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
        revoked_by=r.revoked_by,
    )
