"""Pure agent logic, table-driven: outcomes, parsing, backoff, URLs, options, journal."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from corral.agent.connection import backoff_delay, channel_url
from corral.agent.journal import Journal
from corral.agent.nodeinfo import parse_if_inet6, parse_os_release
from corral.agent.options import AgentOptions
from corral.agent.worker import KILL_CANCEL, KILL_TIMEOUT, decide_outcome, parse_progress
from corral.protocol import Step

TWO = [Step("a", "x"), Step("b", "y")]
TWO_CONTINUE = [Step("a", "x", on_failure="continue"), Step("b", "y")]


@pytest.mark.parametrize(
    ("steps", "codes", "done", "kill", "expected"),
    [
        (TWO, [0, 0], True, None, ("Success", "Success", 0, ["Success", "Success"])),
        (TWO, [2, None], True, None, ("Failed", "Failed", 2, ["Failed", "Skipped"])),
        (TWO_CONTINUE, [2, 0], True, None, ("Failed", "Failed", 2, ["Failed", "Success"])),
        (TWO_CONTINUE, [2, 5], True, None, ("Failed", "Failed", 5, ["Failed", "Failed"])),
        (
            TWO,
            [0, None],
            False,
            KILL_TIMEOUT,
            ("TimedOut", "ExecutionTimedOut", 137, ["Success", "TimedOut"]),
        ),
        (
            TWO,
            [None, None],
            False,
            KILL_CANCEL,
            ("Cancelled", "Cancelled", 137, ["Cancelled", "Skipped"]),
        ),
        (TWO, [0, None], False, None, ("Failed", "Failed", None, ["Success", "Failed"])),
        # The worker finished before the kill landed: what it did wins.
        (TWO, [0, 0], True, KILL_TIMEOUT, ("Success", "Success", 0, ["Success", "Success"])),
    ],
)
def test_decide_outcome(
    steps: list[Step],
    codes: list[int | None],
    done: bool,
    kill: str | None,
    expected: tuple[str, str, int | None, list[str]],
) -> None:
    outcome = decide_outcome(steps, codes, done, kill)
    got = (
        outcome.status,
        outcome.status_details,
        outcome.response_code,
        [s.status for s in outcome.steps],
    )
    assert got == expected


def test_worker_died_message_says_why() -> None:
    outcome = decide_outcome(TWO, [None, None], False, None)
    assert "worker" in outcome.message
    assert "rebooted" in outcome.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('ID=debian\nVERSION_ID="12"\n', {"ID": "debian", "VERSION_ID": "12"}),
        ("# comment\nID='ubuntu'\n\nNAME=Ubuntu Linux\n", {"ID": "ubuntu", "NAME": "Ubuntu Linux"}),
        ("garbage\n=\n", {"": ""}),
    ],
)
def test_parse_os_release(text: str, expected: dict[str, str]) -> None:
    assert parse_os_release(text) == expected


def test_parse_if_inet6_skips_loopback() -> None:
    text = (
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
        "20010db8000000000000000000000005 02 40 00 80     eth0\n"
        "short line\n"
    )
    assert parse_if_inet6(text) == ["fe80::1", "2001:db8::5"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://corral:8080", "ws://corral:8080/agent/v1/connect"),
        ("https://corral.example/", "wss://corral.example/agent/v1/connect"),
        ("https://example/base", "wss://example/base/agent/v1/connect"),
    ],
)
def test_channel_url(url: str, expected: str) -> None:
    assert channel_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://x", "corral:8080", "http://"])
def test_channel_url_refuses_non_http(url: str) -> None:
    with pytest.raises(ValueError, match="server URL"):
        channel_url(url)


def test_backoff_is_full_jitter_and_capped() -> None:
    rand = random.Random(7)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (5, 30.0), (1000, 30.0)]:
        delays = [backoff_delay(attempt, 1.0, 30.0, rand) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range
        assert min(delays) < ceiling * 0.2


def test_options_flags_override_env_override_defaults() -> None:
    env = {"CORRAL_AGENT_BACKOFF_BASE": "0.5", "CORRAL_AGENT_OUTPUT_POLL": "0.05"}
    options = AgentOptions.from_env(env, output_poll=0.01, backoff_cap=None)
    assert options.backoff_base == 0.5
    assert options.output_poll == 0.01
    assert options.backoff_cap == 30.0
    assert AgentOptions.from_env({}) == AgentOptions()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CORRAL_AGENT_KILL_GRACE": "soon"}, "CORRAL_AGENT_KILL_GRACE must be a number"),
        ({"CORRAL_AGENT_OUTPUT_POLL": "0"}, "output_poll must be a positive"),
        ({"CORRAL_AGENT_BACKOFF_CAP": "0.1"}, "backoff_cap must not be smaller"),
    ],
)
def test_options_refuse_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AgentOptions.from_env(env)


def test_journal_survives_reload_ignores_torn_line_and_expires(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = Journal(path, retention=100, now=1000)
    journal.record("a")
    journal.record("b")
    with path.open("a") as fh:
        fh.write("1000.000 torn-without-newl")
    reloaded = Journal(path, retention=10**9)
    assert "a" in reloaded
    assert "b" in reloaded
    assert "torn-without-newl" not in reloaded
    assert path.read_text().endswith("\n")
    # Entries older than the retention are forgotten on load.
    path.write_text("1.000 old\n")
    assert "old" in Journal(path, retention=100, now=50)
    assert "old" not in Journal(path, retention=100, now=1000)
    assert path.read_text() == ""


@pytest.mark.parametrize(
    ("text", "codes", "ended", "done", "done_at"),
    [
        ("", {}, {}, False, None),
        (
            "step 0 0 10.5\nstep 1 3 11.25\ndone 11.5\n",
            {0: 0, 1: 3},
            {0: 10.5, 1: 11.25},
            True,
            11.5,
        ),
        # A comma decimal separator (some locales) and a bash without $EPOCHREALTIME.
        ("step 0 0 10,5\nstep 1 2\n", {0: 0, 1: 2}, {0: 10.5, 1: 99.0}, False, None),
        # The last line is half-written: not finished yet.
        ("step 0 0 10.5\nstep 1 0 1", {0: 0}, {0: 10.5}, False, None),
        ("step 0 0 10.5\ndone 12", {0: 0}, {0: 10.5}, False, None),
        ("garbage\nstep x y\nstep 0 7 1.0\n", {0: 7}, {0: 1.0}, False, None),
    ],
)
def test_parse_progress(
    text: str,
    codes: dict[int, int],
    ended: dict[int, float],
    done: bool,
    done_at: float | None,
) -> None:
    progress = parse_progress(text, mtime=99.0)
    assert progress.exit_codes == codes
    assert progress.ended_at == ended
    assert (progress.done, progress.done_at) == (done, done_at)
