"""The agent WebSocket protocol keeps reading while the app keeps up, and pauses otherwise."""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.server import ServerState

from corral.server.wsprotocol import AgentWebSocketProtocol


class _Transport:
    """Records pause/resume calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


async def _app(scope: object, receive: object, send: object) -> None:
    """Never called: frames are fed to the protocol directly."""


def _protocol() -> tuple[AgentWebSocketProtocol, _Transport]:
    config = uvicorn.Config(_app, ws=AgentWebSocketProtocol)
    config.load()
    protocol = AgentWebSocketProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = _Transport()
    protocol.transport = transport  # type: ignore[assignment]
    return protocol, transport


def _frame(protocol: AgentWebSocketProtocol, text: str) -> None:
    protocol.curr_msg_data_type = "text"
    protocol.frames = [text.encode()]
    protocol.send_receive_event_to_app()


async def test_reading_goes_on_while_the_app_keeps_up() -> None:
    protocol, transport = _protocol()
    for i in range(3):
        _frame(protocol, f"m{i}")
        assert (await protocol.receive()) == {"type": "websocket.receive", "text": f"m{i}"}
    assert transport.calls == []


async def test_reading_pauses_while_a_frame_waits_and_resumes_when_taken() -> None:
    protocol, transport = _protocol()
    _frame(protocol, "a")
    _frame(protocol, "b")  # "a" still queued: stop reading the socket
    _frame(protocol, "c")
    assert transport.calls == ["pause"]
    taken = [await protocol.receive() for _ in range(3)]
    assert [dict(event).get("text") for event in taken] == ["a", "b", "c"]
    assert transport.calls == ["pause", "resume"]
    _frame(protocol, "d")
    assert transport.calls == ["pause", "resume"]
