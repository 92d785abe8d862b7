"""Session rows: a port forward's target and connection count, and their migration."""

from __future__ import annotations

import time

from corral.store import NewSession, Store

NODE = "mi-0123456789abcdef0"


async def test_a_port_session_keeps_its_target_and_how_many_connections_it_carried(
    store: Store,
) -> None:
    created = await store.create_session(
        NewSession(NODE, "port", "user:ann", target_host="db.internal", target_port=5432)
    )
    assert (created.kind, created.target_host, created.target_port) == ("port", "db.internal", 5432)
    assert (created.recording_key, created.connections, created.status) == (None, 0, "Pending")
    ended = await store.end_session(
        created.id, "Terminated", "closed", None, 10, 20, time.time(), connections=3
    )
    assert ended is not None
    assert (ended.bytes_in, ended.bytes_out, ended.connections) == (10, 20, 3)
    shell = await store.create_session(
        NewSession(NODE, "shell", "user:ann", recording_key="recordings/{session_id}.cast")
    )
    assert shell.recording_key == f"recordings/{shell.id}.cast"
    assert (shell.target_host, shell.target_port) == (None, None)


async def test_the_session_target_migration_goes_down_and_up(store: Store) -> None:
    from alembic import command

    from corral.store.engine import _alembic_config

    shell = await store.create_session(NewSession(NODE, "shell", "user:ann"))
    async with store.engine.connect() as conn:
        await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0005"))
        await conn.commit()
        assert (await conn.exec_driver_sql("SELECT count(*) FROM sessions")).scalar() == 1
        await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "head"))
        await conn.commit()
    again = await store.get_session(shell.id)
    assert (again.connections, again.target_host) == (0, None)
