"""Run Command on the agent with real worker processes (no network)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.agent import worker
from corral.agent.runner import Runner
from corral.protocol import (
    DEFAULT_OUTPUT_CHUNK_BYTES,
    Accepted,
    Cancel,
    Invoke,
    Output,
    OutputRewind,
    Result,
    ResultAck,
    Step,
)
from tests.agent.conftest import FAST, Sink, pid_gone, wait_until


@pytest.fixture
async def runner(state_dir: Path) -> AsyncIterator[tuple[Runner, Sink]]:
    """A started runner with a recording sink attached."""
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    yield r, sink
    await r.close()


def results(sink: Sink, command_id: str) -> list[Result]:
    """Results sent for one command."""
    return [m for m in sink.of(Result) if isinstance(m, Result) and m.command_id == command_id]


def output(sink: Sink, command_id: str, stream: str = "stdout") -> bytes:
    """The stream reassembled from Output chunks by offset (later chunks overwrite)."""
    data = bytearray()
    for m in sink.of(Output):
        assert isinstance(m, Output)
        if m.command_id == command_id and m.stream == stream:
            data[m.offset : m.offset + len(m.data)] = m.data
    return bytes(data)


async def finished(sink: Sink, command_id: str, timeout: float = 10.0) -> Result:
    """Wait for the command's Result."""
    await wait_until(lambda: results(sink, command_id), timeout)
    return results(sink, command_id)[0]


async def test_single_step_success_streams_output(runner: tuple[Runner, Sink]) -> None:
    r, sink = runner
    await r.handle(Invoke("c1", [Step("s", "echo hello; echo oops >&2")]))
    result = await finished(sink, "c1")
    assert sink.messages[0] == Accepted("c1")
    assert (result.status, result.status_details, result.response_code) == ("Success", "Success", 0)
    assert output(sink, "c1") == b"hello\n"
    assert output(sink, "c1", "stderr") == b"oops\n"
    assert (result.stdout_bytes, result.stderr_bytes) == (6, 5)
    assert result.started_at is not None
    assert result.ended_at is not None
    assert result.started_at <= result.ended_at


@pytest.mark.parametrize(
    ("steps", "status", "code", "step_statuses", "stdout"),
    [
        (
            [Step("a", "echo a; exit 3"), Step("b", "echo b")],
            "Failed",
            3,
            [("Failed", 3), ("Skipped", None)],
            b"a\n",
        ),
        (
            [Step("a", "echo a; exit 3", on_failure="continue"), Step("b", "echo b")],
            "Failed",
            3,
            [("Failed", 3), ("Success", 0)],
            b"a\nb\n",
        ),
        (
            [Step("a", "echo a"), Step("b", "echo b; false")],
            "Failed",
            1,
            [("Success", 0), ("Failed", 1)],
            b"a\nb\n",
        ),
        (
            [
                Step("a", "export X=1; echo a"),
                Step("b", 'echo "b${X:-unset} $GREETING"', {"GREETING": "hi there"}),
            ],
            "Success",
            0,
            [("Success", 0), ("Success", 0)],
            b"a\nbunset hi there\n",
        ),
    ],
)
async def test_multi_step_on_failure(
    runner: tuple[Runner, Sink],
    steps: list[Step],
    status: str,
    code: int,
    step_statuses: list[tuple[str, int | None]],
    stdout: bytes,
) -> None:
    r, sink = runner
    await r.handle(Invoke("multi", steps))
    result = await finished(sink, "multi")
    assert (result.status, result.response_code) == (status, code)
    assert [(s.status, s.response_code) for s in result.steps] == step_statuses
    assert output(sink, "multi") == stdout


async def test_working_directory(runner: tuple[Runner, Sink], tmp_path: Path) -> None:
    r, sink = runner
    missing = tmp_path / "nope"
    await r.handle(
        Invoke(
            "wd",
            [
                Step("here", "pwd", working_directory=str(tmp_path)),
                Step("missing", "echo never", working_directory=str(missing)),
            ],
        )
    )
    result = await finished(sink, "wd")
    assert output(sink, "wd") == f"{tmp_path}\n".encode()
    assert result.status == "Failed"
    assert [s.status for s in result.steps] == ["Success", "Failed"]
    assert f"working directory {missing} does not exist".encode() in output(sink, "wd", "stderr")
    assert not missing.exists()


