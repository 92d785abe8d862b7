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
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as handle:
                handle.write(tail)
            return size + len(tail)

    async def append(self, key: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset`; dedupes a re-sent chunk, refuses a gap."""
        if offset < 0:
            raise ValidationError("offset must not be negative", field="offset")
        return await asyncio.to_thread(self._append, key, offset, data)

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
