"""A command runs end to end on each database backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from corral.protocol import Accepted, Invoke, Output, ResultAck
from tests.server.agentclient import INFO, connect_agent
from tests.server.conftest import fast_config, live_server
from tests.server.test_gateway import register, send_command, wait_command


async def test_command_round_trip(database_url: str, tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data", database_url=database_url)
    async with live_server(config) as live, live.client() as client:
        linux, key_linux = await register(client, {"role": "web"})
        windows, key_windows = await register(client, {"role": "web"})
        agent = await connect_agent(live.ws_url, linux, key_linux)
        other = await connect_agent(
            live.ws_url, windows, key_windows, dataclasses.replace(INFO, platform_type="Windows")
        )
        command_id = await send_command(client, ["tag:role=web"])
        invoke = await agent.expect(Invoke)
        assert invoke.command_id == command_id  # type: ignore[attr-defined]
        assert "echo hi" in invoke.steps[0].script  # type: ignore[attr-defined]
        await agent.send(Accepted(command_id))
        await agent.send(Output(command_id, "stdout", 0, "héllo\n".encode()))
        await agent.finish(command_id, b"")  # stdout_bytes 0 < stored: still fine
        await agent.expect(ResultAck)
        body = await wait_command(client, command_id, "Failed")
        by_node = {i["node_id"]: i for i in body["invocations"]}  # type: ignore[attr-defined]
        assert by_node[linux]["status"] == "Success"
        assert by_node[linux]["stdout"] == "héllo\n"
        assert (by_node[windows]["status"], by_node[windows]["status_details"]) == (
            "Failed",
            "InvalidPlatform",
        )
        # InvalidPlatform does not count against MaxErrors.
        assert body["error_count"] == 0
        page = (
            await client.get(
                f"/api/v1/commands/{command_id}/invocations/{linux}/output",
                params={"limit": 2},
            )
        ).json()
        assert (page["data"], page["next_offset"]) == ("h", 1)
        await other.close()
        await agent.close()
        await asyncio.sleep(0)
