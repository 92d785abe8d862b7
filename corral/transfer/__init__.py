"""File transfer (`corral cp`): the two ends of a transfer, run by the agent and the CLI."""

from corral.transfer.files import SourceTree, resolve_destination, resolve_source, scan_source
from corral.transfer.peer import (
    Channel,
    ChannelClosedError,
    EntryResult,
    Link,
    Summary,
    WebSocketChannel,
    receive_tree,
    send_tree,
)

__all__ = [
    "Channel",
    "ChannelClosedError",
    "EntryResult",
    "Link",
    "SourceTree",
    "Summary",
    "WebSocketChannel",
    "receive_tree",
    "resolve_destination",
    "resolve_source",
    "scan_source",
    "send_tree",
]