async def test_same_invoke_twice_runs_once_even_after_restart(
    state_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    invoke = Invoke("once", [Step("s", f"echo x >> {marker}")])
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(invoke)
    await r.handle(invoke)
    await finished(sink, "once")
    await r.close()
    assert sink.of(Accepted) == [Accepted("once"), Accepted("once")]

    # A fresh runner over the same state dir, before the result was acknowledged.
    r2 = Runner(state_dir, FAST)
    await r2.start()
    sink2 = Sink()
    r2.attach(sink2)
    await r2.handle(invoke)
    again = await finished(sink2, "once")
    assert again.status == "Success"
    await r2.handle(ResultAck("once"))
    await wait_until(lambda: not (state_dir / "invocations" / "once").exists())
    await r2.close()

    # And after the acknowledgement, yet another runner: still recognised from the journal.
    r3 = Runner(state_dir, FAST)
    await r3.start()
    sink3 = Sink()
    r3.attach(sink3)
    await r3.handle(invoke)
    assert sink3.messages == [Accepted("once")]
    await r3.close()
    assert marker.read_text() == "x\n"


async def test_worker_outlives_runner(state_dir: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = f"echo started; while [ ! -e {go} ]; do sleep 0.02; done; echo finished; exit 7"
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(Invoke("long", [Step("s", script)]))
    await wait_until(lambda: output(sink, "long") == b"started\n")
    await r.close()
    del r

    go.touch()
    r2 = Runner(state_dir, FAST)
    await r2.start()
    sink2 = Sink()
    r2.attach(sink2)
    result = await finished(sink2, "long")
    await r2.close()
    assert (result.status, result.response_code) == ("Failed", 7)
    assert output(sink2, "long") == b"started\nfinished\n"


async def test_worker_died_while_no_agent_ran(state_dir: Path) -> None:
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(Invoke("doomed", [Step("s", "echo up; sleep 300")]))
    await wait_until(lambda: output(sink, "doomed") == b"up\n")
    inv = r.invocation("doomed")
    assert inv is not None
    assert inv.record is not None
    pid = inv.record.pid
    await r.close()
    os.killpg(pid, signal.SIGKILL)
    await wait_until(lambda: pid_gone(pid))

    r2 = Runner(state_dir, FAST)
    await r2.start()
    sink2 = Sink()
    r2.attach(sink2)
    result = await finished(sink2, "doomed")
    await r2.close()
    assert (result.status, result.status_details, result.response_code) == (
        "Failed",
        "Failed",
        None,
    )
    assert "worker process ended without finishing" in result.message
    assert output(sink2, "doomed") == b"up\n"


async def test_worker_from_another_boot_counts_as_died(state_dir: Path) -> None:
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(Invoke("rebooted", [Step("s", "sleep 300")]))
    await r.close()
    # Pretend the node rebooted: the boot id recorded in the journal no longer matches.
    path = state_dir / "journal"
    assert worker.boot_id() in path.read_text()
    path.write_text(path.read_text().replace(worker.boot_id(), "another-boot"))
    r2 = Runner(state_dir, FAST)
    await r2.start()
    sink2 = Sink()
    r2.attach(sink2)
    result = await finished(sink2, "rebooted")
    await r2.close()
    assert result.status == "Failed"
    assert result.response_code is None


async def test_timeout_kills_the_whole_process_group(
    runner: tuple[Runner, Sink], tmp_path: Path
) -> None:
    r, sink = runner
    child = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {child}; echo waiting; sleep 300"
    await r.handle(Invoke("slow", [Step("s", script, timeout_seconds=1), Step("t", "echo no")]))
    result = await finished(sink, "slow")
    assert (result.status, result.status_details, result.response_code) == (
        "TimedOut",
        "ExecutionTimedOut",
        worker.KILLED_EXIT_CODE,
    )
    assert [s.status for s in result.steps] == ["TimedOut", "Skipped"]
    assert output(sink, "slow") == b"waiting\n"
    grandchild = int(child.read_text())
    await wait_until(lambda: pid_gone(grandchild), timeout=5)


async def test_invocation_timeout_overrides_step_timeouts(
    runner: tuple[Runner, Sink],
) -> None:
    r, sink = runner
    steps = [Step("a", "echo a", timeout_seconds=100), Step("b", "sleep 300", timeout_seconds=100)]
    await r.handle(Invoke("budget", steps, timeout_seconds=1))
    result = await finished(sink, "budget")
    assert result.status == "TimedOut"
    assert [s.status for s in result.steps] == ["Success", "TimedOut"]


async def test_sigterm_ignoring_worker_is_killed_after_grace(
    runner: tuple[Runner, Sink], tmp_path: Path
) -> None:
    r, sink = runner
    pid_file = tmp_path / "stubborn.pid"
    script = f"trap '' TERM; sleep 300 & echo $! > {pid_file}; echo ready; wait"
    await r.handle(Invoke("stubborn", [Step("s", script)]))
    await wait_until(lambda: output(sink, "stubborn") == b"ready\n")
    await r.handle(Cancel("stubborn"))
    result = await finished(sink, "stubborn")
    assert (result.status, result.status_details) == ("Cancelled", "Cancelled")
    # `sleep` inherited the ignored SIGTERM; SIGKILL after the grace period gets it.
    await wait_until(lambda: pid_gone(int(pid_file.read_text())), timeout=5)


async def test_cancel(runner: tuple[Runner, Sink], tmp_path: Path) -> None:
    r, sink = runner
    child = tmp_path / "child.pid"
    await r.handle(Invoke("stop-me", [Step("s", f"sleep 300 & echo $! > {child}; wait")]))
    await wait_until(child.exists)
    await r.handle(Cancel("stop-me"))
    result = await finished(sink, "stop-me")
    assert (result.status, result.status_details) == ("Cancelled", "Cancelled")
    await wait_until(lambda: pid_gone(int(child.read_text())), timeout=5)
    # Cancelling a finished invocation changes nothing.
    await r.handle(Cancel("stop-me"))
    assert len(results(sink, "stop-me")) == 1


async def test_output_chunks_offsets_and_rewind(runner: tuple[Runner, Sink]) -> None:
    r, sink = runner
    size = 3 * DEFAULT_OUTPUT_CHUNK_BYTES + 123
    await r.handle(Invoke("big", [Step("s", f"head -c {size} /dev/zero | tr '\\0' a")]))
    result = await finished(sink, "big")
    chunks = [m for m in sink.of(Output) if isinstance(m, Output) and m.command_id == "big"]
    assert all(len(c.data) <= DEFAULT_OUTPUT_CHUNK_BYTES for c in chunks)
    offset = 0
    for chunk in chunks:
        assert chunk.offset == offset
        offset += len(chunk.data)
    assert offset == size == result.stdout_bytes
    assert output(sink, "big") == b"a" * size

    sink.messages.clear()
    await r.handle(OutputRewind("big", "stdout", size - 10))
    await wait_until(lambda: results(sink, "big"))
    resent = [m for m in sink.of(Output) if isinstance(m, Output)]
    assert [(m.offset, m.data) for m in resent] == [(size - 10, b"a" * 10)]


async def test_results_wait_for_attach_and_stay_until_acked(state_dir: Path) -> None:
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(Invoke("later", [Step("s", "echo out")]))
    r.detach()
    inv = r.invocation("later")
    await wait_until(lambda: inv is not None and inv.result is not None)
    assert not results(sink, "later")
    assert (state_dir / "invocations" / "later" / "stdout").read_bytes() == b"out\n"

    again = Sink()
    r.attach(again)
    result = await finished(again, "later")
    assert output(again, "later") == b"out\n"
    assert result.status == "Success"
    await r.handle(ResultAck("later"))
    await wait_until(lambda: not (state_dir / "invocations" / "later").exists())
    assert r.invocation("later") is None
    await r.close()


async def test_cleanup_waits_for_idle_and_survives_a_restart(state_dir: Path) -> None:
    slow = dataclasses.replace(FAST, cleanup_delay=60.0)
    r = Runner(state_dir, slow)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(Invoke("done", [Step("s", "echo done")]))
    await finished(sink, "done")
    await r.handle(ResultAck("done"))
    # Acknowledged: forgotten at once, but its files go only once the agent is idle.
    assert r.invocation("done") is None
    assert (state_dir / "invocations" / "done").exists()
    await r.close()

    r2 = Runner(state_dir, FAST)
    await r2.start()
    again = Sink()
    r2.attach(again)
    await wait_until(lambda: not (state_dir / "invocations" / "done").exists())
    assert again.messages == []  # nothing re-reported for an acknowledged invocation
    await r2.handle(Invoke("done", [Step("s", "echo twice")]))
    assert [m.TYPE for m in again.messages] == ["accepted"]  # and never run again
    await r2.close()


async def test_invalid_command_id_is_refused(runner: tuple[Runner, Sink], state_dir: Path) -> None:
    r, sink = runner
    await r.handle(Invoke("../escape", [Step("s", "echo no")]))
    assert [m.TYPE for m in sink.messages] == ["error"]
    assert not (state_dir / "escape").exists()


async def test_restarted_runner_enforces_the_deadline_from_disk(state_dir: Path) -> None:
    r = Runner(state_dir, FAST)
    await r.start()
    await r.handle(Invoke("deadline", [Step("s", "sleep 300")], timeout_seconds=1))
    await r.close()

    r2 = Runner(state_dir, FAST)
    await r2.start()
    sink = Sink()
    r2.attach(sink)
    result = await finished(sink, "deadline")
    await r2.close()
    assert (result.status, result.status_details) == ("TimedOut", "ExecutionTimedOut")


async def test_kill_reason_on_disk_wins_after_restart_mid_kill(state_dir: Path) -> None:
    r = Runner(state_dir, FAST)
    await r.start()
    await r.handle(Invoke("mid-kill", [Step("s", "sleep 300")]))
    inv = r.invocation("mid-kill")
    assert inv is not None
    assert inv.record is not None
    pid = inv.record.pid
    await r.close()
    # The agent recorded its decision, signalled the group, and died before noticing the exit.
    worker.write_kill_reason(inv.directory, worker.KILL_CANCEL)
    os.killpg(pid, signal.SIGTERM)
    await wait_until(lambda: pid_gone(pid))

    r2 = Runner(state_dir, FAST)
    await r2.start()
    sink = Sink()
    r2.attach(sink)
    result = await finished(sink, "mid-kill")
    await r2.close()
    assert (result.status, result.status_details) == ("Cancelled", "Cancelled")


async def test_environment_values_are_passed_verbatim(runner: tuple[Runner, Sink]) -> None:
    r, sink = runner
    tricky = 'it\'s "quoted" $(touch /tmp/never) `x` \\ ; done'
    await r.handle(Invoke("env", [Step("s", 'printf "%s" "$TRICKY"', {"TRICKY": tricky})]))
    result = await finished(sink, "env")
    assert result.status == "Success"
    assert output(sink, "env") == tricky.encode()


async def test_redelivery_after_lost_files_reports_failed_without_running(
    state_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    invoke = Invoke("lost", [Step("s", f"echo x >> {marker}")])
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(invoke)
    await finished(sink, "lost")
    await r.close()
    # A power loss took the invocation's files but the fsynced journal kept the id.
    shutil.rmtree(state_dir / "invocations" / "lost")

    r2 = Runner(state_dir, FAST)
    await r2.start()
    sink2 = Sink()
    r2.attach(sink2)
    await r2.handle(invoke)
    (result,) = results(sink2, "lost")
    assert (result.status, result.response_code) == ("Failed", None)
    assert "lost its files" in result.message
    await r2.handle(ResultAck("lost"))
    await r2.close()
    assert marker.read_text() == "x\n"

    # Once acknowledged, a re-delivery is only accepted.
    r3 = Runner(state_dir, FAST)
    await r3.start()
    sink3 = Sink()
    r3.attach(sink3)
    await r3.handle(invoke)
    await r3.close()
    assert sink3.messages == [Accepted("lost")]


def test_is_alive_tells_our_worker_from_a_reused_pid(tmp_path: Path) -> None:
    import subprocess

    inv_dir = tmp_path / "inv"
    inv_dir.mkdir()
    (inv_dir / "run.sh").write_text("sleep 30\n")
    boot = worker.boot_id()
    record = worker.spawn(inv_dir, "/bin/bash", boot)
    try:
        assert worker.is_alive(record, boot, inv_dir)
        # A different invocation's directory: the pid runs someone else's script.
        assert not worker.is_alive(record, boot, tmp_path / "other")
        # Another boot: the pid cannot be the one recorded.
        assert not worker.is_alive(record, "another-boot", inv_dir)
        # A recorded start time that does not match means the pid was reused.
        stale = worker.WorkerRecord(record.pid, 12345, boot, record.started_at)
        assert not worker.is_alive(stale, boot, inv_dir)
    finally:
        os.killpg(record.pid, signal.SIGKILL)
        os.waitpid(record.pid, 0)
    assert not worker.is_alive(record, boot, inv_dir)
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        lookalike = worker.WorkerRecord(stranger.pid, -1, boot, 0.0)
        assert not worker.is_alive(lookalike, boot, inv_dir)
    finally:
        stranger.kill()
        stranger.wait()
