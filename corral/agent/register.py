"""`corral agent register`: trade an activation code for a node id (stdlib HTTP only).

urllib honours HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment. Over https the
server is verified first (tls.py: a pinned CA fingerprint, a CA file or the system
store); nothing is written to the state directory unless registration succeeds.
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
from corral.agent.tls import (
    TRUST_SYSTEM,
    ServerTrust,
    certificate_error,
    fetch_pinned_ca,
    parse_fingerprint,
    trust_from_ca_file,
    untrusted_message,
)
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


@dataclass(frozen=True, slots=True)
class TrustRequest:
    """How `register` is told to trust the server: a pinned CA fingerprint or a CA file."""

    ca_fingerprint: str | None = None
    ca_file: Path | None = None


def register(
    server_url: str,
    activation_id: str,
    activation_code: str,
    state_dir: Path,
    tags: dict[str, str],
    force: bool = False,
    timeout: float = 30.0,
    trust_request: TrustRequest | None = None,
) -> Registration:
    """Verify the server, register a fresh key pair with it and store the identity."""
    wanted = trust_request or TrustRequest()
    parts = urllib.parse.urlsplit(server_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"--server must be an http(s) URL, not {server_url!r}", "server")
    if wanted.ca_fingerprint is not None and wanted.ca_file is not None:
        raise ValidationError("give --ca-fingerprint or --ca-file, not both", "ca_fingerprint")
    if parts.scheme == "http" and (wanted.ca_fingerprint or wanted.ca_file):
        flag = "--ca-fingerprint" if wanted.ca_fingerprint else "--ca-file"
        raise ValidationError(f"{flag} needs an https:// server URL, not {server_url!r}", "server")
    fingerprint = parse_fingerprint(wanted.ca_fingerprint) if wanted.ca_fingerprint else None
    if is_registered(state_dir) and not force:
        raise ConflictError(f"{state_dir} already holds a registration; use --force to replace it")
    base = server_url.rstrip("/")
    trust: ServerTrust | None = None
    if parts.scheme == "https":
        if fingerprint is not None:
            trust = fetch_pinned_ca(base, fingerprint, timeout)
        elif wanted.ca_file is not None:
            trust = trust_from_ca_file(wanted.ca_file)
        else:
            trust = ServerTrust(TRUST_SYSTEM)
    key = SigningKey.generate()
    body = {
        "activation_id": activation_id,
        "activation_code": activation_code,
        "public_key": base64.b64encode(bytes(key.verify_key)).decode("ascii"),
        "tags": tags,
    }
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        base + REGISTER_PATH,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    reply = _post(request, timeout, base, trust)
    node_id = reply.get("node_id")
    if not isinstance(node_id, str):
        raise UnavailableError("server's reply has no node_id")
    save_identity(state_dir, node_id, base, key, trust)
    mode = trust.mode if trust is not None else "none"
    logger.info("registered node_id=%s in %s trust=%s", node_id, state_dir, mode)
    return Registration(node_id=node_id, state_dir=state_dir)


def _post(
    request: urllib.request.Request, timeout: float, base: str, trust: ServerTrust | None
) -> dict[str, object]:
    context = trust.context() if trust is not None else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(exc.code, exc.read()) from None
    except (urllib.error.URLError, OSError) as exc:
        untrusted = certificate_error(exc)
        if untrusted is not None and trust is not None:
            hint = (
                "; pass --ca-fingerprint (printed by `corral activation create`) or --ca-file"
                if trust.mode == TRUST_SYSTEM
                else ""
            )
            raise UnavailableError(untrusted_message(base, trust, untrusted) + hint) from None
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
