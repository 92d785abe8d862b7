"""Users, tokens, roles, access requests and the audit tables, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from corral.audit.chain import GENESIS, chain
from corral.errors import AuthError, ConflictError, NotFoundError, ValidationError
from corral.identity import BUILTIN_POLICIES, NODE_ROLE
from corral.store import AuditEntry, AuditQuery, Store

KEY = b"k" * 32


@pytest.fixture
async def roles(store: Store) -> Store:
    await store.sync_builtin_roles(BUILTIN_POLICIES, editable=[NODE_ROLE])
    return store


async def test_tokens_are_stored_hashed_and_stop_on_expiry_revocation_or_disable(
    roles: Store,
) -> None:
    store = roles
    alice = await store.create_user("alice", ["operator"])
    token, record = await store.create_token("ci", alice.id)
    assert token.startswith("crl_")
    found, user = await store.authenticate_token(token)
    assert (found.id, user.name, user.roles) == (record.id, "alice", ["operator"])
    async with store.engine.connect() as conn:
        stored = (await conn.exec_driver_sql("SELECT token_hash, prefix FROM api_tokens")).all()
    assert token not in repr(stored)
    assert stored[0][1] == token[:8]
    expiring, _ = await store.create_token("short", alice.id, expires_at=time.time() - 1)
    for bad in (expiring, "crl_nope", "not-a-token", "crl_" + "x" * 300):
        with pytest.raises(AuthError, match="unknown, revoked or expired"):
            await store.authenticate_token(bad)
    await store.update_user("alice", disabled=True)
    with pytest.raises(AuthError, match="user alice is disabled"):
        await store.authenticate_token(token)
    await store.update_user("alice", disabled=False)
    revoked = await store.revoke_token(record.id)
    assert revoked.revoked
    assert revoked.revoked_at is not None
    with pytest.raises(AuthError):
        await store.authenticate_token(token)
    assert [t.id for t in await store.list_tokens(alice.id)] == [record.id, _.id]


async def test_access_keys_are_sealed_tokens_that_stop_like_bearer_tokens(roles: Store) -> None:
    store = roles
    erin = await store.create_user("erin", ["viewer"])
    record = await store.create_access_key("boto3", erin.id, None, "CRLK" + "A" * 16, "sealed-1")
    assert (record.access_key_id, record.prefix, record.user_id) == (
        "CRLK" + "A" * 16,
        "CRLKAAAA",
        erin.id,
    )
    found, user, sealed = await store.access_key("CRLK" + "A" * 16)
    assert (found.id, user.name, sealed) == (record.id, "erin", "sealed-1")
    assert found.last_used_at is None  # looking up is not using: the signature comes first
    await store.mark_token_used(found, 1000.0)
    assert (await store.get_token(record.id)).last_used_at == 1000.0
    await store.mark_token_used(await store.get_token(record.id), 1030.0)  # within a minute
    assert (await store.get_token(record.id)).last_used_at == 1000.0
    assert [t.access_key_id for t in await store.list_tokens(erin.id)] == ["CRLK" + "A" * 16]
    # No bearer secret exists for it, and a second key is independent (NULL hashes coexist).
    async with store.engine.connect() as conn:
        hashes = (await conn.exec_driver_sql("SELECT token_hash FROM api_tokens")).all()
    assert hashes == [(None,)]
    other = await store.create_access_key("tf", erin.id, time.time() - 1, "CRLK" + "B" * 16, "s2")
    with pytest.raises(ConflictError):
        await store.create_access_key("dup", erin.id, None, "CRLK" + "A" * 16, "s3")
    for unusable in ("CRLK" + "B" * 16, "CRLK" + "C" * 16):  # expired, unknown
        with pytest.raises(AuthError, match="unknown, revoked or expired"):
            await store.access_key(unusable)
    await store.update_user("erin", disabled=True)
    with pytest.raises(AuthError, match="user erin is disabled"):
        await store.access_key("CRLK" + "A" * 16)
    await store.update_user("erin", disabled=False)
    await store.revoke_token(record.id)
    with pytest.raises(AuthError):
        await store.access_key("CRLK" + "A" * 16)
    with pytest.raises(NotFoundError):
        await store.create_access_key("x", "no-such-user", None, "CRLK" + "D" * 16, "s")
    fresh = await store.create_access_key("x", erin.id, None, "CRLK" + "E" * 16, "s4")
    await store.delete_user("erin")  # revokes every token, access keys included
    assert (await store.get_token(fresh.id)).revoked
    assert (await store.get_token(other.id)).expires_at is not None


async def test_the_access_key_migration_goes_down_and_up(roles: Store) -> None:
    from alembic import command

    from corral.store.engine import _alembic_config

    store = roles
    frank = await store.create_user("frank", ["viewer"])
    token, _ = await store.create_token("bearer", frank.id)
    await store.create_access_key("aws", frank.id, None, "CRLK" + "F" * 16, "sealed")
    async with store.engine.connect() as conn:
        await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0003"))
        await conn.commit()
        # AWS credentials cannot exist without their columns; bearer tokens stay.
        rows = (await conn.exec_driver_sql("SELECT token_hash FROM api_tokens")).all()
        assert len(rows) == 1
        assert rows[0][0] is not None
        await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "head"))
        await conn.commit()
    assert (await store.authenticate_token(token))[1].name == "frank"
    await store.create_access_key("aws", frank.id, None, "CRLK" + "G" * 16, "sealed")


async def test_users_need_known_roles_and_unique_names(roles: Store) -> None:
    store = roles
    with pytest.raises(ValidationError, match="no such role: wizard"):
        await store.create_user("bob", ["viewer", "wizard"])
    await store.create_user("bob", ["viewer", "viewer"])
    assert (await store.get_user("bob")).roles == ["viewer"]
    with pytest.raises(ConflictError, match="already exists"):
        await store.create_user("bob", ["viewer"])
    token, _ = await store.create_token("t", (await store.get_user("bob")).id)
    await store.delete_user("bob")
    with pytest.raises(AuthError):
        await store.authenticate_token(token)
    with pytest.raises(NotFoundError):
        await store.get_user("bob")


async def test_builtin_roles_are_restored_and_custom_roles_guarded(roles: Store) -> None:
    store = roles
    names = [r.name for r in await store.list_roles()]
    assert names == sorted(BUILTIN_POLICIES)
    await store.update_role("admin", "tampered", {"statements": []})
    await store.update_role(NODE_ROLE, "custom", {"statements": []})
    await store.sync_builtin_roles(BUILTIN_POLICIES, editable=[NODE_ROLE])
    assert (await store.get_role("admin")).policy == BUILTIN_POLICIES["admin"]
    assert (await store.get_role(NODE_ROLE)).description == "custom"  # editable: kept
    await store.create_role("dev-ops", "", {"statements": []})
    with pytest.raises(ConflictError):
        await store.create_role("dev-ops", "", {"statements": []})
    await store.create_user("carol", ["dev-ops"])
    with pytest.raises(ConflictError, match="held by: carol"):
        await store.delete_role("dev-ops")
    with pytest.raises(ConflictError, match="built in"):
        await store.delete_role("viewer")


async def test_access_requests_become_grants_that_expire(roles: Store) -> None:
    store = roles
    now = time.time()
    request = await store.create_access_request("dave", "operator", ["tag:env=dev"], 60, "fix", now)
    assert request.status == "pending"
    assert not request.active(now)
    assert await store.active_grants("dave", now) == []
    approved = await store.decide_access_request(request.id, True, "user:admin", "ok", now)
    assert approved.expires_at == pytest.approx(now + 60)
    assert [g.id for g in await store.active_grants("dave", now + 30)] == [request.id]
    assert await store.active_grants("dave", now + 61) == []
    assert approved.effective_status(now + 61) == "expired"
    with pytest.raises(ConflictError, match="already approved"):
        await store.decide_access_request(request.id, False, "user:admin", "", now)
    revoked = await store.revoke_access_request(request.id, "user:admin", now + 1)
    assert revoked.status == "revoked"
    assert await store.active_grants("dave", now + 2) == []
    with pytest.raises(ValidationError, match="no such role"):
        await store.create_access_request("dave", "nope", ["all"], 60, "x")


def entry(n: int, principal: str = "user:alice", grant: str | None = None) -> AuditEntry:
    return AuditEntry(
        time_us=1_000_000 * n,
        request_id=f"r{n}",
        principal=principal,
        action="node:List",
        outcome="allowed" if n % 2 else "denied",
        resources=["node:*"],
        grant_id=grant,
        details={"n": n, "unicode": "é"},
    )


async def test_audit_appends_chain_after_the_stored_head_and_filter(store: Store) -> None:
    def chainer(last_seq: int, last_hash: str, entries: object) -> list:  # type: ignore[type-arg]
        return chain(KEY, last_hash, last_seq + 1, entries)  # type: ignore[arg-type]

    assert await store.audit_head() == (0, GENESIS)
    first = await store.append_audit([entry(1), entry(2)], chainer)
    second = await store.append_audit([entry(3, "node:mi-1", "ar-1")], chainer)
    assert [r.seq for r in first + second] == [1, 2, 3]
    assert await store.audit_head() == (3, second[0].hash)
    rows = [r async for r in store.iter_audit(batch=2)]
    assert rows == first + second  # what was stored reads back identically (hashes hold)
    assert [r.seq for r in await store.list_audit(AuditQuery(principal="alice"), 10)] == [2, 1]
    assert [r.seq for r in await store.list_audit(AuditQuery(outcome="denied"), 10)] == [2]
    assert [r.seq for r in await store.list_audit(AuditQuery(grant_id="ar-1"), 10)] == [3]
    assert [r.seq for r in await store.list_audit(AuditQuery(since_us=2_000_000), 10)] == [3, 2]
    page = await store.list_audit(AuditQuery(before_seq=3), 1)
    assert [r.seq for r in page] == [2]
