"""The agent gateway: one WebSocket per agent at `/agent/v1/connect`.

Rules:
* Handshake through `ServerChannel`; the node's key comes from the store (raw 32-byte
  Ed25519); unknown or deregistered nodes fail with `auth_failed`.
* A node only ever reports its own invocations; anything else is refused and logged.
* Output is appended to the blob store at its offset; a gap gets an OutputRewind.
* A result is stored only once all its output is stored, then committed, then acked.
* Malformed frames: ErrorMessage and close 1008; oversized: 1009. Nothing is stored.
* Silence longer than `connection_lost_seconds` closes the connection. One timer per
  connection watches for it (re-armed only when it fires), not a timeout per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.websockets import WebSocket, WebSocketDisconnect

from corral.audit.log import AuditLog
from corral.blobs import BlobGapError, BlobStore, output_key
from corral.bus import NodeBus
from corral.errors import CorralError, ProtocolError
from corral.protocol import (
    PROTOCOL_VERSION,
    Accepted,
    Auth,
    ErrorMessage,
    Heartbeat,
    Message,
    Output,
    OutputRewind,
    Result,
    ResultAck,
    ServerChannel,
    Welcome,
    codec,
    is_final,
)
from corral.server.config import ServerConfig
from corral.server.dispatcher import Dispatcher, InvocationState
from corral.server.writer import ChangeWriter
from corral.store import Store

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
_STREAMS = ("stdout", "stderr")


def verify_signature(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """Whether `signature` is the Ed25519 signature of `payload` under a raw public key."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


