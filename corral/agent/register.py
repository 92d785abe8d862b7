"""`corral agent register`: trade an activation code for a node id (stdlib HTTP only).

urllib honours HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from corral.agent.identity import is_registered, save_identity
from corral.errors import (
    AuthError,
    ConflictError,
    CorralError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)

logger = logging.getLogger(__name__)

REGISTER_PATH = "/api/v1/register"


@dataclass(frozen=True, slots=True)
class Registration:
    """What `register` stored."""

    node_id: str
    state_dir: Path


def register(
    server_url: str,
    activation_id: str,
    activation_code: str,
    state_dir: Path,
    tags: dict[str, str],
    force: bool = False,
    timeout: float = 30.0,
) -> Registration:
    """Generate a key pair, register it with the server and store the identity."""
    parts = urllib.parse.urlsplit(server_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"--server must be an http(s) URL, not {server_url!r}", "server")
    if is_registered(state_dir) and not force:
        raise ConflictError(f"{state_dir} already holds a registration; use --force to replace it")
    key = SigningKey.generate()
    body = {
        "activation_id": activation_id,
        "activation_code": activation_code,
        "public_key": base64.b64encode(bytes(key.verify_key)).decode("ascii"),
        "tags": tags,
    }
    base = server_url.rstrip("/")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        base + REGISTER_PATH,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    reply = _post(request, timeout)
    node_id = reply.get("node_id")
    if not isinstance(node_id, str):
        raise UnavailableError("server's reply has no node_id")
    save_identity(state_dir, node_id, base, key)
    logger.info("registered node_id=%s in %s", node_id, state_dir)
    return Registration(node_id=node_id, state_dir=state_dir)


def _post(request: urllib.request.Request, timeout: float) -> dict[str, object]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(exc.code, exc.read()) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnavailableError(f"cannot reach the server: {reason}") from None
    try:
        body = json.loads(raw)
    except ValueError:
        raise UnavailableError("server's reply is not JSON") from None
    if not isinstance(body, dict):
        raise UnavailableError("server's reply is not a JSON object")
    return body


def _http_error(status: int, raw: bytes) -> CorralError:
    message = f"server answered HTTP {status}"
    field: str | None = None
    try:
        error = json.loads(raw).get("error", {})
        if isinstance(error.get("message"), str):
            message = error["message"]
        if isinstance(error.get("field"), str):
            field = error["field"]
    except (ValueError, AttributeError):
        pass
    if status in (400, 422):
        return ValidationError(message, field)
    if status in (401, 403):
        return AuthError(message)
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status >= 500:
        return UnavailableError(message)
    return CorralError(message)
