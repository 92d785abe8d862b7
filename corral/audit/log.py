"""The server's audit log: batched, chained appends, checkpoints and verification."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.audit.chain import (
    KEY_BYTES,
    ChainVerifier,
    CheckpointSigner,
    chain,
    checkpoint_line,
    parse_checkpoint_line,
)
from corral.errors import CorralError, ValidationError
from corral.store import AuditEntry, AuditRecordRow, CheckpointRecord, Store

logger = logging.getLogger(__name__)

KEY_ENV = "CORRAL_AUDIT_KEY"


def now_us() -> int:
    """The current time in integer microseconds (what records store)."""
    return time.time_ns() // 1000


def load_audit_key(path: Path, create: bool) -> bytes:
    """The audit key: $CORRAL_AUDIT_KEY (64 hex characters), else the key file.

    The file is created (mode 0600, 32 random bytes as hex) only when `create` is
    true, i.e. when the log is still empty: a missing key for an existing log means
    the chain can no longer be checked, which must be noticed, not papered over.
    """
    from_env = os.environ.get(KEY_ENV)
    if from_env is not None:
        return _parse_key(from_env.strip(), f"${KEY_ENV}")
    try:
        return _parse_key(path.read_text().strip(), str(path))
    except FileNotFoundError:
        if not create:
            raise ValidationError(
                f"the audit key {path} is missing but the audit log has records; restore the "
                f"key file (or set ${KEY_ENV}) so the chain can be verified",
                "audit_key_file",
            ) from None
    key = secrets.token_bytes(KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    logger.info("audit key created path=%s", path)
    return key


def _parse_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ValidationError(
            f"the audit key in {where} must be {KEY_BYTES * 2} hexadecimal characters",
            "audit_key_file",
        )
    return key


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of `verify()`."""

    ok: bool
    records: int
    head_hash: str
    checkpoints: int
    first_bad_seq: int | None
    problem: str | None


