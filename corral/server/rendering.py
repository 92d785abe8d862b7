"""Rendering a command's document once per platform type, not once per node."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from corral.documents import DEFAULT_TIMEOUT_SECONDS, parse_document, render_command
from corral.errors import UnavailableError
from corral.protocol import Step
from corral.server.references import Opener, resolver, secure_values
from corral.store import CommandRecord, Store


@dataclass(frozen=True, slots=True)
class Rendered:
    """The steps a platform runs, the timeout override and the overall execution timeout."""

    steps: tuple[Step, ...]
    timeout_override: int | None
    execution_timeout: float
    # Secret values the node must mask in the output (only in a one-off rendering).
    mask: tuple[str, ...] = ()


class RenderCache:
    """Renders (command, platform type) once and remembers it while the command runs.

    A command with `{{ssm-secure:...}}` references is rendered afresh for every
    delivery and never cached, so decrypted secrets live only as long as one send.
    """

    def __init__(self, store: Store, opener: Opener | None = None) -> None:
        self._store = store
        self._opener = opener
        self._cache: dict[tuple[str, str], Rendered] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def render(self, command: CommandRecord, platform_type: str) -> Rendered:
        """The rendered steps of `command` for `platform_type` (secrets resolved, if any)."""
        if command.secure_references:
            return await self._render_with_secrets(command, platform_type)
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

    async def _render_with_secrets(self, command: CommandRecord, platform_type: str) -> Rendered:
        if self._opener is None:
            raise UnavailableError("Parameter Store is not available to resolve secure references")
        values = await secure_values(command.secure_references, self._opener)
        record = await self._store.get_document(
            command.document_name, version=command.document_version
        )
        doc = parse_document(record.content, record.format)
        rendered = render_command(
            doc,
            command.parameters,
            platform_type,
            command.timeout_seconds,
            reference_resolver=resolver(values),
        )
        base = _rendered(rendered.steps, command.timeout_seconds)
        return Rendered(
            base.steps,
            base.timeout_override,
            base.execution_timeout,
            tuple(sorted(set(values.values()))),
        )

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
