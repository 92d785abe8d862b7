"""Shared fixtures: a database URL for each supported backend (SQLite and PostgreSQL).

PostgreSQL tests create a uniquely named database on 127.0.0.1:5432 and drop it
afterwards. When PostgreSQL is unreachable they skip, except under CI=true, where
they fail.
"""

from __future__ import annotations

import getpass
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

PG_HOST = os.environ.get("CORRAL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("CORRAL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("CORRAL_TEST_PG_USER", getpass.getuser())
PG_ADMIN_DB = os.environ.get("CORRAL_TEST_PG_DB", "test")


async def _admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_ADMIN_DB, timeout=5
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        message = f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


async def create_postgres_database() -> str:
    """Create a fresh `corral_test_<random>` database; returns its name."""
    name = "corral_test_" + secrets.token_hex(6)
    conn = await _admin_connection()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_postgres_database(name: str) -> None:
    """Drop a database created by `create_postgres_database`."""
    conn = await _admin_connection()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def postgres_url(name: str) -> str:
    """The libpq-style URL of a test database (the store maps it to asyncpg)."""
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'corral.db'}"
        return
    name = await create_postgres_database()
    try:
        yield postgres_url(name)
    finally:
        await drop_postgres_database(name)
