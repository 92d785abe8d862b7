"""The agent's side of file transfers (`corral cp`): the node's files, over an outbound socket.

On `TransferStart` (over the control channel) the agent opens one more outbound
WebSocket, `/agent/v1/transfers/{id}`, proving it is the node with a signed upgrade
request (the same CorralNode signature as its API calls). It resolves the path on
the node (symbolic links followed, so the server checks the real path against
policy), sends READY with it, and then receives the files (upload) or sends them
(download) with `corral.transfer`. Below the resolved root no link is followed.

The agent reads and writes as its own account: what it creates belongs to that
account, and it reaches only what that account may (policy decides what an operator
may name; file permissions decide what the agent can do). A broken upload leaves a
partial file next to its destination, which the next attempt resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from corral.agent.api import back_channel_url, connect_back
from corral.agent.identity import Identity
from corral.errors import ValidationError
from corral.protocol.messages import TransferStart
from corral.protocol.transfer import (
    DOWNLOAD,
    INVALID,
    PROTOCOL,
    UPLOAD,
    Side,
    TransferError,
    TransferFlow,
    TransferReady,
    normalize_path,
)
from corral.transfer import (
    Link,
    SourceTree,
    Summary,
    WebSocketChannel,
    receive_tree,
    resolve_destination,
    resolve_source,
    scan_source,
    send_tree,
)
from corral.transfer.peer import MAX_FRAME, blocking, guarded

logger = logging.getLogger(__name__)

MAX_TRANSFERS = 16


def transfer_url(server_url: str, transfer_id: str) -> tuple[str, str]:
    """(WebSocket URL, signed path) of a transfer's data connection."""
    return back_channel_url(server_url, f"/agent/v1/transfers/{transfer_id}")


def _resolve(start: TransferStart) -> tuple[str, str, SourceTree | None]:
    """(root, kind, the tree to send on download) for a transfer, resolved on this node."""
    try:
        if normalize_path(start.path) != start.path:
            raise ValidationError("not in normal form")
    except ValidationError:
        raise TransferError(PROTOCOL, "the server sent a path that is not in normal form") from None
    tree: SourceTree | None = None
    if start.direction == UPLOAD:
        root = resolve_destination(start.path, start.source_name, start.source_kind)
        kind = start.source_kind
    elif start.direction == DOWNLOAD:
        root, kind = resolve_source(start.path, start.recursive)
        tree = scan_source(root, kind)
    else:
        raise TransferError(PROTOCOL, f"unknown transfer direction {start.direction[:20]!r}")
    try:
        if normalize_path(root) != root:
            raise ValidationError("not in normal form")
    except ValidationError:
        raise TransferError(INVALID, f"{root!r} cannot be named in a transfer") from None
    return root, kind, tree


class TransferManager:
    """Runs the transfers the server asks for (at most `MAX_TRANSFERS` at once)."""

    def __init__(
        self,
        identity: Callable[[], Identity | None],
        tls: Callable[[], ssl.SSLContext | None],
        connect_timeout: float,
    ) -> None:
        self._identity = identity
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._running: dict[str, asyncio.Task[None]] = {}

    async def handle(self, start: TransferStart) -> None:
        """Start a transfer in the background (the control channel keeps reading)."""
        if start.transfer_id in self._running:
            return  # delivered twice: it already runs
        if len(self._running) >= MAX_TRANSFERS:
            logger.warning("refusing transfer_id=%s: too many transfers", start.transfer_id)
            return
        task = asyncio.create_task(self._run(start), name=f"corral-transfer-{start.transfer_id}")
        self._running[start.transfer_id] = task
        task.add_done_callback(lambda _t: self._running.pop(start.transfer_id, None))

    async def close(self) -> None:
        """Stop every transfer (the agent is stopping); partial files stay for a retry."""
        for task in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, start: TransferStart) -> None:
        identity = self._identity()
        if identity is None:
            return
        try:
            async with connect_back(
                identity,
                f"/agent/v1/transfers/{start.transfer_id}",
                self._tls(),
                self._connect_timeout,
                MAX_FRAME,
            ) as ws:
                await self._serve(WebSocketChannel(ws), start)
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as error:
            logger.warning(
                "transfer connection failed transfer_id=%s error=%s", start.transfer_id, error
            )

    async def _serve(self, channel: WebSocketChannel, start: TransferStart) -> None:
        me = Side.RECEIVER if start.direction == UPLOAD else Side.SENDER
        flow = TransferFlow(me, start.source_kind if start.direction == UPLOAD else None)
        link = Link(channel, flow, me)
        try:
            try:
                root, kind, tree = await blocking(_resolve, start)
            except TransferError as error:
                await link.fail(error)
                raise
            await guarded(link, link.send(TransferReady(root, kind)))
            logger.info(
                "transfer started transfer_id=%s direction=%s root=%s kind=%s",
                start.transfer_id,
                start.direction,
                root,
                kind,
            )
            summary: Summary
            if tree is None:
                summary = await receive_tree(link, root)
            else:
                summary = await send_tree(link, tree)
                for skipped in summary.skipped:
                    logger.info(
                        "transfer skipped transfer_id=%s path=%s (not a file or directory)",
                        start.transfer_id,
                        skipped,
                    )
        except TransferError as error:
            logger.warning(
                "transfer failed transfer_id=%s code=%s error=%s",
                start.transfer_id,
                error.code,
                error.message,
            )
            return
        logger.info(
            "transfer finished transfer_id=%s files=%d directories=%d bytes=%d transferred=%d"
            " resumed=%d",
            start.transfer_id,
            summary.files,
            summary.directories,
            summary.bytes,
            summary.transferred,
            summary.resumed,
        )
