"""Interactive sessions end to end: `corral session start` in a real pty, a real server,
a real agent and a real shell on the node's pty; recording, audit and policy."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import AGENT_ENV, PYTHON, Fleet, base_env

# Sessions run as `nobody` with bash: an account without dotfiles, so the tests never
# depend on (or hang in) the login scripts of whoever runs them. Switching to it needs
# an agent running as root, as CI does.
SESSION_ENV = {"CORRAL_AGENT_SESSION_USER": "nobody", "CORRAL_AGENT_SESSION_SHELL": "/bin/bash"}
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="sessions as another account need the agent to run as root"
)


class Terminal:
    """`corral ...` running on a pty we hold the master side of."""

    def __init__(self, args: list[str], env: dict[str, str], cols: int = 100, rows: int = 30):
        self.master, slave = os.openpty()
        self.resize(cols, rows, fd=slave)

        def controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=controlling_tty
        )
        os.close(slave)
        self.buffer = b""
        self.transcript = b""  # everything read, for checks on the whole output

    def resize(self, cols: int, rows: int, fd: int | None = None) -> None:
        fcntl.ioctl(
            self.master if fd is None else fd,
            termios.TIOCSWINSZ,
            struct.pack("HHHH", rows, cols, 0, 0),
        )

    def send(self, text: str | bytes) -> None:
        os.write(self.master, text.encode() if isinstance(text, str) else text)

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern.encode())
        while True:
            match = regex.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end() :]
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.buffer[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"EOF waiting for {pattern!r}: {self.buffer[-2000:]!r}")
                self.buffer += chunk
                self.transcript += chunk

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    chunk = os.read(self.master, 65536)
                    self.buffer += chunk
                    self.transcript += chunk
        try:
            return self.process.wait(1)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running after {timeout} s; its terminal ends with {self.buffer[-2000:]!r}"
            ) from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        os.close(self.master)


@contextlib.contextmanager
def sessions_server(root: Path, *server_args: str) -> Iterator[Fleet]:
    """A running server (with `server_args`); agents added to it run sessions as
    `nobody` with bash. Every process's log is printed if the block fails."""
    AGENT_ENV.update(SESSION_ENV)
    fleet = Fleet(root)
    fleet.server.extra_args = list(server_args)
    try:
        fleet.start_server()
        yield fleet
    except BaseException:
        print(fleet.logs())  # noqa: T201 - shown by pytest only when the test fails
        raise
    finally:
        for key in SESSION_ENV:
            AGENT_ENV.pop(key, None)
        fleet.stop()


