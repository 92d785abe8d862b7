"""The two ends of a transfer over one message channel: send a tree, or receive one.

The agent and the CLI both run these drivers, over their WebSocket to the server
(`WebSocketChannel`) or, in tests, over any `Channel`. Every message sent or
received goes through the end's own `TransferFlow`, so either end refuses what
the protocol (corral/protocol/transfer.py) does not allow.

Flow control is the transport's: the sender awaits each send, and the receiver
reads the next frame only once the previous one is written to disk, so a slow disk
slows the sender down through the server and no buffer grows without bound (at
most one read block here, `READ_BLOCK`).

A failure on this side is told to the peer (FAILED) before `TransferError` is
raised; a FAILED from the peer raises `TransferError` with the peer's code; a lost
connection raises `TransferError(connection_lost)`, which is retryable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from corral.errors import ProtocolError
from corral.protocol import codec, streams
from corral.protocol.messages import Message
from corral.protocol.transfer import (
    CHECKSUM_MISMATCH,
    CONNECTION_LOST,
    DIRECTORY,
    FILE,
    IO_ERROR,
    MAX_CONTROL_BYTES,
    PROTOCOL,
    SOURCE_CHANGED,
    TRANSFER_MESSAGES,
    Side,
    TransferBegin,
    TransferDone,
    TransferEnd,
    TransferEntry,
    TransferEntryDone,
    TransferError,
    TransferFailed,
    TransferFileEnd,
    TransferFlow,
    TransferResume,
    failed,
    relative_parts,
)
from corral.transfer.files import (
    Destination,
    PartialFile,
    SourceTree,
    hash_prefix,
    open_source_file,
    read_block,
)

logger = logging.getLogger(__name__)

CHUNK = streams.DEFAULT_MAX_PAYLOAD  # bytes of file per DATA frame
READ_BLOCK = 4 * CHUNK  # bytes read from disk per blocking call
MAX_FRAME = CHUNK + 64  # the largest WebSocket message either end receives
T = TypeVar("T")
M = TypeVar("M", bound=Message)
Progress = Callable[[int], None]


async def blocking(func: Callable[..., T], *args: Any) -> T:
    """The one way the transfer ends run file work (reads, writes, hashes) off the loop."""
    return await asyncio.to_thread(func, *args)


class ChannelClosedError(Exception):
    """The channel's connection is gone."""


class Channel(Protocol):
    """A message channel to the peer (through the server)."""

    async def send(self, data: str | bytes) -> None:
        """Send one text (control) or binary (DATA) message."""
        ...

    async def recv(self) -> str | bytes:
        """The next message; ChannelClosedError once the connection is gone."""
        ...


class WebSocketChannel:
    """A `Channel` over a websockets client connection."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def send(self, data: str | bytes) -> None:
        """Send, or ChannelClosedError."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(data)
        except ConnectionClosed as error:
            raise ChannelClosedError(str(error)) from None

    async def recv(self) -> str | bytes:
        """Receive, or ChannelClosedError."""
        from websockets.exceptions import ConnectionClosed

        try:
            data = await self._ws.recv()
        except ConnectionClosed as error:
            raise ChannelClosedError(str(error)) from None
        assert isinstance(data, str | bytes)
        return data


class Link:
    """One end of a transfer: every message in or out is checked against its flow."""

    def __init__(self, channel: Channel, flow: TransferFlow, me: Side) -> None:
        self.channel = channel
        self.flow = flow
        self.me = me
        self.peer = Side.RECEIVER if me is Side.SENDER else Side.SENDER

    async def send(self, message: Message) -> None:
        """Send a control message (ChannelClosedError when the connection is gone)."""
        self.flow.on_message(self.me, message)
        await self.channel.send(codec.encode(message))

    async def send_data(self, frame: streams.DataFrame) -> None:
        """Send file bytes."""
        self.flow.on_data(self.me, frame)
        await self.channel.send(streams.encode(frame))

    async def receive(self) -> Message | streams.DataFrame:
        """The peer's next message (TransferError when it is FAILED)."""
        raw = await self.channel.recv()
        if isinstance(raw, bytes):
            frame = streams.decode(raw, CHUNK)
            if not isinstance(frame, streams.DataFrame):
                raise ProtocolError(f"unexpected {type(frame).__name__} on a transfer", "bad_frame")
            self.flow.on_data(self.peer, frame)
            return frame
        message = codec.decode(raw, TRANSFER_MESSAGES, MAX_CONTROL_BYTES)
        self.flow.on_message(self.peer, message)
        if isinstance(message, TransferFailed):
            raise TransferError(message.code, message.message or message.code)
        return message

    async def expect(self, kind: type[M]) -> M:
        """The peer's next message, which must be a `kind`."""
        message = await self.receive()
        if not isinstance(message, kind):
            raise ProtocolError(f"expected {kind.TYPE}, got another message", "bad_transfer")
        return message

    async def fail(self, error: TransferError) -> None:
        """Tell the peer why this end stops (best effort; never raises)."""
        if self.flow.finished:
            return
        try:
            await self.send(failed(error.code, error.message))
        except (ChannelClosedError, ProtocolError, OSError):
            logger.debug("could not tell the peer the transfer failed")


