"""`Store`: the one class that reads and writes the database."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import string
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, select, update

from corral.errors import ConflictError, NotFoundError, ValidationError
from corral.protocol import NodeInfo
from corral.protocol.invocation import FINAL
from corral.store import models as m
from corral.store.audit import AuditRepository
from corral.store.base import hash_secret
from corral.store.engine import create_engine, migrate, translate_errors
from corral.store.identity import IdentityRepository
from corral.store.params import ParameterRepository
from corral.store.records import (
    ActivationRecord,
    CommandChange,
    CommandRecord,
    DocumentMeta,
    DocumentRecord,
    InvocationChange,
    InvocationRecord,
    NewCommand,
    NodeRecord,
    initial_invocations,
)
from corral.store.sessions import SessionRepository

logger = logging.getLogger(__name__)

_FINAL_STATUSES = tuple(str(s) for s in FINAL)


_CODE_ALPHABET = string.ascii_letters + string.digits


def new_activation_code() -> str:
    """A fresh activation code: 32 letters and digits (about 190 bits).

    Only letters and digits, so a code can be pasted after `--activation-code` and into
    shells and config files as it is (a leading `-` would be read as an option).
    """
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(32))


def new_node_id() -> str:
    """A managed node id: `mi-` and 17 lowercase hex characters."""
    return "mi-" + secrets.token_hex(9)[:17]


class Store(IdentityRepository, AuditRepository, ParameterRepository, SessionRepository):
    """Repository over the Corral database (SQLite or PostgreSQL)."""

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect to `url`, apply migrations under a lock and return the store."""
        engine = create_engine(url)
        try:
            await migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    # --- settings ---------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        """The value stored under `key`, if any."""
        async with self._tx() as s:
            row = await s.get(m.Setting, key)
            return row.value if row else None

    async def set_setting(self, key: str, value: str) -> None:
        """Store `value` under `key`, replacing any previous value."""
        async with self._tx() as s:
            row = await s.get(m.Setting, key)
            if row is None:
                s.add(m.Setting(key=key, value=value))
            else:
                row.value = value

    async def add_setting(self, key: str, value: str) -> bool:
        """Store `value` under `key` unless the key exists; True when this call stored it."""
        try:
            async with self._tx() as s:
                s.add(m.Setting(key=key, value=value))
        except ConflictError:
            return False
        return True

    # --- activations ------------------------------------------------------

    async def create_activation(
        self, description: str, tags: Mapping[str, str], limit: int, expires_at: float
    ) -> tuple[str, ActivationRecord]:
        """Create an activation; returns the code (shown once) and the record."""
        code = new_activation_code()
        row = m.Activation(
            id=str(uuid.uuid4()),
            code_hash=hash_secret(code),
            description=description,
            tags=dict(tags),
            registration_limit=limit,
            registrations_count=0,
            expires_at=expires_at,
            created_at=time.time(),
            deleted=False,
        )
        async with self._tx() as s:
            s.add(row)
        return code, _activation(row)

    async def list_activations(self) -> list[ActivationRecord]:
        """Every activation not deleted, oldest first."""
        async with self._tx() as s:
            rows = await s.execute(
                select(m.Activation).where(~m.Activation.deleted).order_by(m.Activation.created_at)
            )
            return [_activation(r) for r in rows.scalars()]

    async def delete_activation(self, activation_id: str) -> None:
        """Delete an activation; its code stops working."""
        async with self._tx() as s:
            row = await s.get(m.Activation, activation_id)
            if row is None or row.deleted:
                raise NotFoundError(f"activation {activation_id} does not exist")
            row.deleted = True

    async def register_node(
        self,
        activation_id: str,
        code: str,
        public_key: bytes,
        tags: Mapping[str, str],
        now: float | None = None,
    ) -> NodeRecord:
        """Consume one use of an activation and create a node; ValidationError says why not."""
        now = time.time() if now is None else now
        async with self._tx() as s:
            row = await s.get(m.Activation, activation_id)
            if (
                row is None
                or row.deleted
                or not hmac.compare_digest(row.code_hash, hash_secret(code))
            ):
                raise ValidationError("activation id or code is invalid", field="activation_code")
            if row.expires_at <= now:
                raise ValidationError("activation has expired", field="activation_id")
            # Conditional increment: concurrent registrations cannot exceed the limit.
            result = await s.execute(
                update(m.Activation)
                .where(
                    m.Activation.id == activation_id,
                    m.Activation.registrations_count < m.Activation.registration_limit,
                )
                .values(registrations_count=m.Activation.registrations_count + 1)
            )
            if getattr(result, "rowcount", 0) != 1:
                raise ValidationError(
                    "activation has reached its registration limit", field="activation_id"
                )
            node = m.Node(
                id=new_node_id(),
                public_key=public_key,
                activation_id=activation_id,
                tags={**row.tags, **tags},
                ip_addresses=[],
                registered_at=now,
                ping_status="ConnectionLost",
                deregistered=False,
            )
            s.add(node)
            await s.flush()
            return _node(node)

    # --- nodes ------------------------------------------------------------

    async def get_node(self, node_id: str, include_deregistered: bool = False) -> NodeRecord:
        """One node; NotFoundError when unknown (or deregistered, unless asked)."""
        async with self._tx() as s:
            row = await s.get(m.Node, node_id)
            if row is None or (row.deregistered and not include_deregistered):
                raise NotFoundError(f"node {node_id} does not exist")
            return _node(row)

    async def list_nodes(self) -> list[NodeRecord]:
        """Every registered (not deregistered) node, by id."""
        async with self._tx() as s:
            rows = await s.execute(select(m.Node).where(~m.Node.deregistered).order_by(m.Node.id))
            return [_node(r) for r in rows.scalars()]

    async def update_node_tags(
        self, node_id: str, set_tags: Mapping[str, str], remove: Sequence[str]
    ) -> NodeRecord:
        """Set and remove tags of a node."""
        async with self._tx() as s:
            row = await s.get(m.Node, node_id)
            if row is None or row.deregistered:
                raise NotFoundError(f"node {node_id} does not exist")
            tags = {k: v for k, v in row.tags.items() if k not in remove}
            tags.update(set_tags)
            row.tags = tags
            return _node(row)

    async def deregister_node(self, node_id: str, now: float | None = None) -> list[str]:
        """Deregister a node; its unfinished invocations end Failed/Undeliverable.

        Returns the ids of the commands whose invocations changed.
        """
        now = time.time() if now is None else now
        async with self._tx() as s:
            row = await s.get(m.Node, node_id)
            if row is None or row.deregistered:
                raise NotFoundError(f"node {node_id} does not exist")
            row.deregistered = True
            row.ping_status = "ConnectionLost"
            open_rows = await s.execute(
                select(m.Invocation.command_id).where(
                    m.Invocation.node_id == node_id, m.Invocation.status.not_in(_FINAL_STATUSES)
                )
            )
            command_ids = [c for (c,) in open_rows]
            await s.execute(
                update(m.Invocation)
                .where(m.Invocation.node_id == node_id, m.Invocation.status.not_in(_FINAL_STATUSES))
                .values(status="Failed", status_details="Undeliverable", ended_at=now)
            )
            return command_ids

    async def node_key(self, node_id: str) -> bytes | None:
        """The public key of a registered node, None if unknown or deregistered."""
        async with self._tx() as s:
            row = await s.get(m.Node, node_id)
            if row is None or row.deregistered:
                return None
            return row.public_key

    async def node_connected(self, node_id: str, info: NodeInfo, now: float) -> None:
        """Record a node's fresh connection and what it reports about itself."""
        async with self._tx() as s:
            await s.execute(
                update(m.Node)
                .where(m.Node.id == node_id)
                .values(
                    hostname=info.hostname,
                    platform_type=info.platform_type,
                    platform_name=info.platform_name,
                    platform_version=info.platform_version,
                    kernel=info.kernel,
                    arch=info.arch,
                    ip_addresses=list(info.ip_addresses),
                    agent_version=info.agent_version,
                    last_seen=now,
                    ping_status="Online",
                )
            )

    async def touch_nodes(self, seen: Mapping[str, float]) -> None:
        """Set last_seen of many nodes in one transaction."""
        if not seen:
            return
        table = _table(m.Node)
        async with self._tx() as s:
            await s.execute(
                update(table)
                .where(table.c.id == bindparam("b_id"))
                .values(last_seen=bindparam("b_seen")),
                [{"b_id": k, "b_seen": v} for k, v in seen.items()],
                execution_options={"synchronize_session": False},
            )

    async def mark_nodes_lost(self, node_ids: Sequence[str], now: float | None = None) -> None:
        """Mark nodes ConnectionLost (their connection dropped)."""
        if not node_ids:
            return
        async with self._tx() as s:
            await s.execute(
                update(m.Node)
                .where(m.Node.id.in_(list(node_ids)))
                .values(ping_status="ConnectionLost")
            )

    async def mark_silent_nodes_lost(self, silent_since: float) -> list[str]:
        """Mark Online nodes not seen since `silent_since` ConnectionLost; returns their ids."""
        async with self._tx() as s:
            rows = await s.execute(
                select(m.Node.id).where(
                    m.Node.ping_status == "Online", m.Node.last_seen < silent_since
                )
            )
            ids = [i for (i,) in rows]
            if ids:
                await s.execute(
                    update(m.Node).where(m.Node.id.in_(ids)).values(ping_status="ConnectionLost")
                )
            return ids

    # --- documents --------------------------------------------------------

    async def create_document(
        self, name: str, content: str, fmt: str, meta: DocumentMeta, owner: str = "Self"
    ) -> DocumentRecord:
        """Store version 1 of a new document; ConflictError if the name exists."""
        now = time.time()
        async with self._tx() as s:
            if await s.get(m.DocumentHead, name) is not None:
                raise ConflictError(f"document {name} already exists")
            head = m.DocumentHead(name=name, default_version=1, latest_version=1, owner=owner)
            row = _doc_row(name, 1, content, fmt, meta, now)
            s.add_all([head, row])
            await s.flush()
            return _document(row, head)

    async def add_document_version(
        self, name: str, content: str, fmt: str, meta: DocumentMeta
    ) -> DocumentRecord:
        """Store a new version; ConflictError when the content equals the latest version's."""
        async with self._tx() as s:
            head = await s.get(m.DocumentHead, name, with_for_update=True)
            if head is None:
                raise NotFoundError(f"document {name} does not exist")
            latest = await s.get(m.DocumentVersion, (name, head.latest_version))
            digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
            if latest is not None and latest.content_hash == digest:
                raise ConflictError("content is identical to the latest version")
            head.latest_version += 1
            row = _doc_row(name, head.latest_version, content, fmt, meta, time.time())
            s.add(row)
            await s.flush()
            return _document(row, head)

    async def get_document(
        self, name: str, version: int | None = None, latest: bool = False
    ) -> DocumentRecord:
        """One version (default version unless `version` or `latest` is given)."""
        async with self._tx() as s:
            head = await s.get(m.DocumentHead, name)
            if head is None:
                raise NotFoundError(f"document {name} does not exist")
            wanted = (
                version
                if version is not None
                else (head.latest_version if latest else head.default_version)
            )
            row = await s.get(m.DocumentVersion, (name, wanted))
            if row is None:
                raise NotFoundError(f"document {name} has no version {wanted}")
            return _document(row, head)

    async def list_documents(self) -> list[DocumentRecord]:
        """Every document at its default version, by name."""
        async with self._tx() as s:
            rows = await s.execute(
                select(m.DocumentVersion, m.DocumentHead)
                .join(
                    m.DocumentHead,
                    (m.DocumentHead.name == m.DocumentVersion.name)
                    & (m.DocumentHead.default_version == m.DocumentVersion.version),
                )
                .order_by(m.DocumentHead.name)
            )
            return [_document(v, h) for v, h in rows]

    async def set_default_version(self, name: str, version: int) -> DocumentRecord:
        """Make `version` the default one."""
        async with self._tx() as s:
            head = await s.get(m.DocumentHead, name)
            if head is None:
                raise NotFoundError(f"document {name} does not exist")
            row = await s.get(m.DocumentVersion, (name, version))
            if row is None:
                raise NotFoundError(f"document {name} has no version {version}")
            head.default_version = version
            return _document(row, head)

    async def delete_document(self, name: str) -> None:
        """Delete every version of a document."""
        async with self._tx() as s:
            head = await s.get(m.DocumentHead, name)
            if head is None:
                raise NotFoundError(f"document {name} does not exist")
            await s.execute(delete(m.DocumentVersion).where(m.DocumentVersion.name == name))
            await s.delete(head)

    # --- commands and invocations -----------------------------------------

    async def create_command(
        self, new: NewCommand, node_ids: Sequence[str], denied: Mapping[str, str] | None = None
    ) -> CommandRecord:
        """Store a command and its invocations in one transaction.

        Each node gets a Pending invocation, except the nodes in `denied` (node id ->
        reason), whose invocations are stored already Failed with detail AccessDenied.
        """
        row = m.Command(
            id=new.id,
            document_name=new.document_name,
            document_version=new.document_version,
            comment=new.comment,
            parameters=dict(new.parameters),
            targets=list(new.targets),
            max_concurrency=new.max_concurrency,
            max_errors=new.max_errors,
            timeout_seconds=new.timeout_seconds,
            delivery_timeout_seconds=new.delivery_timeout_seconds,
            requested_at=new.requested_at,
            completed_at=None,
            status="Pending",
            status_details="Pending",
            cancelling=False,
            target_count=len(node_ids),
            requested_by=new.requested_by,
            references=list(new.references) or None,
        )
        inv = _table(m.Invocation)
        records = initial_invocations(new.id, list(node_ids), new.requested_at, dict(denied or {}))
        async with self._tx() as s:
            s.add(row)
            await s.flush()
            await s.execute(
                inv.insert(),
                [
                    {
                        "command_id": r.command_id,
                        "node_id": r.node_id,
                        "seq": r.seq,
                        "status": r.status,
                        "status_details": r.status_details,
                        "response_code": None,
                        "stdout_head": "",
                        "stderr_head": "",
                        "stdout_bytes": 0,
                        "stderr_bytes": 0,
                        "requested_at": r.requested_at,
                        "ended_at": r.ended_at,
                        "updated_at": r.updated_at,
                        "steps": [],
                        "message": r.message,
                    }
                    for r in records
                ],
            )
            return _command(row)

    async def get_command(self, command_id: str) -> CommandRecord:
        """One command."""
        async with self._tx() as s:
            row = await s.get(m.Command, command_id)
            if row is None:
                raise NotFoundError(f"command {command_id} does not exist")
            return _command(row)

    async def list_commands(
        self, limit: int = 50, status: str | None = None
    ) -> list[CommandRecord]:
        """Newest commands first."""
        query = select(m.Command).order_by(m.Command.requested_at.desc()).limit(limit)
        if status is not None:
            query = query.where(m.Command.status == status)
        async with self._tx() as s:
            return [_command(r) for r in (await s.execute(query)).scalars()]

    async def active_commands(self) -> list[CommandRecord]:
        """Commands whose invocations are not all final."""
        async with self._tx() as s:
            rows = await s.execute(
                select(m.Command)
                .where(m.Command.completed_at.is_(None))
                .order_by(m.Command.requested_at)
            )
            return [_command(r) for r in rows.scalars()]

    async def list_invocations(self, command_id: str) -> list[InvocationRecord]:
        """A command's invocations in dispatch order."""
        table = _table(m.Invocation)
        async with self._tx() as s:
            # Core rows, not ORM objects: a command may have thousands of invocations.
            rows = await s.execute(
                select(table).where(table.c.command_id == command_id).order_by(table.c.seq)
            )
            return [InvocationRecord(**row._mapping) for row in rows]

    async def get_invocation(self, command_id: str, node_id: str) -> InvocationRecord:
        """One invocation."""
        async with self._tx() as s:
            row = await s.get(m.Invocation, (command_id, node_id))
            if row is None:
                raise NotFoundError(f"command {command_id} has no invocation on node {node_id}")
            return _invocation(row)

    async def apply_changes(
        self,
        invocations: Sequence[InvocationChange] = (),
        commands: Sequence[CommandChange] = (),
    ) -> None:
        """Write many invocation and command changes in one transaction (a group commit)."""
        if not invocations and not commands:
            return
        now = time.time()
        # A Core connection, not an ORM session: a group commit runs for every few results
        # during a fan-out, and the ORM's per-statement bookkeeping is most of its cost.
        with translate_errors():
            async with self.engine.begin() as conn:
                for columns, params in _group(
                    ({"b_cid": c.command_id, "b_nid": c.node_id}, {**c.values(), "updated_at": now})
                    for c in invocations
                ):
                    await conn.execute(_invocation_update(columns), params)
                for columns, params in _group(
                    ({"b_cid": c.command_id}, c.values()) for c in commands
                ):
                    await conn.execute(_command_update(columns), params)

    async def invocation_counts(
        self, command_ids: Sequence[str]
    ) -> dict[str, dict[tuple[str, str], int]]:
        """Per command: (status, status_details) -> number of invocations."""
        counts: dict[str, dict[tuple[str, str], int]] = {c: {} for c in command_ids}
        if not command_ids:
            return counts
        inv = m.Invocation
        async with self._tx() as s:
            rows = await s.execute(
                select(inv.command_id, inv.status, inv.status_details, func.count())
                .where(inv.command_id.in_(list(command_ids)))
                .group_by(inv.command_id, inv.status, inv.status_details)
            )
            for command_id, status, detail, number in rows:
                counts[command_id][(status, detail)] = int(number)
        return counts

    async def count_rows(self, table: str) -> int:
        """Number of rows in one of the store's tables (for diagnostics and tests)."""
        model = {t.__tablename__: t for t in _MODELS}[table]
        async with self._tx() as s:
            return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


