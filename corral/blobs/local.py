"""Blob store in a local directory: one file per key."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
from pathlib import Path

from corral.blobs.base import BlobGapError
from corral.errors import ValidationError

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class LocalBlobStore:
    """`BlobStore` over a directory; keys map to relative file paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._made_dirs: set[Path] = set()
        # Appends queue here and are written by one thread job per batch: a fleet streams
        # many small chunks at once, and a thread hand-off per chunk costs more than the write.
        self._queue: list[tuple[str, int, bytes, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
            raise ValidationError(f"invalid blob key {key!r}", field="key")
        return self.root / key

    def _append(self, key: str, offset: int, data: bytes) -> int:
        path = self._path(key)
        with self._lock:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0
            if offset > size:
                raise BlobGapError(key, size)
            tail = data[size - offset :]
            if not tail:
                return size
            if path.parent not in self._made_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(path.parent)
            try:
                handle = path.open("ab")
            except FileNotFoundError:  # its folder was deleted since we made it
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = path.open("ab")
            with handle:
                handle.write(tail)
            return size + len(tail)

    async def append(self, key: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset`; dedupes a re-sent chunk, refuses a gap."""
        if offset < 0:
            raise ValidationError("offset must not be negative", field="offset")
        self._path(key)  # refuse a bad key before queueing it
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((key, offset, data, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="corral-blob-appends")
        return await future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            outcomes = await asyncio.to_thread(self._append_batch, [b[:3] for b in batch])
            for (_, _, _, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _append_batch(self, batch: list[tuple[str, int, bytes]]) -> list[int | Exception]:
        outcomes: list[int | Exception] = []
        for key, offset, data in batch:
            try:
                outcomes.append(self._append(key, offset, data))
            except Exception as error:  # handed to that chunk's caller, not lost
                outcomes.append(error)
        return outcomes

    def _size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return 0

    async def size(self, key: str) -> int:
        """Bytes stored under `key`."""
        return await asyncio.to_thread(self._size, key)

    def _read(self, key: str, offset: int, limit: int | None) -> bytes:
        try:
            with self._path(key).open("rb") as handle:
                handle.seek(offset)
                return handle.read(-1 if limit is None else limit)
        except FileNotFoundError:
            return b""

    async def read(self, key: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Up to `limit` bytes from `offset`."""
        if offset < 0:
            raise ValidationError("offset must not be negative", field="offset")
        return await asyncio.to_thread(self._read, key, offset, limit)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return

    async def delete(self, key: str) -> None:
        """Remove one stream."""
        await asyncio.to_thread(self._delete, key)

    async def delete_prefix(self, prefix: str) -> None:
        """Remove a folder of streams."""
        path = self._path(prefix.rstrip("/"))
        await asyncio.to_thread(shutil.rmtree, path, True)
