"""Secrets in captured output are masked on the agent, with real workers (no network)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.agent import worker
from corral.agent.runner import Runner
from corral.protocol import (
    DEFAULT_OUTPUT_CHUNK_BYTES,
    Invoke,
    Output,
    OutputRewind,
    Result,
    ResultAck,
    Step,
)
from tests.agent.conftest import FAST, ChannelServer, Sink, wait_until
from tests.agent.test_process import start_agent, stop_agent
from tests.agent.test_runner import finished, output, results

SECRET = "s3cr3t-P\u00e4ss\U0001f511-value"
RAW = SECRET.encode()
STARS = b"*" * len(RAW)
OTHER = "not-the-secret-value"


def outputs(sink: Sink, command_id: str, stream: str | None = None) -> list[Output]:
    """Output messages of one command (and stream), in order."""
    return [
        m
        for m in sink.of(Output)
        if isinstance(m, Output)
        and m.command_id == command_id
        and (stream is None or m.stream == stream)
    ]


def assert_contiguous(chunks: list[Output], limit: int) -> None:
    """Chunks follow each other without gap or overlap and are at most `limit` bytes."""
    offset = 0
    for chunk in chunks:
        assert chunk.offset == offset
        assert 0 < len(chunk.data) <= limit
        offset += len(chunk.data)


def assert_nothing_leaked(sink: Sink) -> None:
    """No message the runner sent holds the secret, whole or split across chunks."""
    for message in sink.messages:
        assert SECRET not in repr(message)
        if isinstance(message, Output):
            assert RAW not in message.data
    for cid in {m.command_id for m in sink.of(Output) if isinstance(m, Output)}:
        for stream in ("stdout", "stderr"):
            assert RAW not in output(sink, cid, stream)


def files_holding(root: Path, needle: bytes) -> list[Path]:
    """Every file under `root` whose content holds `needle`."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture
async def runner(state_dir: Path) -> AsyncIterator[tuple[Runner, Sink]]:
    """A started runner with tiny output chunks, so secrets straddle chunk boundaries."""
    r = Runner(state_dir, FAST)
    r.chunk_bytes = 7
    await r.start()
    sink = Sink()
    r.attach(sink)
    yield r, sink
    await r.close()


async def test_secret_is_masked_also_when_it_straddles_two_writes(
    runner: tuple[Runner, Sink], tmp_path: Path
) -> None:
    r, sink = runner
    go = tmp_path / "go"
    script = (
        'printf "%s\\n" "$S"; '
        'printf "start:%s" "${S:0:9}"; '  # first half of the secret: the worker then waits
        f"while [ ! -e {go} ]; do sleep 0.02; done; "
        'printf "%s:end\\n" "${S:9}"; '
        'printf "before%safter %s\\n" "$S" "$OTHER"; '
        'printf "err %s\\n" "$S" >&2'
    )
    env = {"S": SECRET, "OTHER": OTHER}
    await r.handle(Invoke("masked", [Step("s", script, env)], mask=[SECRET]))

    # The first line is masked; "start:" is released while the half secret is held back.
    first = STARS + b"\n" + b"start:"
    await wait_until(lambda: output(sink, "masked") == first)
    inv = r.invocation("masked")
    assert inv is not None
    raw_file = inv.directory / "stdout"
    # The half secret is on disk, and stays held back through a few more polls.
    assert raw_file.read_bytes() == RAW + b"\nstart:" + SECRET[:9].encode()
    sent_before = len(sink.messages)
    await asyncio.sleep(5 * FAST.output_poll)
    assert output(sink, "masked") == first
    go.touch()

    result = await finished(sink, "masked")
    assert len(sink.messages) > sent_before
    expected = b"".join(
        [STARS, b"\nstart:", STARS, b":end\nbefore", STARS, b"after ", OTHER.encode(), b"\n"]
    )
    assert output(sink, "masked") == expected
    assert output(sink, "masked", "stderr") == b"err " + STARS + b"\n"
    assert (result.status, result.stdout_bytes, result.stderr_bytes) == (
        "Success",
        len(expected),
        len(b"err ") + len(RAW) + 1,
    )
    assert_contiguous(outputs(sink, "masked", "stdout"), r.chunk_bytes)
    assert_contiguous(outputs(sink, "masked", "stderr"), r.chunk_bytes)
    assert_nothing_leaked(sink)
    # The raw output on the node's disk is not masked: only what leaves the node is.
    assert raw_file.read_bytes().count(RAW) == 3


