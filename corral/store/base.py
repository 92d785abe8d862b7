"""What every repository part shares: the engine, sessions and one transaction helper."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from corral.store.engine import translate_errors


def hash_secret(secret: str) -> str:
    """The sha256 hex digest under which a token or activation code is stored."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class RepositoryBase:
    """Holds the engine; `_tx()` is a transaction whose driver errors are translated."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        with translate_errors():
            async with self._sessions() as session, session.begin():
                yield session

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name