class _Closing(Exception):
    """Stop serving this connection with a close code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Gateway:
    """Serves agent connections and keeps track of them for shutdown."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        blobs: BlobStore,
        bus: NodeBus,
        dispatcher: Dispatcher,
        writer: ChangeWriter,
        audit: AuditLog | None = None,
    ) -> None:
        self._config = config
        self.audit = audit
        # Told of every agent that connects, with the sessions it says it runs.
        self.on_connect: Callable[[str, list[str] | None], None] = lambda _node, _sessions: None
        self._store = store
        self._blobs = blobs
        self._bus = bus
        self._dispatcher = dispatcher
        self._writer = writer
        self._connections: set[_Connection] = set()
        self._accepting = True

    async def serve(self, websocket: WebSocket) -> None:
        """Run one agent connection to its end."""
        await websocket.accept()
        if not self._accepting:
            await websocket.close(CLOSE_GOING_AWAY)
            return
        connection = _Connection(self, websocket)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    async def close_all(self, deadline: float) -> int:
        """Stop accepting, close every agent connection; returns how many were open."""
        self._accepting = False
        connections = list(self._connections)
        for connection in connections:
            connection.request_close(CLOSE_GOING_AWAY)
        tasks = [c.task for c in connections if c.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning("agent connections cancelled at shutdown count=%d", len(pending))
        return len(connections)

    async def check_silent_nodes(self) -> None:
        """Mark nodes whose heartbeats stopped (on any replica) ConnectionLost."""
        cutoff = time.time() - self._config.connection_lost_seconds
        lost = await self._store.mark_silent_nodes_lost(cutoff)
        for node_id in lost:
            logger.info("node silent, marked ConnectionLost node_id=%s", node_id)


class _Connection:
    def __init__(self, gateway: Gateway, websocket: WebSocket) -> None:
        self.g = gateway
        self.ws = websocket
        self.node_id: str | None = None
        self.outbox: asyncio.Queue[Message | int] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        # When the current wait for a frame began (None while a frame is being handled).
        self._waiting_since: float | None = None
        self._silent = False
        self._silence_timer: asyncio.TimerHandle | None = None

    def request_close(self, code: int) -> None:
        """Ask the sender to close the WebSocket with `code`."""
        self.outbox.put_nowait(code)

    async def run(self) -> None:
        """Serve the connection until it closes, then record the disconnect."""
        self.task = asyncio.current_task()
        sender = asyncio.create_task(self._send_loop(), name="corral-gateway-send")
        self._arm_silence_timer(asyncio.get_running_loop().time())
        try:
            await self._serve()
        except _Closing as closing:
            await self._close(closing.code)
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        except Exception:
            logger.exception("agent connection failed node_id=%s", self.node_id)
            await self._close(1011)
        finally:
            if self._silence_timer is not None:
                self._silence_timer.cancel()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            await self._disconnected()

    def _arm_silence_timer(self, since: float) -> None:
        loop = asyncio.get_running_loop()
        self._silence_timer = loop.call_at(
            since + self.g._config.connection_lost_seconds, self._check_silence
        )

    def _check_silence(self) -> None:
        now = asyncio.get_running_loop().time()
        since = self._waiting_since
        if since is not None and now - since >= self.g._config.connection_lost_seconds:
            self._silence_timer = None
            self._silent = True
            if self.task is not None:
                self.task.cancel()  # lands in `_receive`, which closes the connection
            return
        self._arm_silence_timer(now if since is None else since)

    async def _close(self, code: int) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code)

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, int):
                await self._close(item)
                if self.task is not None:
                    self.task.cancel()
                return
            await self.ws.send_text(codec.encode(item))
            if isinstance(item, ErrorMessage) and item.code == "deregistered":
                await self._close(CLOSE_POLICY)
                if self.task is not None:
                    self.task.cancel()
                return

    async def _deliver(self, message: Message) -> None:
        self.outbox.put_nowait(message)

    async def _receive(self) -> str | bytes:
        self._waiting_since = asyncio.get_running_loop().time()
        try:
            event = await self.ws.receive()
        except asyncio.CancelledError:
            if not self._silent:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            logger.info("agent silent, closing node_id=%s", self.node_id)
            raise _Closing(CLOSE_GOING_AWAY) from None
        finally:
            self._waiting_since = None
        if event["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(event.get("code", CLOSE_NORMAL))
        data = event.get("text")
        if data is None:
            data = event.get("bytes") or b""
        return data

    async def _refuse(self, error: ProtocolError) -> None:
        code = CLOSE_TOO_BIG if error.code == "too_big" else CLOSE_POLICY
        logger.warning(
            "agent protocol error node_id=%s code=%s message=%s",
            self.node_id,
            error.code,
            error.message,
        )
        with contextlib.suppress(Exception):
            await self.ws.send_text(codec.encode(ErrorMessage(error.code, error.message)))
        raise _Closing(code)

    async def _serve(self) -> None:
        key: dict[str, bytes] = {}

        def verify(node_id: str, payload: bytes, signature: bytes) -> bool:
            """Check the signature against the key fetched for this node."""
            public_key = key.get(node_id)
            return public_key is not None and verify_signature(public_key, payload, signature)

        channel = ServerChannel(verify, max_message_bytes=self.g._config.max_message_bytes)
        await self.ws.send_text(channel.hello())
        frame = await self._receive()
        try:
            first = codec.decode(frame, [Auth], channel.max_message_bytes)
            assert isinstance(first, Auth)
            public_key = await self.g._store.node_key(first.node_id)
            if public_key is not None:
                key[first.node_id] = public_key
            auth = channel.receive(frame)
        except ProtocolError as error:
            if error.code == "bad_message" and channel.state.value == "await_auth":
                error = ProtocolError("first message must be auth", "auth_required")
            self._event("node:Connect", "denied", error=f"{error.code}: {error.message}")
            await self._refuse(error)
            return
        assert isinstance(auth, Auth)
        await self._welcome(auth)
        while True:
            frame = await self._receive()
            try:
                message = channel.receive(frame)
            except ProtocolError as error:
                await self._refuse(error)
                return
            await self._handle(message)

    async def _welcome(self, auth: Auth) -> None:
        node_id = auth.node_id
        self.node_id = node_id
        now = time.time()
        await self.g._store.node_connected(node_id, auth.info, now)
        self.subscription = self.g._bus.subscribe(node_id, self._deliver)
        await self.ws.send_text(
            codec.encode(
                Welcome(
                    node_id=node_id,
                    protocol_version=PROTOCOL_VERSION,
                    heartbeat_seconds=self.g._config.heartbeat_seconds,
                    max_message_bytes=self.g._config.max_message_bytes,
                )
            )
        )
        logger.info("agent connected node_id=%s agent_version=%s", node_id, auth.info.agent_version)
        self._event("node:Connect", "allowed", details={"agent_version": auth.info.agent_version})
        await self.g._dispatcher.node_connected(node_id, auth.info.platform_type)
        self.g.on_connect(node_id, auth.sessions)

    def _event(
        self,
        action: str,
        outcome: str,
        resources: list[str] | None = None,
        error: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        """An audit record for something this node's connection did."""
        if self.g.audit is None:
            return
        node = f"node:{self.node_id}" if self.node_id else "anonymous"
        client = self.ws.client
        self.g.audit.event(
            action,
            [node, *(resources or [])] if self.node_id else list(resources or []),
            principal=node,
            outcome=outcome,
            error=error,
            details=details,
            source=client.host if client else None,
        )

    async def _disconnected(self) -> None:
        if self.node_id is None:
            return
        sub = getattr(self, "subscription", None)
        replaced = sub is not None and getattr(sub, "closed", False)
        if sub is not None:
            sub.close()
        if not replaced:
            with contextlib.suppress(CorralError):
                await self.g._store.mark_nodes_lost([self.node_id])
        logger.info("agent disconnected node_id=%s", self.node_id)
        self._event("node:Disconnect", "allowed", details={"replaced": replaced})

    async def _handle(self, message: Message) -> None:
        node_id = self.node_id
        assert node_id is not None
        now = time.time()
        self.g._writer.node_seen(node_id, now)
        if isinstance(message, Heartbeat):
            return
        if isinstance(message, Accepted):
            if not self.g._dispatcher.accepted(node_id, message.command_id, now):
                await self._not_tracked(message.command_id, "accepted")
            return
        if isinstance(message, Output):
            await self._output(node_id, message)
            return
        if isinstance(message, Result):
            await self._result(node_id, message)
            return
        if isinstance(message, ErrorMessage):
            logger.warning("agent reported error node_id=%s code=%s", node_id, message.code[:64])

    async def _not_tracked(self, command_id: str, what: str) -> bool:
        """For a message about an invocation not in flight: True if it is the node's and final."""
        node_id = self.node_id
        try:
            record = await self.g._store.get_invocation(command_id, node_id or "")
        except CorralError:
            record = None
        if record is None:
            logger.warning(
                "refused %s for an invocation that is not the node's node_id=%s command_id=%s",
                what,
                node_id,
                command_id[:64],
            )
            self._event(
                "node:Report",
                "denied",
                resources=[f"command:{command_id[:64]}"],
                error=f"{what} for an invocation that is not this node's",
            )
            await self._deliver(ErrorMessage("not_found", "no such invocation for this node"))
            return False
        return is_final(record.status)

    async def _output(self, node_id: str, message: Output) -> None:
        inv = self.g._dispatcher.invocation(node_id, message.command_id)
        if inv is None or is_final(inv.status) or message.stream not in _STREAMS:
            if message.stream not in _STREAMS:
                await self._deliver(ErrorMessage("bad_message", "unknown stream"))
                return
            if not await self._not_tracked(message.command_id, "output"):
                return
            # A late chunk of a finished invocation: already complete, nothing to store.
            return
        await self._store_output(inv, message.stream, message.offset, message.data)

    async def _store_output(
        self, inv: InvocationState, stream: str, offset: int, data: bytes
    ) -> None:
        """Append a chunk to the blob store; on a gap, ask the agent to send from the end."""
        key = output_key(inv.command_id, inv.node_id, stream)
        try:
            size = await self.g._blobs.append(key, offset, data)
        except BlobGapError as gap:
            await self._deliver(OutputRewind(inv.command_id, stream, gap.size))
            return
        self.g._dispatcher.output_stored(inv, stream, offset, data, size)

    async def _result(self, node_id: str, message: Result) -> None:
        inv = self.g._dispatcher.invocation(node_id, message.command_id)
        if inv is None or is_final(inv.status):
            if inv is not None or await self._not_tracked(message.command_id, "result"):
                # Already stored (an ack was lost): ack again.
                await self._deliver(ResultAck(message.command_id))
            return
        for stream, expected in (
            ("stdout", message.stdout_bytes),
            ("stderr", message.stderr_bytes),
        ):
            stored = await self._stored_bytes(inv, stream, expected)
            if stored < expected:
                await self._deliver(OutputRewind(message.command_id, stream, stored))
                return
        heads = await self._heads(inv, node_id)
        if not self.g._dispatcher.finish(node_id, message, heads):
            logger.warning(
                "refused result node_id=%s command_id=%s status_details=%s",
                node_id,
                message.command_id,
                message.status_details[:32],
            )
            await self._deliver(ErrorMessage("bad_result", "result refused"))
            return
        await self.g._writer.commit()
        await self._deliver(ResultAck(message.command_id))

    async def _stored_bytes(self, inv: InvocationState, stream: str, expected: int) -> int:
        known = inv.stdout_bytes if stream == "stdout" else inv.stderr_bytes
        if known >= expected:
            return known
        # The in-memory count may lag the blob (e.g. after a restart): ask the blob store.
        size = await self.g._blobs.size(output_key(inv.command_id, inv.node_id, stream))
        if stream == "stdout":
            inv.stdout_bytes = size
        else:
            inv.stderr_bytes = size
        return size

    async def _heads(self, inv: InvocationState, node_id: str) -> tuple[str, str]:
        config = self.g._config
        texts: list[str] = []
        for stream, limit, head, total in (
            ("stdout", config.stdout_inline_chars, inv.stdout_head, inv.stdout_bytes),
            ("stderr", config.stderr_inline_chars, inv.stderr_head, inv.stderr_bytes),
        ):
            data = bytes(head)
            if len(data) < min(total, 4 * limit):
                key = output_key(inv.command_id, node_id, stream)
                data = await self.g._blobs.read(key, 0, 4 * limit)
            texts.append(data.decode("utf-8", "replace")[:limit])
        return texts[0], texts[1]
