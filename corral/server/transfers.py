"""File transfers (`corral cp`): the server's relay between an operator and a node.

    CLI ──WS /api/v1/transfers/{id}/stream──► server ◄──WS /agent/v1/transfers/{id}── agent

`POST /api/v1/transfers/{upload,download}` checks policy on the node and on the
path, keeps the transfer here (in memory: a transfer lives as long as its two
connections) and tells the node over its control channel (`TransferStart`). The
agent opens a WebSocket of its own, outbound, authenticated with a signed upgrade
request; the operator attaches with its token. Both speak the protocol of
`corral.protocol.transfer`, which the server follows with its own `TransferFlow`:

* READY names the path as the node resolved it (symbolic links followed), and every
  ENTRY a path below it. Each is checked against policy (the transfer's action on
  `file:PATH`, with the node's tags) *before* it is forwarded, so a link that leads
  out of what the caller may touch, or an entry below a root the caller may reach
  only in part, is refused before the receiver writes anything.
* Every file that ends (verified by the receiver, refused or cut off) leaves a
  `file:Transfer` audit event with its path, size, SHA-256, direction, the bytes
  moved and where it resumed from; a directory transfer adds one for the tree.
* Frames are forwarded one at a time, each send awaited, so a slow receiver slows
  the sender (WebSocket backpressure) and nothing buffers here without bound.
* When either connection drops, the transfer ends and the other side is told
  (`connection_lost`); the CLI retries with a new transfer, which resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect

from corral.audit.log import AuditLog, now_us
from corral.bus import NodeBus
from corral.errors import ConflictError, ProtocolError
from corral.identity import NodeContext, decide
from corral.protocol import codec, streams
from corral.protocol.messages import Message, TransferStart
from corral.protocol.transfer import (
    CONNECTION_LOST,
    DENIED,
    DIRECTORY,
    DOWNLOAD,
    FILE,
    MAX_CONTROL_BYTES,
    NODE_TIMEOUT,
    PROTOCOL,
    TRANSFER_MESSAGES,
    UNAVAILABLE,
    UPLOAD,
    Side,
    TransferDone,
    TransferEntry,
    TransferEntryDone,
    TransferFailed,
    TransferFlow,
    TransferReady,
    failed,
    join,
)
from corral.server.auth import Principal
from corral.store import AuditEntry

logger = logging.getLogger(__name__)

ACTIONS = {UPLOAD: "file:Upload", DOWNLOAD: "file:Download"}
MAX_DATA_PAYLOAD = streams.DEFAULT_MAX_PAYLOAD


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A transfer the API authorised: who, which node, which path, which way."""

    principal: Principal
    node: NodeContext
    direction: str
    path: str
    recursive: bool = False
    source_kind: str = ""  # uploads: "file" or "directory"
    source_name: str = ""  # uploads: the source's name, for a destination directory
    request_id: str = ""  # the API call's audit record
    grant_id: str | None = None  # the grant the API call relied on, if any

    @property
    def action(self) -> str:
        """`file:Upload` or `file:Download`."""
        return ACTIONS[self.direction]


@dataclass(slots=True)
class Live:
    """One transfer the server is relaying right now."""

    id: str
    request: TransferRequest
    flow: TransferFlow
    agent: WebSocket | None = None
    operator: WebSocket | None = None
    agent_ready: asyncio.Event = field(default_factory=asyncio.Event)
    operator_ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)
    relayed: int = 0  # file bytes forwarded
    current: TransferEntry | None = None  # the entry sent and not yet acknowledged

    @property
    def owner(self) -> str:
        """The principal that asked for the transfer (`user:alice`)."""
        return self.request.principal.label

    @property
    def node_side(self) -> Side:
        """The role the node plays: it receives uploads and sends downloads."""
        return Side.RECEIVER if self.request.direction == UPLOAD else Side.SENDER


def _new_id() -> str:
    return "xfr-" + secrets.token_hex(9)[:17]