_MODELS: tuple[Any, ...] = (
    m.ApiToken,
    m.Activation,
    m.Node,
    m.DocumentVersion,
    m.DocumentHead,
    m.Command,
    m.Invocation,
    m.Setting,
)


def _table(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_UPDATES: dict[tuple[str, tuple[str, ...]], Any] = {}


def _invocation_update(columns: tuple[str, ...]) -> Any:
    """UPDATE of these invocation columns keyed by (b_cid, b_nid), built once per column set."""
    stmt = _UPDATES.get(("invocation", columns))
    if stmt is None:
        inv = _table(m.Invocation)
        stmt = _UPDATES["invocation", columns] = (
            update(inv)
            .where(inv.c.command_id == bindparam("b_cid"), inv.c.node_id == bindparam("b_nid"))
            .values({col: bindparam("v_" + col) for col in columns})
        )
    return stmt


def _command_update(columns: tuple[str, ...]) -> Any:
    """UPDATE of these command columns keyed by b_cid, built once per column set."""
    stmt = _UPDATES.get(("command", columns))
    if stmt is None:
        cmd = _table(m.Command)
        stmt = _UPDATES["command", columns] = (
            update(cmd)
            .where(cmd.c.id == bindparam("b_cid"))
            .values({col: bindparam("v_" + col) for col in columns})
        )
    return stmt


def _group(
    items: Any,
) -> list[tuple[tuple[str, ...], list[dict[str, object]]]]:
    groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for keys, values in items:
        if not values:
            continue
        columns = tuple(sorted(values))
        groups.setdefault(columns, []).append({**keys, **{"v_" + k: v for k, v in values.items()}})
    return list(groups.items())


def _doc_row(
    name: str, version: int, content: str, fmt: str, meta: DocumentMeta, now: float
) -> m.DocumentVersion:
    return m.DocumentVersion(
        name=name,
        version=version,
        content=content,
        format=fmt,
        content_hash=hashlib.sha256(content.encode("utf-8")).hexdigest(),
        schema_version=meta.schema_version,
        document_type=meta.document_type,
        description=meta.description,
        parameters=meta.parameters,
        created_at=now,
    )


def _activation(r: m.Activation) -> ActivationRecord:
    return ActivationRecord(
        r.id,
        r.description,
        dict(r.tags),
        r.registration_limit,
        r.registrations_count,
        r.expires_at,
        r.created_at,
        r.deleted,
    )


def _node(r: m.Node) -> NodeRecord:
    return NodeRecord(
        id=r.id,
        public_key=r.public_key,
        activation_id=r.activation_id,
        tags=dict(r.tags),
        hostname=r.hostname,
        platform_type=r.platform_type,
        platform_name=r.platform_name,
        platform_version=r.platform_version,
        kernel=r.kernel,
        arch=r.arch,
        ip_addresses=list(r.ip_addresses),
        agent_version=r.agent_version,
        registered_at=r.registered_at,
        last_seen=r.last_seen,
        ping_status=r.ping_status,
        deregistered=r.deregistered,
    )


def _document(r: m.DocumentVersion, h: m.DocumentHead) -> DocumentRecord:
    return DocumentRecord(
        name=r.name,
        version=r.version,
        content=r.content,
        format=r.format,
        content_hash=r.content_hash,
        meta=DocumentMeta(r.schema_version, r.document_type, r.description, dict(r.parameters)),
        created_at=r.created_at,
        default_version=h.default_version,
        latest_version=h.latest_version,
        owner=h.owner,
    )


def _command(r: m.Command) -> CommandRecord:
    return CommandRecord(
        id=r.id,
        document_name=r.document_name,
        document_version=r.document_version,
        comment=r.comment,
        parameters=dict(r.parameters),
        targets=list(r.targets),
        max_concurrency=r.max_concurrency,
        max_errors=r.max_errors,
        timeout_seconds=r.timeout_seconds,
        delivery_timeout_seconds=r.delivery_timeout_seconds,
        requested_at=r.requested_at,
        completed_at=r.completed_at,
        status=r.status,
        status_details=r.status_details,
        cancelling=r.cancelling,
        target_count=r.target_count,
        requested_by=r.requested_by,
        references=list(r.references or []),
    )


def _invocation(r: m.Invocation) -> InvocationRecord:
    return InvocationRecord(
        command_id=r.command_id,
        node_id=r.node_id,
        seq=r.seq,
        status=r.status,
        status_details=r.status_details,
        response_code=r.response_code,
        stdout_head=r.stdout_head,
        stderr_head=r.stderr_head,
        stdout_bytes=r.stdout_bytes,
        stderr_bytes=r.stderr_bytes,
        requested_at=r.requested_at,
        sent_at=r.sent_at,
        started_at=r.started_at,
        ended_at=r.ended_at,
        steps=list(r.steps),
        message=r.message,
        updated_at=r.updated_at,
    )
