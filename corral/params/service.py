"""The Parameter Store domain service: every API (native and Systems Manager's) calls this.

Each operation takes the calling principal's authoriser and checks policy here, so
no front end can forget a check: `parameter:Put`, `parameter:Get`,
`parameter:GetDecrypted` (its own action, and its own audit record), `parameter:List`,
`parameter:Label`, `parameter:Tag`, `parameter:Delete` on `parameter:NAME`.
Plaintext of a SecureString exists only in memory on its way in (sealed at once)
and on its way out to an authorised caller.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from corral.errors import AccessDeniedError, NotFoundError, ValidationError
from corral.params.keys import DecryptionError, Keyring, key_name
from corral.params.names import (
    MAX_LABELS_PER_VERSION,
    MAX_VERSIONS,
    Policies,
    Selector,
    check_pattern,
    check_value,
    choose_tier,
    parent_of,
    parse_policies,
    parse_selector,
    validate_label,
    validate_name,
    validate_path,
)
from corral.store import ParameterRecord, ParameterVersionRecord, ParameterWrite, Store
from corral.store.params import ParameterAlreadyExists, ParameterFilter, ParameterNotFound

logger = logging.getLogger(__name__)

MAX_TAGS = 50
MAX_BATCH = 10  # GetParameters and DeleteParameters take at most 10 names each (SSM)


class Authorizer(Protocol):
    """What the service needs from the calling principal (corral.server.auth.Caller)."""

    @property
    def label(self) -> str:
        """`user:alice` or `node:mi-...`."""

    def check(self, action: str, resource: str) -> bool:
        """Evaluate and record for the audit log."""

    def require(self, action: str, resource: str) -> None:
        """AccessDeniedError unless allowed."""

    def record(self, action: str, resources: Sequence[str]) -> None:
        """An extra audit record for this call (e.g. each decryption)."""


def resource(name: str) -> str:
    """The policy resource of a parameter."""
    return f"parameter:{name}"


@dataclass(frozen=True, slots=True)
class PutRequest:
    """A write, as both APIs receive it (value is plaintext, even for SecureString)."""

    name: str
    value: str
    type: str | None = None
    key_id: str | None = None
    overwrite: bool = False
    description: str | None = None
    allowed_pattern: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    tier: str | None = None
    policies: str | None = None
    data_type: str | None = None


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a write produced."""

    name: str
    version: int
    tier: str


@dataclass(frozen=True, slots=True)
class ParameterValue:
    """One parameter version as returned: `value` is plaintext, or sealed when not decrypted."""

    name: str
    type: str
    value: str
    version: int
    labels: list[str]
    last_modified: float
    data_type: str
    selector: str | None
    decrypted: bool


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One version with its metadata."""

    value: ParameterValue
    key_id: str | None
    description: str
    allowed_pattern: str | None
    tier: str
    policies: list[dict[str, object]]
    last_modified_by: str


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of results and the token for the next one (None at the end)."""

    items: list[T]
    next_token: str | None


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode("utf-8")).decode("ascii")


def _after(token: str | None) -> str | None:
    if token is None or token == "":
        return None
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        raise ValidationError("the NextToken is not valid", "next_token") from None


