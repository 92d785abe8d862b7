"""Run Command end to end: a real server, three real agent processes, real shells."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.e2e.harness import Fleet, wait_for


def run(fleet: Fleet, *args: str, document: str = "Corral-RunShellScript") -> tuple[int, Any]:
    """`corral run DOCUMENT ARGS -o json`: the exit status and the command document."""
    result = fleet.server.cli("run", document, *args, "-o", "json")
    assert result.stdout, f"no JSON on stdout (exit {result.returncode}): {result.stderr}"
    return result.returncode, result.json()


def by_node(command: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The command's invocations keyed by node id."""
    return {inv["node_id"]: inv for inv in command["invocations"]}


def pid_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_fan_out_runs_on_every_targeted_node(fleet: Fleet) -> None:
    code, command = run(fleet, "--targets", "tag:env=e2e", "--param", "commands=echo hello; id -u")
    assert code == 0, command
    assert command["status"] == "Success"
    invocations = by_node(command)
    assert set(invocations) == {a.node_id for a in fleet.agents}
    for inv in invocations.values():
        assert inv["status"] == "Success"
        assert inv["status_details"] == "Success"
        assert inv["response_code"] == 0
        assert inv["stdout"].startswith("hello\n")
        assert inv["stdout_truncated"] is False


def test_tag_targets_select_only_matching_nodes(fleet: Fleet) -> None:
    code, command = run(fleet, "--targets", "tag:role=db", "--param", "commands=echo db")
    assert code == 0
    assert [inv["node_id"] for inv in command["invocations"]] == [fleet.agents[2].node_id]


def test_failing_script_reports_its_exit_code_and_exit_status_1(fleet: Fleet) -> None:
    node = fleet.agents[0].node_id
    code, command = run(fleet, "--targets", node, "--param", "commands=echo oops >&2; exit 3")
    assert code == 1
    (inv,) = command["invocations"]
    assert (inv["status"], inv["status_details"], inv["response_code"]) == ("Failed", "Failed", 3)
    assert inv["stderr"] == "oops\n"
    assert command["status"] == "Failed"


def test_max_concurrency_one_never_overlaps(fleet: Fleet, tmp_path: Path) -> None:
    log = tmp_path / "spans"
    script = f"echo start $(date +%s.%N) >> {log}; sleep 0.3; echo end $(date +%s.%N) >> {log}"
    code, command = run(
        fleet, "--targets", "tag:env=e2e", "--max-concurrency", "1", "--param", f"commands={script}"
    )
    assert code == 0, command
    events = [line.split() for line in log.read_text().splitlines()]
    assert [kind for kind, _ in events] == ["start", "end"] * 3
    times = [float(t) for _, t in events]
    assert times == sorted(times)


def test_errors_past_max_errors_terminate_the_rest(fleet: Fleet) -> None:
    code, command = run(
        fleet,
        "--targets", "tag:env=e2e", "--max-concurrency", "1", "--max-errors", "0",
        "--param", "commands=exit 1",
    )  # fmt: skip
    assert code == 1
    details = sorted(inv["status_details"] for inv in command["invocations"])
    assert details == ["Failed", "Terminated", "Terminated"]
    for inv in command["invocations"]:
        if inv["status_details"] == "Terminated":
            assert inv["status"] == "Cancelled"
            assert inv["response_code"] is None


