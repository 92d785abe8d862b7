"""Real processes for end-to-end tests: a `corral server` and `corral agent` processes.

Everything runs through the same `python -m corral` entry point a user runs, on
loopback, with short intervals so the tests are fast and deterministic.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYTHON = sys.executable
START_TIMEOUT = 20.0

# Agent tunables for tests: reconnect quickly, tail output often.
AGENT_ENV = {
    "CORRAL_AGENT_BACKOFF_BASE": "0.05",
    "CORRAL_AGENT_BACKOFF_CAP": "0.5",
    "CORRAL_AGENT_OUTPUT_POLL": "0.05",
    "CORRAL_AGENT_KILL_GRACE": "0.5",
}


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Send `sig` and wait; kill the process if it does not exit within `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _unverified() -> ssl.SSLContext:
    """A TLS context that accepts any certificate: only for polling /healthz and the
    nodes' status (the tests of TLS itself go through the CLI and the agent)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def base_env() -> dict[str, str]:
    """The environment every child process gets: no proxies, no user config."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.pop("CORRAL_SERVER", None)
    env.pop("CORRAL_TOKEN", None)
    env.pop("CORRAL_CA_FILE", None)
    env.pop("CORRAL_AGENT_CA_FILE", None)
    env["CORRAL_CONFIG"] = "/nonexistent/corral-config.toml"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class CliResult:
    """What a `corral` invocation printed and returned."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as the one JSON document `-o json` promises."""
        return json.loads(self.stdout)


