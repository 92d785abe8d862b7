"""Both ends of a transfer over an in-memory channel, on real files: trees, modes, resume,
checksums and links (no server, no sockets)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from corral.protocol import codec, streams
from corral.protocol.transfer import (
    DIRECTORY,
    FILE,
    Side,
    TransferBegin,
    TransferEntry,
    TransferError,
    TransferFailed,
    TransferFileEnd,
    TransferFlow,
    TransferReady,
    TransferResume,
)
from corral.transfer import (
    ChannelClosedError,
    Summary,
    receive_tree,
    resolve_destination,
    resolve_source,
    scan_source,
    send_tree,
)
from corral.transfer.files import partial_names
from corral.transfer.peer import Link

CLOSED = object()


class Pipe:
    """One direction of a connection: a small queue, so a slow reader slows the writer."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=4)


class MemoryChannel:
    """One end of an in-memory connection; `cut_after` drops it after that many DATA bytes."""

    def __init__(self, inbox: Pipe, outbox: Pipe, cut_after: int | None = None) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.cut_after = cut_after
        self.data_sent = 0
        self.closed = False

    async def send(self, data: str | bytes) -> None:
        if self.closed:
            raise ChannelClosedError("closed")
        if isinstance(data, bytes):
            self.data_sent += len(data) - 13
            if self.cut_after is not None and self.data_sent > self.cut_after:
                await self.close()
                raise ChannelClosedError("cut")
        await self.outbox.queue.put(data)

    async def recv(self) -> str | bytes:
        if self.closed:
            raise ChannelClosedError("closed")
        item = await self.inbox.queue.get()
        if item is CLOSED:
            self.closed = True
            raise ChannelClosedError("closed")
        assert isinstance(item, str | bytes)
        return item

    async def close(self) -> None:
        self.closed = True
        await self.outbox.queue.put(CLOSED)


def channel_pair(cut_after: int | None = None) -> tuple[MemoryChannel, MemoryChannel]:
    forward, backward = Pipe(), Pipe()
    return MemoryChannel(backward, forward, cut_after), MemoryChannel(forward, backward)


