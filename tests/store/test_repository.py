"""The Store repository on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest

from corral.errors import ConflictError, NotFoundError, UnavailableError, ValidationError
from corral.protocol import NodeInfo
from corral.store import (
    CommandChange,
    DocumentMeta,
    InvocationChange,
    NewCommand,
    Store,
    hash_secret,
    normalize_url,
)

META = DocumentMeta("2.2", "Command", "demo", {"message": {"type": "String"}})
INFO = NodeInfo("web-1", "Linux", "debian", "12", "6.1.0", "x86_64", ["10.0.0.5"], "0.1.0")


async def test_activation_code_is_only_stored_as_a_hash(store: Store) -> None:
    code, activation = await store.create_activation("lab", {"env": "dev"}, 2, time.time() + 60)
    async with store.engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT code_hash FROM activations")).all()
    assert rows == [(hash_secret(code),)]
    assert activation.registrations_count == 0


@pytest.mark.parametrize(
    ("limit", "expires_in", "code_ok", "message"),
    [
        (1, 60, False, "activation id or code is invalid"),
        (1, -1, True, "activation has expired"),
    ],
)
async def test_registration_refusals(
    store: Store, limit: int, expires_in: float, code_ok: bool, message: str
) -> None:
    code, activation = await store.create_activation("", {}, limit, time.time() + expires_in)
    with pytest.raises(ValidationError, match=message):
        await store.register_node(activation.id, code if code_ok else "wrong", b"k" * 32, {})


async def test_registration_limit_holds_under_concurrency(store: Store) -> None:
    code, activation = await store.create_activation("", {"env": "dev"}, 3, time.time() + 60)
    results = await asyncio.gather(
        *(store.register_node(activation.id, code, b"k" * 32, {"role": "web"}) for _ in range(6)),
        return_exceptions=True,
    )
    nodes = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(nodes) == 3
    assert all(isinstance(e, ValidationError) and "limit" in e.message for e in errors)
    for node in nodes:
        assert re.fullmatch(r"mi-[0-9a-f]{17}", node.id)
        assert node.tags == {"env": "dev", "role": "web"}
    [listed] = await store.list_activations()
    assert listed.registrations_count == 3


async def test_deleted_activation_cannot_register(store: Store) -> None:
    code, activation = await store.create_activation("", {}, 5, time.time() + 60)
    await store.delete_activation(activation.id)
    assert await store.list_activations() == []
    with pytest.raises(ValidationError):
        await store.register_node(activation.id, code, b"k" * 32, {})
    with pytest.raises(NotFoundError):
        await store.delete_activation(activation.id)


async def _node(store: Store, tags: dict[str, str] | None = None) -> str:
    code, activation = await store.create_activation("", {}, 1, time.time() + 60)
    return (await store.register_node(activation.id, code, b"k" * 32, tags or {})).id


async def test_node_lifecycle(store: Store) -> None:
    node_id = await _node(store, {"env": "dev", "old": "x"})
    node = await store.get_node(node_id)
    assert node.platform_type is None
    assert node.ping_status == "ConnectionLost"
    await store.node_connected(node_id, INFO, 100.0)
    node = await store.get_node(node_id)
    assert (node.hostname, node.platform_name, node.ping_status) == ("web-1", "debian", "Online")
    await store.touch_nodes({node_id: 200.0})
    assert (await store.get_node(node_id)).last_seen == 200.0
    assert await store.mark_silent_nodes_lost(150.0) == []
    assert await store.mark_silent_nodes_lost(250.0) == [node_id]
    assert (await store.get_node(node_id)).ping_status == "ConnectionLost"
    tagged = await store.update_node_tags(node_id, {"role": "db"}, ["old"])
    assert tagged.tags == {"env": "dev", "role": "db"}
    assert await store.node_key(node_id) == b"k" * 32
    await store.deregister_node(node_id)
    assert await store.node_key(node_id) is None
    assert await store.list_nodes() == []
    with pytest.raises(NotFoundError):
        await store.get_node(node_id)


async def test_document_versions_and_default(store: Store) -> None:
    doc = await store.create_document("MyDoc", "{}", "json", META)
    assert (doc.version, doc.default_version, doc.latest_version, doc.owner) == (1, 1, 1, "Self")
    with pytest.raises(ConflictError):
        await store.create_document("MyDoc", "{}", "json", META)
    with pytest.raises(ConflictError, match="identical"):
        await store.add_document_version("MyDoc", "{}", "json", META)
    v2 = await store.add_document_version("MyDoc", "{ }", "json", META)
    assert (v2.version, v2.default_version, v2.latest_version) == (2, 1, 2)
    assert (await store.get_document("MyDoc")).version == 1
    assert (await store.get_document("MyDoc", latest=True)).version == 2
    assert (await store.set_default_version("MyDoc", 2)).default_version == 2
    [listed] = await store.list_documents()
    assert (listed.version, listed.meta) == (2, META)
    with pytest.raises(NotFoundError):
        await store.get_document("MyDoc", version=3)
    await store.delete_document("MyDoc")
    with pytest.raises(NotFoundError):
        await store.get_document("MyDoc")


def _command(requested_at: float) -> NewCommand:
    return NewCommand(
        id=str(uuid.uuid4()),
        document_name="Corral-RunShellScript",
        document_version=1,
        comment="",
        parameters={"commands": ["echo hi"]},
        targets=["all"],
        max_concurrency="50",
        max_errors="0",
        timeout_seconds=None,
        delivery_timeout_seconds=600,
        requested_at=requested_at,
    )


async def test_command_with_invocations_and_group_commit(store: Store) -> None:
    nodes = [await _node(store) for _ in range(3)]
    command = await store.create_command(_command(time.time()), nodes)
    invocations = await store.list_invocations(command.id)
    assert [i.node_id for i in invocations] == nodes
    assert {i.status for i in invocations} == {"Pending"}
    await store.apply_changes(
        [
            InvocationChange(
                command.id, nodes[0], status="InProgress", status_details="InProgress"
            ),
            InvocationChange(
                command.id,
                nodes[1],
                status="Success",
                status_details="Success",
                response_code=0,
                stdout_head="hi\n",
                stdout_bytes=3,
                steps=[{"name": "s", "status": "Success", "response_code": 0}],
            ),
        ],
        [CommandChange(command.id, status="InProgress", status_details="InProgress")],
    )
    one = await store.get_invocation(command.id, nodes[1])
    assert (one.status, one.response_code, one.stdout_head, one.stdout_bytes) == (
        "Success",
        0,
        "hi\n",
        3,
    )
    assert (await store.get_command(command.id)).status == "InProgress"
    counts = await store.invocation_counts([command.id])
    assert counts[command.id] == {
        ("InProgress", "InProgress"): 1,
        ("Success", "Success"): 1,
        ("Pending", "Pending"): 1,
    }
    assert [c.id for c in await store.active_commands()] == [command.id]
    # Deregistering a node fails its unfinished invocation.
    assert await store.deregister_node(nodes[0]) == [command.id]
    failed = await store.get_invocation(command.id, nodes[0])
    assert (failed.status, failed.status_details) == ("Failed", "Undeliverable")


async def test_commands_list_newest_first_and_by_status(store: Store) -> None:
    node = await _node(store)
    first = await store.create_command(_command(1.0), [node])
    second = await store.create_command(_command(2.0), [node])
    await store.apply_changes([], [CommandChange(first.id, status="Success", completed_at=3.0)])
    assert [c.id for c in await store.list_commands()] == [second.id, first.id]
    assert [c.id for c in await store.list_commands(status="Success")] == [first.id]
    assert [c.id for c in await store.active_commands()] == [second.id]
    with pytest.raises(NotFoundError):
        await store.get_command(str(uuid.uuid4()))


async def test_duplicate_command_is_a_conflict(store: Store) -> None:
    node = await _node(store)
    new = _command(1.0)
    await store.create_command(new, [node])
    with pytest.raises(ConflictError):
        await store.create_command(new, [node])


async def test_settings(store: Store) -> None:
    assert await store.get_setting("k") is None
    assert await store.add_setting("k", "1") is True
    assert await store.add_setting("k", "2") is False
    await store.set_setting("k", "3")
    assert await store.get_setting("k") == "3"


async def test_migrations_are_idempotent_and_concurrent(database_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(database_url) for _ in range(3)))
    try:
        assert await stores[0].count_rows("nodes") == 0
    finally:
        for opened in stores:
            await opened.close()


@pytest.mark.parametrize(
    "url",
    ["postgresql://nobody@127.0.0.1:1/none", "sqlite:////nonexistent-dir/sub/corral.db"],
)
async def test_unreachable_database_is_unavailable(url: str) -> None:
    with pytest.raises(UnavailableError):
        await Store.open(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:5432/d", "postgresql+asyncpg://u@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected
