"""Signed HTTP requests from nodes (sans-I/O): how a node proves who it is to the API.

A node has no API token; it signs each request with its Ed25519 key:

    Authorization: CorralNode node_id=mi-...,ts=1764400000,nonce=<32 hex>,sig=<base64>

The signature covers a fixed context string, the method, the path with its query,
the timestamp, the nonce and the SHA-256 of the body, so a captured request cannot be
replayed elsewhere, later (the server bounds the clock skew) or twice (the server
remembers nonces for that long).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from corral.errors import AuthError

SCHEME = "CorralNode"
_CONTEXT = b"corral-node-request-v1\n"
_HEADER = re.compile(
    r"^node_id=(?P<node_id>mi-[0-9a-f]{17}),ts=(?P<ts>[0-9]{1,12}),"
    r"nonce=(?P<nonce>[0-9a-f]{32}),sig=(?P<sig>[A-Za-z0-9+/]{86}==)$"
)


def request_payload(method: str, target: str, ts: int, nonce: str, body: bytes) -> bytes:
    """The exact bytes a node signs for one request (`target` is path plus query)."""
    digest = hashlib.sha256(body).hexdigest()
    return _CONTEXT + f"{method.upper()}\n{target}\n{ts}\n{nonce}\n{digest}".encode()


def authorization_header(node_id: str, ts: int, nonce: str, signature: bytes) -> str:
    """The Authorization header value for a signed request."""
    sig = base64.b64encode(signature).decode("ascii")
    return f"{SCHEME} node_id={node_id},ts={ts},nonce={nonce},sig={sig}"


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A parsed CorralNode Authorization header."""

    node_id: str
    ts: int
    nonce: str
    signature: bytes


def parse_authorization(credentials: str) -> SignedRequest:
    """Parse the part after `CorralNode `; AuthError when malformed."""
    match = _HEADER.match(credentials.strip())
    if match is None:
        raise AuthError("malformed CorralNode authorization header")
    return SignedRequest(
        match["node_id"], int(match["ts"]), match["nonce"], base64.b64decode(match["sig"])
    )
