"""Many agent instances in one event loop (each with its own state dir, identity, connection).

Used by benchmarks to simulate a fleet, like Salt's minion swarm.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from corral.agent.connection import Agent
from corral.agent.options import AgentOptions

logger = logging.getLogger(__name__)


async def run_swarm(
    state_dirs: list[Path], options: AgentOptions, stop: asyncio.Event | None = None
) -> None:
    """Run one Agent per state directory until `stop` is set (or forever), then stop them all."""
    agents = [Agent(path, options) for path in state_dirs]
    tasks = [asyncio.create_task(agent.run(), name=f"agent-{i}") for i, agent in enumerate(agents)]
    waiter = asyncio.create_task((stop or asyncio.Event()).wait())
    remaining: set[asyncio.Task[None]] = set(tasks)
    try:
        while remaining:
            done, _ = await asyncio.wait([waiter, *remaining], return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                break
            for task in done:
                remaining.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    logger.error("agent %s stopped: %s", task.get_name(), task.exception())
    finally:
        waiter.cancel()
        await asyncio.gather(*(agent.stop() for agent in agents), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