async def copy(
    source: Path, destination: Path, recursive: bool = False, cut_after: int | None = None
) -> tuple[Summary, Summary]:
    """Upload-style: the receiver is the node (it sends READY); returns both summaries."""
    root, kind = resolve_source(str(source), recursive)
    tree = scan_source(root, kind)
    target = resolve_destination(str(destination), source.name, kind)
    sender_end, receiver_end = channel_pair(cut_after)
    sender = Link(sender_end, TransferFlow(node=Side.RECEIVER, expected_kind=kind), Side.SENDER)
    receiver = Link(receiver_end, TransferFlow(node=Side.RECEIVER), Side.RECEIVER)
    await receiver.send(TransferReady(target, kind))
    await sender.receive()

    async def send() -> Summary:
        try:
            return await send_tree(sender, tree)
        finally:
            await sender_end.close()

    # Both ends run to their own end before the outcome counts (the receiver keeps
    # writing what reached it after the sender's side was cut).
    outcomes = await asyncio.gather(send(), receive_tree(receiver, target), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    sent, received = outcomes
    assert isinstance(sent, Summary)
    assert isinstance(received, Summary)
    return sent, received


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(os.urandom(200_000))
    (root / "bin" / "tool").chmod(0o755)
    (root / "etc" / "deep" / "er").mkdir(parents=True)
    (root / "etc" / "secret").write_text("s3cret\n")
    (root / "etc" / "secret").chmod(0o600)
    (root / "etc" / "empty").write_bytes(b"")
    (root / "etc" / "deep" / "er" / "x").write_text("x")
    (root / "etc" / "deep").chmod(0o700)
    (root / "link").symlink_to("/etc/passwd")
    os.utime(root / "etc" / "secret", ns=(1_600_000_000_123_456_789,) * 2)


def listing(root: Path) -> dict[str, tuple[str, int, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            continue
        kind = "dir" if path.is_dir() else "file"
        out[str(path.relative_to(root))] = (
            kind,
            path.stat().st_mode & 0o777,
            "" if kind == "dir" else sha(path),
        )
    return out


async def test_a_file_arrives_whole_with_its_mode_and_time(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(1_000_003))
    source.chmod(0o640)
    os.utime(source, ns=(1_700_000_000_000_000_001,) * 2)
    (tmp_path / "out").mkdir()
    sent, received = await copy(source, tmp_path / "out")  # into the directory, cp-like
    copied = tmp_path / "out" / "data.bin"
    assert sha(copied) == sha(source) == sent.entries[0].sha256 == received.entries[0].sha256
    assert copied.stat().st_mode & 0o777 == 0o640
    assert copied.stat().st_mtime_ns == 1_700_000_000_000_000_001
    assert (sent.transferred, sent.resumed) == (1_000_003, 0)
    assert sorted(os.listdir(tmp_path / "out")) == ["data.bin"]  # no partial left behind


async def test_a_tree_arrives_with_modes_and_links_skipped(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    sent, received = await copy(tmp_path / "src", tmp_path / "dst", recursive=True)
    assert listing(tmp_path / "dst") == listing(tmp_path / "src")
    assert (tmp_path / "dst" / "etc" / "deep").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "dst" / "etc" / "secret").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert not (tmp_path / "dst" / "link").exists()
    assert sent.skipped == ["link"]
    assert (sent.files, sent.directories) == (received.files, received.directories) == (4, 5)
    # Copying again into the same directory merges (it does not nest), and since every
    # file is already there with its size and time, nothing travels.
    again, _ = await copy(tmp_path / "src", tmp_path / "dst", recursive=True)
    assert (again.transferred, again.resumed) == (0, again.bytes)
    assert not (tmp_path / "dst" / "src").exists()


async def test_a_cut_transfer_resumes_without_resending_what_arrived(tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(3_000_000))
    with pytest.raises(TransferError) as cut:
        await copy(source, tmp_path / "copy", cut_after=1_000_000)
    assert cut.value.code == "connection_lost"
    assert not (tmp_path / "copy").exists()
    partial, state = partial_names("copy")
    held = (tmp_path / partial).stat().st_size
    assert 0 < held <= 1_000_000
    assert (tmp_path / partial).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / state).exists()
    sent, received = await copy(source, tmp_path / "copy")
    assert (sent.resumed, sent.transferred) == (held, 3_000_000 - held)
    assert received.resumed == held
    assert sha(tmp_path / "copy") == sha(source)
    assert not (tmp_path / partial).exists()
    assert not (tmp_path / state).exists()


async def test_a_corrupted_partial_is_detected_and_sent_again(tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(2_000_000))
    with pytest.raises(TransferError):
        await copy(source, tmp_path / "copy", cut_after=500_000)
    partial = tmp_path / partial_names("copy")[0]
    data = bytearray(partial.read_bytes())
    data[10] ^= 0xFF
    partial.write_bytes(bytes(data))
    sent, _ = await copy(source, tmp_path / "copy")
    assert sent.entries[0].restarted
    assert (sent.resumed, sent.transferred) == (0, 2_000_000)
    assert sha(tmp_path / "copy") == sha(source)


async def test_a_partial_of_another_version_of_the_source_is_discarded(tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(2_000_000))
    with pytest.raises(TransferError):
        await copy(source, tmp_path / "copy", cut_after=500_000)
    source.write_bytes(os.urandom(2_000_000))  # a new version: its time differs
    os.utime(source, ns=(1, 1))
    sent, _ = await copy(source, tmp_path / "copy")
    assert (sent.resumed, sent.entries[0].restarted) == (0, False)
    assert sha(tmp_path / "copy") == sha(source)


async def test_a_checksum_mismatch_fails_and_leaves_nothing_under_the_name(
    tmp_path: Path,
) -> None:
    """A sender whose FILE_END hash is not what it sent: the receiver refuses the file."""
    target = tmp_path / "copy"
    sender_end, receiver_end = channel_pair()
    receiver = Link(receiver_end, TransferFlow(node=Side.RECEIVER), Side.RECEIVER)
    flow = TransferFlow(node=Side.RECEIVER)
    await receiver.send(TransferReady(str(target), FILE))
    flow.on_message(Side.RECEIVER, codec.decode(await sender_end.recv(), [TransferReady]))
    receiving = asyncio.ensure_future(receive_tree(receiver, str(target)))
    await sender_end.send(codec.encode(TransferEntry(0, "", FILE, 0o644, 1, 5)))
    resume = codec.decode(await sender_end.recv(), [TransferResume])
    assert resume == TransferResume(0, 0, "")
    await sender_end.send(codec.encode(TransferBegin(0, 0)))
    await sender_end.send(streams.encode(streams.DataFrame(0, 0, b"hello")))
    wrong = hashlib.sha256(b"HELLO").hexdigest()
    await sender_end.send(codec.encode(TransferFileEnd(0, 5, wrong)))
    with pytest.raises(TransferError) as refused:
        await receiving
    assert refused.value.code == "checksum_mismatch"
    told = codec.decode(await sender_end.recv(), [TransferFailed])
    assert isinstance(told, TransferFailed)
    assert told.code == "checksum_mismatch"
    assert os.listdir(tmp_path) == []  # neither the file nor its partial


async def test_a_link_inside_the_destination_tree_is_not_followed(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    (tmp_path / "outside").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "etc").symlink_to(tmp_path / "outside")
    with pytest.raises(TransferError) as refused:
        await copy(tmp_path / "src", tmp_path / "dst", recursive=True)
    assert refused.value.code == "symlink"
    assert os.listdir(tmp_path / "outside") == []


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        (lambda t: None, "not_found"),
        (lambda t: (t / "d").mkdir(), "invalid"),
        (lambda t: os.mkfifo(t / "d"), "invalid"),
    ],
)
def test_unsuitable_sources_are_refused(tmp_path: Path, setup: object, code: str) -> None:
    setup(tmp_path)  # type: ignore[operator]
    with pytest.raises(TransferError) as refused:
        resolve_source(str(tmp_path / "d"), recursive=False)
    assert refused.value.code == code


