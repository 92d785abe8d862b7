"""Run Command on the agent: journal, workers, deadlines, output streaming, buffered results.

Rules:
* Invoke: a known id is never run again (Accepted is re-sent, and its Result if it has
  one); a new id is journaled durably and its worker started (one thread job), then
  Accepted is sent.
* Output is sent from per-stream byte offsets; attach (a new connection) restarts
  every unacknowledged stream at 0, OutputRewind restarts one stream where asked.
* An invocation whose Invoke has `mask` has its output masked as it is read from disk
  (masking.py): same length, so offsets and byte totals are the raw stream's, and the
  bytes from any offset are the same every time they are sent. Its wrapper and raw
  output (which hold the secrets) are emptied and removed as soon as it is acknowledged.
* A Result is written to disk when the worker ends and sent once all output up to
  its byte totals was sent; it stays on disk until ResultAck, then the invocation's
  directory is removed (its id stays in the journal).
* Deadlines come from start times on disk, so a restarted agent enforces them too.
  A kill records its reason first, then SIGTERMs the process group and SIGKILLs it
  after `kill_grace` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from corral.agent import worker
from corral.agent.journal import Journal
from corral.agent.masking import Masker, Secrets
from corral.agent.options import AgentOptions
from corral.errors import ProtocolError, UnavailableError
from corral.protocol import (
    DEFAULT_OUTPUT_CHUNK_BYTES,
    Accepted,
    Cancel,
    Detail,
    ErrorMessage,
    Invoke,
    Message,
    Output,
    OutputRewind,
    Result,
    ResultAck,
    Status,
    StepResult,
    codec,
)

logger = logging.getLogger(__name__)

Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")
STREAMS = ("stdout", "stderr")
LOST_MESSAGE = (
    "the agent accepted this invocation before but lost its files (crash or power loss); "
    "it was not run again"
)
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Emptied invocation directories kept for reuse (see worker.py); more are removed.
MAX_SPARES = 64


async def offload(func: Callable[..., T], *args: Any) -> T:
    """The one way the agent runs blocking file work (fsync, rmtree) off the event loop."""
    return await asyncio.to_thread(func, *args)


@dataclass(eq=False)
class Invocation:
    """One invocation the agent has accepted and not yet forgotten."""

    command_id: str
    directory: Path
    invoke: Invoke
    record: worker.WorkerRecord | None = None
    pidfd: int | None = None
    exited: bool = False
    result: Result | None = None
    result_sent: bool = False
    kill_reason: str | None = None
    step_index: int = 0
    offsets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    # The Invoke's `mask` values (None when it has none) and each stream's masker.
    secrets: Secrets | None = field(init=False, default=None)
    maskers: dict[str, Masker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.invoke.mask:
            self.secrets = Secrets(self.invoke.mask)


class Runner:
    """Runs invocations for one agent; talks to the server through an attached `send`."""

    def __init__(self, state_dir: Path, options: AgentOptions, bash: str | None = None) -> None:
        self._state_dir = state_dir
        self._inv_root = state_dir / "invocations"
        self._options = options
        self._bash = bash or shutil.which("bash") or "/bin/bash"
        self._boot_id = worker.boot_id()
        self._journal: Journal | None = None
        self._invocations: dict[str, Invocation] = {}
        self._send: Send | None = None
        self._wake = asyncio.Event()
        self._dirty: set[Invocation] = set()
        self._full_check = True
        self._task: asyncio.Task[None] | None = None
        self._timers: dict[asyncio.TimerHandle, int] = {}  # pending SIGKILL -> process group
        # Directories of acknowledged invocations, removed in batches once the agent is idle:
        # deleting files is the costliest file-system work of an invocation and need not
        # delay the next one.
        self._trash: list[Path] = []
        # Emptied directories of acknowledged invocations, reused by the next invocations.
        self._spare_root = state_dir / "spare"
        self._spares: list[Path] = []
        self._janitor: asyncio.Task[None] | None = None
        self.chunk_bytes = DEFAULT_OUTPUT_CHUNK_BYTES

    @property
    def spare_directories(self) -> tuple[Path, ...]:
        """Emptied directories the next invocations will reuse (newest last)."""
        return tuple(self._spares)

    # --- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Load the journal and every unfinished or unacknowledged invocation, start pumping."""
        self._inv_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._spare_root.mkdir(mode=0o700, exist_ok=True)
        self._spares = sorted(self._spare_root.iterdir())
        self._journal = await offload(
            Journal, self._state_dir / "journal", self._options.journal_retention
        )
        for directory in sorted(self._inv_root.iterdir()):
            self._recover(directory)
        self._task = asyncio.create_task(self._pump_loop(), name="corral-agent-runner")
        self._schedule_cleanup()

    async def close(self) -> None:
        """Stop watching workers (they keep running) and stop the pump."""
        self._send = None
        for timer, pid in self._timers.items():
            # A kill in its grace period is finished now rather than abandoned.
            timer.cancel()
            worker.kill_group(pid, signal.SIGKILL)
        self._timers.clear()
        if self._janitor is not None:
            # Left-over directories are found again (acknowledged) on the next start.
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
            self._janitor = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for inv in self._invocations.values():
            self._unwatch(inv)
        if self._journal is not None:
            self._journal.close()

    def attach(self, send: Send) -> None:
        """A connection is up: resend all unacknowledged output and results through `send`."""
        self._send = send
        for inv in self._invocations.values():
            inv.offsets = dict.fromkeys(STREAMS, 0)
            inv.result_sent = False
        self._full_check = True
        self._wake.set()

    def detach(self) -> None:
        """The connection is gone: hold output and results until the next attach."""
        self._send = None

    def invocation(self, command_id: str) -> Invocation | None:
        """The in-memory invocation, if the agent still holds it."""
        return self._invocations.get(command_id)

    @property
    def journal(self) -> Journal:
        """The journal of accepted ids (after `start`)."""
        assert self._journal is not None, "Runner.start() was not awaited"
        return self._journal

    # --- messages from the server -------------------------------------------

    async def handle(self, message: Message) -> None:
        """Act on one message from the server."""
        if isinstance(message, Invoke):
            await self._on_invoke(message)
        elif isinstance(message, Cancel):
            inv = self._invocations.get(message.command_id)
            if inv is not None and inv.result is None:
                logger.info("cancelling command_id=%s", message.command_id)
                self._kill(inv, worker.KILL_CANCEL)
        elif isinstance(message, OutputRewind):
            self._on_rewind(message)
        elif isinstance(message, ResultAck):
            await self._on_ack(message.command_id)
        else:
            logger.debug("runner ignores %s", message.TYPE)

    async def _on_invoke(self, message: Invoke) -> None:
        cid = message.command_id
        if not COMMAND_ID_RE.match(cid):
            await self._emit(ErrorMessage(code="bad_message", message="invalid command_id"))
            return
        if cid in self.journal or cid in self._invocations:
            logger.info("command_id=%s delivered again; not running it twice", cid)
            await self._emit(Accepted(command_id=cid))
            inv = self._invocations.get(cid)
            if inv is not None and inv.result is not None:
                inv.result_sent = False
                self._mark(inv)
            elif inv is None and not self.journal.acked(cid):
                await self._emit(_lost_result(message))
            return
        inv = Invocation(command_id=cid, directory=self._inv_root / cid, invoke=message)
        try:
            # Small writes, one fsync'd journal append and the worker's spawn, off the event
            # loop and in one thread job: a swarm of agents shares one loop, a burst of
            # invocations must not queue behind fsyncs, and each hand-off to a thread costs.
            started = await offload(
                self._prepare_and_spawn, inv, self._spares.pop() if self._spares else None
            )
        except OSError as exc:
            # Not journaled, so never run: a later re-delivery may try again.
            logger.error("command_id=%s: cannot store the invocation: %s", cid, exc.strerror)
            self.journal.forget(cid)
            shutil.rmtree(inv.directory, ignore_errors=True)
            await self._emit(_lost_result(message, f"the agent cannot store it: {exc.strerror}"))
            return
        self._invocations[cid] = inv
        await self._emit(Accepted(command_id=cid))
        if isinstance(started, OSError):
            logger.error("command_id=%s: cannot start worker: %s", cid, started.strerror)
            inv.exited = True
        else:
            inv.record = started
            logger.info(
                "started command_id=%s steps=%d pid=%d", cid, len(message.steps), started.pid
            )
            self._watch(inv, spawned=True)
        self._mark(inv)

    def _mark(self, inv: Invocation) -> None:
        self._dirty.add(inv)
        self._wake.set()

    def _prepare_and_spawn(
        self, inv: Invocation, spare: Path | None
    ) -> worker.WorkerRecord | OSError:
        """Store and journal the invocation (raises OSError), then start its worker.

        Returns the worker, or the error that kept it from starting (the id is journaled
        by then: the invocation ends Failed and is never started again).
        """
        worker.prepare(inv.directory, inv.invoke, spare)
        self.journal.record(inv.command_id)
        try:
            record = worker.spawn(inv.directory, self._bash, self._boot_id)
        except OSError as exc:
            return exc
        try:
            self.journal.record_worker(inv.command_id, record)
        except OSError as exc:
            logger.warning(
                "command_id=%s: cannot journal its worker: %s", inv.command_id, exc.strerror
            )
        return record

    def _on_rewind(self, message: OutputRewind) -> None:
        inv = self._invocations.get(message.command_id)
        if inv is None or message.stream not in STREAMS or message.offset < 0:
            return
        inv.offsets[message.stream] = message.offset
        inv.result_sent = False
        self._mark(inv)

    async def _on_ack(self, command_id: str) -> None:
        inv = self._invocations.get(command_id)
        if inv is None:
            self.journal.record_ack(command_id)
            return
        if inv.result is None:
            return
        self.journal.record_ack(command_id)
        del self._invocations[command_id]
        self._unwatch(inv)
        if inv.secrets is not None:
            # Its secrets are in run.sh and maybe in the raw output: gone now, not once idle.
            await offload(worker.scrub, inv.directory)
        self._trash.append(inv.directory)
        self._schedule_cleanup()
        logger.debug("command_id=%s acknowledged; output forgotten", command_id)

    def _schedule_cleanup(self) -> None:
        if self._trash and (self._janitor is None or self._janitor.done()):
            self._janitor = asyncio.create_task(
                self._clean_when_idle(), name="corral-agent-janitor"
            )

    async def _clean_when_idle(self) -> None:
        while self._trash:
            await asyncio.sleep(self._options.cleanup_delay)
            if any(inv.result is None for inv in self._invocations.values()):
                continue  # something runs: clean up after it
            batch, self._trash = self._trash, []
            room = max(0, MAX_SPARES - len(self._spares))
            spares = await offload(_retire_directories, batch, self._spare_root, room)
            self._spares.extend(spares)
            logger.debug(
                "retired %d acknowledged invocation directories, %d kept for reuse",
                len(batch),
                len(spares),
            )

    # --- workers --------------------------------------------------------------

    def _recover(self, directory: Path) -> None:
        if self.journal.acked(directory.name):
            # Acknowledged before the last stop (maybe before it was scrubbed): only clean up.
            worker.scrub(directory)
            self._trash.append(directory)
            return
        try:
            invoke = worker.read_invoke(directory)
        except (OSError, ProtocolError):
            logger.warning("removing damaged invocation directory %s", directory.name)
            shutil.rmtree(directory, ignore_errors=True)
            return
        inv = Invocation(command_id=invoke.command_id, directory=directory, invoke=invoke)
        self._invocations[inv.command_id] = inv
        try:
            result = codec.decode((directory / "result.json").read_bytes(), [Result], 1 << 30)
        except (OSError, ProtocolError):
            result = None
        if isinstance(result, Result):
            inv.result = result
            return
        inv.record = self.journal.worker(inv.command_id)
        kill = worker.read_kill_reason(directory)
        same_boot = inv.record is not None and inv.record.boot_id == self._boot_id
        if kill is not None and inv.record is not None and same_boot:
            # A kill was under way: finish it even if the wrapper itself already died,
            # since other members of its process group may still run.
            inv.kill_reason = kill[0]
            remaining = max(0.0, kill[1] + self._options.kill_grace - time.time())
            self._schedule_sigkill(inv.record.pid, remaining)
        if inv.record is None or not worker.is_alive(inv.record, self._boot_id, directory):
            if inv.record is not None and same_boot:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(inv.record.pid, os.WNOHANG)  # our own zombie, in one process
            inv.exited = True
            return
        self._watch(inv)
        logger.info("resumed watching command_id=%s pid=%d", inv.command_id, inv.record.pid)

    def _watch(self, inv: Invocation, spawned: bool = False) -> None:
        assert inv.record is not None
        try:
            fd = os.pidfd_open(inv.record.pid)
        except (OSError, AttributeError):
            return  # polled through /proc instead
        # A child we spawned cannot have been replaced (unreaped, its pid stays ours); a
        # worker found after a restart must be checked to be ours before it is watched.
        if not spawned and not worker.is_alive(inv.record, self._boot_id, inv.directory):
            os.close(fd)
            self._on_exit(inv)
            return
        inv.pidfd = fd
        asyncio.get_running_loop().add_reader(fd, self._on_exit, inv)

    def _unwatch(self, inv: Invocation) -> None:
        if inv.pidfd is not None:
            asyncio.get_running_loop().remove_reader(inv.pidfd)
            os.close(inv.pidfd)
            inv.pidfd = None

    def _on_exit(self, inv: Invocation) -> None:
        self._unwatch(inv)
        if inv.record is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(inv.record.pid, os.WNOHANG)
        inv.exited = True
        self._mark(inv)

    def _kill(self, inv: Invocation, reason: str) -> None:
        if inv.record is None or inv.exited:
            return
        if inv.kill_reason is None:
            inv.kill_reason = reason
            worker.write_kill_reason(inv.directory, reason)
        logger.info("killing command_id=%s reason=%s", inv.command_id, reason)
        worker.kill_group(inv.record.pid, signal.SIGTERM)
        self._schedule_sigkill(inv.record.pid, self._options.kill_grace)

    def _schedule_sigkill(self, pid: int, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(handle, None)
            worker.kill_group(pid, signal.SIGKILL)

        handle = loop.call_later(delay, fire)
        self._timers[handle] = pid

    def _deadline(self, inv: Invocation) -> float | None:
        assert inv.record is not None
        if inv.invoke.timeout_seconds:
            return inv.record.started_at + inv.invoke.timeout_seconds
        steps = inv.invoke.steps
        if not any(step.timeout_seconds for step in steps[inv.step_index :]):
            return None
        progress = worker.read_progress(inv.directory)
        while inv.step_index in progress.exit_codes:
            inv.step_index += 1
        if inv.step_index >= len(steps):
            return None
        timeout = steps[inv.step_index].timeout_seconds
        if not timeout:
            return None
        return worker.step_started_at(progress, inv.step_index, inv.record) + timeout

    def _check_running(self, inv: Invocation) -> None:
        assert inv.record is not None
        if inv.pidfd is None and not worker.is_alive(inv.record, self._boot_id, inv.directory):
            self._on_exit(inv)
            return
        if inv.kill_reason is not None:
            return
        deadline = self._deadline(inv)
        if deadline is not None and time.time() >= deadline:
            self._kill(inv, worker.KILL_TIMEOUT)

    def _finish(self, inv: Invocation) -> None:
        directory = inv.directory
        steps = inv.invoke.steps
        progress = worker.read_progress(directory)
        codes = [progress.exit_codes.get(i) for i in range(len(steps))]
        kill = worker.read_kill_reason(directory)
        outcome = worker.decide_outcome(steps, codes, progress.done, kill[0] if kill else None)
        sizes = {s: _size(directory / s) for s in STREAMS}
        ended = progress.done_at
        result = Result(
            command_id=inv.command_id,
            status=outcome.status,
            status_details=outcome.status_details,
            response_code=outcome.response_code,
            stdout_bytes=sizes["stdout"],
            stderr_bytes=sizes["stderr"],
            steps=outcome.steps,
            started_at=inv.record.started_at if inv.record else None,
            ended_at=ended if ended is not None else time.time(),
            message=outcome.message,
        )
        if not progress.done:
            # A finished worker's Result is derived from `progress` again after a restart;
            # a killed or dead one's is stored, with the end time seen now.
            worker.write_result(directory, codec.encode(result).encode("utf-8"))
        inv.result = result
        logger.info(
            "command_id=%s finished status=%s response_code=%s",
            inv.command_id,
            result.status,
            result.response_code,
        )

    # --- pumping ----------------------------------------------------------------

    async def _pump_loop(self) -> None:
        # Events (exit, invoke, rewind) handle one invocation at once; every `output_poll`
        # seconds a full pass tails output and checks deadlines of all running ones.
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        while True:
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            if self._full_check or loop.time() >= next_full:
                self._full_check = False
                next_full = loop.time() + self._options.output_poll
                targets = list(self._invocations.values())
            else:
                targets = [inv for inv in dirty if inv.command_id in self._invocations]
            for inv in targets:
                if inv.result is None:
                    if not inv.exited:
                        self._check_running(inv)
                    if inv.exited:
                        self._finish(inv)
                if self._send is not None and not inv.result_sent:
                    await self._pump(inv)
            if any(inv.result is None for inv in self._invocations.values()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_full - loop.time()))
            else:
                await self._wake.wait()

    async def _pump(self, inv: Invocation) -> None:
        try:
            result = inv.result
            for stream in STREAMS:
                limit = getattr(result, f"{stream}_bytes") if result else None
                await self._send_stream(inv, stream, limit)
            if (
                result is not None
                and not inv.result_sent
                and inv.offsets["stdout"] >= result.stdout_bytes
                and inv.offsets["stderr"] >= result.stderr_bytes
            ):
                await self._emit(result)
                inv.result_sent = True
        except UnavailableError:
            self.detach()

    async def _send_stream(self, inv: Invocation, stream: str, limit: int | None) -> None:
        if inv.secrets is not None:
            await self._send_masked(inv, stream, limit, inv.secrets)
            return
        path = inv.directory / stream
        end = _size(path) if limit is None else limit
        offset = inv.offsets[stream]
        if offset >= end:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            while offset < end and self._send is not None:
                data = os.pread(fd, min(self.chunk_bytes, end - offset), offset)
                if not data:
                    break
                await self._emit(Output(inv.command_id, stream, offset, data))
                offset += len(data)
                inv.offsets[stream] = offset
        finally:
            os.close(fd)

    async def _send_masked(
        self, inv: Invocation, stream: str, limit: int | None, secrets: Secrets
    ) -> None:
        """Like the plain path, but through the stream's masker, which holds back the bytes
        a later write could still turn into part of a secret until it can tell (or the
        stream ended: `limit` is known).

        The masker is reused while it continues exactly where the server is; after an
        attach or a rewind it is rebuilt from the raw bytes on disk and yields the very
        bytes sent before.
        """
        path = inv.directory / stream
        end = _size(path) if limit is None else limit
        offset = inv.offsets[stream]
        if offset >= end:
            return
        masker = inv.maskers.get(stream)
        if masker is None or masker.released != offset or masker.position > end:
            masker = inv.maskers[stream] = Masker(secrets, start=offset)
        if masker.position >= end and limit is None:
            return  # nothing new; what is held back waits for more output or the end
        fd = os.open(path, os.O_RDONLY)
        try:
            while self._send is not None and not masker.finished:
                raw = b""
                if masker.position < end:
                    size = min(max(1, self.chunk_bytes - masker.pending), end - masker.position)
                    raw = os.pread(fd, size, masker.position)
                    if not raw:
                        break
                final = limit is not None and masker.position + len(raw) >= end
                if not raw and not final:
                    break  # all read; the rest is held back until more output or the end
                start = masker.released
                data = masker.feed(raw)
                if final:
                    data += masker.finish()
                for at in range(0, len(data), self.chunk_bytes):
                    piece = data[at : at + self.chunk_bytes]
                    await self._emit(Output(inv.command_id, stream, start + at, piece))
                inv.offsets[stream] = masker.released
        finally:
            os.close(fd)

    async def _emit(self, message: Message) -> None:
        send = self._send
        if send is not None:
            await send(message)


def _lost_result(invoke: Invoke, message: str = "") -> Result:
    return Result(
        command_id=invoke.command_id,
        status=str(Status.FAILED),
        status_details=str(Detail.FAILED),
        response_code=None,
        stdout_bytes=0,
        stderr_bytes=0,
        steps=[StepResult(step.name, worker.SKIPPED, None) for step in invoke.steps],
        message=message or LOST_MESSAGE,
    )


def _retire_directories(directories: list[Path], spare_root: Path, room: int) -> list[Path]:
    """Empty up to `room` directories into `spare_root` for reuse, remove the rest."""
    spares: list[Path] = []
    for directory in directories:
        if len(spares) < room and worker.recycle(directory, spare_root / directory.name):
            spares.append(spare_root / directory.name)
        elif len(spares) >= room:
            shutil.rmtree(directory, ignore_errors=True)
    return spares


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
