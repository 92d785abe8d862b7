"""Group commits: many status/output changes become one transaction.

Invocation and command changes are merged per row. A caller that must not proceed
before its change is durable (a result before its ack) awaits `commit()`, which
flushes at once; other changes (sent, accepted, output heads) wait at most
`batch_seconds` so they ride along in the next commit. Node `last_seen` updates
(heartbeats) are flushed at most every `seen_flush_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from corral.store import CommandChange, InvocationChange, Store

logger = logging.getLogger(__name__)


class ChangeWriter:
    """Coalesces changes and writes them to the store in group commits."""

    def __init__(
        self,
        store: Store,
        seen_flush_seconds: float,
        batch_seconds: float = 0.05,
        retry_seconds: float = 1.0,
    ) -> None:
        self._store = store
        self._batch_seconds = batch_seconds
        self._urgent = asyncio.Event()
        self._seen_flush_seconds = seen_flush_seconds
        self._retry_seconds = retry_seconds
        self._invocations: dict[tuple[str, str], InvocationChange] = {}
        self._commands: dict[str, CommandChange] = {}
        self._seen: dict[str, float] = {}
        self._last_seen_flush = 0.0
        self._wake = asyncio.Event()
        self._batch: asyncio.Future[None] = self._new_batch()
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _new_batch() -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Nobody may be waiting on a batch; its error must not be reported as unretrieved.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    def start(self) -> None:
        """Start the background flush loop."""
        self._task = asyncio.create_task(self._run(), name="corral-change-writer")

    def invocation(self, change: InvocationChange) -> None:
        """Queue a change of one invocation."""
        key = (change.command_id, change.node_id)
        pending = self._invocations.get(key)
        if pending is None:
            self._invocations[key] = change
        else:
            pending.merge(change)
        self._wake.set()

    def command(self, change: CommandChange) -> None:
        """Queue a change of one command."""
        pending = self._commands.get(change.command_id)
        if pending is None:
            self._commands[change.command_id] = change
        else:
            for name, value in change.values().items():
                setattr(pending, name, value)
        self._wake.set()

    def node_seen(self, node_id: str, when: float) -> None:
        """Record that a node was heard from (flushed lazily)."""
        self._seen[node_id] = when
        self._wake.set()

    async def commit(self) -> None:
        """Wait until everything queued so far is durable (raises if the write failed)."""
        if not self._invocations and not self._commands:
            return
        self._urgent.set()
        self._wake.set()
        await asyncio.shield(self._batch)

    async def _run(self) -> None:
        while True:
            timeout = None
            if self._seen and not (self._invocations or self._commands):
                timeout = max(0.0, self._last_seen_flush + self._seen_flush_seconds - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if (self._invocations or self._commands) and not self._urgent.is_set():
                # Nobody waits for these yet: let more changes join the same commit.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self._batch_seconds)
            self._urgent.clear()
            if not await self._flush_once(force_seen=False):
                await asyncio.sleep(self._retry_seconds)

    async def _flush_once(self, force_seen: bool) -> bool:
        invocations, self._invocations = self._invocations, {}
        commands, self._commands = self._commands, {}
        seen: dict[str, float] = {}
        if self._seen and (
            force_seen or time.time() - self._last_seen_flush >= self._seen_flush_seconds
        ):
            seen, self._seen = self._seen, {}
            self._last_seen_flush = time.time()
        if not invocations and not commands and not seen:
            return True
        batch, self._batch = self._batch, self._new_batch()
        try:
            await self._store.apply_changes(list(invocations.values()), list(commands.values()))
            await self._store.touch_nodes(seen)
        except Exception as error:
            logger.warning(
                "group commit failed changes=%d error=%s", len(invocations), type(error).__name__
            )
            # Keep the changes (older first, newer queued ones win) and retry later.
            for key, change in invocations.items():
                newer = self._invocations.get(key)
                if newer is not None:
                    change.merge(newer)
                self._invocations[key] = change
            for cid, cmd_change in commands.items():
                self._commands.setdefault(cid, cmd_change)
            for node_id, when in seen.items():
                self._seen.setdefault(node_id, when)
            batch.set_exception(error)
            return False
        batch.set_result(None)
        return True

    async def close(self) -> None:
        """Flush what is queued and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._flush_once(force_seen=True)
        except Exception:
            logger.exception("final flush failed")
        if not self._batch.done():
            self._batch.cancel()
