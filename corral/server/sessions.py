"""Interactive sessions: the server's relay between an operator and a node's shell.

    operator (CLI) ──WS /api/v1/sessions/{id}/stream──► server ◄──WS /agent/v1/sessions/{id}── agent
                                                          │
                                                 asciicast recording (blob store)

`POST /api/v1/sessions` checks policy, stores the session (Pending) and tells the
node over its control channel (`SessionStart`). The agent opens a data WebSocket
of its own, outbound like everything it does, authenticated with a signed upgrade
request. Both sides speak the binary frames of `corral.protocol.streams`: the
operator's keystrokes are DATA on stream 0, the shell's output DATA on stream 1,
window sizes RESIZE, and the shell's end EXIT. The server forwards each frame and
records output (and, when configured, input) as asciicast v2 while the session
runs: the recording is appended as it goes, so a crash loses at most what was in
flight. Forwarding awaits each send, so a slow reader slows the shell down
(WebSocket backpressure) and no buffer here grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect

from corral.audit.log import AuditLog
from corral.blobs import BlobStore
from corral.bus import NodeBus
from corral.errors import ConflictError, CorralError, ProtocolError
from corral.protocol import streams
from corral.protocol.messages import SessionStart, SessionTerminate
from corral.server.config import ServerConfig
from corral.sessions.asciicast import AsciicastWriter
from corral.store import SessionRecord, Store

logger = logging.getLogger(__name__)

INPUT, OUTPUT = 0, 1  # stream numbers: operator -> node, node -> operator
RECORDING_KEY = "recordings/{session_id}.cast"


@dataclass(slots=True)
class Live:
    """One session the server is relaying right now."""

    record: SessionRecord
    cols: int
    rows: int
    agent: WebSocket | None = None
    operator: WebSocket | None = None
    agent_ready: asyncio.Event = field(default_factory=asyncio.Event)
    operator_ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    exit_code: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    writer: AsciicastWriter | None = None
    recorded: int = 0  # bytes appended to the recording so far
    recording_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SessionHub:
    """Every live session of this server process."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        blobs: BlobStore,
        bus: NodeBus,
        audit: AuditLog,
    ) -> None:
        self._config = config
        self._store = store
        self._blobs = blobs
        self._bus = bus
        self._audit = audit
        self._live: dict[str, Live] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    def spawn(self, coroutine: Coroutine[object, object, object]) -> None:
        """Run `coroutine` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- life cycle ---------------------------------------------------------

    async def open(
        self,
        node_id: str,
        owner: str,
        os_user: str | None,
        command: str | None,
        cols: int,
        rows: int,
        grant_id: str | None,
    ) -> SessionRecord:
        """Store a Pending session and ask the node's agent to join it."""
        if not self._bus.is_connected(node_id):
            raise ConflictError(f"node {node_id} is not connected; a session needs it online")
        record = await self._store.create_session(
            node_id, "shell", owner, os_user, command, RECORDING_KEY, grant_id
        )
        live = Live(record, cols, rows)
        self._live[record.id] = live
        start = SessionStart(
            session_id=record.id,
            kind="shell",
            user=os_user,
            command=command,
            cols=cols,
            rows=rows,
            idle_timeout_seconds=self._config.session_idle_timeout_seconds,
            max_duration_seconds=self._config.session_max_duration_seconds,
        )
        if not await self._bus.publish(node_id, start):
            self._live.pop(record.id, None)
            await self._store.end_session(
                record.id, "Failed", "node went away", None, 0, 0, time.time()
            )
            raise ConflictError(f"node {node_id} is not connected; a session needs it online")
        asyncio.get_running_loop().call_later(
            self._config.session_connect_timeout_seconds, self._connect_deadline, record.id
        )
        return record

    def _connect_deadline(self, session_id: str) -> None:
        live = self._live.get(session_id)
        if live is not None and not (live.agent_ready.is_set() and live.operator_ready.is_set()):
            self.spawn(
                self.end(session_id, "Failed", "the node or the operator did not connect in time")
            )

    async def end(
        self, session_id: str, status: str, reason: str, exit_code: int | None = None
    ) -> SessionRecord | None:
        """End a session (idempotent): tell both sides, store the outcome, close the recording."""
        live = self._live.pop(session_id, None)
        if live is None:
            return None
        live.ended.set()
        live.end_reason = reason
        code = exit_code if exit_code is not None else live.exit_code
        if live.writer is not None:
            await self._record(live, live.writer.close, time.time())
        for ws in (live.operator, live.agent):
            if ws is not None:
                with contextlib.suppress(Exception):
                    exit_frame = streams.ExitFrame(
                        code if code is not None else -1, streams.safe_reason(reason)
                    )
                    await ws.send_bytes(streams.encode(exit_frame))
                with contextlib.suppress(Exception):
                    await ws.close(1000)
        if live.agent is None:
            with contextlib.suppress(CorralError):
                await self._bus.publish(live.record.node_id, SessionTerminate(session_id, reason))
        record = await self._store.end_session(
            session_id, status, reason, code, live.bytes_in, live.bytes_out, time.time()
        )
        self._audit.event(
            "session:End",
            [f"session:{session_id}", f"node:{live.record.node_id}"],
            principal=live.record.owner,
            details={
                "status": status,
                "reason": reason,
                "exit_code": code,
                "bytes_in": live.bytes_in,
                "bytes_out": live.bytes_out,
                "recording": live.record.recording_key,
            },
        )
        logger.info("session ended session_id=%s status=%s reason=%s", session_id, status, reason)
        return record

    async def terminate(self, session_id: str, by: str) -> SessionRecord:
        """Terminate a session at an operator's or administrator's request."""
        record = await self.end(session_id, "Terminated", f"terminated by {by}")
        if record is None:
            record = await self._store.get_session(session_id)
            if record.active:  # known to the database but not live here (restarted server)
                ended = await self._store.end_session(
                    session_id, "Terminated", f"terminated by {by}", None, 0, 0, time.time()
                )
                record = ended or record
        return record

    async def close_all(self) -> None:
        """At shutdown: end every live session."""
        for session_id in list(self._live):
            await self.end(session_id, "Failed", "the server shut down")

    # --- the two connections --------------------------------------------------

    async def serve_agent(self, websocket: WebSocket, session_id: str, node_id: str) -> None:
        """The node's side: its shell's output comes in, keystrokes go out."""
        live = self._live.get(session_id)
        if live is None or live.record.node_id != node_id or live.agent is not None:
            await websocket.close(1008)
            return
        await websocket.accept()
        live.agent = websocket
        live.agent_ready.set()
        await self._store.session_connected(session_id, time.time())
        if live.writer is None:
            live.writer = AsciicastWriter(
                width=live.cols, height=live.rows, command=live.record.command, start=time.time()
            )
            await self._record(live, lambda _at: live.writer.header() if live.writer else b"", 0.0)
        try:
            await self._pump(live, websocket, from_agent=True)
        finally:
            if not live.ended.is_set():
                await self.end(session_id, "Failed", "the node's session connection was lost")

    async def serve_operator(self, websocket: WebSocket, session_id: str) -> None:
        """The operator's side: keystrokes and window sizes in, the shell's output out."""
        live = self._live.get(session_id)
        if live is None or live.operator is not None:
            await websocket.close(1008)
            return
        await websocket.accept()
        live.operator = websocket
        live.operator_ready.set()
        try:
            await self._pump(live, websocket, from_agent=False)
        finally:
            if not live.ended.is_set():
                await self.end(session_id, "Terminated", "the operator disconnected")

    async def _pump(self, live: Live, websocket: WebSocket, from_agent: bool) -> None:
        """Forward frames from one side to the other until the session ends."""
        peer_ready = live.operator_ready if from_agent else live.agent_ready
        max_payload = self._config.session_max_frame_bytes
        while not live.ended.is_set():
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await self.end(live.record.id, "Failed", "a text frame on a binary session stream")
                return
            try:
                frame = streams.decode(data, max_payload)
            except ProtocolError as error:
                side = "node" if from_agent else "operator"
                logger.warning(
                    "session protocol error session_id=%s side=%s code=%s message=%s",
                    live.record.id,
                    side,
                    error.code,
                    error.message,
                )
                await self.end(live.record.id, "Failed", f"the {side} broke the session protocol")
                return
            if not await self._inspect(live, frame, from_agent):
                return
            await peer_ready.wait()
            peer = live.operator if from_agent else live.agent
            if peer is None or live.ended.is_set():
                return
            try:
                await peer.send_bytes(data)  # awaited: a slow reader slows the writer down
            except Exception:  # the peer went away; its own pump ends the session
                return

    async def _inspect(self, live: Live, frame: streams.Frame, from_agent: bool) -> bool:
        """Count, record and police one frame; False when it ended the session."""
        live.last_activity = time.monotonic()
        now = time.time()
        if isinstance(frame, streams.DataFrame):
            expected = OUTPUT if from_agent else INPUT
            if frame.stream != expected:
                await self.end(live.record.id, "Failed", f"data on stream {frame.stream}")
                return False
            if from_agent:
                live.bytes_out += len(frame.payload)
                if live.writer is not None:
                    await self._record(
                        live, functools.partial(live.writer.output, frame.payload), now
                    )
            else:
                live.bytes_in += len(frame.payload)
                if live.writer is not None and self._config.session_record_input:
                    await self._record(
                        live, functools.partial(live.writer.input, frame.payload), now
                    )
            return True
        if isinstance(frame, streams.ResizeFrame) and not from_agent:
            if live.writer is not None:
                await self._record(
                    live, functools.partial(live.writer.resize, frame.cols, frame.rows), now
                )
            return True
        if isinstance(frame, streams.ExitFrame) and from_agent:
            live.exit_code = frame.code
            await self.end(
                live.record.id,
                "Terminated",
                frame.reason or f"the shell exited with status {frame.code}",
                frame.code,
            )
            return False
        if isinstance(frame, streams.AckFrame):
            return True
        await self.end(live.record.id, "Failed", f"unexpected {type(frame).__name__}")
        return False

    async def _record(self, live: Live, line: Callable[[float], bytes], at: float) -> None:
        """Encode and append one recording event; one at a time, in the order they come.

        Both directions record (output from the node, resizes and input from the
        operator), so the encoding and the append at the recording's current end happen
        under one lock.
        """
        key = live.record.recording_key
        if key is None:
            return
        async with live.recording_lock:
            data = line(at)
            if not data:
                return
            try:
                live.recorded = await self._blobs.append(key, live.recorded, data)
            except CorralError as error:
                logger.error(
                    "recording write failed session_id=%s error=%s", live.record.id, error.message
                )

    def live(self, session_id: str) -> Live | None:
        """The live state of a session on this server, if any."""
        return self._live.get(session_id)


def conflict_if_ended(record: SessionRecord) -> None:
    """ConflictError for a session that is over."""
    if not record.active:
        raise ConflictError(f"session {record.id} is {record.status}")