def test_execution_timeout_kills_the_whole_process_group(fleet: Fleet, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    node = fleet.agents[1].node_id
    code, command = run(
        fleet,
        "--targets", node, "--timeout", "1",
        "--param", f"commands=sleep 300 & echo $! > {pidfile}; sleep 300",
    )  # fmt: skip
    assert code == 1
    (inv,) = command["invocations"]
    assert (inv["status"], inv["status_details"]) == ("TimedOut", "ExecutionTimedOut")
    child = int(pidfile.read_text())
    wait_for(lambda: not pid_alive(child), timeout=5)


def test_cancel_stops_a_running_invocation(fleet: Fleet, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    node = fleet.agents[0].node_id
    command = fleet.server.cli_json(
        "run", "Corral-RunShellScript", "--targets", node, "--no-wait",
        "--param", f"commands=echo $$ > {pidfile}; sleep 300",
    )  # fmt: skip
    assert command["invocations"][0]["status"] in ("Pending", "InProgress")
    wait_for(pidfile.exists)
    cancelled = fleet.server.cli("commands", "cancel", command["command_id"])
    assert cancelled.returncode == 0, cancelled.stderr

    def final() -> Any:
        shown = fleet.server.cli_json("commands", "show", command["command_id"])
        return shown if shown["status"] == "Cancelled" else None

    shown = wait_for(final)
    assert shown["invocations"][0]["status"] == "Cancelled"
    wait_for(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)


def test_env_var_parameter_stays_inert(fleet: Fleet, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    doc = tmp_path / "echo.yaml"
    doc.write_text(
        "schemaVersion: '2.2'\n"
        "description: echo a message safely\n"
        "parameters:\n"
        "  message:\n"
        "    type: String\n"
        "    interpolationType: ENV_VAR\n"
        "mainSteps:\n"
        "  - action: aws:runShellScript\n"
        "    name: echo\n"
        "    inputs:\n"
        "      runCommand:\n"
        '        - \'printf "%s\\n" "$SSM_message"\'\n'
    )
    created = fleet.server.cli("doc", "create", str(doc), "--name", "SafeEcho")
    assert created.returncode == 0, created.stderr
    value = f"x; touch {marker}"
    code, command = run(
        fleet,
        "--targets",
        fleet.agents[0].node_id,
        "--param",
        f"message={value}",
        document="SafeEcho",
    )
    assert code == 0, command
    assert command["invocations"][0]["stdout"] == value + "\n"
    assert not marker.exists()


def test_long_output_is_truncated_inline_and_complete_with_full(fleet: Fleet) -> None:
    node = fleet.agents[0].node_id
    code, command = run(
        fleet, "--targets", node, "--param", "commands=head -c 100000 /dev/zero | tr '\\0' a"
    )
    assert code == 0
    (inv,) = command["invocations"]
    assert inv["stdout_truncated"] is True
    assert len(inv["stdout"]) == 24_000
    full = fleet.server.cli("commands", "output", command["command_id"], node, "--full")
    assert full.returncode == 0
    assert full.stdout == "a" * 100_000


def test_follow_streams_output_while_it_runs(fleet: Fleet) -> None:
    node = fleet.agents[1].node_id
    command = fleet.server.cli_json(
        "run", "Corral-RunShellScript", "--targets", node, "--no-wait",
        "--param", "commands=for i in 1 2 3; do echo line $i; sleep 0.2; done",
    )  # fmt: skip
    followed = fleet.server.cli("commands", "output", command["command_id"], node, "--follow")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "line 1\nline 2\nline 3\n"


def test_invalid_input_is_refused_and_nothing_is_stored(fleet: Fleet, tmp_path: Path) -> None:
    before = fleet.server.cli_json("commands", "list")
    unknown = fleet.server.cli(
        "run", "Corral-RunShellScript", "--targets", "all", "--param", "nope=1", "-o", "json"
    )
    assert unknown.returncode == 2
    assert json.loads(unknown.stderr)["error"]["field"] == "parameters.nope"
    nowhere = fleet.server.cli(
        "run", "Corral-RunShellScript", "--targets", "tag:env=nowhere", "--param", "commands=true"
    )
    assert nowhere.returncode == 2
    assert fleet.server.cli_json("commands", "list") == before

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "schemaVersion": "2.2",
                "mainSteps": [{"action": "aws:runShellScript", "name": "x", "inputs": {}}],
            }
        )
    )
    refused = fleet.server.cli("doc", "create", str(bad), "--name", "BadDoc", "-o", "json")
    assert refused.returncode == 2
    assert json.loads(refused.stderr)["error"]["field"] == "mainSteps[0].inputs.runCommand"
    assert fleet.server.cli("doc", "show", "BadDoc").returncode == 3


def test_agent_holds_no_listening_socket(fleet: Fleet) -> None:
    for agent in fleet.agents:
        assert agent.process is not None
        pid = agent.process.pid
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        assert inodes, "the agent should hold its outbound connection"
        for table in ("tcp", "tcp6", "udp", "udp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = fields[2].rsplit(":", 1)[1]
                # TCP: state 0A is LISTEN. UDP: a bound socket with no peer can receive.
                listening = fields[3] == "0A" if table.startswith("tcp") else remote_port == "0000"
                if listening:
                    assert fields[9] not in inodes, f"agent listens on {table} {fields[1]}"
