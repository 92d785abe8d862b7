"""The sessions table."""

from __future__ import annotations

import secrets
import time
from dataclasses import fields

from sqlalchemy import select, update

from corral.errors import ConflictError, NotFoundError
from corral.store import models as m
from corral.store.base import RepositoryBase
from corral.store.records import NewSession, SessionRecord

ACTIVE = ("Pending", "Connected")


def new_session_id(owner: str) -> str:
    """`ses-` and 17 lowercase hex characters."""
    del owner
    return "ses-" + secrets.token_hex(9)[:17]


class SessionRepository(RepositoryBase):
    """Session rows; the `Store` inherits these methods."""

    async def create_session(self, new: NewSession) -> SessionRecord:
        """A new Pending session."""
        session_id = new_session_id(new.owner)
        key = new.recording_key
        row = m.Session(
            id=session_id,
            node_id=new.node_id,
            kind=new.kind,
            owner=new.owner,
            os_user=new.os_user,
            command=new.command,
            status="Pending",
            reason="",
            exit_code=None,
            created_at=time.time(),
            started_at=None,
            ended_at=None,
            bytes_in=0,
            bytes_out=0,
            recording_key=key.format(session_id=session_id) if key else None,
            grant_id=new.grant_id,
            target_host=new.target_host,
            target_port=new.target_port,
            connections=0,
        )
        async with self._tx() as s:
            s.add(row)
            return _session(row)

    async def get_session(self, session_id: str) -> SessionRecord:
        """One session."""
        async with self._tx() as s:
            row = await s.get(m.Session, session_id)
            if row is None:
                raise NotFoundError(f"session {session_id} does not exist")
            return _session(row)

    async def list_sessions(
        self, active: bool = False, node_id: str | None = None, limit: int = 100
    ) -> list[SessionRecord]:
        """Newest first."""
        query = select(m.Session).order_by(m.Session.created_at.desc()).limit(limit)
        if active:
            query = query.where(m.Session.status.in_(ACTIVE))
        if node_id is not None:
            query = query.where(m.Session.node_id == node_id)
        async with self._tx() as s:
            return [_session(r) for r in (await s.execute(query)).scalars()]

    async def session_connected(self, session_id: str, when: float) -> SessionRecord:
        """Pending -> Connected (the agent joined)."""
        async with self._tx() as s:
            row = await s.get(m.Session, session_id)
            if row is None:
                raise NotFoundError(f"session {session_id} does not exist")
            if row.status != "Pending":
                raise ConflictError(f"session {session_id} is {row.status}")
            row.status = "Connected"
            row.started_at = when
            return _session(row)

    async def end_session(
        self,
        session_id: str,
        status: str,
        reason: str,
        exit_code: int | None,
        bytes_in: int,
        bytes_out: int,
        when: float,
        *,
        connections: int = 0,
    ) -> SessionRecord | None:
        """Record the end of an active session (None if it had already ended)."""
        async with self._tx() as s:
            result = await s.execute(
                update(m.Session)
                .where(m.Session.id == session_id, m.Session.status.in_(ACTIVE))
                .values(
                    status=status,
                    reason=reason[:2000],
                    exit_code=exit_code,
                    bytes_in=bytes_in,
                    bytes_out=bytes_out,
                    connections=connections,
                    ended_at=when,
                )
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return None
            row = await s.get(m.Session, session_id)
            assert row is not None
            return _session(row)

    async def fail_stale_sessions(self, reason: str) -> int:
        """At start: sessions a previous run left active cannot be resumed here."""
        async with self._tx() as s:
            result = await s.execute(
                update(m.Session)
                .where(m.Session.status.in_(ACTIVE))
                .values(status="Failed", reason=reason, ended_at=time.time())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _session(r: m.Session) -> SessionRecord:
    return SessionRecord(**{f.name: getattr(r, f.name) for f in fields(SessionRecord)})
