"""A minimal agent for tests, built from corral.protocol, websockets and PyNaCl."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect

from corral.protocol import (
    PROTOCOL_VERSION,
    SERVER_MESSAGES,
    Auth,
    Hello,
    Message,
    NodeInfo,
    Output,
    Result,
    StepResult,
    Welcome,
    auth_payload,
    decode,
    encode,
)

INFO = NodeInfo("test-host", "Linux", "debian", "12", "6.1.0", "x86_64", ["10.0.0.9"], "0.1.0")


@dataclass
class FakeAgent:
    """One authenticated agent connection."""

    ws: ClientConnection
    node_id: str
    auth_frame: str

    async def send(self, message: Message) -> None:
        """Send one message."""
        await self.ws.send(encode(message))

    async def recv(self, timeout: float = 10.0) -> Message:
        """The next message from the server."""
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        return decode(frame, SERVER_MESSAGES)

    async def expect(self, kind: type[Message], timeout: float = 10.0) -> Message:
        """The next message, which must be of type `kind`."""
        message = await self.recv(timeout)
        assert isinstance(message, kind), message
        return message

    async def finish(
        self, command_id: str, stdout: bytes = b"", status: str = "Success", code: int = 0
    ) -> None:
        """Report output and a result for an invocation."""
        if stdout:
            await self.send(Output(command_id, "stdout", 0, stdout))
        await self.send(
            Result(
                command_id=command_id,
                status=status,
                status_details=status,
                response_code=code,
                stdout_bytes=len(stdout),
                stderr_bytes=0,
                steps=[StepResult("runShellScript", status, code)],
            )
        )

    async def close(self) -> None:
        """Close the connection."""
        await self.ws.close()


async def connect_agent(
    url: str, node_id: str, key: SigningKey, info: NodeInfo = INFO
) -> FakeAgent:
    """Connect and authenticate; returns the agent after the server's welcome."""
    ws = await connect(url, max_size=None)
    hello = decode(await ws.recv(), SERVER_MESSAGES)
    assert isinstance(hello, Hello)
    signature = key.sign(auth_payload(hello.nonce, node_id)).signature
    frame = encode(Auth(node_id, signature, PROTOCOL_VERSION, info))
    await ws.send(frame)
    agent = FakeAgent(ws, node_id, frame)
    await agent.expect(Welcome)
    return agent


async def open_raw(url: str) -> tuple[ClientConnection, Hello]:
    """Open a connection and read the hello (for tests that misbehave on purpose)."""
    ws = await connect(url, max_size=None)
    hello = decode(await ws.recv(), SERVER_MESSAGES)
    assert isinstance(hello, Hello)
    return ws, hello