class AuditLog:
    """Appends records in group commits; `write` waits until its record is durable."""

    def __init__(
        self,
        store: Store,
        key: bytes,
        checkpoint_path: Path,
        batch_seconds: float = 0.005,
        checkpoint_seconds: float = 300.0,
        retry_seconds: float = 1.0,
    ) -> None:
        self._store = store
        self._key = key
        self._signer = CheckpointSigner(key)
        self._checkpoint_path = checkpoint_path
        self._batch_seconds = batch_seconds
        self._checkpoint_seconds = checkpoint_seconds
        self._retry_seconds = retry_seconds
        self._pending: list[tuple[AuditEntry, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._closing = False
        self._count = 0  # the newest record this server knows of
        self._head = "0" * 64
        self._checkpointed = 0
        self._lock = asyncio.Lock()

    @property
    def public_key_hex(self) -> str:
        """The checkpoint-signing public key (hex), for independent verification."""
        return self._signer.public_key_hex

    async def start(self) -> None:
        """Load the head and start the flusher and the checkpoint timer."""
        self._count, self._head = await self._store.audit_head()
        checkpoints = await self._store.list_checkpoints()
        self._checkpointed = checkpoints[-1].count if checkpoints else 0
        self._flusher = asyncio.create_task(self._flush_loop(), name="corral-audit-flusher")
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="corral-audit-ckpt")

    async def close(self) -> None:
        """Write everything queued and a final checkpoint."""
        self._closing = True
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
        self._wake.set()
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._pending:
            logger.error("audit records not written at shutdown count=%d", len(self._pending))
        with contextlib.suppress(CorralError):
            await self.checkpoint()

    # --- writing -------------------------------------------------------------

    async def write(self, entry: AuditEntry) -> None:
        """Append `entry` and wait until it is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        self._wake.set()
        await asyncio.shield(future)

    def emit(self, entry: AuditEntry) -> None:
        """Append `entry` without waiting (system events); written within a batch window."""
        self._pending.append((entry, None))
        self._wake.set()

    def event(
        self,
        action: str,
        resources: Sequence[str],
        principal: str = "system",
        outcome: str = "allowed",
        details: dict[str, object] | None = None,
        error: str | None = None,
        source: str | None = None,
    ) -> None:
        """Record something the system did by itself (or a node did over its channel)."""
        self.emit(
            AuditEntry(
                time_us=now_us(),
                request_id="evt-" + uuid.uuid4().hex[:16],
                principal=principal,
                action=action,
                outcome=outcome,
                resources=list(resources),
                source=source,
                error=error,
                details=details or {},
            )
        )

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._pending:
            await self.write_many([])

    async def write_many(self, entries: Sequence[AuditEntry]) -> None:
        """Append several entries and wait for all (an empty list waits for the queue)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for entry in entries[:-1]:
            self._pending.append((entry, None))
        if entries:
            self._pending.append((entries[-1], future))
        else:
            self._pending.append((_BARRIER, future))
        self._wake.set()
        await asyncio.shield(future)

    async def _flush_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing and self._batch_seconds > 0:
                await asyncio.sleep(self._batch_seconds)
            batch, self._pending = self._pending, []
            entries = [e for e, _ in batch if e is not _BARRIER]
            try:
                if entries:
                    rows = await self._store.append_audit(entries, self._chain)
                    self._count, self._head = rows[-1].seq, rows[-1].hash
            except CorralError as error:
                logger.warning(
                    "audit write failed; retrying records=%d error=%s", len(entries), error.message
                )
                self._pending[:0] = batch
                if self._closing:
                    return
                await asyncio.sleep(self._retry_seconds)
                continue
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_result(None)

    def _chain(
        self, last_seq: int, last_hash: str, entries: Sequence[AuditEntry]
    ) -> list[AuditRecordRow]:
        return chain(self._key, last_hash, last_seq + 1, entries)

    # --- checkpoints -----------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_seconds)
            try:
                if self._count > self._checkpointed:
                    await self.checkpoint()
            except (CorralError, OSError) as error:
                logger.warning("audit checkpoint failed error=%s", error)

    async def checkpoint(self) -> CheckpointRecord:
        """Sign the current head; append it to the checkpoint file and the database."""
        async with self._lock:
            await self.flush()
            count, head = await self._store.audit_head()
            checkpoint = self._signer.sign(count, head, now_us())
            await asyncio.to_thread(self._append_checkpoint_file, checkpoint)
            await self._store.add_checkpoint(checkpoint)
            self._checkpointed = count
            logger.info("audit checkpoint count=%d head=%s", count, head[:16])
            return checkpoint

    def _append_checkpoint_file(self, checkpoint: CheckpointRecord) -> None:
        self._checkpoint_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._checkpoint_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(checkpoint_line(checkpoint) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _read_checkpoint_file(self) -> list[tuple[int, CheckpointRecord | None]]:
        try:
            lines = self._checkpoint_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [(n, parse_checkpoint_line(line)) for n, line in enumerate(lines, 1) if line.strip()]

    # --- verification ----------------------------------------------------------

    async def verify(self) -> VerifyReport:
        """Recompute the chain and compare it with every signed checkpoint."""
        await self.flush()
        checkpoints: dict[int, str] = {}
        for number, found in await asyncio.to_thread(self._read_checkpoint_file):
            if found is None or not self._signer.valid(found):
                return VerifyReport(
                    False,
                    self._count,
                    self._head,
                    0,
                    found.count if found else None,
                    f"checkpoint file {self._checkpoint_path} line {number} is not a valid "
                    "signed checkpoint",
                )
            checkpoints[found.count] = found.head_hash
        for stored in await self._store.list_checkpoints():
            if self._signer.valid(stored):
                checkpoints.setdefault(stored.count, stored.head_hash)
        verifier = ChainVerifier(
            self._key, checkpoints, known_count=self._count, known_head=self._head
        )
        async for row in self._store.iter_audit():
            if not verifier.feed(row):
                break
        problem = verifier.finish()
        return VerifyReport(
            ok=problem is None,
            records=verifier.count,
            head_hash=verifier.head,
            checkpoints=len(checkpoints),
            first_bad_seq=problem.seq if problem else None,
            problem=problem.message if problem else None,
        )


_BARRIER = AuditEntry(time_us=0, request_id="", principal="", action="", outcome="")
