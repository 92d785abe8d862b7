"""The audit log's tables: append-only records and checkpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, text

from corral.store import models as m
from corral.store.base import RepositoryBase
from corral.store.engine import translate_errors
from corral.store.records import AuditEntry, AuditRecordRow, CheckpointRecord

# Arbitrary constant: the PostgreSQL advisory lock that serialises appends across replicas.
AUDIT_LOCK_ID = 0x6175646974

Chainer = Callable[[int, str, Sequence[AuditEntry]], list[AuditRecordRow]]


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for listing records; all optional, AND-ed."""

    since_us: int | None = None
    until_us: int | None = None
    principal: str | None = None
    action: str | None = None
    outcome: str | None = None
    grant_id: str | None = None
    before_seq: int | None = None  # newest-first paging: records older than this
    after_seq: int | None = None  # oldest-first paging: records newer than this


class AuditRepository(RepositoryBase):
    """Audit tables; the `Store` inherits these methods."""

    async def append_audit(
        self, entries: Sequence[AuditEntry], chainer: Chainer
    ) -> list[AuditRecordRow]:
        """Append entries after the current head, in one transaction.

        `chainer(last_seq, last_hash, entries)` numbers and hashes them; it runs inside
        the transaction, after the head was read under a lock, so replicas appending at
        the same time still form one chain.
        """
        table = m.AuditRecord.__table__
        with translate_errors():
            async with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": AUDIT_LOCK_ID}
                    )
                head = (
                    await conn.execute(
                        select(m.AuditRecord.seq, m.AuditRecord.hash)
                        .order_by(m.AuditRecord.seq.desc())
                        .limit(1)
                    )
                ).first()
                last_seq, last_hash = (head[0], head[1]) if head else (0, "0" * 64)
                rows = chainer(last_seq, last_hash, entries)
                await conn.execute(
                    table.insert(),  # type: ignore[attr-defined]
                    [_row_values(r) for r in rows],
                )
                return rows

    async def audit_head(self) -> tuple[int, str]:
        """(count, head hash) as stored; (0, genesis) when empty."""
        async with self._tx() as s:
            head = (
                await s.execute(
                    select(m.AuditRecord.seq, m.AuditRecord.hash)
                    .order_by(m.AuditRecord.seq.desc())
                    .limit(1)
                )
            ).first()
            return (head[0], head[1]) if head else (0, "0" * 64)

    async def list_audit(
        self, query: AuditQuery, limit: int, newest_first: bool = True
    ) -> list[AuditRecordRow]:
        """A page of records matching `query`."""
        stmt = select(m.AuditRecord)
        if query.since_us is not None:
            stmt = stmt.where(m.AuditRecord.time_us >= query.since_us)
        if query.until_us is not None:
            stmt = stmt.where(m.AuditRecord.time_us < query.until_us)
        if query.principal is not None:
            # "alice" finds "user:alice"; "node:mi-..." and "user:alice" find themselves.
            names = {query.principal}
            if ":" not in query.principal:
                names |= {f"user:{query.principal}", f"node:{query.principal}"}
            stmt = stmt.where(m.AuditRecord.principal.in_(sorted(names)))
        if query.action is not None:
            stmt = stmt.where(m.AuditRecord.action == query.action)
        if query.outcome is not None:
            stmt = stmt.where(m.AuditRecord.outcome == query.outcome)
        if query.grant_id is not None:
            stmt = stmt.where(m.AuditRecord.grant_id == query.grant_id)
        if query.before_seq is not None:
            stmt = stmt.where(m.AuditRecord.seq < query.before_seq)
        if query.after_seq is not None:
            stmt = stmt.where(m.AuditRecord.seq > query.after_seq)
        order = m.AuditRecord.seq.desc() if newest_first else m.AuditRecord.seq.asc()
        async with self._tx() as s:
            rows = (await s.execute(stmt.order_by(order).limit(limit))).scalars()
            return [_record(r) for r in rows]

    async def iter_audit(
        self, after_seq: int = 0, batch: int = 1000
    ) -> AsyncIterator[AuditRecordRow]:
        """Every record from `after_seq` on, oldest first, fetched in batches."""
        while True:
            page = await self.list_audit(AuditQuery(after_seq=after_seq), batch, newest_first=False)
            for row in page:
                yield row
            if len(page) < batch:
                return
            after_seq = page[-1].seq

    async def add_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Store a checkpoint (the same count twice keeps the first)."""
        async with self._tx() as s:
            if await s.get(m.AuditCheckpoint, checkpoint.count) is None:
                s.add(
                    m.AuditCheckpoint(
                        count=checkpoint.count,
                        head_hash=checkpoint.head_hash,
                        time_us=checkpoint.time_us,
                        signature=checkpoint.signature,
                    )
                )

    async def list_checkpoints(self) -> list[CheckpointRecord]:
        """Every checkpoint stored in the database, oldest first."""
        async with self._tx() as s:
            rows = (
                await s.execute(select(m.AuditCheckpoint).order_by(m.AuditCheckpoint.count))
            ).scalars()
            return [CheckpointRecord(r.count, r.head_hash, r.time_us, r.signature) for r in rows]

    async def audit_count(self) -> int:
        """How many records are stored."""
        async with self._tx() as s:
            return int(
                (await s.execute(select(func.count()).select_from(m.AuditRecord))).scalar_one()
            )


def _row_values(r: AuditRecordRow) -> dict[str, object]:
    e = r.entry
    return {
        "seq": r.seq,
        "time_us": e.time_us,
        "request_id": e.request_id,
        "principal": e.principal,
        "token_id": e.token_id,
        "action": e.action,
        "resources": list(e.resources),
        "source": e.source,
        "outcome": e.outcome,
        "error": e.error,
        "grant_id": e.grant_id,
        "details": dict(e.details),
        "hash": r.hash,
    }


def _record(r: m.AuditRecord) -> AuditRecordRow:
    entry = AuditEntry(
        time_us=r.time_us,
        request_id=r.request_id,
        principal=r.principal,
        action=r.action,
        outcome=r.outcome,
        resources=list(r.resources),
        token_id=r.token_id,
        source=r.source,
        error=r.error,
        grant_id=r.grant_id,
        details=dict(r.details),
    )
    return AuditRecordRow(r.seq, entry, r.hash)
