"""Engine creation, driver-error translation and locked, programmatic migrations.

Driver errors become corral.errors in exactly one place: `translate_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from corral.errors import ConflictError, UnavailableError

logger = logging.getLogger(__name__)

# Arbitrary constant shared by every replica: the PostgreSQL advisory lock for migrations.
MIGRATION_LOCK_ID = 0x636F7272616C
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Map libpq-style and bare driver URLs to the async drivers Corral uses."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


def sqlite_url(path: Path) -> str:
    """The async SQLAlchemy URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL mode and a busy timeout on every connection."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into corral.errors (the only place that does)."""
    try:
        yield
    except exc.IntegrityError as error:
        raise ConflictError("the record conflicts with an existing one") from error
    except (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError) as error:
        logger.warning("database unavailable error=%s", type(error).__name__)
        raise UnavailableError("the database is unavailable") from error
    except _CONNECTION_ERRORS as error:
        logger.warning("database unreachable error=%s", type(error).__name__)
        raise UnavailableError("the database is unreachable") from error


def _alembic_config(connection: Connection) -> Config:
    cfg = Config(str(Path(__file__).with_name("alembic.ini")))
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.asynccontextmanager
async def _sqlite_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database + ".migrate-lock")
    stack = contextlib.ExitStack()
    await asyncio.to_thread(stack.enter_context, _file_lock(lock_path))
    try:
        yield
    finally:
        stack.close()


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending migration, serialised across replicas by a lock."""
    with translate_errors():
        if engine.url.get_backend_name() == "postgresql":
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
                await conn.commit()
                try:
                    await conn.run_sync(_upgrade)
                    await conn.commit()
                finally:
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID}
                    )
                    await conn.commit()
        else:
            async with _sqlite_lock(engine), engine.connect() as conn:
                await conn.run_sync(_upgrade)
                await conn.commit()
    logger.info("database schema is up to date backend=%s", engine.url.get_backend_name())