class TransferHub:
    """Every live transfer of this server process."""

    def __init__(self, bus: NodeBus, audit: AuditLog, connect_timeout: float) -> None:
        self._bus = bus
        self._audit = audit
        self._connect_timeout = connect_timeout
        self._live: dict[str, Live] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    def spawn(self, coroutine: Coroutine[object, object, object]) -> None:
        """Run `coroutine` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def live(self, transfer_id: str) -> Live | None:
        """The live transfer `transfer_id`, if any."""
        return self._live.get(transfer_id)

    async def open(self, request: TransferRequest) -> Live:
        """Keep a new transfer and ask the node's agent to join it (ConflictError if offline)."""
        node_id = request.node.node_id
        if not self._bus.is_connected(node_id):
            raise ConflictError(f"node {node_id} is not connected; a transfer needs it online")
        expected = request.source_kind if request.direction == UPLOAD else None
        node_side = Side.RECEIVER if request.direction == UPLOAD else Side.SENDER
        live = Live(_new_id(), request, TransferFlow(node_side, expected))
        self._live[live.id] = live
        start = TransferStart(
            transfer_id=live.id,
            direction=request.direction,
            path=request.path,
            recursive=request.recursive,
            source_kind=request.source_kind,
            source_name=request.source_name,
        )
        if not await self._bus.publish(node_id, start):
            self._live.pop(live.id, None)
            raise ConflictError(f"node {node_id} is not connected; a transfer needs it online")
        asyncio.get_running_loop().call_later(self._connect_timeout, self._deadline, live.id)
        logger.info(
            "transfer opened transfer_id=%s node_id=%s direction=%s path=%s principal=%s",
            live.id,
            node_id,
            request.direction,
            request.path,
            live.owner,
        )
        return live

    def _deadline(self, transfer_id: str) -> None:
        live = self._live.get(transfer_id)
        if live is None or (live.agent_ready.is_set() and live.operator_ready.is_set()):
            return
        if live.agent_ready.is_set():
            reason = "the operator did not connect in time"
        else:
            reason = (
                f"the node did not open its transfer connection within {self._connect_timeout:g} s"
                " (is its agent recent enough for file transfer?)"
            )
        self.spawn(self.end(transfer_id, failed(NODE_TIMEOUT, reason)))

    async def close_all(self) -> None:
        """At shutdown: end every live transfer (the CLI retries against another server)."""
        for transfer_id in list(self._live):
            await self.end(transfer_id, failed(UNAVAILABLE, "the server is shutting down"))

    # --- the two connections ------------------------------------------------------

    async def serve_agent(self, websocket: WebSocket, transfer_id: str, node_id: str) -> None:
        """The node's side."""
        live = self._live.get(transfer_id)
        if live is None or live.request.node.node_id != node_id or live.agent is not None:
            await websocket.close(1008)
            return
        await websocket.accept()
        live.agent = websocket
        live.agent_ready.set()
        try:
            await self._pump(live, websocket, from_agent=True)
        finally:
            if not live.ended.is_set():
                lost = failed(CONNECTION_LOST, "the node's transfer connection was lost")
                await self.end(live.id, lost)

    async def serve_operator(self, websocket: WebSocket, transfer_id: str, owner: str) -> None:
        """The operator's side (only the principal that asked for the transfer)."""
        live = self._live.get(transfer_id)
        if live is None or live.owner != owner or live.operator is not None:
            await websocket.close(1008)
            return
        await websocket.accept()
        live.operator = websocket
        live.operator_ready.set()
        try:
            await self._pump(live, websocket, from_agent=False)
        finally:
            if not live.ended.is_set():
                lost = failed(CONNECTION_LOST, "the operator's connection was lost")
                await self.end(live.id, lost)

    async def _pump(self, live: Live, websocket: WebSocket, from_agent: bool) -> None:
        """Check and forward what one side sends until the transfer ends.

        Nothing is read before both sides are attached, so whatever ends the transfer
        (a refused path in the node's READY, say) is told to both.
        """
        side = live.node_side if from_agent else _other(live.node_side)
        who = "node" if from_agent else "operator"
        await self._attached(live, live.operator_ready if from_agent else live.agent_ready)
        while not live.ended.is_set():
            try:
                received = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if received["type"] == "websocket.disconnect":
                return
            try:
                outgoing, message = self._inspect(live, side, received)
            except ProtocolError as error:
                logger.warning(
                    "transfer protocol error transfer_id=%s side=%s code=%s message=%s",
                    live.id,
                    who,
                    error.code,
                    error.message,
                )
                await self.end(live.id, failed(PROTOCOL, f"the {who} broke the transfer protocol"))
                return
            refusal = self._police(live, message) if message is not None else None
            if refusal is not None:
                await self.end(live.id, refusal)
                return
            if not await self._forward(live, from_agent, outgoing):
                return
            if isinstance(message, TransferDone | TransferFailed):
                await self.end(live.id, message, notify=False)
                return

    @staticmethod
    def _inspect(
        live: Live, side: Side, received: Mapping[str, object]
    ) -> tuple[str | bytes, Message | None]:
        """Account for one frame in the flow; (what to forward, the control message if any)."""
        data, text = received.get("bytes"), received.get("text")
        if isinstance(data, bytes):
            frame = streams.decode(data, MAX_DATA_PAYLOAD)
            if not isinstance(frame, streams.DataFrame):
                raise ProtocolError(f"unexpected {type(frame).__name__}", "bad_frame")
            live.flow.on_data(side, frame)
            live.relayed += len(frame.payload)
            return data, None
        if not isinstance(text, str):
            raise ProtocolError("an empty WebSocket message", "bad_frame")
        message = codec.decode(text, TRANSFER_MESSAGES, MAX_CONTROL_BYTES)
        live.flow.on_message(side, message)
        return text, message

    @staticmethod
    async def _attached(live: Live, peer_ready: asyncio.Event) -> None:
        """Wait until the other side is attached too, or the transfer ended."""
        if peer_ready.is_set():
            return
        waiters = {
            asyncio.ensure_future(peer_ready.wait()),
            asyncio.ensure_future(live.ended.wait()),
        }
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    async def _forward(self, live: Live, from_agent: bool, outgoing: str | bytes) -> bool:
        peer = live.operator if from_agent else live.agent
        if peer is None or live.ended.is_set():
            return False
        try:  # awaited: a slow receiver slows the sender down
            if isinstance(outgoing, bytes):
                await peer.send_bytes(outgoing)
            else:
                await peer.send_text(outgoing)
        except Exception:  # the peer went away; its own pump ends the transfer
            return False
        return True

    # --- policy and audit ---------------------------------------------------------

    def _police(self, live: Live, message: Message) -> TransferFailed | None:
        """A refusal when `message` names a path the caller may not touch; audit what ended."""
        if isinstance(message, TransferReady):
            logger.info("transfer ready transfer_id=%s root=%s", live.id, message.root)
            return self._check_path(live, message.root)
        if isinstance(message, TransferEntry):
            live.current = message
            return self._check_path(live, join(live.flow.root, message.path))
        if isinstance(message, TransferEntryDone):
            if live.current is not None and live.current.kind == FILE:
                self._entry_event(live, live.current, "allowed", None)
            live.current = None
        return None

    def _check_path(self, live: Live, path: str) -> TransferFailed | None:
        request = live.request
        principal = request.principal
        resource = f"file:{path}"
        decision = decide(
            principal.sources, principal.subject, request.action, resource, request.node
        )
        if decision.allowed:
            return None
        return failed(
            DENIED, f"{principal.label} may not {request.action} on {resource}: {decision.reason}"
        )

    def _emit(
        self, live: Live, outcome: str, path: str, error: str | None, **details: object
    ) -> None:
        request = live.request
        self._audit.emit(
            AuditEntry(
                time_us=now_us(),
                request_id="evt-" + uuid.uuid4().hex[:16],
                principal=live.owner,
                action="file:Transfer",
                outcome=outcome,
                resources=[f"file:{path}", f"node:{request.node.node_id}"],
                token_id=request.principal.token_id,
                error=error,
                grant_id=request.grant_id,
                details={
                    "transfer_id": live.id,
                    "request_id": request.request_id,
                    "direction": request.direction,
                    "node_id": request.node.node_id,
                    "path": path,
                    **details,
                },
            )
        )

    def _entry_event(
        self, live: Live, entry: TransferEntry, outcome: str, error: str | None
    ) -> None:
        flow = live.flow
        if entry.kind == DIRECTORY:
            self._emit(live, outcome, join(flow.root, entry.path), error, kind=DIRECTORY)
            return
        self._emit(
            live,
            outcome,
            join(flow.root, entry.path),
            error,
            kind=FILE,
            size=entry.size,
            sha256=flow.file_sha256 or None,
            mode=f"{entry.mode:04o}",
            bytes_transferred=flow.data_bytes,
            resumed_from=flow.begin,
        )

    async def end(
        self, transfer_id: str, reason: TransferFailed | TransferDone, notify: bool = True
    ) -> None:
        """End a transfer (idempotent): tell both sides why, close them, audit the outcome.

        `notify` is false when the message came from one side and was already forwarded.
        """
        live = self._live.pop(transfer_id, None)
        if live is None:
            return
        live.ended.set()
        for ws in (live.operator, live.agent):
            if ws is None:
                continue
            if notify and isinstance(reason, TransferFailed):
                with contextlib.suppress(Exception):
                    await ws.send_text(codec.encode(reason))
            with contextlib.suppress(Exception):
                await ws.close(1000)
        self._audit_end(live, reason)

    def _audit_end(self, live: Live, reason: TransferFailed | TransferDone) -> None:
        flow = live.flow
        seconds = round(time.monotonic() - live.started, 3)
        if isinstance(reason, TransferDone):
            if flow.kind == DIRECTORY:
                self._emit(
                    live,
                    "allowed",
                    flow.root,
                    None,
                    kind=DIRECTORY,
                    files=flow.files,
                    directories=flow.directories,
                    size=flow.bytes,
                    bytes_transferred=live.relayed,
                    seconds=seconds,
                )
            logger.info(
                "transfer completed transfer_id=%s files=%d directories=%d bytes=%d relayed=%d",
                live.id,
                flow.files,
                flow.directories,
                flow.bytes,
                live.relayed,
            )
            return
        outcome = "denied" if reason.code == DENIED else "failed"
        error = reason.message or reason.code
        if live.current is not None:
            self._entry_event(live, live.current, outcome, error)
        else:
            self._emit(
                live,
                outcome,
                flow.root or live.request.path,
                error,
                kind=flow.kind or None,
                code=reason.code,
                bytes_transferred=live.relayed,
                seconds=seconds,
            )
        logger.info(
            "transfer ended transfer_id=%s code=%s reason=%s relayed=%d",
            live.id,
            reason.code,
            error,
            live.relayed,
        )


def _other(side: Side) -> Side:
    return Side.SENDER if side is Side.RECEIVER else Side.RECEIVER