async def guarded(link: Link, work: Awaitable[T]) -> T:
    """Run one end's work: failures here are told to the peer, all become TransferError."""
    try:
        return await work
    except ChannelClosedError:
        raise TransferError(CONNECTION_LOST, "the connection to the server was lost") from None
    except ProtocolError as error:
        refusal = TransferError(PROTOCOL, f"transfer protocol error: {error.message}")
        await link.fail(refusal)
        raise refusal from None
    except TransferError as error:
        if not link.flow.finished:  # our own failure (a FAILED from the peer ended the flow)
            await link.fail(error)
        raise
    except OSError as error:  # a file system error not tied to one path (EIO on a read...)
        reason = os.strerror(error.errno) if error.errno else "input/output error"
        refusal = TransferError(IO_ERROR, f"the transfer failed: {reason}")
        await link.fail(refusal)
        raise refusal from None


# --- results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryResult:
    """One entry as it ended up: for a file, its hash and what this attempt moved."""

    path: str
    kind: str
    mode: int
    size: int = 0
    sha256: str = ""
    resumed_from: int = 0  # bytes the receiver already held and kept
    transferred: int = 0  # bytes sent in this attempt
    restarted: bool = False  # the receiver's partial copy did not match: sent again


@dataclass(slots=True)
class Summary:
    """What one attempt of a transfer did."""

    root: str
    kind: str
    entries: list[EntryResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        """Files in place."""
        return sum(1 for e in self.entries if e.kind == FILE)

    @property
    def directories(self) -> int:
        """Directories in place."""
        return sum(1 for e in self.entries if e.kind == DIRECTORY)

    @property
    def bytes(self) -> int:
        """Total size of the files."""
        return sum(e.size for e in self.entries)

    @property
    def transferred(self) -> int:
        """File bytes that travelled in this attempt."""
        return sum(e.transferred for e in self.entries)

    @property
    def resumed(self) -> int:
        """File bytes not sent because the receiver already held them."""
        return sum(e.resumed_from for e in self.entries)


# --- sending ---------------------------------------------------------------------


async def send_tree(link: Link, tree: SourceTree, progress: Progress | None = None) -> Summary:
    """Send every entry of `tree` (READY was already seen); failures become TransferError."""
    return await guarded(link, _send_tree(link, tree, progress))


async def _send_tree(link: Link, tree: SourceTree, progress: Progress | None) -> Summary:
    summary = Summary(tree.root, tree.kind, skipped=list(tree.skipped))
    for index, source in enumerate(tree.entries):
        entry = TransferEntry(
            index, source.path, source.kind, source.mode, source.mtime_ns, source.size
        )
        await link.send(entry)
        if entry.kind == DIRECTORY:
            await link.expect(TransferEntryDone)
            summary.entries.append(EntryResult(entry.path, DIRECTORY, entry.mode))
            continue
        resume = await link.expect(TransferResume)
        summary.entries.append(await _send_file(link, tree.root, entry, resume, progress))
    await link.send(TransferEnd(summary.files, summary.directories))
    await link.expect(TransferDone)
    return summary


async def _send_file(
    link: Link,
    root: str,
    entry: TransferEntry,
    resume: TransferResume,
    progress: Progress | None,
) -> EntryResult:
    fd = await blocking(open_source_file, root, entry)
    try:
        start, digest, restarted = 0, hashlib.sha256(), False
        if resume.offset:
            prefix = await blocking(hash_prefix, fd, resume.offset)
            if prefix is not None and prefix.hexdigest() == resume.sha256:
                start, digest = resume.offset, prefix
                logger.info(
                    "transfer resuming path=%s offset=%d size=%d",
                    entry.path or root,
                    start,
                    entry.size,
                )
            else:
                restarted = True
                logger.warning(
                    "the receiver's partial copy does not match the source; sending it again"
                    " path=%s offset=%d",
                    entry.path or root,
                    resume.offset,
                )
        await link.send(TransferBegin(entry.index, start))
        position = start
        while position < entry.size:
            want = min(READ_BLOCK, entry.size - position)
            block = await blocking(read_block, fd, position, want, digest)
            if len(block) < want:
                raise TransferError(
                    SOURCE_CHANGED, f"{entry.path or root} shrank while it was being sent"
                )
            for cut in range(0, len(block), CHUNK):
                chunk = block[cut : cut + CHUNK]
                await link.send_data(streams.DataFrame(entry.index, position, chunk))
                position += len(chunk)
                if progress is not None:
                    progress(len(chunk))
        sha256 = digest.hexdigest()
        await link.send(TransferFileEnd(entry.index, entry.size, sha256))
    finally:
        os.close(fd)
    await link.expect(TransferEntryDone)
    return EntryResult(
        entry.path, FILE, entry.mode, entry.size, sha256, start, entry.size - start, restarted
    )


# --- receiving -------------------------------------------------------------------


async def receive_tree(link: Link, root: str, progress: Progress | None = None) -> Summary:
    """Write every entry the sender sends below `root` (resolved, READY already seen)."""
    return await guarded(link, _receive_tree(link, root, progress))


async def _receive_tree(link: Link, root: str, progress: Progress | None) -> Summary:
    destination = await blocking(Destination, root)
    summary = Summary(root, link.flow.kind)
    try:
        while True:
            message = await link.receive()
            if isinstance(message, TransferEnd):
                await blocking(destination.finish_directories)
                await link.send(TransferDone(message.files, message.directories))
                return summary
            if not isinstance(message, TransferEntry):
                raise ProtocolError("expected entry or end", "bad_transfer")
            parts = relative_parts(message.path)
            if message.kind == DIRECTORY:
                await blocking(destination.make_directory, parts, message.mode, message.mtime_ns)
                await link.send(TransferEntryDone(message.index))
                summary.entries.append(EntryResult(message.path, DIRECTORY, message.mode))
                continue
            result = await _receive_file(link, destination, message, parts, progress)
            summary.entries.append(result)
    finally:
        destination.close()


async def _receive_file(
    link: Link,
    destination: Destination,
    entry: TransferEntry,
    parts: tuple[str, ...],
    progress: Progress | None,
) -> EntryResult:
    offer = await blocking(destination.offer, parts, entry)
    await link.send(TransferResume(entry.index, offer.offset, offer.sha256))
    begin = await link.expect(TransferBegin)
    if begin.offset:
        logger.info(
            "transfer resuming path=%s offset=%d size=%d",
            os.path.join(destination.root, *parts),
            begin.offset,
            entry.size,
        )
    partial: PartialFile = await blocking(destination.open_file, parts, entry, begin.offset, offer)
    try:
        while True:
            item = await link.receive()
            if isinstance(item, TransferFileEnd):
                break
            if not isinstance(item, streams.DataFrame):
                raise ProtocolError("expected DATA or file_end", "bad_transfer")
            await blocking(partial.write, item.payload)
            if progress is not None:
                progress(len(item.payload))
        sha256 = partial.sha256
        if sha256 != item.sha256:
            await blocking(partial.discard)
            raise TransferError(
                CHECKSUM_MISMATCH,
                f"{partial.shown}: the SHA-256 of what was written ({sha256[:16]}…) is not the"
                f" sender's ({item.sha256[:16]}…); the partial file was removed",
            )
        await blocking(partial.finish, entry.mode, entry.mtime_ns)
    finally:
        await blocking(partial.close)
    await link.send(TransferEntryDone(entry.index, sha256))
    return EntryResult(
        entry.path,
        FILE,
        entry.mode,
        entry.size,
        sha256,
        begin.offset,
        entry.size - begin.offset,
        bool(offer.offset) and begin.offset == 0,
    )
