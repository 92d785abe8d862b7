"""The agent's side of sessions: a pty shell (or a port forward) joined to the server.

On `SessionStart` (over the control channel) the agent opens a second outbound
WebSocket, `/agent/v1/sessions/{id}`, proving it is the node with a signed upgrade
request (the same CorralNode signature as its API calls), starts a shell on a pty
(`corral.agent.pty_session`) and pumps bytes both ways as `corral.protocol.streams`
frames: the shell's output as DATA on stream 1, keystrokes arriving as DATA on
stream 0, RESIZE to the pty, and EXIT with the shell's status when it ends. The
pty is read only as fast as the WebSocket accepts what was read, so a flood of
output is throttled by the kernel's pty buffer, not queued in memory here. A port
session (`kind` "port") joins the same way and is then served by
`corral.agent.port_forward`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.exceptions import ConnectionClosed

from corral.agent.api import connect_back
from corral.agent.identity import Identity
from corral.agent.port_forward import PortForward
from corral.agent.pty_session import PtySession, SessionLimits, default_session_user
from corral.errors import CorralError, ProtocolError
from corral.protocol import streams
from corral.protocol.messages import SessionStart, SessionTerminate

logger = logging.getLogger(__name__)

INPUT, OUTPUT = 0, 1
READ_BYTES = 32 * 1024
MAX_SESSIONS = 32
# The account sessions run as when the operator asks for none (see docs/sessions.md).
SESSION_USER_ENV = "CORRAL_AGENT_SESSION_USER"
# A shell for every session instead of each account's login shell (see docs/agent.md).
SESSION_SHELL_ENV = "CORRAL_AGENT_SESSION_SHELL"


class SessionManager:
    """Runs the sessions the server asks for (at most `MAX_SESSIONS` at once)."""

    def __init__(
        self,
        identity: Callable[[], Identity | None],
        tls: Callable[[], ssl.SSLContext | None],
        connect_timeout: float,
        default_user: str | None = None,
    ) -> None:
        self._identity = identity
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._default_user = default_user
        self._running: dict[str, asyncio.Task[None]] = {}
        self._shells: dict[str, PtySession] = {}

    async def handle(self, message: SessionStart | SessionTerminate) -> None:
        """Act on a session message from the control channel."""
        if isinstance(message, SessionTerminate):
            shell = self._shells.get(message.session_id)
            if shell is not None:
                logger.info("session terminated by the server session_id=%s", message.session_id)
                await shell.terminate()
            task = self._running.get(message.session_id)
            if task is not None and shell is None:
                task.cancel()
            return
        if message.session_id in self._running:
            return  # delivered twice: it already runs
        if len(self._running) >= MAX_SESSIONS:
            logger.warning("refusing session_id=%s: too many sessions", message.session_id)
            return
        task = asyncio.create_task(self._run(message), name=f"corral-session-{message.session_id}")
        self._running[message.session_id] = task
        task.add_done_callback(lambda _t: self._running.pop(message.session_id, None))

    async def close(self) -> None:
        """End every session (the agent is stopping)."""
        for shell in list(self._shells.values()):
            with contextlib.suppress(CorralError, OSError):
                await shell.terminate()
        for task in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, start: SessionStart) -> None:
        identity = self._identity()
        if identity is None:
            return
        try:
            async with connect_back(
                identity,
                f"/agent/v1/sessions/{start.session_id}",
                self._tls(),
                self._connect_timeout,
                2 * streams.DEFAULT_MAX_PAYLOAD,
            ) as ws:
                await self._serve(ws, start)
        except (OSError, ConnectionClosed, TimeoutError) as error:
            logger.warning(
                "session connection failed session_id=%s error=%s", start.session_id, error
            )

    async def _serve(self, ws: Any, start: SessionStart) -> None:
        async def send(frame: streams.Frame) -> None:
            await ws.send(streams.encode(frame))

        if start.kind == "port" and start.host is not None and start.port is not None:
            logger.info(
                "port session started session_id=%s target=%s:%d",
                start.session_id,
                start.host,
                start.port,
            )
            await PortForward(start, self._connect_timeout).run(ws)
            logger.info("port session ended session_id=%s", start.session_id)
            return
        if start.kind != "shell":
            logger.warning(
                "refusing session_id=%s: unknown kind %r", start.session_id, start.kind[:20]
            )
            reason = f"this agent does not run {start.kind[:20]!r} sessions"
            await send(streams.ExitFrame(-1, streams.safe_reason(reason)))
            return
        try:
            user = start.user or default_session_user(
                self._default_user or os.environ.get(SESSION_USER_ENV)
            )
            shell = await PtySession.start(
                command=start.command,
                user=user,
                cols=start.cols,
                rows=start.rows,
                shell=os.environ.get(SESSION_SHELL_ENV) or None,
                limits=SessionLimits(
                    idle_timeout_seconds=start.idle_timeout_seconds,
                    max_duration_seconds=start.max_duration_seconds,
                ),
            )
        except CorralError as error:
            logger.warning(
                "session refused session_id=%s error=%s", start.session_id, error.message
            )
            await send(streams.ExitFrame(-1, streams.safe_reason(error.message)))
            return
        self._shells[start.session_id] = shell
        logger.info(
            "session started session_id=%s user=%s pid=%d", start.session_id, shell.user, shell.pid
        )
        receiver = streams.StreamReceiver(INPUT)
        output = asyncio.create_task(self._pump_output(shell, send))
        try:
            await self._pump_input(ws, shell, receiver, output)
        finally:
            if not output.done():
                await shell.terminate()
            with contextlib.suppress(Exception):
                await output
            self._shells.pop(start.session_id, None)
            code = await shell.wait()
            reason = shell.ended_reason or f"the shell exited with status {code}"
            with contextlib.suppress(ConnectionClosed, OSError):
                await send(streams.ExitFrame(code, streams.safe_reason(reason)))
            logger.info("session ended session_id=%s status=%d", start.session_id, code)

    @staticmethod
    async def _pump_output(
        shell: PtySession, send: Callable[[streams.Frame], Coroutine[Any, Any, None]]
    ) -> None:
        offset = 0
        while True:
            data = await shell.read(READ_BYTES)
            if not data:
                return
            await send(streams.DataFrame(OUTPUT, offset, data))  # awaited: backpressure
            offset += len(data)

    @staticmethod
    async def _pump_input(
        ws: Any,
        shell: PtySession,
        receiver: streams.StreamReceiver,
        output: asyncio.Task[None],
    ) -> None:
        messages = asyncio.ensure_future(ws.recv())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {messages, output}, return_when=asyncio.FIRST_COMPLETED
                )
                if output in done:
                    return  # the shell ended
                try:
                    raw = messages.result()
                except ConnectionClosed:
                    return
                messages = asyncio.ensure_future(ws.recv())
                if not isinstance(raw, bytes):
                    raise ProtocolError("a text frame on a session stream")
                frame = streams.decode(raw)
                if isinstance(frame, streams.DataFrame) and frame.stream == INPUT:
                    data = receiver.on_data(frame.offset, frame.payload)
                    if data:
                        await shell.write(data)
                elif isinstance(frame, streams.ResizeFrame):
                    shell.resize(frame.cols, frame.rows)
                elif isinstance(frame, streams.ExitFrame):
                    return  # the server ended the session
        except ProtocolError as error:
            logger.warning("session protocol error: %s", error.message)
        finally:
            messages.cancel()
