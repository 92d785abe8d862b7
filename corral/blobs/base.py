"""The blob store seam: append-only streams addressed by key.

Rules for `append(key, offset, data)`:
* `offset == size`: the data is appended.
* `offset < size`: the bytes already stored are kept (a re-sent chunk is deduplicated);
  only the part of `data` past the current end, if any, is appended.
* `offset > size`: refused with `BlobGapError(size)` so the writer rewinds to `size`.
"""

from __future__ import annotations

from typing import Protocol

from corral.errors import ConflictError


class BlobGapError(ConflictError):
    """A write would leave a hole; the stream currently holds `size` bytes."""

    def __init__(self, key: str, size: int) -> None:
        super().__init__(f"blob {key} holds {size} bytes; cannot write past its end")
        self.size = size


class BlobStore(Protocol):
    """Append-at-offset byte streams with ranged reads."""

    async def append(self, key: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset` (see module rules); returns the stream's new size."""
        ...

    async def size(self, key: str) -> int:
        """Bytes stored under `key` (0 when absent)."""
        ...

    async def read(self, key: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Up to `limit` bytes from `offset` (empty past the end or when absent)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the stream; absent keys are fine."""
        ...

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every stream whose key starts with `prefix` (a folder such as `output/C/`)."""
        ...


def output_key(command_id: str, node_id: str, stream: str) -> str:
    """The key of one invocation's stdout or stderr (one folder per command, not per node)."""
    return f"output/{command_id}/{node_id}.{stream}"
