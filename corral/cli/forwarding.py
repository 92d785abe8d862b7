"""The operator's side of port sessions: `corral session forward` and `session proxy`.

Both run a `corral.sessions.tunnel.Tunnel` over the session's stream connection.
`forward` accepts connections on a local listening socket and opens a stream for
each (ids 1, 2, 3, ... in accept order), so one session carries many concurrent
connections; `proxy` opens one stream and pipes this process's stdin and stdout
through it, which is what OpenSSH's ProxyCommand expects. A connection the node
could not make (or that broke) is closed here and its reason printed on stderr.
SIGINT, SIGTERM and SIGHUP end the session cleanly: the CLI sends EXIT, and the
server records it as closed by the operator. If the connection to the server drops,
the session reconnects within the server's grace period and every carried
connection goes on where it was (`corral.sessions.tunnel.TunnelLink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from corral.cli.client import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from corral.errors import ProtocolError
from corral.protocol import streams
from corral.sessions.link import LOST, Connector, LinkClosed
from corral.sessions.tunnel import MAX_STREAMS, Endpoint, SocketEndpoint, TunnelLink

logger = logging.getLogger(__name__)

READ_LIMIT = 256 * 1024
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PROXY_DRAIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where a port session's connections go, as seen from the node."""

    node_id: str
    session_id: str
    host: str
    port: int


def listen(bind: str, port: int) -> socket.socket:
    """A non-blocking listening socket on `bind`:`port` (0: any free port)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    try:
        listener = socket.create_server((bind, port), family=family, backlog=128)
    except OSError as error:
        raise CliError(
            f"cannot listen on {bind}:{port}: {error.strerror or error}", exit_code=EXIT_USAGE
        ) from None
    listener.setblocking(False)
    return listener


def is_loopback(bind: str) -> bool:
    """True when `bind` is a loopback address ("localhost" counts)."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def retry_cap(grace: float) -> float:
    """The longest wait between the CLI's reconnect attempts: short, and shorter for a
    short grace period, so several attempts fit in it."""
    return min(2.0, max(0.1, grace / 10))


def _warn(message: str) -> None:
    sys.stderr.write(f"corral: {message}\n")
    sys.stderr.flush()


