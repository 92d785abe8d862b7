"""The transfer protocol as pure code: path rules and the lockstep flow table."""

from __future__ import annotations

import pytest

from corral.errors import ProtocolError, ValidationError
from corral.protocol import codec
from corral.protocol.streams import DataFrame
from corral.protocol.transfer import (
    DIRECTORY,
    FILE,
    TRANSFER_MESSAGES,
    Phase,
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
    TransferReady,
    TransferResume,
    failed,
    join,
    normalize_path,
    relative_parts,
)

S, R = Side.SENDER, Side.RECEIVER
SHA_A = "a" * 64
SHA_B = "b" * 64


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("/tmp/x", "/tmp/x"),
        ("/tmp//x/", "/tmp/x"),
        ("//etc/./passwd", "/etc/passwd"),
        ("/", "/"),
        ("/a b/ü", "/a b/ü"),
    ],
)
def test_paths_are_normalised(given: str, normal: str) -> None:
    assert normalize_path(given) == normal


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("tmp/x", "absolute"),
        ("/tmp/allowed/../../etc/passwd", "'..'"),
        ("/tmp/..", "'..'"),
        ("/tmp/a\nb", "control"),
        ("/tmp/a\x00b", "control"),
        ("/" + "x" * 256, "longer than 255"),
        ("/x" * 2049, "longer than 4096"),
    ],
)
def test_bad_paths_are_refused(given: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        normalize_path(given)


@pytest.mark.parametrize(
    ("given", "parts"), [("", ()), ("a", ("a",)), ("a/b c/d", ("a", "b c", "d"))]
)
def test_relative_paths(given: str, parts: tuple[str, ...]) -> None:
    assert relative_parts(given) == parts


@pytest.mark.parametrize("given", ["/a", "a/", "a//b", "./a", "a/..", "..", "a/\x1bb"])
def test_bad_relative_paths(given: str) -> None:
    with pytest.raises(ProtocolError):
        relative_parts(given)


def test_join() -> None:
    assert join("/srv/app", "") == "/srv/app"
    assert join("/srv/app", "a/b") == "/srv/app/a/b"
    assert join("/", "etc") == "/etc"


def test_messages_round_trip_through_the_codec() -> None:
    for message in (
        TransferReady("/tmp/x", FILE),
        TransferEntry(0, "", FILE, 0o644, 12, 3),
        TransferResume(0, 2, SHA_A),
        TransferBegin(0, 2),
        TransferFileEnd(0, 3, SHA_A),
        TransferEntryDone(0, SHA_A),
        TransferEnd(1, 0),
        TransferDone(1, 0),
        TransferFailed("denied", "no"),
    ):
        assert codec.decode(codec.encode(message), TRANSFER_MESSAGES) == message


def test_failed_messages_are_made_safe() -> None:
    message = failed("denied", "bad\x1b[2Jthing" + "x" * 5000)
    assert message.code == "denied"
    assert "\x1b" not in message.message
    assert len(message.message) == 1024
    assert failed("made-up", "x").code == "protocol"
    assert TransferError("connection_lost", "x").retryable
    assert not TransferError("denied", "x").retryable


def tree_flow() -> TransferFlow:
    flow = TransferFlow(node=R, expected_kind=DIRECTORY)
    flow.on_message(R, TransferReady("/srv/app", DIRECTORY))
    return flow


def test_a_whole_tree_goes_through_the_table() -> None:
    flow = tree_flow()
    flow.on_message(S, TransferEntry(0, "", DIRECTORY, 0o755, 1, 0))
    assert flow.phase is Phase.DIRECTORY
    flow.on_message(R, TransferEntryDone(0))
    flow.on_message(S, TransferEntry(1, "f", FILE, 0o600, 1, 5))
    assert flow.phase is Phase.RESUME
    flow.on_message(R, TransferResume(1, 2, SHA_A))
    flow.on_message(S, TransferBegin(1, 2))
    flow.on_data(S, DataFrame(1, 2, b"cde"))
    flow.on_message(S, TransferFileEnd(1, 5, SHA_B))
    assert (flow.begin, flow.data_bytes, flow.file_sha256) == (2, 3, SHA_B)
    flow.on_message(R, TransferEntryDone(1, SHA_B))
    flow.on_message(S, TransferEnd(1, 1))
    flow.on_message(R, TransferDone(1, 1))
    assert flow.phase is Phase.DONE
    assert (flow.files, flow.directories, flow.bytes) == (1, 1, 5)
    with pytest.raises(ProtocolError, match="after the transfer ended"):
        flow.on_message(S, TransferEnd(1, 1))


def file_flow(size: int = 5) -> TransferFlow:
    flow = TransferFlow(node=S)
    flow.on_message(S, TransferReady("/srv/f", FILE))
    flow.on_message(S, TransferEntry(0, "", FILE, 0o644, 1, size))
    return flow


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        # out of turn
        ([(R, TransferBegin(0, 0))], "receiver sent begin while the transfer is in phase resume"),
        ([(S, TransferResume(0, 0))], "sender sent resume"),
        # resume offsets and hashes
        ([(R, TransferResume(0, 6, SHA_A))], "resume from byte 6 of a 5-byte file"),
        ([(R, TransferResume(0, 0, SHA_A))], "carries no hash"),
        ([(R, TransferResume(0, 2, "x"))], "64 lowercase"),
        ([(R, TransferResume(1, 0))], "entry 1 while entry 0"),
        # begin only where offered, or at 0
        ([(R, TransferResume(0, 2, SHA_A)), (S, TransferBegin(0, 1))], "only 0 or 2"),
        # data must be contiguous, in the entry, within its size
        (
            [(R, TransferResume(0, 0)), (S, TransferBegin(0, 0)), (S, DataFrame(0, 1, b"x"))],
            "expected byte 0",
        ),
        (
            [(R, TransferResume(0, 0)), (S, TransferBegin(0, 0)), (S, DataFrame(1, 0, b"x"))],
            "entry 1 while entry 0",
        ),
        (
            [(R, TransferResume(0, 0)), (S, TransferBegin(0, 0)), (S, DataFrame(0, 0, b"123456"))],
            "up to byte 6 of a 5-byte file",
        ),
        (
            [
                (R, TransferResume(0, 0)),
                (S, TransferBegin(0, 0)),
                (S, TransferFileEnd(0, 5, SHA_A)),
            ],
            "after 0 of 5 bytes",
        ),
        # data before begin; a receiver may not send data
        ([(S, DataFrame(0, 0, b"x"))], "DATA while the transfer is in phase resume"),
        # a receiver's hash that differs from the sender's is a failure, not a success
        (
            [
                (R, TransferResume(0, 0)),
                (S, TransferBegin(0, 0)),
                (S, DataFrame(0, 0, b"12345")),
                (S, TransferFileEnd(0, 5, SHA_A)),
                (R, TransferEntryDone(0, SHA_B)),
            ],
            "hash differs",
        ),
    ],
)
def test_out_of_order_or_inconsistent_messages_are_refused(
    steps: list[tuple[Side, object]], problem: str
) -> None:
    flow = file_flow()

    def apply(side: Side, step: object) -> None:
        if isinstance(step, DataFrame):
            flow.on_data(side, step)
        else:
            flow.on_message(side, step)  # type: ignore[arg-type]

    for side, step in steps[:-1]:
        apply(side, step)
    with pytest.raises(ProtocolError, match=problem):
        apply(*steps[-1])


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (TransferEntry(1, "", DIRECTORY, 0o755, 1, 0), "out of order"),
        (TransferEntry(0, "a", DIRECTORY, 0o755, 1, 0), "only entry 0 is the root"),
        (TransferEntry(0, "", FILE, 0o644, 1, 0), "the root is a directory, not a file"),
        (TransferEntry(0, "", DIRECTORY, 0o4755, 1, 0), "mode"),
        (TransferEntry(0, "", DIRECTORY, 0o755, 1, 3), "size 0"),
        (TransferEntry(0, "", DIRECTORY, 0o755, -1, 0), "mtime"),
    ],
)
def test_bad_entries_are_refused(entry: TransferEntry, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        tree_flow().on_message(S, entry)


def test_entries_below_a_file_and_bad_paths_are_refused() -> None:
    flow = file_flow(0)
    for message in (TransferResume(0, 0), TransferBegin(0, 0), TransferFileEnd(0, 0, SHA_A)):
        flow.on_message(R if isinstance(message, TransferResume) else S, message)
    flow.on_message(R, TransferEntryDone(0, SHA_A))
    with pytest.raises(ProtocolError, match="only a directory"):
        flow.on_message(S, TransferEntry(1, "x", FILE, 0o644, 1, 0))
    tree = tree_flow()
    tree.on_message(S, TransferEntry(0, "", DIRECTORY, 0o755, 1, 0))
    tree.on_message(R, TransferEntryDone(0))
    with pytest.raises(ProtocolError):
        tree.on_message(S, TransferEntry(1, "../etc", FILE, 0o644, 1, 0))


def test_ready_comes_first_from_the_node_in_normal_form() -> None:
    with pytest.raises(ProtocolError, match="from the node"):
        TransferFlow(node=R).on_message(S, TransferReady("/x", FILE))
    with pytest.raises(ProtocolError, match="normal form"):
        TransferFlow(node=R).on_message(R, TransferReady("/x/", FILE))
    with pytest.raises(ProtocolError, match="expected directory"):
        TransferFlow(node=R, expected_kind=DIRECTORY).on_message(R, TransferReady("/x", FILE))
    with pytest.raises(ProtocolError, match="phase opening"):
        TransferFlow(node=R).on_message(S, TransferEnd(0, 0))


def test_failed_ends_the_flow_from_any_phase() -> None:
    flow = file_flow()
    flow.on_message(R, TransferFailed("io_error", "disk full"))
    assert flow.finished
    assert flow.failure == TransferFailed("io_error", "disk full")
    with pytest.raises(ProtocolError):
        flow.on_data(S, DataFrame(0, 0, b"x"))
