"""PtySession with real shells on real pseudo-terminals; SessionClock as pure code."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.agent.pty_session import (
    PtySession,
    SessionClock,
    SessionLimits,
    default_session_user,
    resolve_session_user,
)
from corral.errors import AccessDeniedError, ConflictError, NotFoundError, ValidationError
from tests.agent.conftest import wait_until

BASH = "/bin/bash"
# Output after an echoed command follows "\r" or "\n": bash may put an escape sequence
# (bracketed paste off) between the echoed line's "\r\n" and the output.
PROMPT = rb"corral\$ "
PS1 = "PS1='corral$ '"
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")


class Term:
    """The operator's side of a session: collects output and waits for patterns in it."""

    def __init__(self, session: PtySession) -> None:
        self.session = session
        self.output = bytearray()
        self.pos = 0

    async def expect(self, pattern: bytes, timeout: float = 3.0) -> re.Match[bytes]:
        """Read until `pattern` appears after the last match; fail after `timeout`."""
        regex = re.compile(pattern, re.DOTALL)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    match = regex.search(self.output, self.pos)
                    if match:
                        self.pos = match.end()
                        return match
                    data = await self.session.read()
                    if not data:
                        raise AssertionError(f"EOF while waiting for {pattern!r}")
                    self.output += data
        except TimeoutError:
            tail = bytes(self.output[self.pos :])
            raise AssertionError(f"no {pattern!r} within {timeout}s; got {tail!r}") from None

    async def until_eof(self, timeout: float = 3.0) -> bytes:
        """Read to EOF; return everything after the last match."""
        async with asyncio.timeout(timeout):
            while data := await self.session.read():
                self.output += data
        rest = bytes(self.output[self.pos :])
        self.pos = len(self.output)
        return rest


@pytest.fixture
async def start() -> AsyncIterator[Any]:
    """`await start(**kwargs)` starts a session that is hung up (grace 0) after the test."""
    sessions: list[PtySession] = []

    async def starter(**kwargs: Any) -> tuple[PtySession, Term]:
        session = await PtySession.start(**kwargs)
        sessions.append(session)
        return session, Term(session)

    yield starter
    for session in sessions:
        await session.terminate(0)


