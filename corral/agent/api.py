"""Calls from a node to the server's HTTP API, signed with the node's key.

A node has no API token: each request carries a CorralNode signature over its
method, path, time, a nonce and the body (see corral/protocol/requestsig.py), made
over an outbound connection that trusts the server the way registration stored.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

from corral.agent.identity import Identity
from corral.agent.register import _post
from corral.errors import ValidationError


def call(
    identity: Identity,
    method: str,
    path: str,
    body: object | None = None,
    timeout: float = 30.0,
) -> dict[str, object]:
    """`method path` on the node's server as the node; the JSON object it answers."""
    if not path.startswith("/"):
        raise ValidationError(f"path must start with '/', not {path!r}", "path")
    data = json.dumps(body).encode("utf-8") if body is not None else b""
    headers = {
        "Authorization": identity.authorization(method, path, data),
        "Accept": "application/json",
    }
    if body is not None:
        headers["Content-Type"] = "application/json"
    base = identity.server_url.rstrip("/")
    request = urllib.request.Request(  # noqa: S310 - the URL was checked at registration
        base + path, data=data if body is not None else None, headers=headers, method=method
    )
    https = urllib.parse.urlsplit(base).scheme == "https"
    return _post(request, timeout, base, identity.trust if https else None)
