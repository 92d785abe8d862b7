"""The node bus: "send this message to node X" without knowing where X is connected.

A replica holding X's WebSocket subscribes for X while the connection lives; any
replica publishes. `publish` returns whether a live subscriber took the message
(at-most-once on the bus; at-least-once delivery comes from re-sending on reconnect).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from corral.protocol import Message

Deliver = Callable[[Message], Awaitable[None]]
PresenceListener = Callable[[str, bool], None]


class Subscription(Protocol):
    """A live subscription for one node; close it when the connection ends."""

    def close(self) -> None:
        """Stop receiving messages for the node."""
        ...


class NodeBus(Protocol):
    """Routes messages to the connection of a node, wherever it lives."""

    async def publish(self, node_id: str, message: Message) -> bool:
        """Send `message` to node `node_id`; False when no connection took it."""
        ...

    def subscribe(self, node_id: str, deliver: Deliver) -> Subscription:
        """Receive messages for `node_id` (replaces an older subscription for it)."""
        ...

    def is_connected(self, node_id: str) -> bool:
        """Whether some replica holds a connection for the node (presence)."""
        ...

    def add_presence_listener(self, listener: PresenceListener) -> None:
        """Call `listener(node_id, connected)` when a node connects or disconnects."""
        ...

    async def close(self) -> None:
        """Drop every subscription."""
        ...
