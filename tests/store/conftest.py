"""A migrated store on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.store import Store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A freshly migrated store."""
    opened = await Store.open(database_url)
    try:
        yield opened
    finally:
        await opened.close()
