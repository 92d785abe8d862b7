"""The agent's side of port sessions: one TCP connection from the node per OPEN.

A port session (`corral session forward`, `session proxy`) joins the server like a
shell (`corral.agent.sessions`) and says so with an empty RESUME as its first frame
(the server lets nothing through before it). Then it serves frames instead of a pty:
for each OPEN naming the session's target it connects there (`CONNECT_TIMEOUT`,
every address the name resolves to, in order) and carries the connection with a
`corral.sessions.tunnel.Tunnel`; a connection that cannot be made is answered with
OPEN_FAILED and the reason ("connection refused", "timed out"). At most
`MAX_STREAMS` connections are open at once; more are refused with a reason that
says so. An OPEN for any other target is refused too (the server checks the same:
the session was authorised for that target only). The session ends when the server
says so (EXIT, or the connection closes for good), or after its maximum duration if
it has one. A dropped connection is replaced within the grace period the server
gave, and every carried connection goes on (`corral.sessions.tunnel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from corral.errors import ProtocolError
from corral.protocol import streams
from corral.protocol.messages import SessionStart
from corral.sessions.link import Connector, LinkClosed
from corral.sessions.tunnel import (
    MAX_STREAMS,
    Endpoint,
    SocketEndpoint,
    Tunnel,
    TunnelLink,
    describe,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_LIMIT = 256 * 1024  # the socket reader's buffer: bounded, a few frames' worth
MAX_DURATION_REASON = "maximum duration reached"


async def connect(host: str, port: int) -> Endpoint:
    """A connection to `host`:`port`, trying each address in turn; OSError names the cause.

    asyncio would report several failed addresses ("localhost" is ::1 and 127.0.0.1)
    as one "Multiple exceptions" text; trying them here keeps each error's errno, so
    the operator reads "connection refused", not a list.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    first: OSError | None = None
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException as error:
            sock.close()
            if not isinstance(error, OSError):
                raise  # cancelled (the connect timeout): the socket is not leaked
            first = first or error
            continue
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
        return SocketEndpoint(reader, writer)
    raise first or OSError(f"{host} has no address")


class PortForward:
    """One port session on this node."""

    def __init__(
        self,
        start: SessionStart,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        if start.host is None or start.port is None:
            raise ValueError("a port session needs its target host and port")
        self._session_id = start.session_id
        self._target = (start.host, start.port)
        self._max_duration = start.max_duration_seconds
        self._connect_timeout = connect_timeout
        self._max_streams = max_streams
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(
        self,
        connect: Callable[[], Any],
        grace: float = 0.0,
        retry_cap: float = 1.0,
    ) -> None:
        """Serve the session until it ends, reconnecting a dropped connection within
        `grace` seconds; closes every connection at the end."""
        link = TunnelLink(
            Connector(
                connect,
                grace,
                retry_cap,
                lambda state: logger.info(
                    "port session connection %s session_id=%s", state, self._session_id
                ),
            ),
            on_open=lambda frame: self._open(link, frame),
            hello=[streams.ResumeFrame()],  # "ready, and I serve port sessions"
        )

        async def watchdog(seconds: float) -> None:
            await asyncio.sleep(seconds)
            logger.info("port session reached its maximum duration session_id=%s", self._session_id)
            await link.send(streams.ExitFrame(-1, MAX_DURATION_REASON))
            await link.close()

        limit = (
            None
            if self._max_duration is None
            else asyncio.create_task(watchdog(self._max_duration))
        )
        try:
            await link.run()
        except ProtocolError as error:
            logger.warning(
                "port session protocol error session_id=%s code=%s message=%s",
                self._session_id,
                error.code,
                error.message,
            )
        except LinkClosed as error:
            logger.warning("port session over session_id=%s: %s", self._session_id, error.reason)
        except (ConnectionClosed, OSError, InvalidHandshake) as error:
            logger.warning(
                "port session connection failed session_id=%s error=%s", self._session_id, error
            )
        finally:
            if limit is not None:
                limit.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _open(self, link: TunnelLink, frame: streams.OpenFrame) -> None:
        tunnel = link.tunnel
        again = tunnel.repeated_open(frame.stream)
        if again is not None:  # sent again after a resume: answer, never reconnect
            for answer in again:
                await link.send(answer)
            return
        host, port = self._target
        if (frame.host, frame.port) != self._target:
            reason = f"this session may only open {host}:{port}"
        elif len(tunnel) >= self._max_streams:
            reason = f"too many connections: at most {self._max_streams} at once in a session"
        else:
            tunnel.expect(frame.stream)
            task = asyncio.create_task(self._carry(tunnel, frame.stream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        await tunnel.refuse(frame.stream, reason)

    async def _carry(self, tunnel: Tunnel, stream: int) -> None:
        host, port = self._target
        try:
            async with asyncio.timeout(self._connect_timeout):
                endpoint = await connect(host, port)
        except OSError as error:  # TimeoutError included
            reason = f"cannot connect from the node: {describe(error)}"
            logger.info(
                "port session connect failed session_id=%s stream=%d reason=%s",
                self._session_id,
                stream,
                reason,
            )
            with contextlib.suppress(ConnectionClosed, OSError):
                await tunnel.refuse(stream, reason)
            return
        failure = await tunnel.carry(stream, endpoint)
        logger.debug(
            "port session connection ended session_id=%s stream=%d failure=%s",
            self._session_id,
            stream,
            failure,
        )
