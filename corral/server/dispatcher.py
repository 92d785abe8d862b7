"""The dispatcher: rate-controlled fan-out of commands to nodes.

Rules:
* All state is in the database; the in-memory index below is rebuilt from it on start
  (`load()`), so a restarted server resumes unfinished commands.
* Pending invocations are sent in order while fewer than MaxConcurrency are in flight
  (InProgress, Delayed, Cancelling). The invocation of a node that is not connected stays
  Pending and is parked (it takes no concurrency slot); when the node connects it goes back
  to the front of the queue (until the delivery timeout).
* When the error count exceeds MaxErrors, invocations not yet sent end Cancelled/Terminated.
* Every status change goes through `corral.protocol.transition`; the writer group-commits.
* Work is triggered by events (`wake()`); a tick of `dispatch_tick_seconds` checks deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from corral.audit.log import AuditLog
from corral.bus import NodeBus
from corral.errors import ConflictError, CorralError, NotFoundError
from corral.protocol import Cancel, Invoke, Result, Status, command_status, counts_as_error
from corral.protocol.invocation import STATUS_OF, Detail, is_final, transition
from corral.server.config import ServerConfig
from corral.server.ratecontrol import concurrency_limit, error_limit, errors_exceeded
from corral.server.rendering import RenderCache
from corral.server.writer import ChangeWriter
from corral.store import CommandChange, CommandRecord, InvocationChange, InvocationRecord, Store

logger = logging.getLogger(__name__)

_IN_FLIGHT = frozenset({Status.IN_PROGRESS, Status.DELAYED, Status.CANCELLING})
DEFAULT_EXECUTION_TIMEOUT = 3600


@dataclass(slots=True)
class InvocationState:
    """What the dispatcher tracks about one unfinished (or just finished) invocation."""

    command_id: str
    node_id: str
    status: Status
    detail: Detail
    requested_at: float
    sent_at: float | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_head: bytearray = field(default_factory=bytearray)
    stderr_head: bytearray = field(default_factory=bytearray)
    execution_timeout: float = DEFAULT_EXECUTION_TIMEOUT


@dataclass(slots=True)
class CommandState:
    """An active command: its invocations, queue and rate-control counters."""

    record: CommandRecord
    invocations: dict[str, InvocationState]
    queue: deque[str]
    concurrency: int
    max_errors: int
    errors: int = 0
    in_flight: int = 0
    parked: set[str] = field(default_factory=set)
    # How many invocations are in each status (command_status only needs which occur).
    status_counts: Counter[Status] = field(default_factory=Counter)
    cancelling: bool = False
    status: Status = Status.PENDING


class Dispatcher:
    """Owns the life of every unfinished invocation in this server."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        bus: NodeBus,
        writer: ChangeWriter,
        renderer: RenderCache,
        audit: AuditLog | None = None,
    ) -> None:
        self._config = config
        self._audit = audit
        self._store = store
        self._bus = bus
        self._writer = writer
        self._renderer = renderer
        self._commands: dict[str, CommandState] = {}
        # node_id -> command ids with an invocation for that node that is not final.
        self._by_node: dict[str, set[str]] = {}
        self._platforms: dict[str, str | None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deadlines_checked_at = 0.0

    # --- life cycle --------------------------------------------------------

    async def load(self) -> None:
        """Rebuild the in-memory index of unfinished work from the database."""
        for node in await self._store.list_nodes():
            self._platforms[node.id] = node.platform_type
        for record in await self._store.active_commands():
            invocations = await self._store.list_invocations(record.id)
            self._track(record, invocations)
        logger.info("dispatcher loaded active_commands=%d", len(self._commands))

    def start(self) -> None:
        """Start the dispatch loop."""
        self._task = asyncio.create_task(self._run(), name="corral-dispatcher")
        self.wake()

    async def stop(self, deadline: float) -> None:
        """Stop the loop, waiting at most `deadline` seconds for the current pass."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._task, deadline)
        self._task = None

    def wake(self) -> None:
        """Ask the loop to run a pass soon."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.dispatch_tick_seconds)
            self._wake.clear()
            try:
                await self.run_pass(time.time())
            except CorralError as error:
                logger.warning("dispatch pass failed error=%s", error.message)
            except Exception:
                logger.exception("dispatch pass failed")

    # --- tracking ----------------------------------------------------------

    def _track(self, record: CommandRecord, invocations: Sequence[InvocationRecord]) -> None:
        states: dict[str, InvocationState] = {}
        queue: deque[str] = deque()
        state = CommandState(
            record=record,
            invocations=states,
            queue=queue,
            concurrency=concurrency_limit(record.max_concurrency, record.target_count),
            max_errors=error_limit(record.max_errors, record.target_count),
            cancelling=record.cancelling,
            status=Status(record.status),
        )
        for inv in sorted(invocations, key=lambda i: i.seq):
            status = Status(inv.status)
            states[inv.node_id] = InvocationState(
                command_id=record.id,
                node_id=inv.node_id,
                status=status,
                detail=Detail(inv.status_details),
                requested_at=inv.requested_at,
                sent_at=inv.sent_at,
                stdout_bytes=inv.stdout_bytes,
                stderr_bytes=inv.stderr_bytes,
            )
            state.status_counts[status] += 1
            if counts_as_error(inv.status_details):
                state.errors += 1
            if status == Status.PENDING:
                queue.append(inv.node_id)
            if status in _IN_FLIGHT:
                state.in_flight += 1
            if not is_final(status):
                self._by_node.setdefault(inv.node_id, set()).add(record.id)
        self._commands[record.id] = state

    def add_command(
        self,
        record: CommandRecord,
        invocations: Sequence[InvocationRecord],
        platforms: dict[str, str | None],
    ) -> None:
        """Start dispatching a command the API just stored (final invocations are kept as is)."""
        self._platforms.update(platforms)
        self._track(record, invocations)
        logger.info("command accepted command_id=%s targets=%d", record.id, len(invocations))
        self.wake()

    def invocation(self, node_id: str, command_id: str) -> InvocationState | None:
        """The tracked state of a node's invocation, None if not tracked here."""
        state = self._commands.get(command_id)
        return None if state is None else state.invocations.get(node_id)

    def command_state(self, command_id: str) -> CommandState | None:
        """The tracked state of an active command."""
        return self._commands.get(command_id)

    # --- status changes ----------------------------------------------------

    def _set(
        self,
        state: CommandState,
        inv: InvocationState,
        detail: Detail,
        now: float,
        change: InvocationChange | None = None,
        write: bool = True,
    ) -> bool:
        try:
            status, detail = transition(inv.status, detail)
        except ConflictError:
            return False
        was_in_flight = inv.status in _IN_FLIGHT
        state.status_counts[inv.status] -= 1
        state.status_counts[status] += 1
        inv.status, inv.detail = status, detail
        if was_in_flight and status not in _IN_FLIGHT:
            state.in_flight -= 1
            self.wake()  # a concurrency slot is free
        elif not was_in_flight and status in _IN_FLIGHT:
            state.in_flight += 1
        if change is None:
            change = InvocationChange(inv.command_id, inv.node_id)
        change.status, change.status_details = str(status), str(detail)
        if is_final(status):
            if counts_as_error(detail):
                state.errors += 1
            commands = self._by_node.get(inv.node_id)
            if commands is not None:
                commands.discard(inv.command_id)
                if not commands:
                    del self._by_node[inv.node_id]
            if change.ended_at is None:
                change.ended_at = now
        if write:
            self._writer.invocation(change)
        self._refresh_command(state, now)
        return True

    def _refresh_command(self, state: CommandState, now: float) -> None:
        statuses = [s for s, n in state.status_counts.items() if n > 0]
        status = command_status(statuses, state.cancelling)
        if status == state.status and not is_final(status):
            return
        state.status = status
        change = CommandChange(state.record.id, status=str(status), status_details=str(status))
        if is_final(status):
            change.completed_at = now
            self._commands.pop(state.record.id, None)
            self._renderer.forget(state.record.id)
            logger.info("command finished command_id=%s status=%s", state.record.id, status)
        self._writer.command(change)
        self.wake()

    # --- the dispatch pass -------------------------------------------------

    async def run_pass(self, now: float) -> None:
        """Send what rate control allows and enforce deadlines."""
        check_deadlines = now - self._deadlines_checked_at >= self._config.dispatch_tick_seconds
        if check_deadlines:
            self._deadlines_checked_at = now
        for state in list(self._commands.values()):
            if check_deadlines:
                self._check_deadlines(state, now)
            if state.record.id in self._commands:
                await self._pump(state, now)

    def _check_deadlines(self, state: CommandState, now: float) -> None:
        delivery_deadline = state.record.requested_at + state.record.delivery_timeout_seconds
        for inv in list(state.invocations.values()):
            if inv.status in (Status.PENDING, Status.DELAYED) and now >= delivery_deadline:
                self._unqueue(state, inv.node_id)
                self._set(state, inv, Detail.DELIVERY_TIMED_OUT, now)
            elif (
                inv.status in (Status.IN_PROGRESS, Status.CANCELLING)
                and inv.sent_at is not None
                and now
                >= inv.sent_at + inv.execution_timeout + self._config.execution_grace_seconds
            ):
                logger.warning(
                    "no result within execution timeout command_id=%s node_id=%s",
                    inv.command_id,
                    inv.node_id,
                )
                self._set(state, inv, Detail.EXECUTION_TIMED_OUT, now)

    @staticmethod
    def _unqueue(state: CommandState, node_id: str) -> None:
        state.parked.discard(node_id)
        with contextlib.suppress(ValueError):
            state.queue.remove(node_id)

    async def _pump(self, state: CommandState, now: float) -> None:
        if errors_exceeded(state.errors, state.max_errors):
            unsent = [*state.queue, *sorted(state.parked)]
            state.queue.clear()
            state.parked.clear()
            for node_id in unsent:
                self._set(state, state.invocations[node_id], Detail.TERMINATED, now)
            return
        while state.queue and state.in_flight < state.concurrency and not state.cancelling:
            inv = state.invocations[state.queue.popleft()]
            await self._send(state, inv, now)
            if state.record.id not in self._commands or errors_exceeded(
                state.errors, state.max_errors
            ):
                break

    async def _send(self, state: CommandState, inv: InvocationState, now: float) -> None:
        if inv.node_id not in self._platforms:
            self._set(state, inv, Detail.UNDELIVERABLE, now)
            return
        platform = self._platforms.get(inv.node_id) or "Linux"
        try:
            rendered = await self._renderer.render(state.record, platform)
        except CorralError as error:
            # e.g. a referenced SecureString version was deleted since the command was sent
            message = f"the command could not be prepared for this node: {error.message}"
            change = InvocationChange(inv.command_id, inv.node_id, message=message[:500])
            self._set(state, inv, Detail.FAILED, now, change)
            return
        if not rendered.steps:
            change = InvocationChange(inv.command_id, inv.node_id, message="no step applies")
            self._set(state, inv, Detail.INVALID_PLATFORM, now, change)
            return
        inv.execution_timeout = rendered.execution_timeout
        invoke = Invoke(
            command_id=inv.command_id,
            steps=list(rendered.steps),
            timeout_seconds=rendered.timeout_override,
            mask=list(rendered.mask),
        )
        if self._bus.is_connected(inv.node_id) and await self._bus.publish(inv.node_id, invoke):
            if self._audit is not None:
                self._audit.event(
                    "command:Dispatch",
                    [f"command:{inv.command_id}", f"node:{inv.node_id}"],
                    details={
                        "document": state.record.document_name,
                        "requested_by": state.record.requested_by,
                    },
                )
            inv.sent_at = now
            change = InvocationChange(inv.command_id, inv.node_id, sent_at=now)
            self._set(state, inv, Detail.IN_PROGRESS, now, change)
        else:
            # Not connected: wait, Pending, for the node to connect.
            state.parked.add(inv.node_id)

    # --- events from the gateway and the API -------------------------------

    async def node_connected(self, node_id: str, platform_type: str | None) -> None:
        """Re-send Invoke (or Cancel) for the node's sent, unfinished invocations."""
        self._platforms[node_id] = platform_type
        now = time.time()
        for command_id in sorted(self._by_node.get(node_id, ())):
            state = self._commands.get(command_id)
            if state is None:
                continue
            inv = state.invocations[node_id]
            if node_id in state.parked:
                state.parked.discard(node_id)
                state.queue.appendleft(node_id)
            elif inv.status in (Status.IN_PROGRESS, Status.DELAYED):
                try:
                    rendered = await self._renderer.render(state.record, platform_type or "Linux")
                except CorralError as error:
                    logger.warning(
                        "re-send failed command_id=%s node_id=%s error=%s",
                        command_id,
                        node_id,
                        error.message,
                    )
                    continue
                if not rendered.steps:
                    continue
                invoke = Invoke(
                    command_id,
                    list(rendered.steps),
                    rendered.timeout_override,
                    mask=list(rendered.mask),
                )
                if await self._bus.publish(node_id, invoke) and inv.status == Status.DELAYED:
                    inv.sent_at = now
                    change = InvocationChange(command_id, node_id, sent_at=now)
                    self._set(state, inv, Detail.IN_PROGRESS, now, change)
            elif inv.status == Status.CANCELLING:
                await self._bus.publish(node_id, Cancel(command_id))
        self.wake()

    def node_deregistered(self, node_id: str) -> None:
        """The store failed the node's unfinished invocations; mirror that here."""
        self._platforms.pop(node_id, None)
        now = time.time()
        for command_id in list(self._by_node.get(node_id, ())):
            state = self._commands.get(command_id)
            if state is None:
                continue
            inv = state.invocations[node_id]
            self._unqueue(state, node_id)
            self._set(state, inv, Detail.UNDELIVERABLE, now)
        self.wake()

    def accepted(self, node_id: str, command_id: str, when: float) -> bool:
        """The agent journaled the invocation; False when it is not the node's."""
        state = self._commands.get(command_id)
        inv = None if state is None else state.invocations.get(node_id)
        if state is None or inv is None:
            return False
        if inv.status == Status.DELAYED:
            self._set(state, inv, Detail.IN_PROGRESS, when)
        self._writer.invocation(InvocationChange(command_id, node_id, started_at=when))
        return True

    def output_stored(
        self, inv: InvocationState, stream: str, offset: int, data: bytes, size: int
    ) -> None:
        """Mirror a stored output chunk: sizes and the inline head."""
        limit = (
            self._config.stdout_inline_chars
            if stream == "stdout"
            else self._config.stderr_inline_chars
        )
        head = inv.stdout_head if stream == "stdout" else inv.stderr_head
        max_bytes = 4 * limit
        if len(head) < max_bytes and offset <= len(head) < offset + len(data):
            head.extend(data[len(head) - offset : max_bytes - offset])
        change = InvocationChange(inv.command_id, inv.node_id)
        text = head.decode("utf-8", "replace")[:limit]
        if stream == "stdout":
            inv.stdout_bytes = size
            change.stdout_bytes, change.stdout_head = size, text
        else:
            inv.stderr_bytes = size
            change.stderr_bytes, change.stderr_head = size, text
        self._writer.invocation(change)

    def finish(self, node_id: str, result: Result, heads: tuple[str, str] | None) -> bool:
        """Record a final result (queued for the next group commit); False if refused."""
        state = self._commands.get(result.command_id)
        inv = None if state is None else state.invocations.get(node_id)
        if state is None or inv is None:
            return False
        try:
            detail = Detail(result.status_details)
        except ValueError:
            detail = Detail.FAILED
        if not is_final(STATUS_OF[detail]):
            return False
        change = InvocationChange(
            result.command_id,
            node_id,
            response_code=result.response_code,
            stdout_bytes=result.stdout_bytes,
            stderr_bytes=result.stderr_bytes,
            started_at=result.started_at,
            ended_at=result.ended_at,
            steps=[
                {"name": s.name, "status": s.status, "response_code": s.response_code}
                for s in result.steps
            ],
            message=result.message[:1000],
        )
        if heads is not None:
            change.stdout_head, change.stderr_head = heads
        return self._set(state, inv, detail, time.time(), change)

    async def cancel(self, command_id: str, node_id: str | None) -> None:
        """Cancel a command (or one node's invocation of it)."""
        state = self._commands.get(command_id)
        if state is None:
            return
        now = time.time()
        if node_id is None:
            state.cancelling = True
            self._writer.command(CommandChange(command_id, cancelling=True))
        if node_id is not None and node_id not in state.invocations:
            raise NotFoundError(f"command {command_id} has no invocation on node {node_id}")
        targets = [state.invocations[node_id]] if node_id else list(state.invocations.values())
        for inv in targets:
            if inv.status == Status.PENDING:
                self._unqueue(state, inv.node_id)
                self._set(state, inv, Detail.CANCELLED, now)
            elif inv.status == Status.DELAYED:
                self._set(state, inv, Detail.CANCELLED, now)
            elif inv.status == Status.IN_PROGRESS:
                self._set(state, inv, Detail.CANCELLING, now)
                await self._bus.publish(inv.node_id, Cancel(command_id))
        if command_id in self._commands:
            self._refresh_command(state, now)
        logger.info("cancel requested command_id=%s node_id=%s", command_id, node_id)
