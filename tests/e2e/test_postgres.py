"""The same server on PostgreSQL: migrations on start, a real fan-out, state kept on restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url
from tests.e2e.harness import Fleet

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A server on a fresh PostgreSQL database, dropped afterwards."""
    name = asyncio.run(create_postgres_database())
    fleet = Fleet(tmp_path, database_url=postgres_url(name))
    try:
        fleet.start_server()
        yield fleet
    except BaseException:
        print(fleet.logs())  # noqa: T201
        raise
    finally:
        fleet.stop()
        asyncio.run(drop_postgres_database(name))


def test_fan_out_on_postgresql_survives_a_restart(pg_fleet: Fleet) -> None:
    agents = pg_fleet.add_agents(2, tags=["env=pg"])
    first = pg_fleet.server.cli(
        "run", "Corral-RunShellScript", "--targets", "tag:env=pg", "--param", "commands=echo pg",
        "-o", "json",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert [i["stdout"] for i in first.json()["invocations"]] == ["pg\n", "pg\n"]

    pg_fleet.server.stop()
    pg_fleet.server.start()  # migrations are already applied; they must be a no-op
    pg_fleet.wait_online([a.node_id for a in agents])
    shown = pg_fleet.server.cli_json("commands", "show", first.json()["command_id"])
    assert shown["status"] == "Success"
    second = pg_fleet.server.cli(
        "run",
        "Corral-RunShellScript",
        "--targets",
        "all",
        "--param",
        "commands=exit 4",
        "-o",
        "json",
    )
    assert second.returncode == 1
    assert {i["response_code"] for i in second.json()["invocations"]} == {4}
