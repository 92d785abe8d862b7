"""The local-directory blob store: append at offset, dedupe, gaps, ranged reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.blobs import BlobGapError, LocalBlobStore, output_key
from corral.errors import ValidationError

KEY = output_key("c1", "mi-0000000000000000a", "stdout")


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    """A blob store in a temporary directory."""
    return LocalBlobStore(tmp_path / "blobs")


@pytest.mark.parametrize(
    ("writes", "content"),
    [
        ([(0, b"hello ")], b"hello "),
        ([(0, b"hello "), (6, b"world")], b"hello world"),
        ([(0, b"hello "), (0, b"hello ")], b"hello "),
        ([(0, b"hello "), (3, b"lo world")], b"hello world"),
        ([(0, b"hello "), (2, b"XX")], b"hello "),
        ([(0, b""), (0, b"a")], b"a"),
    ],
)
async def test_append_dedupes(
    blobs: LocalBlobStore, writes: list[tuple[int, bytes]], content: bytes
) -> None:
    for offset, data in writes:
        await blobs.append(KEY, offset, data)
    assert await blobs.read(KEY) == content
    assert await blobs.size(KEY) == len(content)


async def test_gap_is_refused_with_current_size(blobs: LocalBlobStore) -> None:
    assert await blobs.append(KEY, 0, b"abc") == 3
    with pytest.raises(BlobGapError) as gap:
        await blobs.append(KEY, 5, b"x")
    assert gap.value.size == 3
    assert await blobs.read(KEY) == b"abc"


async def test_ranged_reads_and_delete(blobs: LocalBlobStore) -> None:
    await blobs.append(KEY, 0, b"0123456789")
    assert await blobs.read(KEY, 2, 3) == b"234"
    assert await blobs.read(KEY, 8) == b"89"
    assert await blobs.read(KEY, 20, 5) == b""
    assert await blobs.read("output/none/x/stdout") == b""
    await blobs.delete(KEY)
    assert await blobs.size(KEY) == 0
    await blobs.delete(KEY)


async def test_delete_prefix(blobs: LocalBlobStore) -> None:
    await blobs.append(output_key("c1", "n1", "stdout"), 0, b"a")
    await blobs.append(output_key("c2", "n1", "stdout"), 0, b"b")
    await blobs.delete_prefix("output/c1/")
    assert await blobs.size(output_key("c1", "n1", "stdout")) == 0
    assert await blobs.size(output_key("c2", "n1", "stdout")) == 1


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "a/../b", "a b", ""])
async def test_keys_cannot_escape_the_root(blobs: LocalBlobStore, key: str) -> None:
    with pytest.raises(ValidationError):
        await blobs.append(key, 0, b"x")


async def test_negative_offset_is_refused(blobs: LocalBlobStore) -> None:
    with pytest.raises(ValidationError):
        await blobs.append(KEY, -1, b"x")
