"""Authentication, and the one place where every route's action is authorised.

Each route declares its action (`node:List`, `command:Send`, ...) with `authorize()`,
optionally with the resource it acts on (`node:{node_id}` filled from the path). The
dependency authenticates the caller (an API token, a node's signed request, or a
request signed with AWS credentials, SigV4), checks the action against the caller's
roles and grants, and records principal, action and resources for the audit log.
Routes that touch several resources (a command sent to many nodes, a filtered list)
check each through the returned `Caller`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.requests import HTTPConnection

from corral.audit.log import AuditLog, now_us
from corral.errors import AccessDeniedError, AuthError, NotFoundError, RateLimitedError
from corral.identity import (
    NODE_ROLE,
    Decision,
    NodeContext,
    PolicySource,
    Scope,
    Statement,
    Subject,
    decide,
    may_ever,
    parse_policy,
)
from corral.protocol.requestsig import SCHEME, parse_authorization, request_payload
from corral.server import sigv4
from corral.server.accesskeys import AccessKeys
from corral.server.auditing import RequestAudit, request_audit
from corral.server.config import ServerConfig
from corral.server.gateway import verify_signature
from corral.server.targets import parse_targets
from corral.store import (
    AccessRequestRecord,
    AuditEntry,
    NodeRecord,
    RoleRecord,
    Store,
    TokenRecord,
    UserRecord,
    hash_secret,
)

logger = logging.getLogger(__name__)

ACTION_ATTRIBUTE = "corral_action"


def node_context(node: NodeRecord) -> NodeContext:
    """The policy view of a node."""
    return NodeContext(node.id, dict(node.tags))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, with everything needed to decide what it may do."""

    kind: str  # "user" or "node"
    name: str  # user name or node id
    token_id: str | None
    user_id: str | None
    roles: tuple[str, ...]
    sources: tuple[PolicySource, ...]
    grants: tuple[AccessRequestRecord, ...] = ()
    acting_node: NodeContext | None = None

    @property
    def label(self) -> str:
        """`user:alice` or `node:mi-...`: how the audit log names the principal."""
        return f"{self.kind}:{self.name}"

    @property
    def subject(self) -> Subject:
        """The policy view of the principal."""
        return Subject(self.name, self.acting_node)


class Caller:
    """The authenticated principal of one request, able to check further resources."""

    def __init__(
        self, principal: Principal, audit: RequestAudit | None, log: AuditLog | None = None
    ) -> None:
        self.principal = principal
        self._audit = audit
        self._log = log

    @property
    def label(self) -> str:
        """`user:alice` or `node:mi-...`."""
        return self.principal.label

    def record(self, action: str, resources: Sequence[str]) -> None:
        """A separate audit record for something this call did (e.g. one decryption)."""
        if self._log is None:
            return
        audit = self._audit
        self._log.emit(
            AuditEntry(
                time_us=now_us(),
                request_id=audit.request_id if audit is not None else "",
                principal=self.principal.label,
                action=action,
                outcome="allowed",
                resources=list(resources),
                token_id=self.principal.token_id,
                source=audit.source if audit is not None else None,
                grant_id=audit.grant_ids[0] if audit is not None and audit.grant_ids else None,
                details={"path": audit.path} if audit is not None else {},
            )
        )

    def decide(self, action: str, resource: str, node: NodeContext | None = None) -> Decision:
        """Evaluate one (action, resource, node) without recording anything."""
        return decide(self.principal.sources, self.principal.subject, action, resource, node)

    def check(self, action: str, resource: str, node: NodeContext | None = None) -> bool:
        """Evaluate and record the resource (and any grant relied on) for the audit log."""
        decision = self.decide(action, resource, node)
        if self._audit is not None:
            self._audit.add_resource(resource)
            if decision.allowed and decision.grant_id is not None:
                self._audit.add_grant(decision.grant_id)
        return decision.allowed

    def require(self, action: str, resource: str, node: NodeContext | None = None) -> None:
        """AccessDeniedError unless allowed."""
        decision = self.decide(action, resource, node)
        if self._audit is not None:
            self._audit.add_resource(resource)
        if not decision.allowed:
            raise AccessDeniedError(
                f"{self.principal.label} may not {action} on {resource}: {decision.reason}"
            )
        if decision.grant_id is not None and self._audit is not None:
            self._audit.add_grant(decision.grant_id)

    def link(self, resource: str, grant_id: str) -> None:
        """Record a resource and tie this call's audit record to an access request."""
        if self._audit is not None:
            self._audit.add_resource(resource)
            self._audit.add_grant(grant_id)

    def note(self, **details: object) -> None:
        """Add details to this request's audit record (never secrets)."""
        if self._audit is not None:
            self._audit.details.update(details)


