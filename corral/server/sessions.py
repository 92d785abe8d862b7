"""Sessions: the server's relay between an operator and a node's shell or port forward.

    operator (CLI) ──WS /api/v1/sessions/{id}/stream──► server ◄──WS /agent/v1/sessions/{id}── agent
                                                          │
                                                 asciicast recording (blob store)

`POST /api/v1/sessions` checks policy, stores the session (Pending) and tells the
node over its control channel (`SessionStart`). The agent opens a data WebSocket
of its own, outbound like everything it does, authenticated with a signed upgrade
request. Both sides speak the binary frames of `corral.protocol.streams`: the
operator's keystrokes are DATA on stream 0, the shell's output DATA on stream 1,
window sizes RESIZE, acknowledgements ACK, and the shell's end EXIT. The server
forwards each frame and records output (and, when configured, input) as asciicast
v2 while the session runs: the recording is appended as it goes, so a crash loses at
most what was in flight. Forwarding awaits each send, and the endpoints hold at
most a window of unacknowledged bytes, so a slow reader slows the shell down and no
buffer here grows without bound.

A port session (`kind` "port": `session forward`, `session proxy`) carries TCP
connections as streams (`corral.sessions.tunnel`). Nothing of their content is
recorded: a `ConnectionLedger` checks each frame (OPEN only to the session's target,
stream ids only growing) and keeps each connection's metadata, written to the audit
log as one `session:Connection` event when the connection closes, and as totals
(bytes each way, connections) into the session record and its `session:End` event.
The agent's first frame in a port session must be an empty RESUME, saying it serves
port sessions: until then the operator's frames wait, and anything else ends the
session (an agent too old to know port sessions would have started a shell).
Port sessions have no idle timeout (an idle SSH connection is not abandoned); the
maximum duration, when configured, applies to them too.

Resuming (`session_resume_grace_seconds`, default 60 s). The endpoints (CLI and
agent) hold the stream state (`corral.sessions.link`); the relay only replaces
connections and keeps the order:

* A side's connection that breaks (no close frame) is waited for for the grace
  period; one closed on purpose (1000/1001) ends the session at once, and so does a
  break before both sides were ever connected.
* A second connection from a side replaces the first (which is closed). Its first
  frame must be RESUME; the relay hands it to the other side as RESUME_REQ, and from
  the moment the replacement arrived it drops the other side's DATA, ACK and EOF
  until that side's next RESUME (its answer): they were sent before it knew what the
  reconnected side has, and its resend covers them.
* While a side is away, what the other side sends is dropped, not held: it is sent
  again after the RESUME exchange, and the connection keeps being read (pings
  answered, no stall). Only before both sides were ever connected is it held.
* Frames to a side are sent under that side's lock, and a pump whose connection was
  replaced forwards nothing more, so nothing stale slips in after a RESUME.
* Bytes are counted, recorded and shown to observers once, by their stream offset,
  however often a resume sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.websockets import WebSocket, WebSocketDisconnect

from corral.audit.log import AuditLog
from corral.blobs import BlobStore
from corral.bus import NodeBus
from corral.errors import ConflictError, CorralError, ProtocolError
from corral.protocol import streams
from corral.protocol.messages import SessionStart, SessionTerminate
from corral.server.config import ServerConfig
from corral.sessions.asciicast import AsciicastWriter
from corral.sessions.connections import Connection, ConnectionLedger, Verdict
from corral.store import NewSession, SessionRecord, Store

logger = logging.getLogger(__name__)

INPUT, OUTPUT = 0, 1  # stream numbers: operator -> node, node -> operator
RECORDING_KEY = "recordings/{session_id}.cast"
OBSERVER_CATCH_UP_BYTES = 16 * 1024  # what a joining observer sees first: the latest output
OBSERVER_QUEUE_FRAMES = 256  # an observer further behind than this is dropped
SHELL, PORT = "shell", "port"


class _Next(enum.Enum):
    """What the relay does with a frame once inspected."""

    FORWARD = "forward"
    SKIP = "skip"  # handled here; nothing to forward
    STOP = "stop"  # the session ended


@dataclass(slots=True)
class Live:
    """One session the server is relaying right now."""

    record: SessionRecord
    cols: int
    rows: int
    agent: WebSocket | None = None
    operator: WebSocket | None = None
    # Set while that side is connected (and, for a port session's agent, has said it
    # serves port sessions).
    agent_ready: asyncio.Event = field(default_factory=asyncio.Event)
    operator_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Connections each side has made so far: a second one resumes the session.
    agent_connections: int = 0
    operator_connections: int = 0
    joined: bool = False  # both sides were ready once
    # Frames to each side are sent under its lock, so a replaced connection's pump
    # can never slip a stale frame in after the new connection's RESUME.
    agent_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    operator_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # After the other side reconnected, this side's DATA, ACK and EOF are dropped until
    # its RESUME: they were sent before it knew what the reconnected side has.
    drop_from_agent: bool = False
    drop_from_operator: bool = False
    # Highest byte offset seen on each stream: resent bytes are counted, recorded and
    # shown to observers once.
    input_seen: int = 0
    output_seen: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # end() has run to the end
    end_reason: str = ""
    exit_code: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    writer: AsciicastWriter | None = None
    recorded: int = 0  # bytes appended to the recording so far
    recording_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ledger: ConnectionLedger | None = None  # port sessions only
    # Read-only observers: principal label -> bounded queue of frames to send them.
    observers: dict[int, tuple[str, asyncio.Queue[bytes]]] = field(default_factory=dict)
    recent: bytearray = field(default_factory=bytearray)  # the latest output, for joiners


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

    async def open(self, new: NewSession, cols: int = 80, rows: int = 24) -> SessionRecord:
        """Store a Pending session and ask the node's agent to join it."""
        if not self._bus.is_connected(new.node_id):
            raise ConflictError(f"node {new.node_id} is not connected; a session needs it online")
        port = new.kind == PORT
        record = await self._store.create_session(
            dataclasses.replace(new, recording_key=None if port else RECORDING_KEY)
        )
        live = Live(record, cols, rows)
        if port:
            assert new.target_host is not None
            assert new.target_port is not None
            live.ledger = ConnectionLedger(new.target_host, new.target_port)
        self._live[record.id] = live
        start = SessionStart(
            session_id=record.id,
            kind=new.kind,
            user=new.os_user,
            command=new.command,
            cols=cols,
            rows=rows,
            # A forward carrying an idle SSH connection is in use: no idle timeout.
            idle_timeout_seconds=None if port else self._config.session_idle_timeout_seconds,
            max_duration_seconds=self._config.session_max_duration_seconds,
            host=new.target_host,
            port=new.target_port,
            resume_grace_seconds=self._config.session_resume_grace_seconds,
            profile=None if port else self._config.session_shell_profile,
        )
        if not await self._bus.publish(new.node_id, start):
            self._live.pop(record.id, None)
            await self._store.end_session(
                record.id, "Failed", "node went away", None, 0, 0, time.time()
            )
            raise ConflictError(f"node {new.node_id} is not connected; a session needs it online")
        asyncio.get_running_loop().call_later(
            self._config.session_connect_timeout_seconds, self._connect_deadline, record.id
        )
        return record

    def _connect_deadline(self, session_id: str) -> None:
        live = self._live.get(session_id)
        if live is not None and not live.joined:
            self.spawn(
                self.end(session_id, "Failed", "the node or the operator did not connect in time")
            )

    async def end(
        self, session_id: str, status: str, reason: str, exit_code: int | None = None
    ) -> SessionRecord | None:
        """End a session (idempotent): close the recording, store the outcome, tell both sides."""
        live = self._live.pop(session_id, None)
        if live is None:
            return None
        try:
            return await self._end(live, session_id, status, reason, exit_code)
        finally:
            live.finished.set()

    async def _end(
        self, live: Live, session_id: str, status: str, reason: str, exit_code: int | None
    ) -> SessionRecord | None:
        live.ended.set()
        live.end_reason = reason
        code = exit_code if exit_code is not None else live.exit_code
        if live.writer is not None:
            await self._record(live, live.writer.close, time.time())
        now = time.time()
        details: dict[str, object] = {
            "kind": live.record.kind,
            "status": status,
            "reason": reason,
            "exit_code": code,
            "bytes_in": live.bytes_in,
            "bytes_out": live.bytes_out,
            "duration_seconds": round(now - (live.record.started_at or now), 3),
            "recording": live.record.recording_key,
        }
        connections = 0
        if live.ledger is not None:
            for connection in live.ledger.close_all(now, "the session ended"):
                self._audit_connection(live, connection)
            connections = live.ledger.connections
            details["target"] = f"{live.ledger.host}:{live.ledger.port}"
            details["connections"] = connections
        record = await self._store.end_session(
            session_id,
            status,
            reason,
            code,
            live.bytes_in,
            live.bytes_out,
            now,
            connections=connections,
        )
        # Told only once the outcome is stored: whoever sees the EXIT and asks for the
        # session's record finds it ended.
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
        self._audit.event(
            "session:End",
            [f"session:{session_id}", f"node:{live.record.node_id}"],
            principal=live.record.owner,
            details=details,
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
        if live is None or live.record.node_id != node_id or live.ended.is_set():
            await websocket.close(1008)
            return
        await websocket.accept()
        resuming = self._attach(live, websocket, from_agent=True)
        if live.ledger is None or resuming:  # a port session's agent: once it said so
            self._ready(live, from_agent=True)
        if not resuming:
            live.record = await self._store.session_connected(session_id, time.time())
            if live.writer is None and live.record.recording_key is not None:
                live.writer = AsciicastWriter(
                    width=live.cols,
                    height=live.rows,
                    command=live.record.command,
                    start=time.time(),
                )
                await self._record(
                    live, lambda _at: live.writer.header() if live.writer else b"", 0.0
                )
        else:
            self._audit_resume(live, websocket, from_agent=True)
        code = await self._pump(live, websocket, from_agent=True, resuming=resuming)
        await self._detach(live, websocket, from_agent=True, code=code)

    async def serve_operator(self, websocket: WebSocket, session_id: str) -> None:
        """The operator's side: keystrokes and window sizes in, the shell's output out."""
        live = self._live.get(session_id)
        if live is None or live.ended.is_set():
            await websocket.close(1008)
            return
        await websocket.accept()
        resuming = self._attach(live, websocket, from_agent=False)
        if resuming:
            self._audit_resume(live, websocket, from_agent=False)
        self._ready(live, from_agent=False)
        code = await self._pump(live, websocket, from_agent=False, resuming=resuming)
        await self._detach(live, websocket, from_agent=False, code=code)

    def _attach(self, live: Live, websocket: WebSocket, from_agent: bool) -> bool:
        """Make `websocket` this side's connection; True when it replaces an earlier one."""
        if from_agent:
            old, live.agent = live.agent, websocket
            live.agent_connections += 1
            resuming = live.agent_connections > 1
            if resuming:
                live.drop_from_operator = True
        else:
            old, live.operator = live.operator, websocket
            live.operator_connections += 1
            resuming = live.operator_connections > 1
            if resuming:
                live.drop_from_agent = True
        if old is not None:  # half-open, or the peer gave up on it: its pump stops
            self.spawn(_close_quietly(old))
        return resuming

    def _audit_resume(self, live: Live, websocket: WebSocket, from_agent: bool) -> None:
        """A side came back on a new connection: logged, and a `session:Resume` event
        with where it came from (a resume from an unexpected address is worth a look)."""
        side = "node" if from_agent else "operator"
        client = websocket.client.host if websocket.client else None
        logger.info("session resumed by the %s session_id=%s", side, live.record.id)
        self._audit.event(
            "session:Resume",
            [f"session:{live.record.id}", f"node:{live.record.node_id}"],
            principal=f"node:{live.record.node_id}" if from_agent else live.record.owner,
            details={"side": side},
            source=client,
        )

    def _ready(self, live: Live, from_agent: bool) -> None:
        (live.agent_ready if from_agent else live.operator_ready).set()
        if live.agent_ready.is_set() and live.operator_ready.is_set():
            live.joined = True

    async def _detach(
        self, live: Live, websocket: WebSocket, from_agent: bool, code: int | None
    ) -> None:
        """A side's connection ended: end the session, or wait for that side to come back."""
        current = live.agent if from_agent else live.operator
        if current is websocket and not live.ended.is_set():
            side = "node" if from_agent else "operator"
            grace = self._config.session_resume_grace_seconds
            if from_agent:
                live.agent = None
                live.agent_ready.clear()
            else:
                live.operator = None
                live.operator_ready.clear()
            status = "Failed" if from_agent else "Terminated"
            if code in (1000, 1001):  # closed on purpose: no coming back
                reason = f"the {side} closed the session connection"
                await self.end(live.record.id, status, reason)
            elif grace <= 0 or not live.joined:
                await self.end(live.record.id, status, f"the {side}'s session connection was lost")
            else:
                logger.info(
                    "session connection lost session_id=%s side=%s grace=%ss",
                    live.record.id,
                    side,
                    grace,
                )
                count = live.agent_connections if from_agent else live.operator_connections
                asyncio.get_running_loop().call_later(
                    grace, self._grace_over, live, from_agent, count, status
                )
        if live.ended.is_set():
            await self._until_finished(live)

    def node_connected(self, node_id: str, running: list[str] | None) -> None:
        """An agent (re)connected saying which sessions it runs: a session waiting for
        this node's side that is not among them died with an earlier agent process,
        so it ends now instead of at the end of its grace period."""
        if running is None:  # an agent that does not say
            return
        for session_id, live in list(self._live.items()):
            if (
                live.record.node_id == node_id
                and live.joined
                and live.agent is None
                and not live.ended.is_set()
                and session_id not in running
            ):
                reason = "the node's agent restarted; the session ended with it"
                self.spawn(self.end(session_id, "Failed", reason))

    def _grace_over(self, live: Live, from_agent: bool, count: int, status: str) -> None:
        """The grace period of a lost connection is over: end unless that side is back."""
        if live.ended.is_set():
            return
        connections = live.agent_connections if from_agent else live.operator_connections
        current = live.agent if from_agent else live.operator
        if current is None and connections == count:
            side = "node" if from_agent else "operator"
            grace = self._config.session_resume_grace_seconds
            reason = f"the {side}'s connection was lost and not restored within {grace:g} s"
            self.spawn(self.end(live.record.id, status, reason))

    @staticmethod
    async def _until_finished(live: Live) -> None:
        """Keep a side's connection open until `end()` has stored the outcome and sent EXIT."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(live.finished.wait(), 10)

    async def _pump(
        self, live: Live, websocket: WebSocket, from_agent: bool, resuming: bool
    ) -> int | None:
        """Forward frames from one side to the other; returns the close code, if any."""
        max_payload = self._config.session_max_frame_bytes
        side = "node" if from_agent else "operator"
        while not live.ended.is_set():
            try:
                message = await websocket.receive()
            except WebSocketDisconnect as disconnect:
                return disconnect.code
            except RuntimeError:
                return None
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                return int(code) if code is not None else None
            data = message.get("bytes")
            if data is None:
                await self.end(live.record.id, "Failed", "a text frame on a binary session stream")
                return None
            try:
                frame = streams.decode(data, max_payload)
            except ProtocolError as error:
                logger.warning(
                    "session protocol error session_id=%s side=%s code=%s message=%s",
                    live.record.id,
                    side,
                    error.code,
                    error.message,
                )
                await self.end(live.record.id, "Failed", f"the {side} broke the session protocol")
                return None
            if isinstance(frame, streams.ResumeFrame):
                if frame.request:  # only the server asks for a resume
                    await self.end(
                        live.record.id, "Failed", f"the {side} broke the session protocol"
                    )
                    return None
                if resuming:  # the first frame of a replacing connection: ask the peer
                    resuming = False
                    frame = dataclasses.replace(frame, request=True)
                    data = streams.encode(frame)
            elif resuming:
                await self.end(
                    live.record.id, "Failed", f"the {side} resumed the session without RESUME"
                )
                return None
            if isinstance(frame, streams.ResumeFrame) and (
                live.ledger is None or not from_agent or live.agent_ready.is_set()
            ):
                step = _Next.FORWARD  # a port session's agent: once it said it serves them
            elif live.ledger is not None:
                step = await self._inspect_port(live, live.ledger, frame, from_agent, websocket)
            else:
                step = _Next.FORWARD if await self._inspect(live, frame, from_agent) else _Next.STOP
            if step is _Next.STOP:
                return None
            if step is _Next.SKIP:
                continue
            if not await self._forward(live, websocket, from_agent, frame, data):
                return None
        return None

    async def _forward(
        self, live: Live, websocket: WebSocket, from_agent: bool, frame: streams.Frame, data: bytes
    ) -> bool:
        """Send one frame to the other side; False once this connection was replaced."""
        peer_ready = live.operator_ready if from_agent else live.agent_ready
        lock = live.operator_lock if from_agent else live.agent_lock
        while True:
            if not peer_ready.is_set():
                if live.joined:
                    # The other side is away and will resume: what this side sends
                    # meanwhile is sent again after its RESUME, so it is not held (and
                    # this connection keeps being read: its pings are answered).
                    return not live.ended.is_set()
                await _either(peer_ready, live.ended)  # the other side's first connection
            if live.ended.is_set():
                return False
            async with lock:
                if (live.agent if from_agent else live.operator) is not websocket:
                    return False  # replaced: the new connection's frames are the ones that count
                peer = live.operator if from_agent else live.agent
                if peer is None:
                    continue  # the other side dropped meanwhile: wait for it again
                if isinstance(frame, streams.ResumeFrame):
                    if from_agent:
                        live.drop_from_agent = False
                    else:
                        live.drop_from_operator = False
                elif (live.drop_from_agent if from_agent else live.drop_from_operator) and (
                    isinstance(frame, streams.DataFrame | streams.AckFrame | streams.EofFrame)
                ):
                    return True  # sent before its RESUME: the resend covers it
                try:
                    await peer.send_bytes(data)  # awaited: a slow reader slows the writer down
                except Exception:  # the peer went away; its own pump handles that
                    logger.debug(
                        "frame to a closed connection dropped session_id=%s", live.record.id
                    )
                return True

    def _to_observers(self, live: Live, payload: bytes) -> None:
        """Copy output to observers; one too slow to keep up is dropped, never waited for."""
        for handle, (who, queue) in list(live.observers.items()):
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:
                live.observers.pop(handle, None)
                logger.info("observer dropped (too slow) session_id=%s who=%s", live.record.id, who)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(b"")  # tells its sender to stop

    async def serve_observer(self, websocket: WebSocket, session_id: str, who: str) -> None:
        """A read-only viewer: sees the owner's output from the latest screenful on."""
        live = self._live.get(session_id)
        if live is None or live.ledger is not None or live.ended.is_set():
            await websocket.close(1008)
            return
        await websocket.accept()
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=OBSERVER_QUEUE_FRAMES)
        handle = id(queue)
        offset = 0

        async def send(payload: bytes) -> None:
            nonlocal offset
            for start in range(0, len(payload), streams.DEFAULT_MAX_PAYLOAD):
                piece = payload[start : start + streams.DEFAULT_MAX_PAYLOAD]
                await websocket.send_bytes(streams.encode(streams.DataFrame(OUTPUT, offset, piece)))
                offset += len(piece)

        live.observers[handle] = (who, queue)
        await self._notify_owner(live, f"{who} is watching this session (read-only)")
        self._audit.event(
            "session:Observe",
            [f"session:{session_id}", f"node:{live.record.node_id}"],
            principal=who,
            details={"owner": live.record.owner},
        )
        try:
            if live.recent:
                await send(bytes(live.recent))
            while not live.ended.is_set():
                payload = await _next_or_end(queue, live.ended)
                if not payload:
                    break
                await send(payload)
            reason = live.end_reason or "you were too slow to follow the session"
            with contextlib.suppress(Exception):
                exit_frame = streams.ExitFrame(
                    live.exit_code if live.exit_code is not None else -1,
                    streams.safe_reason(reason),
                )
                await websocket.send_bytes(streams.encode(exit_frame))
        except Exception:  # the observer went away
            logger.debug("observer left session_id=%s who=%s", session_id, who)
        finally:
            live.observers.pop(handle, None)
            if not live.ended.is_set():
                await self._notify_owner(live, f"{who} stopped watching")
            with contextlib.suppress(Exception):
                await websocket.close(1000)

    async def _notify_owner(self, live: Live, text: str) -> None:
        operator = live.operator
        if operator is None:
            return
        with contextlib.suppress(Exception):
            await operator.send_bytes(
                streams.encode(streams.NoticeFrame(streams.safe_reason(text)))
            )

    async def _inspect(self, live: Live, frame: streams.Frame, from_agent: bool) -> bool:
        """Count, record and police one frame; False when it ended the session."""
        live.last_activity = time.monotonic()
        now = time.time()
        if isinstance(frame, streams.DataFrame | streams.EofFrame):
            expected = OUTPUT if from_agent else INPUT
            seen = live.output_seen if from_agent else live.input_seen
            if frame.stream != expected or frame.offset > seen:
                await self.end(live.record.id, "Failed", f"data on stream {frame.stream}")
                return False
            if isinstance(frame, streams.EofFrame):
                return True
            # Bytes resent after a resume are forwarded (the receiver drops what it
            # has) but counted, recorded and shown to observers only once.
            fresh = frame.payload[seen - frame.offset :]
            if not fresh:
                return True
            if from_agent:
                live.output_seen = frame.end
                live.bytes_out += len(fresh)
                live.recent += fresh
                del live.recent[: max(0, len(live.recent) - OBSERVER_CATCH_UP_BYTES)]
                if live.observers:
                    self._to_observers(live, fresh)
                if live.writer is not None:
                    await self._record(live, functools.partial(live.writer.output, fresh), now)
            else:
                live.input_seen = frame.end
                live.bytes_in += len(fresh)
                if live.writer is not None and self._config.session_record_input:
                    await self._record(live, functools.partial(live.writer.input, fresh), now)
            return True
        if isinstance(frame, streams.ResizeFrame) and not from_agent:
            if live.writer is not None:
                await self._record(
                    live, functools.partial(live.writer.resize, frame.cols, frame.rows), now
                )
            return True
        if isinstance(frame, streams.ExitFrame) and not from_agent:
            await self.end(live.record.id, "Terminated", "the operator closed the session")
            return False
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

    async def _inspect_port(
        self,
        live: Live,
        ledger: ConnectionLedger,
        frame: streams.Frame,
        from_agent: bool,
        websocket: WebSocket,
    ) -> _Next:
        """Police and count one frame of a port session (the ledger's table)."""
        live.last_activity = time.monotonic()
        if isinstance(frame, streams.ExitFrame):
            if from_agent:
                live.exit_code = frame.code
                reason = frame.reason or "the node ended the session"
            else:  # the operator's own words are not stored: it simply closed the session
                reason = "the operator closed the session"
            await self.end(live.record.id, "Terminated", reason)
            return _Next.STOP
        if from_agent and not live.agent_ready.is_set():
            # An agent too old for port sessions would have started a shell: its
            # output must not reach the operator, nor the operator's bytes that shell.
            if frame != streams.ResumeFrame():
                await self.end(
                    live.record.id,
                    "Failed",
                    "the node's agent does not support port forwarding; upgrade it",
                )
                return _Next.STOP
            self._ready(live, from_agent=True)
            return _Next.SKIP
        decision = ledger.inspect(frame, from_agent, time.time())
        if decision.verdict is Verdict.VIOLATION:
            side = "node" if from_agent else "operator"
            logger.warning(
                "port session protocol error session_id=%s side=%s message=%s",
                live.record.id,
                side,
                decision.reason,
            )
            await self.end(live.record.id, "Failed", f"the {side} broke the session protocol")
            return _Next.STOP
        live.bytes_in, live.bytes_out = ledger.bytes_in, ledger.bytes_out
        if decision.closed is not None:
            self._audit_connection(live, decision.closed)
        if decision.verdict is Verdict.REFUSE:
            assert isinstance(frame, streams.OpenFrame)
            refusal = streams.OpenFailedFrame(frame.stream, streams.safe_reason(decision.reason))
            async with live.operator_lock:  # between frames the node's pump forwards
                try:
                    await websocket.send_bytes(streams.encode(refusal))
                except Exception:  # the operator went away; its pump handles that
                    return _Next.STOP
            return _Next.SKIP
        return _Next.FORWARD if decision.verdict is Verdict.FORWARD else _Next.SKIP

    def _audit_connection(self, live: Live, connection: Connection) -> None:
        """One `session:Connection` event: target, bytes each way, times, how it ended."""
        closed = connection.closed_at or connection.opened_at
        self._audit.event(
            "session:Connection",
            [f"session:{live.record.id}", f"node:{live.record.node_id}"],
            principal=live.record.owner,
            outcome="allowed" if connection.outcome != "refused" else "denied",
            details={
                "stream": connection.stream,
                "host": connection.host,
                "port": connection.port,
                "outcome": connection.outcome,
                "reason": connection.reason,
                "bytes_in": connection.bytes_in,
                "bytes_out": connection.bytes_out,
                "opened_at": _iso(connection.opened_at),
                "closed_at": _iso(closed),
                "duration_seconds": round(closed - connection.opened_at, 3),
            },
        )

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


async def _close_quietly(websocket: WebSocket) -> None:
    """Close a connection that was replaced (it may be half-open already)."""
    with contextlib.suppress(Exception):
        await websocket.close(1000)


async def _either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Wait until one of two events is set."""
    waiters = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _iso(timestamp: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def conflict_if_ended(record: SessionRecord) -> None:
    """ConflictError for a session that is over."""
    if not record.active:
        raise ConflictError(f"session {record.id} is {record.status}")


async def _next_or_end(queue: asyncio.Queue[bytes], ended: asyncio.Event) -> bytes:
    """The next queued payload, or b"" once the session ended."""
    getter = asyncio.ensure_future(queue.get())
    waiter = asyncio.ensure_future(ended.wait())
    try:
        done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
        return getter.result() if getter in done else b""
    finally:
        for task in (getter, waiter):
            task.cancel()
