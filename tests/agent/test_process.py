"""`corral agent` as real processes: register against a stub, run against a test server."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psutil  # type: ignore[import-untyped]
import pytest

from corral.agent.identity import load_identity
from corral.protocol import Invoke, Output, Result, Step
from tests.agent.conftest import (
    NODE_ID,
    PYTHON,
    REPO,
    ChannelServer,
    pid_gone,
    wait_until,
)

AGENT_ENV = {
    "CORRAL_AGENT_BACKOFF_BASE": "0.02",
    "CORRAL_AGENT_BACKOFF_CAP": "0.2",
    "CORRAL_AGENT_OUTPUT_POLL": "0.02",
    "CORRAL_AGENT_KILL_GRACE": "0.3",
}


def clean_env() -> dict[str, str]:
    """The environment for agent subprocesses: no proxies, the repo importable."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(REPO)
    env.update(AGENT_ENV)
    return env


def corral_agent(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `corral agent ARGS` to completion."""
    return subprocess.run(
        [PYTHON, "-m", "corral", "agent", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
        cwd=REPO,
    )


class RegisterStub(BaseHTTPRequestHandler):
    """POST /api/v1/register: code "good" gets a node id, anything else a 400."""

    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        RegisterStub.bodies.append(body)
        reply: dict[str, object]
        if self.path == "/api/v1/register" and body["activation_code"] == "good":
            status, reply = 201, {"node_id": NODE_ID}
        else:
            status = 400
            reply = {"error": {"type": "ValidationError", "message": "activation has expired"}}
        raw = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def register_url() -> Iterator[str]:
    """A stub registration server on 127.0.0.1."""
    RegisterStub.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RegisterStub)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def register_args(url: str, state_dir: Path, code: str = "good") -> list[str]:
    """Arguments of `corral agent register`."""
    return [
        "register", "--server", url, "--activation-id", "act-1", "--activation-code", code,
        "--state-dir", str(state_dir), "--tag", "role=web", "--tag", "env=a=b", "-o", "json",
    ]  # fmt: skip


def test_register_stores_identity_privately(register_url: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    done = corral_agent(*register_args(register_url, state_dir))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"node_id": NODE_ID, "state_dir": str(state_dir)}
    (body,) = RegisterStub.bodies
    assert body["activation_id"] == "act-1"
    assert body["tags"] == {"role": "web", "env": "a=b"}
    identity = load_identity(state_dir)
    assert identity.node_id == NODE_ID
    assert identity.server_url == register_url
    assert base64.b64decode(body["public_key"]) == bytes(identity.signing_key.verify_key)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    files = list(state_dir.iterdir())
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    again = corral_agent(*register_args(register_url, state_dir))
    assert again.returncode == 2
    assert "--force" in again.stderr
    assert load_identity(state_dir).signing_key == identity.signing_key
    forced = corral_agent(*register_args(register_url, state_dir), "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_identity(state_dir).signing_key != identity.signing_key


def test_register_refused_activation(register_url: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    done = corral_agent(*register_args(register_url, state_dir, code="bad"))
    assert done.returncode == 2
    error = json.loads(done.stderr)["error"]
    assert error["message"] == "activation has expired"
    assert done.stdout == ""
    assert not state_dir.exists() or not list(state_dir.iterdir())


def test_register_unreachable_server(tmp_path: Path) -> None:
    with psutil_free_port() as port:
        url = f"http://127.0.0.1:{port}"
    args = register_args(url, tmp_path / "state")
    args.remove("-o")
    args.remove("json")
    done = corral_agent(*args)
    assert done.returncode == 5
    assert "cannot reach the server" in done.stderr


class psutil_free_port:
    """A loopback port that is bound while inside the block and closed afterwards."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def start_agent(state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """`corral agent run` in its own session, logging to `log`."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            [PYTHON, "-m", "corral", "agent", "run", "--state-dir", str(state_dir)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
            cwd=REPO,
        )


def stop_agent(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal the agent and wait for it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=30)


async def test_agent_process_runs_without_listening_and_stops_on_sigterm(
    registered: Path, channel_server: ChannelServer, tmp_path: Path
) -> None:
    proc = start_agent(registered, tmp_path / "agent.log")
    try:
        await wait_until(lambda: channel_server.welcomed == 1, timeout=30)
        agent = psutil.Process(proc.pid)
        connections = agent.net_connections(kind="inet")
        assert connections, "the agent should hold its outbound connection"
        assert [c for c in connections if c.status == psutil.CONN_LISTEN] == []
        assert all(c.raddr for c in connections)
        assert agent.memory_info().rss < 35 * 2**20, "an idle agent stays lean"

        await channel_server.send(Invoke("bg", [Step("s", "echo up; sleep 300")]))
        await wait_until(lambda: channel_server.of(Output))
        worker_pid = next(
            int(line.split()[3])
            for line in (registered / "journal").read_text().splitlines()
            if line.split()[1:3] == ["bg", "worker"]
        )
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.poll() is not None, timeout=30)
        assert proc.returncode == 0
        assert not pid_gone(worker_pid), "workers outlive the agent"
        assert "shutting down" in (tmp_path / "agent.log").read_text()
    finally:
        stop_agent(proc, signal.SIGKILL)


async def test_restarted_agent_collects_a_worker_that_finished_meanwhile(
    registered: Path, channel_server: ChannelServer, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = f"echo begin; while [ ! -e {go} ]; do sleep 0.02; done; echo end >&2; exit 9"
    proc = start_agent(registered, tmp_path / "agent.log")
    try:
        await wait_until(lambda: channel_server.welcomed == 1, timeout=30)
        await channel_server.send(Invoke("survivor", [Step("s", script)]))
        await wait_until(lambda: channel_server.of(Output))
        assert stop_agent(proc, signal.SIGKILL) == -signal.SIGKILL
        go.touch()
        proc = start_agent(registered, tmp_path / "agent.log")
        await wait_until(lambda: channel_server.of(Result), timeout=30)
        (result,) = channel_server.of(Result)
        assert isinstance(result, Result)
        assert (result.status, result.response_code) == ("Failed", 9)
        assert (result.stdout_bytes, result.stderr_bytes) == (6, 4)
        streams = {
            (m.stream, m.offset, m.data) for m in channel_server.of(Output) if isinstance(m, Output)
        }
        assert ("stderr", 0, b"end\n") in streams
        assert ("stdout", 0, b"begin\n") in streams
    finally:
        stop_agent(proc, signal.SIGKILL)


def test_agent_run_without_registration_exits_2(tmp_path: Path) -> None:
    done = corral_agent("run", "--state-dir", str(tmp_path / "empty"))
    assert done.returncode == 2
    assert "corral agent register" in done.stderr


BANNED = [
    "pydantic", "fastapi", "sqlalchemy", "httpx", "rich", "typer", "cryptography", "yaml",
    "corral.documents", "corral.server", "corral.cli", "uvicorn", "starlette",
]  # fmt: skip


def test_agent_imports_stay_lean() -> None:
    code = (
        "import json, sys\n"
        "import corral.agent.cli, corral.agent.connection, corral.agent.register\n"
        "import corral.agent.swarm\n"
        f"banned = {BANNED!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules for b in banned"
        " if m == b or m.startswith(b + '.'))))\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=clean_env(), check=True, cwd=REPO
    )
    assert json.loads(done.stdout) == []
