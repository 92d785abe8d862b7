"""The agent's side of sessions: a pty shell (or a port forward) joined to the server.

On `SessionStart` (over the control channel) the agent opens a second outbound
WebSocket, `/agent/v1/sessions/{id}`, proving it is the node with a signed upgrade
request (the same CorralNode signature as its API calls), starts a shell on a pty
(`corral.agent.pty_session`) and pumps bytes both ways as `corral.protocol.streams`
frames through a `corral.sessions.link.Link`: the shell's output as DATA on stream
1, keystrokes arriving as DATA on stream 0, RESIZE to the pty, and, once the
operator has received every byte of output, EXIT with the shell's status. The pty
is read only while the output window has room (bytes the operator has not
acknowledged), so a flood of output is throttled by the kernel's pty buffer, not
queued in memory here. If the data connection drops, the shell keeps running and
the link reconnects for up to the grace period the server gave in `SessionStart`,
then carries on without losing or repeating a byte. A port
session (`kind` "port") joins the same way and is then served by
`corral.agent.port_forward`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from corral.agent.api import connect_back
from corral.agent.identity import Identity
from corral.agent.port_forward import PortForward
from corral.agent.pty_session import PtySession, SessionLimits, default_session_user
from corral.errors import CorralError, ProtocolError
from corral.protocol import streams
from corral.protocol.messages import SessionStart, SessionTerminate
from corral.sessions.link import Connector, LinkClosed, ShellLink

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
        retry_cap: float = 1.0,
    ) -> None:
        self._identity = identity
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._retry_cap = retry_cap
        self._default_user = default_user
        self._running: dict[str, asyncio.Task[None]] = {}
        self._shells: dict[str, PtySession] = {}

    def running(self) -> list[str]:
        """The ids of the sessions this process runs now (told to the server on connect)."""
        return list(self._running)

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

    def _connect(self, identity: Identity, session_id: str) -> Any:
        return connect_back(
            identity,
            f"/agent/v1/sessions/{session_id}",
            self._tls(),
            self._connect_timeout,
            2 * streams.DEFAULT_MAX_PAYLOAD,
        )

    async def _run(self, start: SessionStart) -> None:
        identity = self._identity()
        if identity is None:
            return
        if start.kind == "shell":
            await self._run_shell(identity, start)
        elif start.kind == "port" and start.host is not None and start.port is not None:
            logger.info(
                "port session started session_id=%s target=%s:%d",
                start.session_id,
                start.host,
                start.port,
            )
            await PortForward(start, self._connect_timeout).run(
                lambda: self._connect(identity, start.session_id),
                start.resume_grace_seconds,
                self._retry_cap,
            )
            logger.info("port session ended session_id=%s", start.session_id)
        else:
            logger.warning(
                "refusing session_id=%s: unknown kind %r", start.session_id, start.kind[:20]
            )
            await self._refuse(
                identity, start, f"this agent does not run {start.kind[:20]!r} sessions"
            )

    async def _refuse(self, identity: Identity, start: SessionStart, reason: str) -> None:
        """Join the session only to end it with `reason` (the operator reads it)."""
        try:
            async with self._connect(identity, start.session_id) as ws:
                await ws.send(streams.encode(streams.ExitFrame(-1, streams.safe_reason(reason))))
        except (OSError, ConnectionClosed, TimeoutError, InvalidHandshake) as error:
            logger.warning(
                "session connection failed session_id=%s error=%s", start.session_id, error
            )

    async def _run_shell(self, identity: Identity, start: SessionStart) -> None:
        """A shell on a pty, joined to the server by a `Link` that survives drops."""
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
                profile=start.profile or None,
                limits=SessionLimits(
                    idle_timeout_seconds=start.idle_timeout_seconds,
                    max_duration_seconds=start.max_duration_seconds,
                ),
            )
        except CorralError as error:
            logger.warning(
                "session refused session_id=%s error=%s", start.session_id, error.message
            )
            await self._refuse(identity, start, error.message)
            return
        self._shells[start.session_id] = shell
        logger.info(
            "session started session_id=%s user=%s pid=%d", start.session_id, shell.user, shell.pid
        )

        async def deliver(data: bytes) -> None:
            with contextlib.suppress(CorralError, OSError):  # the shell is gone: EXIT follows
                await shell.write(data)

        async def on_control(frame: streams.Frame) -> bool:
            if isinstance(frame, streams.ResizeFrame):
                shell.resize(frame.cols, frame.rows)
                return False
            if isinstance(frame, streams.ExitFrame):
                return True  # the server ended the session
            raise ProtocolError(f"unexpected {type(frame).__name__} in a shell session")

        def on_state(state: str) -> None:
            logger.info("session connection %s session_id=%s", state, start.session_id)

        link = ShellLink(
            Connector(
                lambda: self._connect(identity, start.session_id),
                start.resume_grace_seconds,
                self._retry_cap,
                on_state,
            ),
            send_stream=OUTPUT,
            receive_stream=INPUT,
            deliver=deliver,
            on_control=on_control,
        )
        output = asyncio.create_task(self._pump_output(shell, link))
        try:
            await link.run()
        except LinkClosed as error:
            logger.warning("session over session_id=%s: %s", start.session_id, error.reason)
        except ProtocolError as error:
            logger.warning("session protocol error session_id=%s: %s", start.session_id, error)
        except (OSError, ConnectionClosed, TimeoutError, InvalidHandshake) as error:
            logger.warning(
                "session connection failed session_id=%s error=%s", start.session_id, error
            )
        finally:
            output.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await output
            self._shells.pop(start.session_id, None)
            with contextlib.suppress(CorralError, OSError):
                await shell.terminate()
            code = await shell.wait()
            logger.info("session ended session_id=%s status=%d", start.session_id, code)

    @staticmethod
    async def _pump_output(shell: PtySession, link: ShellLink) -> None:
        """The shell's output to the operator; then, once all of it arrived, its EXIT."""
        while True:
            data = await shell.read(READ_BYTES)
            if not data:
                break
            await link.write(data)  # waits while the window is full: backpressure
        await link.close_output()
        await link.drained()
        code = await shell.wait()
        reason = shell.ended_reason or f"the shell exited with status {code}"
        await link.send_control(streams.ExitFrame(code, streams.safe_reason(reason)))
