"""Invocation files: the Invoke kept in run.sh, and directories reused after acknowledgement."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from corral.agent import worker
from corral.agent.runner import Runner
from corral.errors import ProtocolError
from corral.protocol import Invoke, Output, Result, ResultAck, Step
from tests.agent.conftest import FAST, Sink, wait_until

INVOKE = Invoke("c-1", [Step("s", "echo 'a\nb' \u00e9", {"K": "v\nw"}, "/tmp", 30)], 60)


def test_invoke_is_kept_in_the_wrapper_and_read_back(tmp_path: Path) -> None:
    inv_dir = tmp_path / "c-1"
    worker.prepare(inv_dir, INVOKE)
    assert sorted(os.listdir(inv_dir)) == ["run.sh"]
    assert worker.read_invoke(inv_dir) == INVOKE
    # One comment line, then the wrapper bash runs.
    first, rest = (inv_dir / "run.sh").read_bytes().split(b"\n", 1)
    assert first.startswith(b"# corral-invoke {")
    assert rest == worker.render_wrapper(inv_dir, INVOKE.steps).encode()


@pytest.mark.parametrize(
    "content",
    [
        b'# corral-invoke {"type": "invoke", "command_id"',  # torn: no newline
        b'# corral-invoke {"type": "invoke"}\n',  # fields missing
        b"# corral-invoke not json\n",
        b"echo a wrapper without its record\n",
    ],
)
def test_damaged_invoke_record_is_refused(tmp_path: Path, content: bytes) -> None:
    inv_dir = tmp_path / "bad"
    inv_dir.mkdir()
    (inv_dir / "run.sh").write_bytes(content)
    with pytest.raises((OSError, ProtocolError)):
        worker.read_invoke(inv_dir)


def test_recycle_keeps_only_the_directory_wrapper_and_progress_emptied(tmp_path: Path) -> None:
    inv_dir = tmp_path / "done"
    worker.prepare(inv_dir, INVOKE)
    for name in ("stdout", "stderr", "progress", "kill", "result.json"):
        (inv_dir / name).write_text("old\n")
    inodes = {name: (inv_dir / name).stat().st_ino for name in ("run.sh", "progress")}
    spare = tmp_path / "spare"
    assert worker.recycle(inv_dir, spare)
    assert not inv_dir.exists()
    assert sorted(os.listdir(spare)) == ["progress", "run.sh"]
    # No script, environment or exit code kept after the ack.
    assert (spare / "run.sh").read_bytes() == b""
    assert (spare / "progress").read_bytes() == b""

    again = tmp_path / "next"
    invoke = Invoke("next", [Step("s", "echo next")])
    worker.prepare(again, invoke, spare)
    assert not spare.exists()
    assert sorted(os.listdir(again)) == ["progress", "run.sh"]
    assert {name: (again / name).stat().st_ino for name in inodes} == inodes
    assert worker.read_invoke(again) == invoke
    assert worker.read_progress(again) == worker.Progress({}, {}, False, None)


def test_recycle_removes_a_directory_with_unexpected_files(tmp_path: Path) -> None:
    inv_dir = tmp_path / "odd"
    worker.prepare(inv_dir, INVOKE)
    (inv_dir / "something-else").write_text("x")
    assert not worker.recycle(inv_dir, tmp_path / "spare")
    assert not inv_dir.exists()
    assert not (tmp_path / "spare").exists()


def test_prepare_falls_back_when_the_spare_is_gone(tmp_path: Path) -> None:
    inv_dir = tmp_path / "c-1"
    worker.prepare(inv_dir, INVOKE, tmp_path / "vanished")
    assert worker.read_invoke(inv_dir) == INVOKE


async def test_runner_reuses_directories_without_old_output(state_dir: Path) -> None:
    runner = Runner(state_dir, FAST)
    await runner.start()
    sink = Sink()
    runner.attach(sink)
    try:
        await runner.handle(Invoke("first", [Step("s", "echo first-output; echo e >&2")]))
        await wait_until(lambda: sink.of(Result))
        await runner.handle(ResultAck("first"))
        await wait_until(lambda: state_dir / "spare" / "first" in runner.spare_directories)
        assert not (state_dir / "invocations" / "first").exists()

        await runner.handle(Invoke("second", [Step("s", "echo second")]))
        await wait_until(lambda: len(sink.of(Result)) == 2)
        assert not (state_dir / "spare" / "first").exists()
        result = sink.of(Result)[1]
        assert isinstance(result, Result)
        assert (result.command_id, result.status) == ("second", "Success")
        assert (result.stdout_bytes, result.stderr_bytes) == (7, 0)
        chunks = [m for m in sink.of(Output) if isinstance(m, Output)]
        assert [(m.command_id, m.stream, m.data) for m in chunks if m.command_id == "second"] == [
            ("second", "stdout", b"second\n")
        ]
    finally:
        await runner.close()

    # A restarted runner finds the spare directories it left.
    await runner_after_restart_reuses(state_dir)


async def runner_after_restart_reuses(state_dir: Path) -> None:
    """Ack the second invocation, restart, and check the next one runs in a spare."""
    runner = Runner(state_dir, FAST)
    await runner.start()
    sink = Sink()
    runner.attach(sink)
    try:
        await wait_until(lambda: sink.of(Result))  # the result is sent again first
        await runner.handle(ResultAck("second"))
        await wait_until(lambda: state_dir / "spare" / "second" in runner.spare_directories)
        await runner.close()
        runner = Runner(state_dir, FAST)
        await runner.start()
        sink = Sink()
        runner.attach(sink)
        await runner.handle(Invoke("third", [Step("s", "echo third")]))
        await wait_until(lambda: sink.of(Result))
        assert not (state_dir / "spare" / "second").exists()
        assert worker.read_invoke(state_dir / "invocations" / "third").command_id == "third"
    finally:
        await runner.close()


async def test_left_over_background_writer_cannot_reach_the_next_invocation(
    state_dir: Path, tmp_path: Path
) -> None:
    runner = Runner(state_dir, FAST)
    await runner.start()
    sink = Sink()
    runner.attach(sink)
    pidfile = tmp_path / "bg.pid"
    try:
        # The script leaves a writer behind, in its own session, holding its stdout.
        script = f"setsid sh -c 'echo $$ > {pidfile}; while :; do echo late; sleep 0.01; done' &"
        await runner.handle(Invoke("leaver", [Step("s", script)]))
        await wait_until(lambda: sink.of(Result) and pidfile.exists())
        await runner.handle(ResultAck("leaver"))
        await wait_until(lambda: state_dir / "spare" / "leaver" in runner.spare_directories)
        await runner.handle(Invoke("after", [Step("s", "echo clean")]))
        await wait_until(lambda: len(sink.of(Result)) == 2)
        await asyncio.sleep(0.05)  # the left-over writer keeps writing meanwhile
        result = sink.of(Result)[1]
        assert isinstance(result, Result)
        assert result.stdout_bytes == len(b"clean\n")
        assert (state_dir / "invocations" / "after" / "stdout").read_bytes() == b"clean\n"
    finally:
        await runner.close()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