class AuthThrottle:
    """Slows sources that fail authentication repeatedly (HTTP 429 while locked out)."""

    def __init__(self, limit: int, window: float, lockout: float, max_sources: int = 10_000):
        self._limit = limit
        self._window = window
        self._lockout = lockout
        self._max_sources = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def check(self, source: str, now: float) -> None:
        """RateLimitedError while `source` is locked out."""
        until = self._locked_until.get(source)
        if until is None:
            return
        if now >= until:
            del self._locked_until[source]
            self._failures.pop(source, None)
            return
        raise RateLimitedError(
            "too many failed authentication attempts from this address; "
            f"retry in {max(1, round(until - now))} s",
            retry_after=until - now,
        )

    def failed(self, source: str, now: float) -> None:
        """Count one failure; lock the source out once it reaches the limit in the window."""
        failures = self._failures.setdefault(source, deque())
        self._failures.move_to_end(source)
        failures.append(now)
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if len(failures) >= self._limit:
            self._locked_until[source] = now + self._lockout
            logger.warning("authentication lockout source=%s failures=%d", source, len(failures))
        while len(self._failures) > self._max_sources:
            oldest, _ = self._failures.popitem(last=False)
            self._locked_until.pop(oldest, None)


class NonceCache:
    """Nonces of signed node requests seen within the allowed clock skew."""

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, nonce: str, now: float) -> bool:
        """False when `nonce` was already used."""
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if seen_at > now - self._ttl and len(self._seen) < self._max:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


@dataclass(slots=True)
class _Stream:
    principal: Principal
    cancel: Callable[[str], None]


class StreamRegistry:
    """Long-lived streams (sessions, follows) by principal, so revocation can end them.

    `end_for(...)` ends matching streams at once; `recheck()` (run every few seconds)
    re-authenticates every stream's principal, which also catches expiry and changes
    made by another replica.
    """

    def __init__(self) -> None:
        self._streams: dict[int, _Stream] = {}
        self._next = 0

    def open(self, principal: Principal, cancel: Callable[[str], None]) -> int:
        """Register a stream; `cancel(reason)` ends it. Returns a handle for `close`."""
        self._next += 1
        self._streams[self._next] = _Stream(principal, cancel)
        return self._next

    def close(self, handle: int) -> None:
        """Forget a stream that ended by itself."""
        self._streams.pop(handle, None)

    def __len__(self) -> int:
        return len(self._streams)

    def end_for(
        self,
        reason: str,
        *,
        token_id: str | None = None,
        user: str | None = None,
        grant_id: str | None = None,
    ) -> int:
        """End streams of a token, a user or a grant; returns how many were ended."""
        ended = 0
        for handle, stream in list(self._streams.items()):
            p = stream.principal
            if (
                (token_id is not None and p.token_id == token_id)
                or (user is not None and p.kind == "user" and p.name == user)
                or (grant_id is not None and any(g.id == grant_id for g in p.grants))
            ):
                del self._streams[handle]
                stream.cancel(reason)
                ended += 1
        return ended

    def principals(self) -> list[tuple[int, Principal]]:
        """Every open stream's handle and principal."""
        return [(h, s.principal) for h, s in self._streams.items()]

    def end(self, handle: int, reason: str) -> None:
        """End one stream."""
        stream = self._streams.pop(handle, None)
        if stream is not None:
            stream.cancel(reason)