@dataclass
class Server:
    """A `corral server` process on a free loopback port."""

    data_dir: Path
    log_path: Path
    database_url: str | None = None
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Serve HTTPS/WSS (`--tls on`); the CLI then trusts `ca_file`.
    tls: bool = False
    # The CA the CLI trusts; None: the CA the server generated in its data directory.
    tls_ca_file: Path | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate that verifies this server."""
        return self.tls_ca_file or self.data_dir / "tls" / "ca.crt"

    @property
    def token(self) -> str:
        """The bootstrap admin token."""
        return (self.data_dir / "admin-token").read_text().strip()

    def start(self) -> None:
        """Start the process and wait until /healthz answers."""
        args = [
            PYTHON, "-m", "corral", "server", "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}", "--heartbeat", "0.5",
            *(["--tls", "on"] if self.tls else []), *self.extra_args,
        ]  # fmt: skip
        if self.database_url:
            args += ["--database-url", self.database_url]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=base_env(), start_new_session=True
        )
        log.close()
        wait_for(self.healthy, START_TIMEOUT)

    def healthy(self) -> bool:
        """True when the process runs and /healthz answers 200."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(
                self.url + "/healthz", timeout=1, context=_unverified() if self.tls else None
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api_get(self, path: str) -> Any:
        """GET an API path as the admin, straight over HTTP: for polling, where a CLI
        process per poll (about a second to start) would set the pace."""
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        context = _unverified() if self.tls else None
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return json.load(response)

    def log(self) -> str:
        """The server's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the process (SIGKILL to simulate a crash)."""
        stop_process(self.process, sig, timeout)

    def cli(
        self, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> CliResult:
        """Run `corral ARGS` against this server as the admin."""
        child_env = base_env()
        child_env.update(
            CORRAL_SERVER=self.url, CORRAL_TOKEN=self.token, CORRAL_POLL_INTERVAL="0.1"
        )
        if self.tls:
            child_env["CORRAL_CA_FILE"] = str(self.ca_file)
        child_env.update(env or {})
        done = subprocess.run(
            [PYTHON, "-m", "corral", *args],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=timeout,
            check=False,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    def cli_json(self, *args: str, timeout: float = 60.0) -> Any:
        """Run `corral ARGS -o json`, insist on success, return the parsed document."""
        result = self.cli(*args, "-o", "json", timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(
                f"corral {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result.json()


@dataclass
class Agent:
    """A registered `corral agent run` process with its own state directory."""

    server: Server
    state_dir: Path
    log_path: Path
    node_id: str = ""
    process: subprocess.Popen[bytes] | None = None

    def register(
        self,
        activation_id: str,
        code: str,
        tags: Sequence[str] = (),
        ca_fingerprint: str | None = None,
    ) -> str:
        """`corral agent register` with the given activation; returns the node id."""
        return self.registered(self.start_register(activation_id, code, tags, ca_fingerprint))

    def start_register(
        self,
        activation_id: str,
        code: str,
        tags: Sequence[str] = (),
        ca_fingerprint: str | None = None,
    ) -> subprocess.Popen[str]:
        """Start `corral agent register` (see `registered`), so several run at once."""
        args = [
            PYTHON, "-m", "corral", "agent", "register", "--server", self.server.url,
            "--activation-id", activation_id, "--activation-code", code,
            "--state-dir", str(self.state_dir), "-o", "json",
        ]  # fmt: skip
        if ca_fingerprint:
            args += ["--ca-fingerprint", ca_fingerprint]
        for tag in tags:
            args += ["--tag", tag]
        return subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base_env()
        )

    def registered(self, process: subprocess.Popen[str]) -> str:
        """Wait for a `start_register` process; returns the node id."""
        stdout, stderr = process.communicate(timeout=60)
        if process.returncode != 0:
            raise AssertionError(f"register failed ({process.returncode}): {stderr}")
        self.node_id = json.loads(stdout)["node_id"]
        return self.node_id

    def start(self) -> None:
        """Start `corral agent run` in its own session."""
        env = base_env()
        env.update(AGENT_ENV)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "corral", "agent", "run", "--state-dir", str(self.state_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the agent process only (its workers live on, by design)."""
        stop_process(self.process, sig, timeout)

    def log(self) -> str:
        """The agent's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Fleet:
    """A server and some agents, created and torn down together."""

    def __init__(self, root: Path, database_url: str | None = None, tls: bool = False) -> None:
        self.root = root
        self.server = Server(
            root / "server", root / "server.log", database_url=database_url, tls=tls
        )
        self.agents: list[Agent] = []

    def start_server(self) -> Server:
        """Start the server."""
        self.server.start()
        return self.server

    def add_agents(self, count: int, tags: Sequence[str] = (), start: bool = True) -> list[Agent]:
        """Register `count` agents with one activation (and start them)."""
        activation = self.server.cli_json(
            "activation", "create", "--limit", str(count), "--description", "e2e"
        )
        added = []
        for _ in range(count):
            index = len(self.agents) + len(added)
            added.append(
                Agent(self.server, self.root / f"agent-{index}", self.root / f"agent-{index}.log")
            )
        # Registered side by side (each is a CLI process that takes about a second to start).
        registering = [
            agent.start_register(
                activation["activation_id"],
                activation["activation_code"],
                tags,
                activation.get("ca_fingerprint"),
            )
            for agent in added
        ]
        try:
            for agent, process in zip(added, registering, strict=True):
                agent.registered(process)
        finally:
            for process in registering:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        for agent in added:
            self.agents.append(agent)
            if start:
                agent.start()
        if start:
            self.wait_online([a.node_id for a in added])
        return added

    def online(self) -> set[str]:
        """Node ids the server reports Online."""
        nodes = self.server.api_get("/api/v1/nodes")
        return {n["node_id"] for n in nodes if n["ping_status"] == "Online"}

    def wait_online(self, node_ids: Sequence[str], timeout: float = 20.0) -> None:
        """Wait until every node is Online."""
        wait_for(lambda: set(node_ids) <= self.online(), timeout, interval=0.1)

    def wait_offline(self, node_id: str, timeout: float = 20.0) -> None:
        """Wait until the server reports the node ConnectionLost."""
        wait_for(lambda: node_id not in self.online(), timeout, interval=0.1)

    def stop(self) -> None:
        """Stop every agent, the server, and any worker the agents left behind."""
        for agent in self.agents:
            agent.stop()
        self.server.stop()
        kill_workers(self.root)

    def logs(self) -> str:
        """Every process log, for a failing test's report."""
        parts = [f"--- server ---\n{self.server.log()}"]
        parts += [f"--- {a.state_dir.name} ({a.node_id}) ---\n{a.log()}" for a in self.agents]
        return "\n".join(parts)


def kill_workers(root: Path) -> None:
    """Kill any process whose command line mentions a path under `root` (orphaned workers)."""
    needle = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            try:
                os.killpg(int(entry.name), signal.SIGKILL)
            except OSError:
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal.SIGKILL)