async def test_invocation_without_mask_is_sent_raw(runner: tuple[Runner, Sink]) -> None:
    r, sink = runner
    await r.handle(Invoke("plain", [Step("s", 'printf "%s" "$S"', {"S": SECRET})]))
    await finished(sink, "plain")
    assert output(sink, "plain") == RAW
    assert_contiguous(outputs(sink, "plain"), r.chunk_bytes)


async def test_rewind_into_a_secret_resends_the_same_masked_bytes(
    runner: tuple[Runner, Sink],
) -> None:
    r, sink = runner
    script = 'for i in 1 2 3; do printf "line %s %s|" "$i" "$S"; done'
    await r.handle(Invoke("rewind", [Step("s", script, {"S": SECRET})], mask=[SECRET]))
    result = await finished(sink, "rewind")
    first = output(sink, "rewind")
    assert len(first) == result.stdout_bytes
    assert first.count(STARS) == 3
    # The server asks for the stream again from offsets inside and just after a secret.
    for offset in (9, 10, len(b"line 1 ") + len(RAW) - 1, len(b"line 1 ") + len(RAW), 0):
        sink.messages.clear()
        await r.handle(OutputRewind("rewind", "stdout", offset))
        await wait_until(lambda: results(sink, "rewind"))
        resent = outputs(sink, "rewind")
        assert resent[0].offset == offset
        data = b"".join(m.data for m in resent)
        assert data == first[offset:]
        assert_nothing_leaked(sink)


async def test_secrets_across_default_sized_chunks(state_dir: Path) -> None:
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    chunk = DEFAULT_OUTPUT_CHUNK_BYTES
    # The secret sits across every 64 KiB boundary of a ~200 KiB stream.
    pad = chunk - 10
    script = f'for i in 1 2 3; do head -c {pad} /dev/zero | tr "\\0" a; printf "%s" "$S"; done'
    await r.handle(Invoke("big", [Step("s", script, {"S": SECRET})], mask=[SECRET]))
    result = await finished(sink, "big")
    await r.close()
    chunks = outputs(sink, "big")
    assert_contiguous(chunks, chunk)
    expected = (b"a" * pad + STARS) * 3
    assert output(sink, "big") == expected
    assert result.stdout_bytes == len(expected)
    assert_nothing_leaked(sink)


