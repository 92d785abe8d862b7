"""Calls from a node to the server's HTTP API, signed with the node's key.

A node has no API token: each request carries a CorralNode signature over its
method, path, time, a nonce and the body (see corral/protocol/requestsig.py), made
over an outbound connection that trusts the server the way registration stored.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
import urllib.request
from typing import Any

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


def back_channel_url(server_url: str, path: str) -> tuple[str, str]:
    """(WebSocket URL, signed path) of a data connection the agent opens to the server."""
    parts = urllib.parse.urlsplit(server_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), "ws")
    full = parts.path.rstrip("/") + path
    return urllib.parse.urlunsplit((scheme, parts.netloc, full, "", "")), full


def connect_back(
    identity: Identity,
    path: str,
    tls: ssl.SSLContext | None,
    timeout: float,
    max_size: int,
) -> Any:
    """Open (as an async context manager) a signed outbound WebSocket to `path`.

    Sessions and file transfers each get their own data connection this way: the
    upgrade is signed with the node's key, and it goes through the same TLS trust
    (and HTTP(S)_PROXY) as the agent's main connection.
    """
    from websockets.asyncio.client import connect

    url, signed = back_channel_url(identity.server_url, path)
    extra: dict[str, Any] = {} if tls is None else {"ssl": tls}
    return connect(
        url,
        additional_headers={"Authorization": identity.authorization("GET", signed)},
        open_timeout=timeout,
        close_timeout=timeout,
        max_size=max_size,
        **extra,
    )
