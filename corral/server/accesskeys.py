"""AWS credentials (an access key id and a secret access key) for SigV4-signed requests.

They are a kind of API token: bound to one user, listed, revoked and expired like a
bearer token, and stopped when the user is disabled or deleted. A bearer token is
stored hashed; a secret access key cannot be, since checking a signature needs the
secret itself. So it is sealed (AES-256-GCM envelope) under the key-encryption key
`aws-credentials` in the server's key directory, bound to its access key id, and the
database holds only that ciphertext. The secret is shown once, in the create
response, and appears in no log or audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from starlette.requests import Request

from corral.errors import AuthError, ConflictError, NotFoundError, ValidationError
from corral.params import DecryptionError, Keyring
from corral.server import sigv4
from corral.store import Store, TokenRecord, UserRecord

logger = logging.getLogger(__name__)

# The key-encryption key that seals secret access keys (a file in the key directory).
CREDENTIALS_KEY = "aws-credentials"
# Corral's access key ids: a recognisable prefix (never AWS's `AKIA`) and 80 random bits.
ACCESS_KEY_PREFIX = "CRLK"
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# The only service Corral's credentials sign for.
SERVICE = "ssm"
# Largest body of a SigV4-signed request (it is read before the caller is known).
MAX_SIGNED_BODY_BYTES = 1024 * 1024


def new_access_key_id() -> str:
    """`CRLK` and 16 base32 characters (20 in all, like AWS's)."""
    return ACCESS_KEY_PREFIX + "".join(secrets.choice(_BASE32) for _ in range(16))


def new_secret_access_key() -> str:
    """40 URL-safe characters (240 bits)."""
    return secrets.token_urlsafe(30)


def _sealed_name(access_key_id: str) -> str:
    # Bound into the ciphertext; ':' never occurs in a parameter name, so a sealed
    # secret can never be passed off as a parameter's value or the other way round.
    return f"aws-credential:{access_key_id}"


async def read_body(request: Request, limit: int = MAX_SIGNED_BODY_BYTES) -> bytes:
    """The request body, refused beyond `limit` bytes (kept for the route to read again)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ValidationError(f"a signed request's body is at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValidationError(f"a signed request's body is at most {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # starlette's cache: later `await request.body()` returns it
    return body


def signed_request(request: Request, body: bytes) -> sigv4.SignedRequest:
    """The parts of an HTTP request a SigV4 signature covers."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else request.url.path
    query = request.scope.get("query_string", b"")
    return sigv4.SignedRequest(
        method=request.method,
        raw_path=path.split("?", 1)[0],
        query=query.decode("latin-1") if isinstance(query, bytes) else "",
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
        body=body,
    )


class AccessKeys:
    """Issues AWS credentials and turns SigV4-signed requests into a token and a user."""

    def __init__(self, store: Store, keyring: Keyring, max_skew_seconds: float) -> None:
        self.store = store
        self.keyring = keyring
        self.max_skew_seconds = max_skew_seconds

    def _ensure_key(self) -> None:
        try:
            self.keyring.info(CREDENTIALS_KEY)
        except NotFoundError:
            with contextlib.suppress(ConflictError):  # another request created it first
                self.keyring.create(CREDENTIALS_KEY)

    async def create(
        self, description: str, user_id: str, expires_at: float | None
    ) -> tuple[str, TokenRecord]:
        """New credentials for a user; returns the secret access key (shown once) and record."""
        access_key_id = new_access_key_id()
        secret = new_secret_access_key()
        await asyncio.to_thread(self._ensure_key)
        sealed = await asyncio.to_thread(
            self.keyring.seal, CREDENTIALS_KEY, _sealed_name(access_key_id), secret
        )
        record = await self.store.create_access_key(
            description, user_id, expires_at, access_key_id, sealed
        )
        return secret, record

    async def authenticate(
        self, request: Request, credentials: str, now: float | None = None
    ) -> tuple[TokenRecord, UserRecord, sigv4.Authorization]:
        """Verify a SigV4-signed request; AuthError (a sigv4 subclass) when it does not."""
        now = time.time() if now is None else now
        auth = sigv4.parse_authorization(credentials)
        body = await read_body(request)
        signed = signed_request(request, body)
        amz_date = sigv4.check_request(auth, signed, SERVICE, now, self.max_skew_seconds)
        if signed.header_values("x-amz-security-token"):
            raise sigv4.UnrecognizedClientError(
                "Corral issues no session tokens: unset AWS_SESSION_TOKEN "
                "(X-Amz-Security-Token) and sign with the access key alone"
            )
        try:
            token, user, sealed = await self.store.access_key(auth.access_key_id, now)
        except AuthError as error:
            raise sigv4.UnrecognizedClientError(error.message) from None
        try:
            secret = await asyncio.to_thread(
                self.keyring.open, _sealed_name(auth.access_key_id), sealed
            )
        except (DecryptionError, NotFoundError):
            logger.error(
                "secret access key cannot be opened token_id=%s key=%s", token.id, CREDENTIALS_KEY
            )
            raise sigv4.UnrecognizedClientError(
                "this access key's secret cannot be read on this server (its key-encryption key "
                "is missing or damaged); ask an administrator"
            ) from None
        sigv4.verify(secret, auth, signed, amz_date)
        await self.store.mark_token_used(token, now)
        return token, user, auth