class ParameterService:
    """Parameter Store operations with validation, policy checks and envelope encryption."""

    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        max_versions: int = MAX_VERSIONS,
        cache_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.max_versions = max_versions
        # Latest versions read by name, kept `cache_seconds`: writes through this server
        # drop them at once; another replica's writes are seen within `cache_seconds`.
        self.cache_seconds = cache_seconds
        self._latest: dict[str, tuple[float, ParameterVersionRecord]] = {}

    def forget(self, names: Sequence[str] | None = None) -> None:
        """Drop cached reads (of `names`, or all)."""
        if names is None:
            self._latest.clear()
        else:
            for name in names:
                self._latest.pop(name, None)

    async def _latest_version(self, name: str) -> ParameterVersionRecord:
        if self.cache_seconds > 0:
            cached = self._latest.get(name)
            if cached is not None and time.monotonic() < cached[0]:
                return cached[1]
        _meta, row = await self.store.get_parameter_version(name)
        if self.cache_seconds > 0:
            if len(self._latest) >= 10_000:
                self._latest.clear()
            self._latest[name] = (time.monotonic() + self.cache_seconds, row)
        return row

    # --- writes -----------------------------------------------------------------

    async def put(self, caller: Authorizer, request: PutRequest) -> PutResult:
        """Create a parameter or, with overwrite, add a version."""
        name = validate_name(request.name)
        caller.require("parameter:Put", resource(name))
        try:
            current: ParameterRecord | None = await self.store.get_parameter(name)
        except ParameterNotFound:
            current = None
        if current is not None and not request.overwrite:
            raise ParameterAlreadyExists(
                f"parameter {name} already exists; use overwrite to add a version"
            )
        if current is not None and request.tags:
            raise ValidationError(
                "tags can only be given when a parameter is created; use the tag operations",
                "tags",
            )
        kind = request.type or (current.type if current is not None else "String")
        description = (
            request.description
            if request.description is not None
            else (current.description if current is not None else "")
        )
        if len(description) > 1024:
            raise ValidationError("description is at most 1024 characters", "description")
        pattern_text = (
            request.allowed_pattern
            if request.allowed_pattern is not None
            else (current.allowed_pattern if current is not None else None)
        )
        if request.policies is None and current is not None and current.policies:
            policies = parse_policies(json.dumps(current.policies))  # kept from the last version
        else:
            policies = parse_policies(request.policies)
        tier = choose_tier(
            request.tier, request.value, policies.any, current.tier if current else None
        )
        check_value(request.value, kind, check_pattern(pattern_text), tier)
        if len(request.tags) > MAX_TAGS:
            raise ValidationError(f"a parameter has at most {MAX_TAGS} tags", "tags")
        data_type = request.data_type or (current.data_type if current else "text")
        if data_type not in ("text", "aws:ec2:image", "aws:ssm:integration"):
            raise ValidationError("data_type must be text", "data_type")
        key: str | None = None
        stored_value = request.value
        if kind == "SecureString":
            key = key_name(request.key_id or (current.key_id if current else None))
            if key == "default":
                await asyncio.to_thread(self.keyring.ensure_default)
            stored_value = self.keyring.seal(key, name, request.value)
        elif request.key_id is not None:
            raise ValidationError("a key is only used by SecureString parameters", "key_id")
        now = time.time()
        version = await self.store.put_parameter(
            ParameterWrite(
                name=name,
                parent=parent_of(name),
                type=kind,
                key_id=key,
                tier=tier,
                data_type=data_type,
                description=description,
                allowed_pattern=pattern_text or None,
                value=stored_value,
                tags=dict(request.tags),
                policies=list(policies.raw),
                expires_at=policies.expires_at,
                notify_at=_first_notification(policies, now),
                by=caller.label,
                at=now,
            ),
            overwrite=request.overwrite,
            max_versions=self.max_versions,
        )
        self.forget([name])
        return PutResult(name, version, tier)

    async def delete(self, caller: Authorizer, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """Delete parameters; returns (deleted, not found). Denied anywhere: nothing deleted."""
        if not names:
            raise ValidationError("at least one name is required", "names")
        valid = [validate_name(n, "names") for n in names]
        for name in valid:
            caller.require("parameter:Delete", resource(name))
        try:
            return await self.store.delete_parameters(valid)
        finally:
            self.forget(valid)

    async def label(
        self, caller: Authorizer, name: str, version: int | None, labels: Sequence[str]
    ) -> tuple[int, list[str]]:
        """Attach labels to a version (default: latest); a label moves from other versions."""
        name = validate_name(name)
        caller.require("parameter:Label", resource(name))
        if not labels:
            raise ValidationError("at least one label is required", "labels")
        valid = [validate_label(label) for label in labels]
        try:
            return await self.store.label_parameter(name, version, valid, MAX_LABELS_PER_VERSION)
        finally:
            self.forget([name])

    async def unlabel(
        self, caller: Authorizer, name: str, version: int, labels: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Remove labels from a version; returns (removed, not on that version)."""
        name = validate_name(name)
        caller.require("parameter:Label", resource(name))
        if not labels:
            raise ValidationError("at least one label is required", "labels")
        try:
            return await self.store.unlabel_parameter(name, version, list(labels))
        finally:
            self.forget([name])

    async def tag(
        self, caller: Authorizer, name: str, add: dict[str, str], remove: Sequence[str]
    ) -> dict[str, str]:
        """Add and remove a parameter's tags."""
        name = validate_name(name)
        caller.require("parameter:Tag", resource(name))
        return await self.store.update_parameter_tags(name, add, remove, MAX_TAGS)

    async def tags(self, caller: Authorizer, name: str) -> dict[str, str]:
        """A parameter's tags."""
        name = validate_name(name)
        caller.require("parameter:List", resource(name))
        return (await self.store.get_parameter(name)).tags

    # --- reads -------------------------------------------------------------------

    async def get(self, caller: Authorizer, selector: str, decrypt: bool) -> ParameterValue:
        """One parameter by `NAME`, `NAME:VERSION` or `NAME:LABEL`."""
        parsed = parse_selector(selector)
        caller.require("parameter:Get", resource(parsed.name))
        if parsed.version is None and parsed.label is None:
            version = await self._latest_version(parsed.name)
        else:
            _meta, version = await self.store.get_parameter_version(
                parsed.name, parsed.version, parsed.label
            )
        return await self._value(caller, version, decrypt, parsed)

    async def get_many(
        self, caller: Authorizer, selectors: Sequence[str], decrypt: bool
    ) -> tuple[list[ParameterValue], list[str]]:
        """Several parameters; returns (found, invalid selectors). Denied anywhere: denied."""
        if not selectors:
            raise ValidationError("at least one name is required", "names")
        if len(selectors) > MAX_BATCH:
            raise ValidationError(f"at most {MAX_BATCH} names per call", "names")
        parsed = [parse_selector(s, "names") for s in dict.fromkeys(selectors)]
        for p in parsed:
            caller.require("parameter:Get", resource(p.name))
        found: list[ParameterValue] = []
        invalid: list[str] = []
        for p in parsed:
            try:
                _meta, version = await self.store.get_parameter_version(p.name, p.version, p.label)
            except NotFoundError:
                invalid.append(str(p))
                continue
            found.append(await self._value(caller, version, decrypt, p))
        return found, invalid

    async def get_by_path(
        self,
        caller: Authorizer,
        path: str,
        recursive: bool,
        decrypt: bool,
        max_results: int,
        next_token: str | None,
        filters: ParameterFilter | None = None,
    ) -> Page[ParameterValue]:
        """The latest versions under `path` the caller may read, in name order."""
        path = validate_path(path)
        base = filters or ParameterFilter()
        query = ParameterFilter(
            path=path,
            recursive=recursive,
            types=base.types,
            key_ids=base.key_ids,
            tiers=base.tiers,
            tags=base.tags,
        )
        metas, token = await self._visible(caller, "parameter:Get", query, max_results, next_token)
        latest = await self.store.get_latest_versions([m.name for m in metas])
        out = []
        for meta in metas:
            pair = latest.get(meta.name)
            if pair is not None:
                out.append(await self._value(caller, pair[1], decrypt, None))
        return Page(out, token)

    async def describe(
        self,
        caller: Authorizer,
        filters: ParameterFilter,
        max_results: int,
        next_token: str | None,
    ) -> Page[ParameterRecord]:
        """Metadata of the parameters the caller may list (no values)."""
        return Page(
            *await self._visible(caller, "parameter:List", filters, max_results, next_token)
        )

    async def history(
        self,
        caller: Authorizer,
        name: str,
        decrypt: bool,
        max_results: int,
        next_token: str | None,
    ) -> Page[HistoryEntry]:
        """Every kept version, oldest first."""
        name = validate_name(name)
        caller.require("parameter:Get", resource(name))
        after = _after(next_token)
        after_version = int(after) if after and after.isdigit() else 0
        rows = await self.store.parameter_history(name, after_version, max_results + 1)
        page = rows[:max_results]
        entries = [
            HistoryEntry(
                value=await self._value(caller, r, decrypt, None),
                key_id=r.key_id,
                description=r.description,
                allowed_pattern=r.allowed_pattern,
                tier=r.tier,
                policies=r.policies,
                last_modified_by=r.last_modified_by,
            )
            for r in page
        ]
        token = _token(str(page[-1].version)) if len(rows) > max_results else None
        return Page(entries, token)

    async def _visible(
        self,
        caller: Authorizer,
        action: str,
        filters: ParameterFilter,
        max_results: int,
        next_token: str | None,
    ) -> tuple[list[ParameterRecord], str | None]:
        """Keyset-paged metadata, filtered by policy (and tag filters) until a page is full."""
        if not 1 <= max_results <= 50:
            raise ValidationError("max_results must be between 1 and 50", "max_results")
        after = _after(next_token)
        out: list[ParameterRecord] = []
        while True:
            batch = await self.store.list_parameters(filters, after, 200)
            exhausted = len(batch) < 200
            for meta in batch:
                after = meta.name
                if not _allowed_quietly(caller, action, resource(meta.name)):
                    continue
                out.append(meta)
                if len(out) == max_results:
                    return out, _token(meta.name)
            if exhausted or not batch:
                return out, None

    async def _value(
        self,
        caller: Authorizer,
        version: ParameterVersionRecord,
        decrypt: bool,
        selector: Selector | None,
    ) -> ParameterValue:
        value = version.value
        decrypted = False
        if version.type == "SecureString" and decrypt:
            caller.require("parameter:GetDecrypted", resource(version.name))
            try:
                # AES-GCM on a few KB takes microseconds: cheaper than a thread hop.
                value = self.keyring.open(version.name, version.value)
            except DecryptionError:
                logger.error(
                    "decryption failed name=%s version=%d key=%s",
                    version.name,
                    version.version,
                    version.key_id,
                )
                raise
            caller.record("parameter:GetDecrypted", [f"{resource(version.name)}:{version.version}"])
            decrypted = True
        shown = None
        if selector is not None and (selector.version is not None or selector.label is not None):
            shown = ":" + (
                str(selector.version) if selector.version is not None else str(selector.label)
            )
        return ParameterValue(
            name=version.name,
            type=version.type,
            value=value,
            version=version.version,
            labels=list(version.labels),
            last_modified=version.last_modified,
            data_type=version.data_type,
            selector=shown,
            decrypted=decrypted,
        )

    async def open_version(self, name: str, version: int) -> str:
        """Decrypt one stored version for delivery to a node (the sender was checked)."""
        _meta, row = await self.store.get_parameter_version(name, version)
        return await asyncio.to_thread(self.keyring.open, row.name, row.value)

    # --- keys ---------------------------------------------------------------------

    async def rotate_key(self, name: str, batch: int = 500) -> tuple[int, int]:
        """Add a new KEK version and re-wrap every data key under it; (version, re-wrapped)."""
        info = await asyncio.to_thread(self.keyring.rotate, name)
        done = 0
        after: tuple[str, int] | None = None
        while True:
            rows = await self.store.sealed_versions(info.name, after, batch)
            if not rows:
                break
            changes = []
            for row in rows:
                rewrapped = await asyncio.to_thread(self.keyring.rewrap, row.value)
                if rewrapped is not None:
                    changes.append((row.name, row.version, row.value, rewrapped))
            done += await self.store.replace_sealed_values(changes)
            self.forget([c[0] for c in changes])
            after = (rows[-1].name, rows[-1].version)
        logger.info(
            "key rotated name=%s version=%d rewrapped=%d", info.name, info.current_version, done
        )
        return info.current_version, done


def _allowed_quietly(caller: Authorizer, action: str, res: str) -> bool:
    """A policy decision for filtering (recorded like any other check)."""
    try:
        return caller.check(action, res)
    except AccessDeniedError:
        return False


def _first_notification(policies: Policies, now: float) -> float | None:
    """When the first notification of these policies is due (None: none)."""
    due = [at for _kind, at in _pending_notifications(policies, now, set())]
    return min(due) if due else None


async def apply_policies(
    service: ParameterService, event: EventSink, now: float | None = None
) -> tuple[int, int]:
    """Fire due notifications and delete expired parameters; returns (notified, deleted).

    The event for an expiry is recorded before the parameter is deleted, and nothing
    is deleted if a new version was written since the scan.
    """
    now = time.time() if now is None else now
    expired, due = await service.store.due_parameters(now)
    notified = deleted = 0
    for meta in due:
        policies = parse_policies(json.dumps(meta.policies)) if meta.policies else Policies()
        fired = set(filter(None, meta.notified.split(",")))
        pending = _pending_notifications(policies, meta.last_modified, fired)
        ready = [(kind, at) for kind, at in pending if at <= now]
        for kind, _at in ready:
            event(
                f"parameter:{kind}",
                [resource(meta.name)],
                {"version": meta.version, "expires_at": meta.expires_at},
            )
            fired.add(kind)
            notified += 1
        later = [at for kind, at in pending if kind not in fired]
        await service.store.mark_notified(
            meta.name, ",".join(sorted(fired)), min(later) if later else None, meta.version
        )
    for meta in expired:
        event("parameter:Expire", [resource(meta.name)], {"version": meta.version})
        if await service.store.delete_if_unchanged(meta.name, meta.version):
            deleted += 1
        service.forget([meta.name])
    return notified, deleted


class EventSink(Protocol):
    """Records a system event (corral.audit.log.AuditLog.event, adapted)."""

    def __call__(self, action: str, resources: list[str], details: dict[str, object]) -> None:
        """Record one event."""


def _pending_notifications(
    policies: Policies, last_modified: float, fired: set[str]
) -> list[tuple[str, float]]:
    out = []
    if (
        policies.expires_at is not None
        and policies.notify_before_seconds is not None
        and "ExpirationNotification" not in fired
    ):
        out.append(("ExpirationNotification", policies.expires_at - policies.notify_before_seconds))
    if policies.no_change_seconds is not None and "NoChangeNotification" not in fired:
        out.append(("NoChangeNotification", last_modified + policies.no_change_seconds))
    return out
