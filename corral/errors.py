"""The error tree shared by every part of Corral.

```
CorralError                      root; never raised directly
├── ValidationError              the caller's mistake: bad input (HTTP 400, exit 2); carries `field`
│   └── DocumentError            a document or its parameters failed validation
├── NotFoundError                the named thing does not exist (HTTP 404, exit 3)
├── ConflictError                the request contradicts current state (HTTP 409, exit 2)
├── AuthError                    authentication failed (HTTP 401, exit 4)
│   ├── AccessDeniedError        authenticated, but policy does not allow it (HTTP 403, exit 4)
│   └── RateLimitedError         too many failed authentications from one source (HTTP 429, exit 4)
├── UnavailableError             a dependency is down; retryable (HTTP 503, exit 5)
└── ProtocolError                a peer broke the agent-channel protocol; carries a close `code`
```

Caller mistakes carry a precise, safe message; anything else is "our fault" and is
logged with context while the peer sees a generic message.
"""

from __future__ import annotations


class CorralError(Exception):
    """Root of every error Corral raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(CorralError):
    """The caller's input is invalid; `field` names the offending path when one is to blame."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DocumentError(ValidationError):
    """A document, or the parameters given for it, failed validation."""


class NotFoundError(CorralError):
    """The named resource does not exist."""


class ConflictError(CorralError):
    """The request contradicts the current state (already exists, wrong state)."""


class AuthError(CorralError):
    """Authentication failed, or the principal may not do this."""


class AccessDeniedError(AuthError):
    """The principal is known but policy does not allow the action on the resource."""


class RateLimitedError(AuthError):
    """Too many failed authentications from one source; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(CorralError):
    """A dependency (database, bus, server) is unavailable; retry later."""

    retryable = True


class ProtocolError(CorralError):
    """A peer sent something the agent-channel protocol forbids."""

    def __init__(self, message: str, code: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code
