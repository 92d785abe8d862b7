"""In-process node bus: the connection registry of a single server."""

from __future__ import annotations

import logging

from corral.bus.base import Deliver, PresenceListener
from corral.protocol import Message

logger = logging.getLogger(__name__)


class _MemorySubscription:
    def __init__(self, bus: InProcessBus, node_id: str, deliver: Deliver) -> None:
        self._bus = bus
        self.node_id = node_id
        self.deliver = deliver
        self.closed = False

    def close(self) -> None:
        """Stop receiving messages for the node."""
        if not self.closed:
            self.closed = True
            self._bus._unsubscribe(self)


class InProcessBus:
    """`NodeBus` for one process: publishing calls the subscriber directly."""

    def __init__(self) -> None:
        self._subs: dict[str, _MemorySubscription] = {}
        self._listeners: list[PresenceListener] = []

    async def publish(self, node_id: str, message: Message) -> bool:
        """Deliver to the node's connection if it is held here."""
        sub = self._subs.get(node_id)
        if sub is None:
            return False
        try:
            await sub.deliver(message)
        except Exception as error:  # the connection is going away; the caller re-sends later
            logger.info("bus delivery failed node_id=%s error=%s", node_id, type(error).__name__)
            return False
        return True

    def subscribe(self, node_id: str, deliver: Deliver) -> _MemorySubscription:
        """Register the connection of `node_id`, replacing an older one."""
        old = self._subs.get(node_id)
        if old is not None:
            old.closed = True
        sub = _MemorySubscription(self, node_id, deliver)
        self._subs[node_id] = sub
        self._notify(node_id, True)
        return sub

    def _unsubscribe(self, sub: _MemorySubscription) -> None:
        if self._subs.get(sub.node_id) is sub:
            del self._subs[sub.node_id]
            self._notify(sub.node_id, False)

    def is_connected(self, node_id: str) -> bool:
        """Whether this process holds the node's connection."""
        return node_id in self._subs

    def add_presence_listener(self, listener: PresenceListener) -> None:
        """Be told about connects and disconnects."""
        self._listeners.append(listener)

    def _notify(self, node_id: str, connected: bool) -> None:
        for listener in self._listeners:
            listener(node_id, connected)

    async def close(self) -> None:
        """Forget every subscription."""
        for sub in list(self._subs.values()):
            sub.close()
