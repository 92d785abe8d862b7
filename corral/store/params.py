"""Parameter Store tables: parameters and their versions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import ConflictError, NotFoundError, ValidationError
from corral.store import models as m
from corral.store.base import RepositoryBase
from corral.store.records import ParameterRecord, ParameterVersionRecord, ParameterWrite

MAX_VERSIONS = 100


class ParameterAlreadyExists(ConflictError):
    """A write without overwrite onto an existing name."""


class ParameterVersionLimit(ConflictError):
    """The oldest of 100 versions has a label, so no new version can push it out."""


class ParameterNotFound(NotFoundError):
    """No such parameter."""


class ParameterLabelLimit(ValidationError):
    """A version would get more than 10 labels."""


class ParameterVersionNotFound(NotFoundError):
    """No such version (or label) of an existing parameter."""


@dataclass(frozen=True, slots=True)
class ParameterFilter:
    """Filters for listing (all optional, AND-ed)."""

    path: str | None = None
    recursive: bool = False
    types: tuple[str, ...] = ()
    key_ids: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    name_prefix: str | None = None
    names_equal: tuple[str, ...] = ()
    tags: tuple[tuple[str, tuple[str, ...]], ...] = ()  # key, allowed values (empty: any)


class ParameterRepository(RepositoryBase):
    """Parameter tables; the `Store` inherits these methods."""

    async def put_parameter(
        self, write: ParameterWrite, overwrite: bool, max_versions: int = MAX_VERSIONS
    ) -> int:
        """Store a new version; returns its number. Concurrent writers never lose one.

        An existing name is bumped with one atomic `UPDATE ... RETURNING`, which also
        takes the row's write lock, so the version number is never handed out twice.
        """
        async with self._tx() as s:
            version = None
            if overwrite:
                version = await self._bump(s, write)
            if version is None:
                exists = await s.get(m.Parameter, write.name)
                if exists is not None:
                    raise ParameterAlreadyExists(
                        f"parameter {write.name} already exists; use overwrite to add a version"
                    )
                s.add(
                    m.Parameter(
                        name=write.name,
                        parent=write.parent,
                        type=write.type,
                        key_id=write.key_id,
                        tier=write.tier,
                        data_type=write.data_type,
                        description=write.description,
                        allowed_pattern=write.allowed_pattern,
                        version=1,
                        last_modified=write.at,
                        last_modified_by=write.by,
                        tags=dict(write.tags),
                        policies=list(write.policies),
                        expires_at=write.expires_at,
                        notify_at=write.notify_at,
                        notified="",
                    )
                )
                await s.flush()
                version = 1
            await s.execute(
                insert(m.ParameterVersion).values(
                    name=write.name,
                    version=version,
                    value=write.value,
                    type=write.type,
                    key_id=write.key_id,
                    tier=write.tier,
                    data_type=write.data_type,
                    description=write.description,
                    allowed_pattern=write.allowed_pattern,
                    labels=[],
                    policies=list(write.policies),
                    last_modified=write.at,
                    last_modified_by=write.by,
                )
            )
            await self._prune(s, write.name, max_versions)
            return version

    async def _bump(self, s: AsyncSession, write: ParameterWrite) -> int | None:
        result = await s.execute(
            update(m.Parameter)
            .where(m.Parameter.name == write.name)
            .values(
                version=m.Parameter.version + 1,
                type=write.type,
                key_id=write.key_id,
                tier=write.tier,
                data_type=write.data_type,
                description=write.description,
                allowed_pattern=write.allowed_pattern,
                last_modified=write.at,
                last_modified_by=write.by,
                policies=list(write.policies),
                expires_at=write.expires_at,
                notify_at=write.notify_at,
                notified="",
            )
            .returning(m.Parameter.version)
        )
        row = result.first()
        return int(row[0]) if row is not None else None

    async def _prune(self, s: AsyncSession, name: str, max_versions: int) -> None:
        count = (
            await s.execute(
                select(func.count())
                .select_from(m.ParameterVersion)
                .where(m.ParameterVersion.name == name)
            )
        ).scalar_one()
        if count <= max_versions:
            return
        oldest = (
            await s.execute(
                select(m.ParameterVersion)
                .where(m.ParameterVersion.name == name)
                .order_by(m.ParameterVersion.version)
                .limit(count - max_versions)
            )
        ).scalars()
        for row in oldest:
            if row.labels:
                raise ParameterVersionLimit(
                    f"parameter {name} already has {max_versions} versions and the oldest "
                    f"(version {row.version}) has labels {', '.join(row.labels)}; move or remove "
                    "them first"
                )
            await s.delete(row)

    async def get_parameter(self, name: str) -> ParameterRecord:
        """A parameter's latest metadata."""
        async with self._tx() as s:
            row = await s.get(m.Parameter, name)
            if row is None:
                raise ParameterNotFound(f"parameter {name} does not exist")
            return _parameter(row)

    async def get_parameter_version(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> tuple[ParameterRecord, ParameterVersionRecord]:
        """The metadata and one version: the latest, a number, or the one with `label`."""
        async with self._tx() as s:
            meta = await s.get(m.Parameter, name)
            if meta is None:
                raise ParameterNotFound(f"parameter {name} does not exist")
            query = select(m.ParameterVersion).where(m.ParameterVersion.name == name)
            if label is not None:
                rows = (await s.execute(query)).scalars()
                found = next((r for r in rows if label in r.labels), None)
                if found is None:
                    raise ParameterVersionNotFound(
                        f"parameter {name} has no version labelled {label}"
                    )
                return _parameter(meta), _version(found)
            wanted = meta.version if version is None else version
            row = await s.get(m.ParameterVersion, (name, wanted))
            if row is None:
                raise ParameterVersionNotFound(f"parameter {name} has no version {wanted}")
            return _parameter(meta), _version(row)

    async def get_latest_versions(
        self, names: Sequence[str]
    ) -> dict[str, tuple[ParameterRecord, ParameterVersionRecord]]:
        """name -> (metadata, latest version) for the names that exist."""
        if not names:
            return {}
        async with self._tx() as s:
            rows = await s.execute(
                select(m.Parameter, m.ParameterVersion)
                .join(
                    m.ParameterVersion,
                    (m.ParameterVersion.name == m.Parameter.name)
                    & (m.ParameterVersion.version == m.Parameter.version),
                )
                .where(m.Parameter.name.in_(list(names)))
            )
            return {row[0].name: (_parameter(row[0]), _version(row[1])) for row in rows}

    async def list_parameters(
        self, filters: ParameterFilter, after: str | None, limit: int
    ) -> list[ParameterRecord]:
        """Parameters in name order after `after` (keyset paging)."""
        query = select(m.Parameter).order_by(m.Parameter.name).limit(limit)
        if after is not None:
            query = query.where(m.Parameter.name > after)
        if filters.path is not None:
            if filters.recursive:
                prefix = "/" if filters.path == "/" else filters.path + "/"
                query = query.where(m.Parameter.name.startswith(prefix, autoescape=True))
            else:
                query = query.where(m.Parameter.parent == filters.path)
        if filters.types:
            query = query.where(m.Parameter.type.in_(filters.types))
        if filters.key_ids:
            query = query.where(m.Parameter.key_id.in_(filters.key_ids))
        if filters.tiers:
            query = query.where(m.Parameter.tier.in_(filters.tiers))
        if filters.name_prefix is not None:
            query = query.where(m.Parameter.name.startswith(filters.name_prefix, autoescape=True))
        if filters.names_equal:
            query = query.where(m.Parameter.name.in_(filters.names_equal))
        async with self._tx() as s:
            rows = [_parameter(r) for r in (await s.execute(query)).scalars()]
        return [r for r in rows if _tags_match(r.tags, filters.tags)]

    async def parameter_history(
        self, name: str, after_version: int, limit: int
    ) -> list[ParameterVersionRecord]:
        """Versions oldest first, after `after_version`."""
        async with self._tx() as s:
            if await s.get(m.Parameter, name) is None:
                raise ParameterNotFound(f"parameter {name} does not exist")
            rows = (
                await s.execute(
                    select(m.ParameterVersion)
                    .where(
                        m.ParameterVersion.name == name, m.ParameterVersion.version > after_version
                    )
                    .order_by(m.ParameterVersion.version)
                    .limit(limit)
                )
            ).scalars()
            return [_version(r) for r in rows]

    async def label_parameter(
        self, name: str, version: int | None, labels: Sequence[str], max_labels: int
    ) -> tuple[int, list[str]]:
        """Attach labels to a version (moving them from others); returns (version, refused)."""
        async with self._tx() as s:
            meta = await s.get(m.Parameter, name)
            if meta is None:
                raise ParameterNotFound(f"parameter {name} does not exist")
            wanted = meta.version if version is None else version
            rows = {
                r.version: r
                for r in (
                    await s.execute(
                        select(m.ParameterVersion).where(m.ParameterVersion.name == name)
                    )
                ).scalars()
            }
            target = rows.get(wanted)
            if target is None:
                raise ParameterVersionNotFound(f"parameter {name} has no version {wanted}")
            new = [label for label in dict.fromkeys(labels) if label not in target.labels]
            if len(target.labels) + len(new) > max_labels:
                raise ParameterLabelLimit(
                    f"version {wanted} of {name} would have "
                    f"{len(target.labels) + len(new)} labels; at most {max_labels}",
                    "labels",
                )
            for other in rows.values():
                if other.version != wanted and any(label in other.labels for label in new):
                    other.labels = [label for label in other.labels if label not in new]
            target.labels = [*target.labels, *new]
            return wanted, []

    async def unlabel_parameter(
        self, name: str, version: int, labels: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Remove labels from a version; returns (removed, not found on it)."""
        async with self._tx() as s:
            if await s.get(m.Parameter, name) is None:
                raise ParameterNotFound(f"parameter {name} does not exist")
            row = await s.get(m.ParameterVersion, (name, version))
            if row is None:
                raise ParameterVersionNotFound(f"parameter {name} has no version {version}")
            removed = [label for label in dict.fromkeys(labels) if label in row.labels]
            invalid = [label for label in dict.fromkeys(labels) if label not in row.labels]
            row.labels = [label for label in row.labels if label not in removed]
            return removed, invalid

    async def delete_parameters(self, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """Delete parameters with all versions; returns (deleted, not found)."""
        async with self._tx() as s:
            existing = set(
                (
                    await s.execute(
                        select(m.Parameter.name).where(m.Parameter.name.in_(list(names)))
                    )
                ).scalars()
            )
            if existing:
                await s.execute(
                    delete(m.ParameterVersion).where(m.ParameterVersion.name.in_(existing))
                )
                await s.execute(delete(m.Parameter).where(m.Parameter.name.in_(existing)))
        ordered = list(dict.fromkeys(names))
        return [n for n in ordered if n in existing], [n for n in ordered if n not in existing]

    async def update_parameter_tags(
        self, name: str, add: dict[str, str], remove: Sequence[str], max_tags: int
    ) -> dict[str, str]:
        """Add and remove tags; returns the tags after."""
        async with self._tx() as s:
            row = await s.get(m.Parameter, name)
            if row is None:
                raise ParameterNotFound(f"parameter {name} does not exist")
            tags = {k: v for k, v in row.tags.items() if k not in remove} | add
            if len(tags) > max_tags:
                raise ValidationError(f"a parameter has at most {max_tags} tags", "tags")
            row.tags = tags
            return dict(tags)

    async def sealed_versions(
        self, key_id: str, after: tuple[str, int] | None, limit: int
    ) -> list[ParameterVersionRecord]:
        """SecureString versions sealed under `key_id`, in (name, version) order."""
        query = (
            select(m.ParameterVersion)
            .where(m.ParameterVersion.key_id == key_id, m.ParameterVersion.type == "SecureString")
            .order_by(m.ParameterVersion.name, m.ParameterVersion.version)
            .limit(limit)
        )
        if after is not None:
            name, version = after
            query = query.where(
                (m.ParameterVersion.name > name)
                | ((m.ParameterVersion.name == name) & (m.ParameterVersion.version > version))
            )
        async with self._tx() as s:
            return [_version(r) for r in (await s.execute(query)).scalars()]

    async def replace_sealed_values(self, values: Sequence[tuple[str, int, str, str]]) -> int:
        """Swap re-wrapped values in: (name, version, old value, new value); skips changed rows."""
        done = 0
        async with self._tx() as s:
            for name, version, old, new in values:
                result = await s.execute(
                    update(m.ParameterVersion)
                    .where(
                        m.ParameterVersion.name == name,
                        m.ParameterVersion.version == version,
                        m.ParameterVersion.value == old,
                    )
                    .values(value=new)
                )
                done += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return done

    async def due_parameters(
        self, now: float
    ) -> tuple[list[ParameterRecord], list[ParameterRecord]]:
        """(expired, needing a notification) at `now`."""
        async with self._tx() as s:
            expired = (
                await s.execute(select(m.Parameter).where(m.Parameter.expires_at <= now))
            ).scalars()
            expired_records = [_parameter(r) for r in expired]
            notify = (
                await s.execute(select(m.Parameter).where(m.Parameter.notify_at <= now))
            ).scalars()
            return expired_records, [_parameter(r) for r in notify]

    async def mark_notified(
        self, name: str, kind: str, next_at: float | None, seen_version: int
    ) -> bool:
        """Record that a notification was sent (only if the parameter did not change since)."""
        async with self._tx() as s:
            result = await s.execute(
                update(m.Parameter)
                .where(m.Parameter.name == name, m.Parameter.version == seen_version)
                .values(notified=kind, notify_at=next_at)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete_if_unchanged(self, name: str, version: int) -> bool:
        """Delete a parameter (expiry) unless a newer version was written meanwhile."""
        async with self._tx() as s:
            row = await s.get(m.Parameter, name)
            if row is None or row.version != version:
                return False
            await s.execute(delete(m.ParameterVersion).where(m.ParameterVersion.name == name))
            await s.delete(row)
            return True


def _tags_match(tags: dict[str, str], wanted: tuple[tuple[str, tuple[str, ...]], ...]) -> bool:
    for key, values in wanted:
        if key not in tags:
            return False
        if values and tags[key] not in values:
            return False
    return True


def _parameter(r: m.Parameter) -> ParameterRecord:
    return ParameterRecord(
        name=r.name,
        type=r.type,
        key_id=r.key_id,
        tier=r.tier,
        data_type=r.data_type,
        description=r.description,
        allowed_pattern=r.allowed_pattern,
        version=r.version,
        last_modified=r.last_modified,
        last_modified_by=r.last_modified_by,
        tags=dict(r.tags),
        policies=list(r.policies),
        expires_at=r.expires_at,
        notify_at=r.notify_at,
        notified=r.notified,
    )


def _version(r: m.ParameterVersion) -> ParameterVersionRecord:
    return ParameterVersionRecord(
        name=r.name,
        version=r.version,
        value=r.value,
        type=r.type,
        key_id=r.key_id,
        tier=r.tier,
        data_type=r.data_type,
        description=r.description,
        allowed_pattern=r.allowed_pattern,
        labels=list(r.labels),
        policies=list(r.policies),
        last_modified=r.last_modified,
        last_modified_by=r.last_modified_by,
    )