@dataclass(slots=True)
class _CachedPolicy:
    updated_at: float
    statements: tuple[Statement, ...]


@dataclass(slots=True)
class Authenticator:
    """Turns credentials into principals, with roles and grants resolved."""

    config: ServerConfig
    store: Store
    throttle: AuthThrottle = field(init=False)
    nonces: NonceCache = field(init=False)
    streams: StreamRegistry = field(default_factory=StreamRegistry)
    # AWS credentials (SigV4); None: such requests are refused.
    access_keys: AccessKeys | None = None
    _policies: dict[str, _CachedPolicy] = field(default_factory=dict)
    # sha256(token) -> (fresh until (monotonic), principal, token expiry)
    _principals: dict[str, tuple[float, Principal, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.throttle = AuthThrottle(
            self.config.auth_failure_limit,
            self.config.auth_failure_window_seconds,
            self.config.auth_lockout_seconds,
        )
        self.nonces = NonceCache(2 * self.config.node_request_max_skew_seconds)

    def _statements(self, role: RoleRecord) -> tuple[Statement, ...]:
        cached = self._policies.get(role.name)
        if cached is None or cached.updated_at != role.updated_at:
            cached = _CachedPolicy(role.updated_at, tuple(parse_policy(role.policy).statements))
            self._policies[role.name] = cached
        return cached.statements

    async def sources(
        self, roles: Iterable[str], grants: Iterable[AccessRequestRecord]
    ) -> tuple[PolicySource, ...]:
        """The policy sources of a set of roles and grants."""
        grants = list(grants)
        names = sorted(set(roles) | {g.role for g in grants})
        records = {r.name: r for r in await self.store.get_roles(names)}
        out: list[PolicySource] = []
        for name in sorted(set(roles)):
            if name in records:
                out.append(PolicySource(f"role:{name}", self._statements(records[name])))
        for grant in grants:
            role = records.get(grant.role)
            if role is None:
                continue
            spec = parse_targets(grant.targets)
            scope = Scope(frozenset(spec.node_ids), dict(spec.tags), spec.all_nodes)
            out.append(PolicySource(f"grant:{grant.id}", self._statements(role), scope, grant.id))
        return tuple(out)

    def invalidate(self) -> None:
        """Forget every cached principal (after any change to users, tokens, roles, grants)."""
        self._principals.clear()

    async def from_token(self, token: str, now: float) -> Principal:
        """The user principal of an API token (AuthError when invalid).

        Principals are cached for `auth_cache_seconds` under the token's hash, so a hot
        path does not pay three queries per request. Every change made through this
        server clears the cache at once; a change made through another replica is seen
        within `auth_cache_seconds` (and open streams re-check on their own timer).
        """
        ttl = self.config.auth_cache_seconds
        key = hash_secret(token) if ttl > 0 else ""
        cached = self._principals.get(key) if ttl > 0 else None
        if cached is not None:
            fresh_until, principal, token_expires = cached
            if (
                time.monotonic() < fresh_until
                and (token_expires is None or now < token_expires)
                and all(g.expires_at is not None and now < g.expires_at for g in principal.grants)
            ):
                return principal
        record, user = await self.store.authenticate_token(token, now)
        principal = await self._user_principal(record, user, now)
        if ttl > 0:
            if len(self._principals) >= 10_000:
                self._principals.clear()
            self._principals[key] = (time.monotonic() + ttl, principal, record.expires_at)
        return principal

    async def from_access_key(self, request: Request, credentials: str, now: float) -> Principal:
        """The user principal of a SigV4-signed request (a sigv4 AuthError when invalid)."""
        if self.access_keys is None:
            raise sigv4.UnrecognizedClientError("this server does not accept AWS credentials")
        record, user, _auth = await self.access_keys.authenticate(request, credentials, now)
        return await self._user_principal(record, user, now)

    async def _user_principal(self, record: TokenRecord, user: UserRecord, now: float) -> Principal:
        grants = await self.store.active_grants(user.name, now)
        return Principal(
            kind="user",
            name=user.name,
            token_id=record.id,
            user_id=user.id,
            roles=tuple(user.roles),
            sources=await self.sources(user.roles, grants),
            grants=tuple(grants),
        )

    async def from_node_signature(
        self,
        request: HTTPConnection,
        credentials: str,
        now: float,
        method: str | None = None,
        body: bytes | None = None,
    ) -> Principal:
        """The node principal of a signed request (AuthError when invalid or replayed).

        `method`/`body` are given for a WebSocket upgrade (GET, no body); a plain
        request supplies its own.
        """
        signed = parse_authorization(credentials)
        if abs(now - signed.ts) > self.config.node_request_max_skew_seconds:
            raise AuthError("the signed request's timestamp is too far from the server's clock")
        try:
            node = await self.store.get_node(signed.node_id)
        except NotFoundError:
            raise AuthError("the node is unknown or deregistered") from None
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if body is None:
            assert isinstance(request, Request)
            body = await request.body()
        verb = method if method is not None else str(request.scope.get("method", "GET"))
        payload = request_payload(verb, target, signed.ts, signed.nonce, body)
        if not verify_signature(node.public_key, payload, signed.signature):
            raise AuthError("the request's signature does not match the node's key")
        if not self.nonces.add(f"{signed.node_id}:{signed.nonce}", now):
            raise AuthError("the signed request was already used (replay)")
        return Principal(
            kind="node",
            name=node.id,
            token_id=None,
            user_id=None,
            roles=(NODE_ROLE,),
            sources=await self.sources([NODE_ROLE], []),
            acting_node=node_context(node),
        )

    async def authenticate(self, request: Request) -> Principal:
        """Authenticate `request`; throttles sources that keep failing."""
        now = time.time()
        source = request.client.host if request.client else "unknown"
        self.throttle.check(source, now)
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        try:
            if scheme.lower() == "bearer" and credentials.strip():
                return await self.from_token(credentials.strip(), now)
            if hmac.compare_digest(scheme.encode(), SCHEME.encode()) and credentials.strip():
                return await self.from_node_signature(request, credentials, now)
            if scheme == sigv4.ALGORITHM and credentials.strip():
                return await self.from_access_key(request, credentials, now)
            raise AuthError(
                "a bearer token (or a node's signed request, or an AWS SigV4 signature) is required"
            )
        except AuthError:
            self.throttle.failed(source, now)
            raise

    async def authenticate_websocket(self, connection: HTTPConnection) -> Principal:
        """Authenticate a WebSocket upgrade: a bearer token or a node's signed GET."""
        now = time.time()
        source = connection.client.host if connection.client else "unknown"
        self.throttle.check(source, now)
        header = connection.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        try:
            if scheme.lower() == "bearer" and credentials.strip():
                return await self.from_token(credentials.strip(), now)
            if hmac.compare_digest(scheme.encode(), SCHEME.encode()) and credentials.strip():
                return await self.from_node_signature(
                    connection, credentials, now, method="GET", body=b""
                )
            raise AuthError("a bearer token (or a node's signed request) is required")
        except AuthError:
            self.throttle.failed(source, now)
            raise

    async def still_valid(self, principal: Principal, now: float) -> str | None:
        """None when `principal` may still act; otherwise why not (for open streams)."""
        if principal.kind == "node":
            try:
                await self.store.get_node(principal.name)
            except NotFoundError:
                return "the node was deregistered"
            return None
        if principal.token_id is not None:
            try:
                token = await self.store.get_token(principal.token_id)
            except NotFoundError:
                return "the token was deleted"
            if not _token_usable(token, now):
                return "the token was revoked or expired"
        try:
            user = await self.store.get_user(principal.name)
        except NotFoundError:
            return f"user {principal.name} was deleted"
        if user.disabled:
            return f"user {principal.name} was disabled"
        for grant in principal.grants:
            current = await self.store.get_access_request(grant.id)
            if not current.active(now):
                return f"grant {grant.id} ended"
        return None

    async def recheck_streams(self) -> int:
        """End every open stream whose principal may no longer act; returns how many."""
        now = time.time()
        ended = 0
        for handle, principal in self.streams.principals():
            reason = await self.still_valid(principal, now)
            if reason is not None:
                self.streams.end(handle, reason)
                ended += 1
        return ended


def _token_usable(token: TokenRecord, now: float) -> bool:
    return not token.revoked and (token.expires_at is None or token.expires_at > now)


def _context_of(request: Request) -> Any:
    return request.app.state.context


def authorize(
    action: str, resource: str | None = None, grant_param: str | None = None
) -> Callable[..., Awaitable[Caller]]:
    """A dependency: authenticate, authorise `action` (on `resource`), return the Caller.

    `resource` may name path parameters, e.g. `node:{node_id}`; for a `node:` resource
    the node's tags are loaded so tag conditions apply. Without `resource`, only the
    action is checked here ("may this principal ever do this?") and the route checks
    each resource it touches through the Caller. `grant_param` names a path parameter
    holding an access request id, so even a refused call is linked to that request.
    """

    async def dependency(request: Request) -> Caller:
        """Authenticate the caller and authorise the route's action."""
        context = _context_of(request)
        audit = request_audit(request)
        if audit is not None:
            audit.action = action
            if grant_param is not None:
                audit.add_grant(str(request.path_params.get(grant_param, ""))[:40])
        principal = await context.auth.authenticate(request)
        if audit is not None:
            audit.principal = principal.label
            audit.token_id = principal.token_id
        caller = Caller(principal, audit, context.audit)
        if resource is None:
            if not may_ever(principal.sources, action):
                if audit is not None:
                    audit.add_resource("*")
                raise AccessDeniedError(f"{principal.label} may not {action}")
            return caller
        name = resource.format(**request.path_params)
        node = None
        if name.startswith("node:"):
            try:
                node = node_context(await context.store.get_node(name.removeprefix("node:")))
            except NotFoundError:
                node = None
        caller.require(action, name, node)
        return caller

    dependency.__name__ = f"authorize_{action.replace(':', '_')}"
    setattr(dependency, ACTION_ATTRIBUTE, action)
    return dependency


async def stream_recheck_loop(auth: Authenticator, interval: float) -> None:
    """Every `interval` seconds, end streams whose principal lost its right to act."""
    while True:
        await asyncio.sleep(interval)
        try:
            await auth.recheck_streams()
        except Exception:  # a database hiccup must not stop the loop
            logger.exception("stream recheck failed")


def authenticated(action: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency for actions every authenticated principal may take (e.g. whoami).

    It still declares the action (for the audit log and the route inventory), but
    consults no policy: knowing who you are is never denied to a valid credential.
    """

    async def dependency(request: Request) -> Caller:
        """Authenticate the caller and record the action."""
        context = _context_of(request)
        audit = request_audit(request)
        if audit is not None:
            audit.action = action
        principal = await context.auth.authenticate(request)
        if audit is not None:
            audit.principal = principal.label
            audit.token_id = principal.token_id
            audit.add_resource(principal.label)
        return Caller(principal, audit, context.audit)

    dependency.__name__ = f"authenticated_{action.replace(':', '_')}"
    setattr(dependency, ACTION_ATTRIBUTE, action)
    return dependency
