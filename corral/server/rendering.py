"""Rendering a command's document once per platform type, not once per node."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from corral.documents import DEFAULT_TIMEOUT_SECONDS, parse_document, render_command
from corral.protocol import Step
from corral.store import CommandRecord, Store


@dataclass(frozen=True, slots=True)
class Rendered:
    """The steps a platform runs, the timeout override and the overall execution timeout."""

    steps: tuple[Step, ...]
    timeout_override: int | None
    execution_timeout: float


class RenderCache:
    """Renders (command, platform type) once and remembers it while the command runs."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[tuple[str, str], Rendered] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def render(self, command: CommandRecord, platform_type: str) -> Rendered:
        """The rendered steps of `command` for `platform_type`."""
        key = (command.id, platform_type)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(command.id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            record = await self._store.get_document(
                command.document_name, version=command.document_version
            )
            doc = parse_document(record.content, record.format)
            rendered = render_command(
                doc, command.parameters, platform_type, command.timeout_seconds
            )
            self._cache[key] = result = _rendered(rendered.steps, command.timeout_seconds)
            return result

    def forget(self, command_id: str) -> None:
        """Drop a finished command's renderings."""
        for key in [k for k in self._cache if k[0] == command_id]:
            del self._cache[key]
        self._locks.pop(command_id, None)


def _rendered(steps: list[Step], override: int | None) -> Rendered:
    if override is not None:
        total = float(override)
    else:
        total = float(sum(s.timeout_seconds or DEFAULT_TIMEOUT_SECONDS for s in steps))
    return Rendered(tuple(steps), override, total)
