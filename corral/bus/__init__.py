"""Messaging between whoever wants to reach a node and whoever holds its connection."""

from corral.bus.base import NodeBus, Subscription
from corral.bus.memory import InProcessBus

__all__ = ["InProcessBus", "NodeBus", "Subscription"]