def test_destinations_follow_cp(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir" / "sub").mkdir()
    assert resolve_destination(str(tmp_path / "dir"), "f", FILE) == str(tmp_path / "dir" / "f")
    assert resolve_destination(str(tmp_path / "new"), "f", FILE) == str(tmp_path / "new")
    assert resolve_destination(str(tmp_path / "dir"), "d", DIRECTORY) == str(tmp_path / "dir")
    with pytest.raises(TransferError, match="does not exist"):
        resolve_destination(str(tmp_path / "missing" / "f"), "f", FILE)
    with pytest.raises(TransferError, match="is a directory"):
        resolve_destination(str(tmp_path / "dir"), "sub", FILE)
    with pytest.raises(TransferError, match="not a directory"):
        resolve_destination(str(tmp_path / "file"), "d", DIRECTORY)


def test_two_writers_of_one_file_do_not_interleave(tmp_path: Path) -> None:
    """A second transfer to a file being written fails `busy` (retryable) at once."""
    from corral.transfer.files import Destination

    entry = TransferEntry(0, "", FILE, 0o644, 1, 10)
    first, second = Destination(str(tmp_path / "f")), Destination(str(tmp_path / "f"))
    try:
        writing = first.open_file((), entry, 0, first.offer((), entry))
        writing.write(b"12345")
        with pytest.raises(TransferError) as busy:
            second.open_file((), entry, 0, second.offer((), entry))
        assert (busy.value.code, busy.value.retryable) == ("busy", True)
        writing.close()  # the first one went away: its partial is kept, and resumable
        offer = second.offer((), entry)
        assert offer.offset == 5
        resumed = second.open_file((), entry, 5, offer)
        resumed.write(b"67890")
        assert resumed.sha256 == hashlib.sha256(b"1234567890").hexdigest()
        resumed.finish(0o600, 1)
        assert (tmp_path / "f").read_bytes() == b"1234567890"
    finally:
        first.close()
        second.close()
