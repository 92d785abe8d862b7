"""Parameter tables on SQLite and PostgreSQL: versions, concurrency, labels, pruning."""

from __future__ import annotations

import asyncio
import time

import pytest

from corral.params.names import parent_of
from corral.store import ParameterWrite, Store
from corral.store.params import (
    ParameterAlreadyExists,
    ParameterFilter,
    ParameterNotFound,
    ParameterVersionLimit,
    ParameterVersionNotFound,
)


def write(name: str, value: str = "v", by: str = "user:t") -> ParameterWrite:
    return ParameterWrite(
        name=name, parent=parent_of(name), type="String", key_id=None, tier="Standard",
        data_type="text",
        description="", allowed_pattern=None, value=value, tags={"env": "dev"}, policies=[],
        expires_at=None, notify_at=None, by=by, at=time.time(),
    )  # fmt: skip


async def test_versions_and_overwrite(store: Store) -> None:
    assert await store.put_parameter(write("/a/x"), overwrite=False) == 1
    with pytest.raises(ParameterAlreadyExists):
        await store.put_parameter(write("/a/x"), overwrite=False)
    assert await store.put_parameter(write("/a/x", "v2"), overwrite=True) == 2
    meta, latest = await store.get_parameter_version("/a/x")
    assert (meta.version, latest.value) == (2, "v2")
    _, first = await store.get_parameter_version("/a/x", version=1)
    assert first.value == "v"
    with pytest.raises(ParameterVersionNotFound):
        await store.get_parameter_version("/a/x", version=7)
    with pytest.raises(ParameterNotFound):
        await store.get_parameter_version("/a/none")
    # overwrite on a new name creates it
    assert await store.put_parameter(write("/a/new"), overwrite=True) == 1


async def test_concurrent_writers_never_lose_a_version(store: Store) -> None:
    await store.put_parameter(write("/c/x", "0"), overwrite=False)
    results = await asyncio.gather(
        *(store.put_parameter(write("/c/x", str(i)), overwrite=True) for i in range(1, 21))
    )
    assert sorted(results) == list(range(2, 22))
    history = await store.parameter_history("/c/x", 0, 100)
    assert [h.version for h in history] == list(range(1, 22))
    assert sorted(h.value for h in history) == sorted(str(i) for i in range(21))


async def test_labels_move_and_are_limited(store: Store) -> None:
    for i in range(3):
        await store.put_parameter(write("/l/x", str(i)), overwrite=True)
    assert await store.label_parameter("/l/x", 1, ["prod", "blue"], 10) == (1, [])
    _, found = await store.get_parameter_version("/l/x", label="prod")
    assert found.version == 1
    await store.label_parameter("/l/x", None, ["prod"], 10)  # latest: moves
    _, found = await store.get_parameter_version("/l/x", label="prod")
    assert found.version == 3
    _, one = await store.get_parameter_version("/l/x", version=1)
    assert one.labels == ["blue"]
    with pytest.raises(Exception, match="at most 10"):
        await store.label_parameter("/l/x", 2, [f"l{i}" for i in range(11)], 10)
    assert await store.unlabel_parameter("/l/x", 1, ["blue", "nope"]) == (["blue"], ["nope"])


async def test_at_most_max_versions_are_kept_unless_the_oldest_is_labelled(store: Store) -> None:
    for i in range(5):
        await store.put_parameter(write("/p/x", str(i)), overwrite=True, max_versions=3)
    assert [h.version for h in await store.parameter_history("/p/x", 0, 10)] == [3, 4, 5]
    await store.label_parameter("/p/x", 3, ["keep"], 10)
    with pytest.raises(ParameterVersionLimit, match="version 3"):
        await store.put_parameter(write("/p/x", "6"), overwrite=True, max_versions=3)
    assert (await store.get_parameter("/p/x")).version == 5  # nothing half-written


async def test_listing_by_path_and_filters(store: Store) -> None:
    for name in ("/app/a", "/app/b", "/app/dev/c", "/app/dev/deep/d", "/other/e", "plain"):
        await store.put_parameter(write(name), overwrite=False)
    one_level = await store.list_parameters(ParameterFilter(path="/app"), None, 50)
    assert [p.name for p in one_level] == ["/app/a", "/app/b"]
    deep = await store.list_parameters(ParameterFilter(path="/app", recursive=True), None, 50)
    assert [p.name for p in deep] == ["/app/a", "/app/b", "/app/dev/c", "/app/dev/deep/d"]
    root = await store.list_parameters(ParameterFilter(path="/"), None, 50)
    assert [p.name for p in root] == ["plain"]
    page = await store.list_parameters(ParameterFilter(path="/app", recursive=True), "/app/b", 1)
    assert [p.name for p in page] == ["/app/dev/c"]
    tagged = await store.list_parameters(ParameterFilter(tags=(("env", ("dev",)),)), None, 50)
    assert len(tagged) == 6
    assert await store.delete_parameters(["/app/a", "/nope"]) == (["/app/a"], ["/nope"])
