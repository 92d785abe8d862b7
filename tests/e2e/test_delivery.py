"""Delivery survives offline nodes and restarts of either side: nothing lost, nothing run twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tests.e2e.harness import Fleet, wait_for


def send(fleet: Fleet, node: str, script: str, *extra: str) -> Any:
    """Start Corral-RunShellScript on one node without waiting."""
    return fleet.server.cli_json(
        "run", "Corral-RunShellScript", "--targets", node, "--no-wait",
        "--param", f"commands={script}", *extra,
    )  # fmt: skip


def show(fleet: Fleet, command_id: str) -> Any:
    """The command as `commands show` prints it."""
    return fleet.server.cli_json("commands", "show", command_id)


def wait_final(fleet: Fleet, command_id: str, timeout: float = 30.0) -> Any:
    """Wait until every invocation of the command is final."""
    final = {"Success", "Failed", "TimedOut", "Cancelled"}

    def done() -> Any:
        command = show(fleet, command_id)
        return command if all(i["status"] in final for i in command["invocations"]) else None

    return wait_for(done, timeout, interval=0.2)


def wait_status(fleet: Fleet, command_id: str, status: str) -> Any:
    """Wait until the (single) invocation reaches `status`."""
    return wait_for(
        lambda: show(fleet, command_id)["invocations"][0]["status"] == status, 20, interval=0.1
    )


def test_offline_node_times_out_delivery(fresh_fleet: Fleet) -> None:
    (agent,) = fresh_fleet.add_agents(1)
    agent.stop()
    fresh_fleet.wait_offline(agent.node_id)
    command = send(fresh_fleet, agent.node_id, "echo never", "--delivery-timeout", "1")
    final = wait_final(fresh_fleet, command["command_id"])
    (inv,) = final["invocations"]
    assert (inv["status"], inv["status_details"]) == ("TimedOut", "DeliveryTimedOut")
    assert inv["response_code"] is None


def test_offline_node_runs_the_command_when_it_returns(fresh_fleet: Fleet) -> None:
    (agent,) = fresh_fleet.add_agents(1)
    agent.stop()
    fresh_fleet.wait_offline(agent.node_id)
    command = send(fresh_fleet, agent.node_id, "echo late but here")
    assert show(fresh_fleet, command["command_id"])["invocations"][0]["status"] == "Pending"
    agent.start()
    final = wait_final(fresh_fleet, command["command_id"])
    assert final["invocations"][0]["stdout"] == "late but here\n"
    assert final["status"] == "Success"


def test_agent_killed_mid_command_neither_loses_nor_repeats(
    fresh_fleet: Fleet, tmp_path: Path
) -> None:
    (agent,) = fresh_fleet.add_agents(1)
    counter = tmp_path / "runs"
    gate = tmp_path / "gate"
    script = (
        f"echo run >> {counter}; echo before; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done; echo after; exit 7"
    )
    command = send(fresh_fleet, agent.node_id, script)
    wait_for(counter.exists)
    agent.stop(signal.SIGKILL)
    gate.touch()  # the worker finishes while no agent is running
    agent.start()
    final = wait_final(fresh_fleet, command["command_id"])
    (inv,) = final["invocations"]
    assert (inv["status"], inv["response_code"]) == ("Failed", 7)
    assert inv["stdout"] == "before\nafter\n"
    assert counter.read_text() == "run\n"


def test_worker_killed_with_the_node_ends_failed_with_a_reason(
    fresh_fleet: Fleet, tmp_path: Path
) -> None:
    (agent,) = fresh_fleet.add_agents(1)
    pidfile = tmp_path / "pid"
    command = send(fresh_fleet, agent.node_id, f"echo $$ > {pidfile}; sleep 300")
    wait_for(pidfile.exists)
    agent.stop(signal.SIGKILL)
    # Simulate the node going down: the whole invocation process group dies with the agent.
    os.killpg(os.getpgid(int(pidfile.read_text())), signal.SIGKILL)
    agent.start()
    final = wait_final(fresh_fleet, command["command_id"])
    (inv,) = final["invocations"]
    assert inv["status"] == "Failed"
    assert inv["response_code"] is None


def test_server_killed_mid_command_completes_after_restart(
    fresh_fleet: Fleet, tmp_path: Path
) -> None:
    agents = fresh_fleet.add_agents(2)
    gate = tmp_path / "gate"
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done; echo finished"
    command = fresh_fleet.server.cli_json(
        "run", "Corral-RunShellScript", "--targets", "all", "--no-wait", "--max-concurrency", "1",
        "--param", f"commands={script}",
    )  # fmt: skip
    wait_for(
        lambda: any(
            i["status"] == "InProgress"
            for i in show(fresh_fleet, command["command_id"])["invocations"]
        )
    )
    fresh_fleet.server.stop(signal.SIGKILL)
    gate.touch()
    fresh_fleet.server.start()
    fresh_fleet.wait_online([a.node_id for a in agents])
    final = wait_final(fresh_fleet, command["command_id"])
    assert final["status"] == "Success"
    assert [i["stdout"] for i in final["invocations"]] == ["finished\n", "finished\n"]