class _Session:
    """The stream connection of one port session, with its tunnel and its tasks."""

    def __init__(self, connect: Callable[[], Any], target: Target, grace: float) -> None:
        self.target = target
        self.link = TunnelLink(Connector(connect, grace, retry_cap(grace), self._on_state))
        self.tunnel = self.link.tunnel
        self.grace = grace
        self.tasks: set[asyncio.Future[object]] = set()
        self.stop = asyncio.Event()
        self.ended_reason: str | None = None
        self.lost = False  # the session could not be resumed (exit status 5)

    def _on_state(self, state: str) -> None:
        if state == LOST:
            _warn(
                f"connection to the server lost; reconnecting (the session waits {self.grace:g} s)"
            )
        else:
            _warn("reconnected; every connection carries on")

    async def send(self, frame: streams.Frame) -> None:
        await self.link.send(frame)

    def spawn(self, coroutine: Awaitable[object]) -> None:
        task: asyncio.Future[object] = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def open(self, stream: int) -> None:
        """Send OPEN for `stream` to the session's target.

        Called by one task at a time, in stream order: the server insists on growing ids.
        """
        await self.link.ready.wait()  # an OPEN needs the session's first connection
        await self.tunnel.open(stream, self.target.host, self.target.port)

    async def carry(self, stream: int, endpoint: Endpoint, label: str) -> str | None:
        """Carry `endpoint` through the opened `stream`; prints why it failed, if it did."""
        failure = await self.tunnel.carry(stream, endpoint)
        if failure is not None:
            _warn(f"{label}: {failure}")
        return failure

    async def receive(self) -> None:
        """The session's connection, kept until the session ends (EXIT, or for good)."""
        try:
            await self.link.run()
        except ProtocolError as error:
            self.ended_reason = f"the server broke the session protocol: {error.message}"
            return
        except LinkClosed as error:
            self.ended_reason = error.reason
            self.lost = not error.refused
            return
        self.ended_reason = self.link.ended_reason or "the session connection closed"

    async def run(self, main: Awaitable[None], drain_seconds: float = 0.0) -> int:
        """Run `main` and the receiver until either ends or a stop signal; tidy up.

        After a stop signal, `main` gets up to `drain_seconds` to finish by itself.
        """
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.add_signal_handler(sig, self.stop.set)
        receiver = asyncio.ensure_future(self.receive())
        worker = asyncio.ensure_future(main)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({receiver, worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper.done() and not worker.done() and drain_seconds > 0:
                await asyncio.wait(
                    {receiver, worker}, timeout=drain_seconds, return_when=asyncio.FIRST_COMPLETED
                )
            if receiver.done():
                receiver.result()  # the first connection's errors are the caller's to report
                _warn(f"session ended: {self.ended_reason}")
                return EXIT_UNAVAILABLE if self.lost else EXIT_FAILED
            error = worker.exception() if worker.done() else None
            if error is not None:
                raise error
            with contextlib.suppress(Exception):
                await self.send(streams.ExitFrame(0, "closed by the operator"))
            await self.link.close()
            return 0
        finally:
            for sig in _STOP_SIGNALS:
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
            pending: list[asyncio.Future[Any]] = [receiver, worker, stopper, *self.tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def serve_forward(
    connect: Callable[[], Any],
    grace: float,
    listener: socket.socket,
    target: Target,
    announce: Callable[[], None],
) -> int:
    """`session forward`: carry every connection accepted on `listener` until stopped."""
    session = _Session(connect, target, grace)
    with listener:
        announce()
        return await session.run(_accept(session, listener))


async def _accept(session: _Session, listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stream = 0
    where = f"{session.target.host}:{session.target.port}"
    while True:
        conn, peer = await loop.sock_accept(listener)
        if len(session.tunnel) >= MAX_STREAMS:
            _warn(f"refused a connection from {peer[0]}: {MAX_STREAMS} connections are open")
            conn.close()
            continue
        stream += 1
        reader, writer = await asyncio.open_connection(sock=conn, limit=READ_LIMIT)
        endpoint = SocketEndpoint(reader, writer)
        try:
            await session.open(stream)  # here, not in the task: OPENs leave in id order
        except BaseException:
            endpoint.abort()
            raise
        label = f"connection {stream} to {where} on {session.target.node_id}"
        session.spawn(session.carry(stream, endpoint, label))


async def serve_proxy(connect: Callable[[], Any], grace: float, target: Target) -> int:
    """`session proxy`: one connection, this process's stdin and stdout as its local end."""
    session = _Session(connect, target, grace)
    endpoint = await PipeEndpoint.open(sys.stdin.fileno(), sys.stdout.fileno())
    outcome: list[str | None] = []

    async def one() -> None:
        label = f"{target.host}:{target.port} on {target.node_id}"
        await session.open(1)
        outcome.append(await session.carry(1, endpoint, label))

    try:
        # ssh sends SIGHUP as it exits, when the connection is usually closing already:
        # let it end cleanly, so it is recorded as closed rather than cut off.
        code = await session.run(one(), drain_seconds=PROXY_DRAIN_SECONDS)
    finally:
        endpoint.restore()
    if code == 0 and outcome and outcome[0] is not None:
        return EXIT_FAILED
    return code


class PipeEndpoint:
    """stdin and stdout as one connection's local end (`session proxy`).

    Pipes and sockets are handed to the event loop as copies, and the standard
    descriptors pointed at /dev/null: closing the loop's copy of stdout then really
    closes it, so the reader (ssh) sees the end of the connection. A terminal stays
    shared (its blocking mode is restored at the end). A regular file or /dev/null,
    which epoll refuses, is read or written in a worker thread, where those calls
    return at once.
    """

    def __init__(self) -> None:
        self._stdin = -1
        self._stdout = -1
        self._reader: asyncio.StreamReader | None = None
        self._read_transport: asyncio.ReadTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._terminals: dict[int, bool] = {}

    @classmethod
    async def open(cls, stdin: int, stdout: int) -> PipeEndpoint:
        """Attach to the two descriptors."""
        loop = asyncio.get_running_loop()
        endpoint = cls()
        endpoint._stdin, endpoint._stdout = stdin, stdout
        if _pollable(stdin):
            reader = asyncio.StreamReader(limit=READ_LIMIT)
            endpoint._read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), endpoint._watched(stdin, "rb")
            )
            endpoint._reader = reader
        if _pollable(stdout):
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
                endpoint._watched(stdout, "wb"),
            )
            endpoint._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return endpoint

    def _watched(self, fd: int, mode: str) -> Any:
        """The file the loop watches for `fd` (see the class docstring)."""
        if os.isatty(fd):
            self._terminals[fd] = os.get_blocking(fd)
            return os.fdopen(fd, mode, buffering=0, closefd=False)
        copy = os.dup(fd)
        try:
            file = os.fdopen(copy, mode, buffering=0)
        except BaseException:
            os.close(copy)
            raise
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
        if fd == self._stdin:
            self._stdin = copy
        return file

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of stdin; b"" at end of file."""
        if self._reader is not None:
            return await self._reader.read(limit)
        return await asyncio.to_thread(os.read, self._stdin, limit)

    async def write(self, data: bytes) -> None:
        """Write to stdout and wait until it was taken."""
        if self._writer is not None:
            if self._writer.is_closing():
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
            self._writer.write(data)
            await self._writer.drain()
            return
        view = memoryview(data)
        while view:
            written = await asyncio.to_thread(os.write, self._stdout, view)
            view = view[written:]

    async def write_eof(self) -> None:
        """Close stdout (after what is pending): the reader sees the end of the connection."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()

    def abort(self) -> None:
        """Stop reading and writing now."""
        if self._read_transport is not None:
            self._read_transport.close()
        if self._writer is not None:
            self._writer.transport.abort()

    async def close(self) -> None:
        """Both directions ended."""
        if self._read_transport is not None:
            self._read_transport.close()
        await self.write_eof()

    def restore(self) -> None:
        """Give terminals back in the blocking mode they had (the loop changed it)."""
        for fd, blocking in self._terminals.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, blocking)


def _pollable(fd: int) -> bool:
    """A pipe, a socket or a terminal (epoll refuses regular files and /dev/null)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)
