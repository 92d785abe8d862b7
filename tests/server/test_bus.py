"""The in-process node bus."""

from __future__ import annotations

from corral.bus import InProcessBus
from corral.protocol import Cancel, Message


async def test_publish_reaches_the_current_subscriber_only() -> None:
    bus = InProcessBus()
    events: list[tuple[str, bool]] = []
    bus.add_presence_listener(lambda node, up: events.append((node, up)))
    got_old: list[Message] = []
    got_new: list[Message] = []

    async def old(message: Message) -> None:
        got_old.append(message)

    async def new(message: Message) -> None:
        got_new.append(message)

    assert await bus.publish("n1", Cancel("c")) is False
    first = bus.subscribe("n1", old)
    assert bus.is_connected("n1")
    assert await bus.publish("n1", Cancel("c1")) is True
    second = bus.subscribe("n1", new)  # a reconnect replaces the old connection
    first.close()  # closing the replaced one does not drop the new one
    assert bus.is_connected("n1")
    assert await bus.publish("n1", Cancel("c2")) is True
    second.close()
    assert not bus.is_connected("n1")
    assert await bus.publish("n1", Cancel("c3")) is False
    assert got_old == [Cancel("c1")]
    assert got_new == [Cancel("c2")]
    assert events == [("n1", True), ("n1", True), ("n1", False)]


async def test_failed_delivery_reports_false() -> None:
    bus = InProcessBus()

    async def broken(message: Message) -> None:
        raise ConnectionResetError

    bus.subscribe("n1", broken)
    assert await bus.publish("n1", Cancel("c")) is False
    await bus.close()
    assert not bus.is_connected("n1")
