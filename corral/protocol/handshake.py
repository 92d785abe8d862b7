"""Connection handshake: the server challenges, the agent proves possession of its key.

Rules:
* The server's first frame is `Hello` with a fresh random nonce (32 bytes).
* The agent's first frame must be `Auth`: the Ed25519 signature of
  `auth_payload(nonce, node_id)`. The nonce is single-use, so a recorded handshake
  replayed on another connection fails verification.
* Until `Auth` is verified, any other frame is a protocol error; after it, `Auth` again is.

This module is sans-I/O and crypto-free: the caller supplies the signature check.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Iterable

from corral.errors import ProtocolError
from corral.protocol import codec
from corral.protocol.messages import (
    AGENT_MESSAGES,
    PROTOCOL_VERSION,
    Auth,
    Hello,
    Message,
)

NONCE_BYTES = 32
_AUTH_CONTEXT = b"corral-agent-auth-v1\x00"

# verify(node_id, payload, signature) -> True when the signature is the node's.
Verifier = Callable[[str, bytes, bytes], bool]


def auth_payload(nonce: bytes, node_id: str) -> bytes:
    """The exact bytes an agent signs to prove it holds the node's private key."""
    return _AUTH_CONTEXT + nonce + b"\x00" + node_id.encode("ascii", "strict")


class ChannelState(enum.Enum):
    """Where a server-side connection is in its life."""

    AWAIT_AUTH = "await_auth"
    READY = "ready"
    CLOSED = "closed"


class ServerChannel:
    """Server side of one agent connection: handshake state and frame decoding."""

    def __init__(
        self,
        verify: Verifier,
        max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
        allowed: Iterable[type[Message]] = AGENT_MESSAGES,
        nonce: bytes | None = None,
    ) -> None:
        self._verify = verify
        self._nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self._allowed = tuple(allowed)
        self.max_message_bytes = max_message_bytes
        self.state = ChannelState.AWAIT_AUTH
        self.node_id: str | None = None

    def hello(self) -> str:
        """The first frame to send on the connection."""
        return codec.encode(Hello(nonce=self._nonce, protocol_versions=[PROTOCOL_VERSION]))

    def receive(self, frame: str | bytes) -> Message:
        """Decode one frame from the agent, enforcing the handshake; raises ProtocolError."""
        if self.state is ChannelState.CLOSED:
            raise ProtocolError("connection is closed", "closed")
        try:
            message = codec.decode(frame, self._allowed, self.max_message_bytes)
        except ProtocolError:
            if self.state is ChannelState.AWAIT_AUTH:
                self.state = ChannelState.CLOSED
            raise
        if self.state is ChannelState.AWAIT_AUTH:
            if not isinstance(message, Auth):
                self.state = ChannelState.CLOSED
                raise ProtocolError("first message must be auth", "auth_required")
            self._authenticate(message)
            return message
        if isinstance(message, Auth):
            raise ProtocolError("already authenticated", "bad_message")
        return message

    def _authenticate(self, message: Auth) -> None:
        if message.protocol_version != PROTOCOL_VERSION:
            self.state = ChannelState.CLOSED
            raise ProtocolError(
                f"protocol version {message.protocol_version} is not supported", "bad_version"
            )
        try:
            payload = auth_payload(self._nonce, message.node_id)
        except UnicodeEncodeError as exc:
            self.state = ChannelState.CLOSED
            raise ProtocolError("authentication failed", "auth_failed") from exc
        # The nonce is consumed whatever the outcome: one attempt per connection.
        self._nonce = b""
        if not self._verify(message.node_id, payload, message.signature):
            self.state = ChannelState.CLOSED
            raise ProtocolError("authentication failed", "auth_failed")
        self.node_id = message.node_id
        self.state = ChannelState.READY

    def close(self) -> None:
        """Mark the connection closed; later frames are refused."""
        self.state = ChannelState.CLOSED