@pytest.fixture
def session_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A server and one agent tagged env=dev."""
    with sessions_server(tmp_path) as fleet:
        fleet.add_agents(1, tags=["env=dev"])
        yield fleet


def cli_env(fleet: Fleet, token: str | None = None) -> dict[str, str]:
    env = base_env()
    env.update(CORRAL_SERVER=fleet.server.url, CORRAL_TOKEN=token or fleet.server.token)
    env["TERM"] = "xterm"
    return env


def test_an_interactive_shell_round_trips_resizes_interrupts_and_is_recorded(
    session_fleet: Fleet,
) -> None:
    server = session_fleet.server
    node = session_fleet.agents[0].node_id
    term = Terminal([PYTHON, "-m", "corral", "session", "start", node], cli_env(session_fleet))
    try:
        term.send("echo ready-$((6*7))\r")  # typed ahead, before the shell is even there
        term.expect("ready-42")
        term.send("stty size\r")
        term.expect(r"30 100")
        term.resize(120, 40)
        term.process.send_signal(signal.SIGWINCH)
        for _ in range(20):  # the resize travels on its own frame; poll until the shell has it
            term.send("stty size\r")
            if term.expect(r"(\d+ \d+)\r\n").group(1) == b"40 120":
                break
        else:
            raise AssertionError("the remote terminal never saw the new size")
        term.send("sleep 100; echo slept\r")
        for _ in range(20):  # Ctrl-C reaches the remote foreground process, not the CLI
            term.send(b"\x03")
            try:
                term.expect(r"\^C", timeout=0.5)
                break
            except AssertionError:
                continue
        term.send("echo after-interrupt\r")
        term.expect("after-interrupt")
        assert b"slept" not in term.buffer
        term.send("exit 3\r")
        assert term.wait(timeout=30) == 3
    finally:
        term.close()
    [session] = server.cli_json("session", "list")
    assert (session["node_id"], session["status"], session["exit_code"]) == (node, "Terminated", 3)
    assert session["owner"] == "user:admin"
    assert session["bytes_out"] > 0
    assert session["bytes_in"] > 0
    recording = subprocess.run(
        [PYTHON, "-m", "corral", "session", "replay", session["session_id"], "--speed", "100"],
        capture_output=True, text=True, env=cli_env(session_fleet), timeout=60, check=False,
    )  # fmt: skip
    assert recording.returncode == 0, recording.stderr
    assert "ready-42" in recording.stdout
    assert "after-interrupt" in recording.stdout
    raw = (server.data_dir / "blobs" / "recordings" / f"{session['session_id']}.cast").read_text()
    header = json.loads(raw.splitlines()[0])
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    assert '"r", "120x40"' in raw or '"r","120x40"' in raw
    audit = server.cli_json("audit", "list", "--action", "session:End")
    assert audit[0]["resources"][0] == f"session:{session['session_id']}"


def test_terminate_and_policy_denial(session_fleet: Fleet) -> None:
    server = session_fleet.server
    node = session_fleet.agents[0].node_id
    term = Terminal([PYTHON, "-m", "corral", "session", "start", node], cli_env(session_fleet))
    try:
        term.expect(r"[#$] ")
        term.send("echo li$((2+3))ve\r")
        term.expect("li5ve")
        active = server.cli_json("session", "list", "--active")
        assert len(active) == 1
        assert server.cli("session", "terminate", active[0]["session_id"]).returncode == 0
        term.expect("session ended: terminated by user:admin")
        assert term.wait() != 0
    finally:
        term.close()
    # A viewer may not start a session: session:Start is refused, nothing is opened.
    viewer = server.cli_json("user", "create", "vic", "--role", "viewer")
    denied = subprocess.run(
        [PYTHON, "-m", "corral", "session", "start", node],
        capture_output=True, text=True, env=cli_env(session_fleet, viewer["token"]),
        stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    assert denied.returncode == 4
    assert "session:Start" in denied.stderr
    assert [s["status"] for s in server.cli_json("session", "list")] == ["Terminated"]


def test_an_authorised_user_observes_read_only_and_the_owner_is_told(
    session_fleet: Fleet,
) -> None:
    server = session_fleet.server
    node = session_fleet.agents[0].node_id
    watcher = server.cli_json("user", "create", "wanda", "--role", "operator")
    viewer = server.cli_json("user", "create", "vince", "--role", "viewer")
    term = Terminal([PYTHON, "-m", "corral", "session", "start", node], cli_env(session_fleet))
    observer = None
    try:
        term.send("echo before-$((1+1))-join\r")
        term.expect("before-2-join")  # computed remotely: not the local echo of typeahead
        sessions = server.cli_json("session", "list")
        assert sessions, sessions
        assert sessions[0]["status"] == "Connected", sessions
        session_id = sessions[0]["session_id"]
        denied = subprocess.run(
            [PYTHON, "-m", "corral", "session", "join", session_id, "--observe"],
            capture_output=True, text=True, env=cli_env(session_fleet, viewer["token"]),
            timeout=60, check=False,
        )  # fmt: skip
        assert denied.returncode == 4, denied.stderr
        observer = subprocess.Popen(
            [PYTHON, "-m", "corral", "session", "join", session_id, "--observe"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=cli_env(session_fleet, watcher["token"]),
        )  # fmt: skip
        term.expect(r"user:wanda is watching")  # the owner is told, beside the output
        term.send("echo seen-by-$((2*1))-both\r")
        term.expect("seen-by-2-both")
        term.send("exit 0\r")
        assert term.wait() == 0
        out, err = observer.communicate(timeout=20)
        assert b"before-2-join" in out  # the latest screenful on joining
        assert b"seen-by-2-both" in out
        assert b"session ended" in err
    finally:
        term.close()
        if observer is not None and observer.poll() is None:
            observer.kill()
    audited = server.cli_json("audit", "list", "--action", "session:Observe")
    assert {r["principal"] for r in audited} >= {"user:wanda"}


def test_the_shell_profile_runs_first_and_an_idle_shell_is_ended(tmp_path: Path) -> None:
    """`corral server --session-shell-profile FILE --session-idle-timeout 1s`."""
    profile = tmp_path / "profile.sh"
    profile.write_text("export GREETING=from-the-profile\ncd /tmp\n")
    args = ["--session-idle-timeout", "1s", "--session-shell-profile", str(profile)]
    with sessions_server(tmp_path, *args) as fleet:
        [agent] = fleet.add_agents(1)
        term = Terminal([PYTHON, "-m", "corral", "session", "start", agent.node_id], cli_env(fleet))
        try:
            term.send("echo rea''dy $GREETING in $PWD\r")
            term.expect("ready from-the-profile in /tmp")
            started = time.monotonic()
            code = term.wait(timeout=20)
            waited = time.monotonic() - started
        finally:
            term.close()
        assert code != 0
        assert b"[session ended: idle timeout (1 s without input or output)]" in term.transcript
        assert 0.5 <= waited <= 15
        assert b"GREETING=" not in term.transcript  # never echoed
        [session] = fleet.server.cli_json("session", "list")
        cast = fleet.server.data_dir / "blobs" / "recordings" / f"{session['session_id']}.cast"
        assert "GREETING=" not in cast.read_text()  # nor recorded
        assert (session["status"], session["reason"]) == (
            "Terminated",
            "idle timeout (1 s without input or output)",
        )