async def test_masking_continues_after_an_agent_restart(state_dir: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = (
        'printf "a%s" "${S:0:5}"; '
        f"while [ ! -e {go} ]; do sleep 0.02; done; "
        'printf "%s z %s\\n" "${S:5}" "$S"'
    )
    invoke = Invoke("restart", [Step("s", script, {"S": SECRET})], mask=[SECRET])
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(invoke)
    await wait_until(lambda: output(sink, "restart") == b"a")
    inv = r.invocation("restart")
    assert inv is not None
    await r.close()
    # The secrets come back from run.sh, where the Invoke is kept.
    assert worker.read_invoke(inv.directory).mask == [SECRET]
    go.touch()

    r2 = Runner(state_dir, FAST)
    r2.chunk_bytes = 5
    await r2.start()
    sink2 = Sink()
    r2.attach(sink2)
    result = await finished(sink2, "restart")
    expected = b"a" + STARS + b" z " + STARS + b"\n"
    assert output(sink2, "restart") == expected
    assert result.stdout_bytes == len(expected)
    assert_contiguous(outputs(sink2, "restart"), 5)
    assert_nothing_leaked(sink)
    assert_nothing_leaked(sink2)
    await r2.close()


async def test_secrets_leave_the_disk_when_the_result_is_acknowledged(state_dir: Path) -> None:
    # A long cleanup delay: the directory is retired much later, the secrets go at once.
    r = Runner(state_dir, dataclasses.replace(FAST, cleanup_delay=60.0))
    await r.start()
    sink = Sink()
    r.attach(sink)
    script = 'printf "%s\\n" "$S"; printf "%s\\n" "$S" >&2'
    await r.handle(Invoke("ack", [Step("s", script, {"S": SECRET})], mask=[SECRET]))
    await finished(sink, "ack")
    directory = state_dir / "invocations" / "ack"
    assert (directory / "run.sh").stat().st_size > 0
    assert files_holding(state_dir, RAW)  # run.sh and the raw output, while unacknowledged

    await r.handle(ResultAck("ack"))
    assert directory.exists()
    assert sorted(os.listdir(directory)) == ["progress", "run.sh"]
    assert (directory / "run.sh").read_bytes() == b""
    assert files_holding(state_dir, RAW) == []
    await r.close()

    # The next start retires the directory as usual, into a spare with an empty run.sh.
    r2 = Runner(state_dir, FAST)
    await r2.start()
    await wait_until(lambda: r2.spare_directories)
    assert not directory.exists()
    assert [(p / "run.sh").read_bytes() for p in r2.spare_directories] == [b""]
    await r2.close()
    assert files_holding(state_dir, RAW) == []


async def test_an_acknowledged_directory_found_on_start_is_scrubbed_at_once(
    state_dir: Path,
) -> None:
    r = Runner(state_dir, FAST)
    await r.start()
    sink = Sink()
    r.attach(sink)
    await r.handle(Invoke("crash", [Step("s", 'printf "%s" "$S"', {"S": SECRET})], mask=[SECRET]))
    await finished(sink, "crash")
    await r.close()
    # The agent recorded the acknowledgement and died before scrubbing anything.
    r.journal.record_ack("crash")
    r.journal.close()
    assert files_holding(state_dir, RAW)

    slow = Runner(state_dir, dataclasses.replace(FAST, cleanup_delay=60.0))
    await slow.start()
    assert (state_dir / "invocations" / "crash").exists()
    assert files_holding(state_dir, RAW) == []
    await slow.close()


async def test_the_result_waits_for_held_back_bytes_to_be_flushed(
    runner: tuple[Runner, Sink],
) -> None:
    r, sink = runner
    # The stream ends with the start of the secret: held back until the worker ends.
    await r.handle(
        Invoke("tail", [Step("s", 'printf "x%s" "${S:0:6}"', {"S": SECRET})], mask=[SECRET])
    )
    result = await finished(sink, "tail")
    assert output(sink, "tail") == b"x" + SECRET[:6].encode()
    assert result.stdout_bytes == 7
    last_output = max(i for i, m in enumerate(sink.messages) if isinstance(m, Output))
    assert last_output < sink.messages.index(result)
    assert isinstance(sink.messages[-1], Result)


async def test_agent_process_masks_before_sending_also_across_a_restart(
    registered: Path, channel_server: ChannelServer, tmp_path: Path
) -> None:
    """A real `corral agent run` and a channel server that sends an Invoke with `mask`."""
    go = tmp_path / "go"
    script = (
        'printf "one %s\\n" "$S"; printf "half %s" "${S:0:7}"; '
        f"while [ ! -e {go} ]; do sleep 0.02; done; "
        'printf "%s two\\n" "${S:7}"; printf "err %s\\n" "$S" >&2'
    )
    invoke = Invoke("proc", [Step("s", script, {"S": SECRET})], mask=[SECRET])
    log = tmp_path / "agent.log"
    proc = start_agent(registered, log)
    try:
        await wait_until(lambda: channel_server.welcomed == 1, timeout=30)
        await channel_server.send(invoke)
        first = b"one " + STARS + b"\nhalf "
        await wait_until(lambda: b"half " in received(channel_server, "stdout"), timeout=30)
        assert received(channel_server, "stdout") == first
        # Killed while holding back half the secret; the worker goes on without it.
        assert stop_agent(proc, signal.SIGKILL) == -signal.SIGKILL
        go.touch()
        proc = start_agent(registered, log)
        await wait_until(lambda: channel_server.of(Result), timeout=30)
        (result,) = channel_server.of(Result)
        assert isinstance(result, Result)
        assert result.status == "Success"
        expected = first + STARS + b" two\n"
        assert received(channel_server, "stdout") == expected
        assert received(channel_server, "stderr") == b"err " + STARS + b"\n"
        assert (result.stdout_bytes, result.stderr_bytes) == (len(expected), len(RAW) + 5)
        for message in channel_server.received:
            assert SECRET not in repr(message)
            if isinstance(message, Output):
                assert RAW not in message.data
        assert SECRET not in log.read_text()
        # The acknowledgement scrubs the secrets from the node's disk at once.
        await channel_server.send(ResultAck("proc"))
        await wait_until(lambda: not files_holding(registered, RAW), timeout=30)
    finally:
        stop_agent(proc, signal.SIGKILL)


def received(server: ChannelServer, stream: str) -> bytes:
    """The stream as the server reassembles it from the Output frames it received."""
    data = bytearray()
    for m in server.of(Output):
        assert isinstance(m, Output)
        if m.stream == stream:
            assert m.offset <= len(data)  # no gap
            # Bytes sent again (after the restart) are the very bytes sent before.
            overlap = bytes(data[m.offset : m.offset + len(m.data)])
            assert m.data.startswith(overlap)
            data[m.offset : m.offset + len(m.data)] = m.data
    return bytes(data)
