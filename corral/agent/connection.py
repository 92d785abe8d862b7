"""The agent's one outbound WebSocket: handshake, heartbeat, reconnect with backoff.

Rules:
* URL: the server URL with http->ws, https->wss and the path /agent/v1/connect.
  websockets honours HTTPS_PROXY/NO_PROXY (proxy=True) for it.
* Server sends Hello(nonce); the agent answers Auth (nonce signed with the node key
  plus NodeInfo); the server answers Welcome, or ErrorMessage and closes.
* After any disconnect the agent waits a random time in [0, min(cap, base * 2**n)]
  (full jitter) and retries; a Welcome resets n. A refused authentication (the node
  was deregistered) is logged as an error and retried at the cap.
* wss:// is verified as tls.py says (a pinned CA, a CA file or the system store),
  on every connection attempt; a certificate that fails is logged as an error and
  the attempt counts as a failed connection (the backoff goes on).
* `Agent` holds no globals and installs no signal handlers, so one process can
  host many (see swarm.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from corral.agent.identity import Identity, load_identity
from corral.agent.nodeinfo import collect_node_info
from corral.agent.options import AgentOptions
from corral.agent.runner import Runner, Send, offload
from corral.agent.tls import ServerTrust, certificate_error, trust_from_ca_file, untrusted_message
from corral.errors import AuthError, ProtocolError, UnavailableError
from corral.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    SERVER_MESSAGES,
    Auth,
    ErrorMessage,
    Heartbeat,
    Hello,
    Message,
    Welcome,
    auth_payload,
    codec,
)
from corral.protocol.messages import SessionStart, SessionTerminate, TransferStart

logger = logging.getLogger(__name__)

CONNECT_PATH = "/agent/v1/connect"
# Frames from the server may be bigger than our own limit before Welcome tells us its own.
_RECEIVE_LIMIT = 16 * DEFAULT_MAX_MESSAGE_BYTES


def channel_url(server_url: str) -> str:
    """The agent channel's WebSocket URL for a server's HTTP(S) base URL."""
    parts = urllib.parse.urlsplit(server_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"server URL must be http(s)://host[:port], not {server_url!r}")
    path = parts.path.rstrip("/") + CONNECT_PATH
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


SESSION_RETRY_CAP = 2.0  # the longest wait between a session's reconnect attempts


def backoff_delay(attempt: int, base: float, cap: float, rand: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = cap if attempt >= 64 else min(cap, base * (2**attempt))
    return rand.uniform(0, ceiling)


class Agent:
    """One agent instance: its identity, runner and connection loop."""

    def __init__(
        self,
        state_dir: Path,
        options: AgentOptions,
        rand: random.Random | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.options = options
        self._ca_file = ca_file
        self._trust: ServerTrust | None = None
        self._ssl: ssl.SSLContext | None = None
        self.runner = Runner(state_dir, options)
        self.connected = asyncio.Event()
        self.connections = 0
        self._rand = rand or random.Random()  # noqa: S311 - jitter, not secrets
        self._stopping = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._identity: Identity | None = None
        self._session_task: asyncio.Task[None] | None = None
        # Interactive sessions; created on the first SessionStart (most agents never
        # see one, and the pty code need not be loaded until then).
        self._sessions: Any = None
        # File transfers (`corral cp`); created on the first TransferStart.
        self._transfers: Any = None

    async def run(self) -> None:
        """Connect and serve until `stop()`; raises ValidationError if not registered."""
        self._identity = load_identity(self.state_dir)
        url = channel_url(self._identity.server_url)
        self._trust = self._identity.trust
        if self._ca_file is not None:
            self._trust = trust_from_ca_file(self._ca_file)
        if url.startswith("wss:"):
            self._ssl = self._trust.context()
            logger.info("server certificates are checked against %s", self._trust.describe())
        elif self._ca_file is not None:
            logger.warning("--ca-file is ignored: the server URL %s is not https", url)
        await self.runner.start()
        attempt = 0
        try:
            while not self._stopping.is_set():
                delay_at_cap = False
                welcomed_before = self.connections
                self._session_task = asyncio.create_task(self._session(url))
                try:
                    await self._session_task
                except asyncio.CancelledError:
                    if not self._stopping.is_set():
                        raise
                except AuthError as exc:
                    logger.error(
                        "node_id=%s: server refused the agent's identity (%s); is the node "
                        "still registered? retrying every ~%.0fs",
                        self._identity.node_id,
                        exc.message,
                        self.options.backoff_cap,
                    )
                    delay_at_cap = True
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                    untrusted = certificate_error(exc)
                    if untrusted is not None and self._trust is not None:
                        logger.error(
                            "node_id=%s: refusing the server: %s; retrying",
                            self._identity.node_id,
                            untrusted_message(url, self._trust, untrusted),
                        )
                    else:
                        logger.warning("cannot connect to %s: %s", url, _describe(exc))
                except (ConnectionClosed, ProtocolError, UnavailableError) as exc:
                    if self._stopping.is_set():
                        logger.debug("connection closed on shutdown: %s", _describe(exc))
                    else:
                        logger.warning("connection to %s lost: %s", url, _describe(exc))
                finally:
                    self._session_task = None
                    self.connected.clear()
                    self.runner.detach()
                    self._ws = None
                if self.connections > welcomed_before:
                    attempt = 0
                if self._stopping.is_set():
                    break
                if delay_at_cap:
                    cap = self.options.backoff_cap
                    delay = self._rand.uniform(cap / 2, cap)
                else:
                    delay = backoff_delay(
                        attempt, self.options.backoff_base, self.options.backoff_cap, self._rand
                    )
                    attempt += 1
                logger.debug("reconnecting in %.2fs", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            if self._sessions is not None:
                await self._sessions.close()
            if self._transfers is not None:
                await self._transfers.close()
            await self.runner.close()

    async def stop(self) -> None:
        """Stop accepting work and close the connection; running workers keep running."""
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            await ws.close()
        task = self._session_task
        if task is not None and not task.done():
            task.cancel()

    async def _session(self, url: str) -> None:
        assert self._identity is not None
        tls: dict[str, Any] = {} if self._ssl is None else {"ssl": self._ssl}
        async with connect(
            url,
            open_timeout=self.options.connect_timeout,
            max_size=_RECEIVE_LIMIT,
            close_timeout=self.options.connect_timeout,
            **tls,
        ) as ws:
            self._ws = ws
            if self._stopping.is_set():
                return
            welcome = await self._handshake(ws, self._identity)
            self.connections += 1
            logger.info(
                "connected to %s as node_id=%s heartbeat=%ss",
                url,
                welcome.node_id,
                welcome.heartbeat_seconds,
            )
            limit = max(welcome.max_message_bytes, 1024)

            async def send(message: Message) -> None:
                try:
                    await ws.send(codec.encode(message))
                except ConnectionClosed as exc:
                    raise UnavailableError("connection closed") from exc

            self.runner.attach(send)
            self.connected.set()
            heartbeat = asyncio.create_task(self._heartbeat(send, welcome.heartbeat_seconds))
            try:
                async for frame in ws:
                    try:
                        message = codec.decode(frame, SERVER_MESSAGES, limit)
                    except ProtocolError as exc:
                        logger.warning("dropping a bad frame from the server: %s", exc.message)
                        continue
                    if isinstance(message, ErrorMessage):
                        logger.warning("server error %s: %s", message.code, message.message)
                        continue
                    if isinstance(message, (SessionStart, SessionTerminate)):
                        await self._session_manager().handle(message)
                        continue
                    if isinstance(message, TransferStart):
                        await self._transfer_manager().handle(message)
                        continue
                    await self.runner.handle(message)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError, UnavailableError):
                    await heartbeat

    def _session_manager(self) -> Any:
        if self._sessions is None:
            from corral.agent.sessions import SessionManager

            self._sessions = SessionManager(
                lambda: self._identity,
                lambda: self._ssl,
                self.options.connect_timeout,
                # A session is interactive: its reconnect waits stay short.
                retry_cap=min(self.options.backoff_cap, SESSION_RETRY_CAP),
            )
        return self._sessions

    def _transfer_manager(self) -> Any:
        if self._transfers is None:
            from corral.agent.transfer import TransferManager

            self._transfers = TransferManager(
                lambda: self._identity, lambda: self._ssl, self.options.connect_timeout
            )
        return self._transfers

    async def _handshake(self, ws: ClientConnection, identity: Identity) -> Welcome:
        hello = codec.decode(await ws.recv(), SERVER_MESSAGES, _RECEIVE_LIMIT)
        if not isinstance(hello, Hello):
            raise ProtocolError(f"expected hello, got {hello.TYPE}")
        if PROTOCOL_VERSION not in hello.protocol_versions:
            raise ProtocolError(f"server does not speak protocol version {PROTOCOL_VERSION}")
        info = await offload(collect_node_info)
        auth = Auth(
            node_id=identity.node_id,
            signature=identity.sign(auth_payload(hello.nonce, identity.node_id)),
            protocol_version=PROTOCOL_VERSION,
            info=info,
            sessions=[] if self._sessions is None else self._sessions.running(),
        )
        await ws.send(codec.encode(auth))
        try:
            reply = codec.decode(await ws.recv(), SERVER_MESSAGES, _RECEIVE_LIMIT)
        except ConnectionClosed as exc:
            raise AuthError("server closed the connection during authentication") from exc
        if isinstance(reply, ErrorMessage):
            if reply.code in ("auth_failed", "auth_required", "unknown_node"):
                raise AuthError(f"{reply.code}: {reply.message}")
            raise ProtocolError(f"server refused the connection: {reply.code}: {reply.message}")
        if not isinstance(reply, Welcome):
            raise ProtocolError(f"expected welcome, got {reply.TYPE}")
        return reply

    async def _heartbeat(self, send: Send, interval: float) -> None:
        while True:
            await asyncio.sleep(max(interval, 0.01))
            await send(Heartbeat())


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