def session_procs(sid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the live processes in session `sid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] not in "ZX":
            found.append((int(entry), name))
    return found


def running(sid: int, name: str) -> int | None:
    """The pid of a live process called `name` in session `sid`."""
    return next((pid for pid, comm in session_procs(sid) if comm == name), None)


def open_fds() -> set[str]:
    """This process's open file descriptors."""
    return set(os.listdir("/proc/self/fd"))


def zombie_children() -> list[int]:
    """Children of this process that exited and were never reaped."""
    me = str(os.getpid())
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[1] == me and fields[0] == "Z":
                zombies.append(int(entry))
    return zombies


def rss_bytes() -> int:
    """Resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def written_bytes(pid: int) -> int:
    """Bytes process `pid` has written so far (its write(2) calls, from /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar")


# --- interactive shells ----------------------------------------------------------------


async def test_login_shell_echo_round_trip(start: Any) -> None:
    session, term = await start()  # the account's own login shell, as-is
    await session.write(b"echo hel''lo\r")
    await term.expect(rb"\rhello\r\n")
    await session.write(b"exit 3\r")
    assert await session.wait() == 3
    await term.until_eof()
    assert session.returncode == 3


async def test_prompt_appears_and_exit_status(start: Any) -> None:
    session, term = await start(shell=BASH, profile=PS1)
    await term.expect(PROMPT)
    await session.write(b"echo $((6*7))\r")
    await term.expect(rb"\r42\r\n.*" + PROMPT)
    await session.write(b"exit 3\r")
    await term.until_eof()
    assert await session.wait() == 3


async def test_ctrl_c_interrupts_the_foreground_command_and_the_shell_survives(
    start: Any,
) -> None:
    session, term = await start(shell=BASH, profile=PS1)
    await term.expect(PROMPT)
    await session.write(b"sleep 100\r")
    await wait_until(lambda: running(session.pid, "sleep"), 3)
    await session.write(b"\x03")
    await term.expect(rb"\^C.*" + PROMPT)
    await wait_until(lambda: not running(session.pid, "sleep"), 3)
    await session.write(b"echo alive$((40+2))\r")
    await term.expect(rb"alive42")
    assert session.returncode is None


async def test_ctrl_d_at_an_empty_prompt_ends_the_shell(start: Any) -> None:
    session, term = await start(shell=BASH, profile=PS1)
    await term.expect(PROMPT)
    await session.write(b"\x04")
    await term.until_eof()
    assert await session.wait() == 0


async def test_ctrl_c_works_when_the_agent_ignores_sigint(start: Any) -> None:
    # An agent started in the background by a non-interactive shell ignores SIGINT; the
    # session's processes must not inherit that.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        session, term = await start(command="echo ready; sleep 100; echo after", shell=BASH)
    finally:
        signal.signal(signal.SIGINT, previous)
    await term.expect(rb"ready\r\n")
    await wait_until(lambda: running(session.pid, "sleep"), 3)
    await session.write(b"\x03")
    await term.until_eof()
    assert await session.wait() == 128 + signal.SIGINT


async def test_large_input_is_delivered_whole(start: Any) -> None:
    # More than the pty's input buffer: write() waits while the shell catches up.
    size = 300_000
    command = f"stty raw -echo; echo ready; head -c {size} | wc -c"
    session, term = await start(command=command, shell=BASH)
    await term.expect(rb"ready")
    await asyncio.wait_for(session.write(b"x" * size), 5)
    await term.expect(rf"\b{size}\b".encode())
    assert await session.wait() == 0


async def test_resize_is_seen_by_stty(start: Any) -> None:
    session, term = await start(shell=BASH, profile=PS1, cols=80, rows=24)
    await term.expect(PROMPT)
    await session.write(b"stty size\r")
    await term.expect(rb"\r24 80\r\n.*" + PROMPT)
    session.resize(120, 40)
    await session.write(b"stty size\r")
    await term.expect(rb"\r40 120\r\n.*" + PROMPT)


async def test_resize_sends_sigwinch_to_the_foreground_group(start: Any) -> None:
    script = "trap 'stty size' WINCH; echo ready; while :; do sleep 0.01; done"
    session, term = await start(command=script, shell=BASH, cols=80, rows=24)
    await term.expect(rb"ready\r\n")
    session.resize(100, 30)
    await term.expect(rb"30 100\r\n")


async def test_command_mode(start: Any) -> None:
    session, term = await start(command="printf abc; exit 7", shell=BASH)
    assert await term.until_eof() == b"abc"
    assert await session.wait() == 7


async def test_environment_is_fresh(start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_AGENT_TOKEN", "agent-secret")
    command = 'echo "$FOO|$TERM|${CORRAL_AGENT_TOKEN-unset}|$HOME|$USER|$LOGNAME"; pwd'
    session, term = await start(command=command, env={"FOO": "bar"}, cwd="/tmp")
    me = pwd.getpwuid(os.geteuid())
    expected = f"bar|xterm-256color|unset|{me.pw_dir}|{me.pw_name}|{me.pw_name}\r\n/tmp\r\n"
    assert await term.until_eof() == expected.encode()
    assert await session.wait() == 0


# --- profile commands -------------------------------------------------------------------


@pytest.fixture
def profile_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory of this test's own (world-writable and sticky, like /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="corral-test-", dir="/tmp"))
    path.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def profile_files(directory: Path) -> list[str]:
    """Temporary profile files left in `directory`."""
    return glob.glob(os.path.join(directory, "corral-profile-*"))


async def test_bash_profile_runs_unseen_and_its_file_is_removed(
    start: Any, profile_dir: Path
) -> None:
    profile = f"export CORRAL_SECRET=s3cr3t-42\n{PS1}"
    session, term = await start(shell=BASH, profile=profile)
    await term.expect(PROMPT)
    assert profile_files(profile_dir) == []
    await session.write(b'echo "[${CORRAL_SECRET}]"\r')
    await term.expect(rb"\r\[s3cr3t-42\]\r\n")
    # Only the echo's output shows the value: the profile itself was neither typed nor shown.
    assert term.output.count(b"s3cr3t-42") == 1
    assert b"export" not in term.output


async def test_posix_sh_profile_through_env(start: Any) -> None:
    session, term = await start(shell="/bin/sh", profile="PS1='dash$ '; GREETING=hi")
    await term.expect(rb"dash\$ ")
    await session.write(b'echo "[$GREETING|${ENV-unset}]"\r')
    await term.expect(rb"[\r\n]\[hi\|unset\]\r\n")
    assert b"GREETING=hi" not in term.output


async def test_profile_before_a_command(start: Any) -> None:
    session, term = await start(command='echo "$GREETING"', shell="/bin/sh", profile="GREETING=hi")
    assert await term.until_eof() == b"hi\r\n"
    assert await session.wait() == 0


async def test_profile_needs_a_known_shell() -> None:
    with pytest.raises(ValidationError) as info:
        await PtySession.start(shell="/usr/bin/fish", profile="set x 1")
    assert info.value.field == "profile"


# --- flow control ----------------------------------------------------------------------


async def test_a_fast_producer_is_held_back_while_nobody_reads(start: Any) -> None:
    session, _ = await start(command="yes", shell=BASH)
    await wait_until(lambda: running(session.pid, "yes"), 3)
    producer = running(session.pid, "yes")
    assert producer is not None
    rss_before = rss_bytes()
    # Nobody reads: `yes` must come to a stop in write(2) once the pty's buffer is full.
    samples: list[int] = []

    def stalled() -> bool:
        samples.append(written_bytes(producer))
        return len(samples) >= 10 and len(set(samples[-10:])) == 1

    await wait_until(stalled, 3)
    assert samples[-1] < 1 << 20, f"yes wrote {samples[-1]} bytes while nobody read"
    assert 0 < session.pending_output_bytes() <= 64 * 1024
    assert rss_bytes() - rss_before < 4 << 20
    # Reading lets it go on, and the output is intact.
    got = bytearray()
    while len(got) < 2 << 20:
        got += await session.read()
    assert got.startswith(b"y\r\n")
    assert set(got) <= set(b"y\r\n")
    assert written_bytes(producer) > samples[-1] + (1 << 20)
    await session.terminate(1.0)
    assert await session.wait() == 128 + signal.SIGHUP


# --- limits and hang-up -------------------------------------------------------------------


async def test_idle_timeout_ends_the_session(start: Any) -> None:
    limits = SessionLimits(idle_timeout_seconds=0.3, kill_grace_seconds=0.5)
    began = time.monotonic()
    session, term = await start(shell=BASH, profile=PS1, limits=limits)
    await term.until_eof()
    assert time.monotonic() - began >= 0.3
    assert session.ended_reason == "idle timeout (0.3 s without input or output)"
    assert await session.wait() == 128 + signal.SIGHUP


async def test_output_keeps_the_session_alive(start: Any) -> None:
    limits = SessionLimits(idle_timeout_seconds=0.5, kill_grace_seconds=0.5)
    command = "while :; do echo tick; sleep 0.05; done"
    session, term = await start(command=command, shell=BASH, limits=limits)
    for _ in range(20):  # at least 1 s: twice the idle timeout
        await term.expect(rb"tick\r\n")
    assert session.ended_reason is None
    assert session.returncode is None


async def test_maximum_duration_ends_the_session(start: Any) -> None:
    limits = SessionLimits(idle_timeout_seconds=None, max_duration_seconds=0.3)
    session, term = await start(command="sleep 100", shell=BASH, limits=limits)
    await term.until_eof()
    assert session.ended_reason == "maximum duration reached"
    assert await session.wait() == 128 + signal.SIGHUP


async def test_terminate_hangs_up_quickly(start: Any) -> None:
    session, _ = await start(command="sleep 100", shell=BASH)
    await wait_until(lambda: running(session.pid, "sleep"), 3)
    began = time.monotonic()
    await session.terminate(5.0)
    assert time.monotonic() - began < 1.0
    assert await session.wait() == 128 + signal.SIGHUP


async def test_terminate_kills_what_ignores_sighup_after_the_grace(start: Any) -> None:
    session, term = await start(command="trap '' HUP; echo ready; sleep 100", shell=BASH)
    await term.expect(rb"ready\r\n")
    await wait_until(lambda: running(session.pid, "sleep"), 3)
    began = time.monotonic()
    await session.terminate(0.4)
    assert 0.4 <= time.monotonic() - began < 1.5
    assert await session.wait() == 128 + signal.SIGKILL
    assert session_procs(session.pid) == []
    # Idempotent, and the streams are closed.
    began = time.monotonic()
    await asyncio.gather(session.terminate(0.4), session.terminate(0.4))
    assert time.monotonic() - began < 0.1
    assert await session.read() == b""
    with pytest.raises(ConflictError):
        await session.write(b"echo too late\r")


async def test_terminate_hangs_up_background_jobs(start: Any) -> None:
    session, term = await start(shell=BASH, profile=PS1)
    await term.expect(PROMPT)
    await session.write(b"sleep 101 &\r")
    await term.expect(PROMPT)
    await wait_until(lambda: running(session.pid, "sleep"), 3)
    await session.terminate(1.0)
    assert session_procs(session.pid) == []


async def test_a_background_job_holding_the_terminal_does_not_keep_it_open(start: Any) -> None:
    # The job inherits the ignored SIGHUP, so it outlives the shell, terminal in hand.
    command = "trap '' HUP; sleep 103 & echo bye"
    session, term = await start(command=command, shell=BASH)
    assert await term.until_eof(2.0) == b"bye\r\n"
    assert await session.wait() == 0
    await wait_until(lambda: running(session.pid, "sleep"), 3)
    await session.terminate(0.2)
    assert session_procs(session.pid) == []


async def test_concurrent_reads_are_refused(start: Any) -> None:
    session, _ = await start(command="sleep 100", shell=BASH)
    first = asyncio.create_task(session.read())
    await asyncio.sleep(0)  # let it start waiting
    with pytest.raises(RuntimeError):
        await session.read()
    await session.terminate(0)
    assert await first == b""


# --- many sessions, no leaks -------------------------------------------------------------


async def test_many_sessions_at_once_leave_no_fds_or_zombies() -> None:
    before = open_fds()
    sessions = await asyncio.gather(
        *(PtySession.start(command=f"printf n{i}; exit {i % 5}", shell=BASH) for i in range(16))
    )
    outputs = await asyncio.gather(*(Term(s).until_eof(5.0) for s in sessions))
    codes = await asyncio.gather(*(s.wait() for s in sessions))
    await asyncio.gather(*(s.terminate(1.0) for s in sessions))
    assert outputs == [f"n{i}".encode() for i in range(16)]
    assert codes == [i % 5 for i in range(16)]
    assert open_fds() == before
    assert zombie_children() == []


async def test_a_cancelled_start_leaves_nothing_behind() -> None:
    before = open_fds()
    starting = asyncio.create_task(PtySession.start(command="sleep 102", shell=BASH))
    await asyncio.sleep(0)  # the spawn is under way in its thread
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert open_fds() == before
    assert zombie_children() == []
    assert not any(b"sleep\x00102" in _cmdline(pid) for pid in _all_pids())


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- users ------------------------------------------------------------------------------


@needs_root
async def test_runs_as_another_user(start: Any) -> None:
    nobody = pwd.getpwnam("nobody")
    command = 'id -u; id -g; echo "$HOME|$USER|$LOGNAME"; pwd; stat -c %U "$(tty)"'
    session, term = await start(command=command, user="nobody", shell="/bin/sh")
    lines = (await term.until_eof()).decode().split("\r\n")
    # The home directory (/nonexistent) is missing, so the shell starts in / as login(1) does.
    assert lines[:5] == [
        str(nobody.pw_uid),
        str(nobody.pw_gid),
        f"{nobody.pw_dir}|nobody|nobody",
        "/",
        "nobody",
    ]
    assert await session.wait() == 0


@needs_root
async def test_another_users_profile_is_read_and_removed(start: Any, profile_dir: Path) -> None:
    session, term = await start(
        command='echo "$X"', user="nobody", shell="/bin/sh", profile="X=from-profile"
    )
    assert session.user == "nobody"
    assert await term.until_eof() == b"from-profile\r\n"
    assert profile_files(profile_dir) == []  # nobody removed it: it was given to nobody


@needs_root
async def test_the_accounts_login_shell_is_honoured(start: Any) -> None:
    if not pwd.getpwnam("nobody").pw_shell.endswith(("nologin", "false")):
        pytest.skip("nobody has a usable login shell here")
    session, term = await start(user="nobody")
    await term.until_eof()
    assert await session.wait() != 0


@needs_root
async def test_the_user_enters_cwd_with_its_own_permissions() -> None:
    private = tempfile.mkdtemp()  # mode 0700, owned by root
    try:
        with pytest.raises(ValidationError) as info:
            await PtySession.start(command="pwd", user="nobody", shell="/bin/sh", cwd=private)
        assert info.value.field == "cwd"
    finally:
        os.rmdir(private)


async def test_a_missing_shell_is_reported() -> None:
    with pytest.raises(NotFoundError) as info:
        await PtySession.start(command="true", shell="/no/such/shell")
    assert "/no/such/shell" in info.value.message


async def test_exit_is_seen_without_pidfd(start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open")  # kernels before 5.3: the exit is polled
    session, term = await start(command="printf x; exit 4", shell=BASH)
    assert await term.until_eof() == b"x"
    assert await session.wait() == 4


async def test_missing_cwd_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        await PtySession.start(command="pwd", cwd="/no/such/dir")
    assert info.value.field == "cwd"


async def test_unknown_user_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        await PtySession.start(user="no-such-user-corral")
    assert info.value.field == "user"
    assert "no-such-user-corral" in info.value.message


def test_only_root_may_switch_users() -> None:
    with pytest.raises(AccessDeniedError) as info:
        resolve_session_user("root", euid=65534)
    assert "'root'" in info.value.message
    assert "root" in info.value.message.split("runs as")[1]
    assert resolve_session_user("nobody", euid=65534).switch is False
    assert resolve_session_user(None, euid=65534).name == "nobody"
    switched = resolve_session_user("nobody", euid=0)
    assert (switched.switch, switched.uid) == (True, pwd.getpwnam("nobody").pw_uid)


def test_default_session_user() -> None:
    assert default_session_user("ops") == "ops"
    assert default_session_user(None, euid=65534) == "nobody"
    try:
        pwd.getpwnam("corral-session")
    except KeyError:
        with pytest.raises(NotFoundError) as info:
            default_session_user(None, euid=0)
        assert "corral-session" in info.value.message
    else:
        assert default_session_user(None, euid=0) == "corral-session"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cols": 0}, "cols"),
        ({"rows": 70000}, "rows"),
        ({"command": ""}, "command"),
        ({"command": "echo \0"}, "command"),
        ({"command": "true", "env": {"A=B": "x"}}, "env"),
    ],
)
async def test_bad_requests(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        await PtySession.start(**kwargs)
    assert info.value.field == field


# --- the clock (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idle", "maximum", "touches", "now", "expected"),
    [
        (1200.0, None, [], 1199.0, None),
        (1200.0, None, [], 1200.0, "idle timeout (20 min without input or output)"),
        (1200.0, None, [600.0], 1500.0, None),
        (1200.0, None, [600.0], 1800.0, "idle timeout (20 min without input or output)"),
        (3600.0, None, [], 3600.0, "idle timeout (1 h without input or output)"),
        (90.0, None, [], 95.0, "idle timeout (90 s without input or output)"),
        (1200.0, 1000.0, [900.0], 1000.0, "maximum duration reached"),
        (None, None, [], 1e9, None),
        (None, 60.0, [50.0], 59.0, None),
    ],
)
def test_session_clock(
    idle: float | None,
    maximum: float | None,
    touches: list[float],
    now: float,
    expected: str | None,
) -> None:
    clock = SessionClock(SessionLimits(idle, maximum), started_at=0.0)
    for moment in touches:
        clock.touch(moment)
    assert clock.expired(now) == expected


def test_session_clock_next_check() -> None:
    clock = SessionClock(SessionLimits(100.0, 250.0), started_at=0.0)
    assert clock.next_check(10.0) == 90.0
    clock.touch(200.0)
    assert clock.next_check(210.0) == 40.0  # the maximum duration comes first
    assert clock.next_check(300.0) == 0.0
    assert SessionClock(SessionLimits(None, None), 0.0).next_check(5.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"idle_timeout_seconds": 0},
        {"idle_timeout_seconds": 3601},
        {"max_duration_seconds": -1},
        {"max_duration_seconds": 86401},
        {"kill_grace_seconds": -1},
    ],
)
def test_session_limits_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        SessionLimits(**kwargs)
