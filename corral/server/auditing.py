"""Every API call leaves an audit record: an ASGI middleware around the whole app.

The middleware gives each HTTP request a request id and a `RequestAudit` that the
authorisation dependency fills in (principal, action, resources, grant) and the error
handlers complete (the error message). When the response starts, the record is
written and committed *before* the status line goes out, so no answered call is
missing from the log. Health checks and the public CA certificate are not audited.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.audit.log import AuditLog, now_us
from corral.store import AuditEntry

logger = logging.getLogger(__name__)

UNAUDITED_PATHS = frozenset({"/healthz", "/ca.pem"})
MAX_RESOURCES = 10_000
STATE_KEY = "corral_audit"


@dataclass(slots=True)
class RequestAudit:
    """What one request did, as far as the audit log is concerned."""

    request_id: str
    method: str
    path: str
    source: str | None
    principal: str = "anonymous"
    token_id: str | None = None
    action: str | None = None
    resources: list[str] = field(default_factory=list)
    grant_ids: list[str] = field(default_factory=list)
    error: str | None = None
    details: dict[str, object] = field(default_factory=dict)
    # Set by a front end whose statuses differ from the native API's (the Systems
    # Manager wire API answers access denied with HTTP 400): the outcome of an error.
    error_outcome: str | None = None
    _seen: set[str] = field(default_factory=set)

    def add_resource(self, resource: str) -> None:
        """Note a resource the request touched (each once; capped, with a count beyond)."""
        if resource in self._seen:
            return
        self._seen.add(resource)
        if len(self.resources) < MAX_RESOURCES:
            self.resources.append(resource)
        else:
            self.details["resources_omitted"] = (
                int(str(self.details.get("resources_omitted", 0))) + 1
            )

    def add_grant(self, grant_id: str) -> None:
        """Note that an access decision relied on this grant."""
        if grant_id not in self.grant_ids:
            self.grant_ids.append(grant_id)

    def entry(self, status: int) -> AuditEntry:
        """The record for a response with HTTP `status`."""
        if status < 400:
            outcome = "allowed"
        elif self.error_outcome is not None:
            outcome = self.error_outcome
        elif status in (401, 403, 429):
            outcome = "denied"
        else:
            outcome = "failed"
        details: dict[str, object] = {"method": self.method, "path": self.path, "status": status}
        details.update(self.details)
        if len(self.grant_ids) > 1:
            details["grant_ids"] = list(self.grant_ids)
        return AuditEntry(
            time_us=now_us(),
            request_id=self.request_id,
            principal=self.principal,
            action=self.action or "unknown",
            outcome=outcome,
            resources=list(self.resources),
            token_id=self.token_id,
            source=self.source,
            error=self.error if status >= 400 else None,
            grant_id=self.grant_ids[0] if self.grant_ids else None,
            details=details,
        )


def request_audit(request: Request) -> RequestAudit | None:
    """The audit record in progress for `request` (None for unaudited paths)."""
    found = request.scope.get("state", {}).get(STATE_KEY)
    return found if isinstance(found, RequestAudit) else None


class AuditMiddleware:
    """Pure ASGI middleware (so streaming responses are not buffered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUDITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        audit = RequestAudit(
            request_id=uuid.uuid4().hex,
            method=str(scope["method"]),
            path=str(scope["path"])[:1024],
            source=str(client[0]) if client else None,
        )
        scope.setdefault("state", {})[STATE_KEY] = audit
        written = False

        async def send_audited(message: Message) -> None:
            nonlocal written
            if message["type"] == "http.response.start" and not written:
                written = True
                await self._write(scope, audit.entry(int(message["status"])))
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", audit.request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except BaseException:
            if not written:
                written = True
                audit.error = audit.error or "internal server error"
                await self._write(scope, audit.entry(500))
            raise

    @staticmethod
    async def _write(scope: Scope, entry: AuditEntry) -> None:
        app: Any = scope.get("app")
        context = getattr(getattr(app, "state", None), "context", None)
        log = getattr(context, "audit", None)
        if isinstance(log, AuditLog):
            await log.write(entry)
        else:  # not started (or already stopped): still leave a trace
            logger.warning(
                "audit log unavailable request_id=%s action=%s", entry.request_id, entry.action
            )
