"""Port forwards and the SSH proxy end to end: `corral session forward` and `session proxy`
as real processes, a real server and agent, real HTTP and OpenSSH on the node's side."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import PYTHON, Fleet, base_env, free_port, wait_for

MEGABYTE = 1024 * 1024


@pytest.fixture(scope="module")
def port_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A server and one agent, shared by this module's tests."""
    fleet = Fleet(tmp_path_factory.mktemp("forward"))
    try:
        fleet.start_server()
        fleet.add_agents(1, tags=["env=dev"])
        yield fleet
    except BaseException:
        print(fleet.logs())  # noqa: T201 - shown by pytest only when the test fails
        raise
    finally:
        fleet.stop()


def cli_env(fleet: Fleet) -> dict[str, str]:
    env = base_env()
    env.update(CORRAL_SERVER=fleet.server.url, CORRAL_TOKEN=fleet.server.token)
    return env


class Forward:
    """A running `corral session forward NODE --remote-port P -o json`."""

    def __init__(self, fleet: Fleet, remote_port: int, *extra: str) -> None:
        node = fleet.agents[0].node_id
        self.stderr_path = fleet.root / f"forward-{remote_port}-{time.monotonic_ns()}.err"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    PYTHON, "-m", "corral", "session", "forward", node,
                    "--remote-port", str(remote_port), *extra, "-o", "json",
                ],
                stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                env=cli_env(fleet),
            )  # fmt: skip
        assert self.process.stdout is not None
        text = ""
        while True:  # one JSON document, printed once the forward listens
            line = self.process.stdout.readline().decode()
            if not line:
                raise AssertionError(f"forward exited: {self.stderr()}")
            text += line
            if line.rstrip() == "}":
                break
        self.info: dict[str, Any] = json.loads(text)
        self.port = int(self.info["local_port"])

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """Ctrl-C, as a user would; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            assert self.process.stdout is not None
            self.process.stdout.close()


@contextlib.contextmanager
def forwarding(fleet: Fleet, remote_port: int, *extra: str) -> Iterator[Forward]:
    forward = Forward(fleet, remote_port, *extra)
    try:
        yield forward
    finally:
        forward.stop()


def session_of(fleet: Fleet, session_id: str) -> dict[str, Any]:
    return dict(fleet.server.cli_json("session", "show", session_id))


def audit_of(fleet: Fleet, action: str, session_id: str) -> list[dict[str, Any]]:
    records = fleet.server.cli_json("audit", "list", "--action", action, "--limit", "1000")
    return [r for r in records if f"session:{session_id}" in r["resources"]]


def ended(fleet: Fleet, session_id: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (s := session_of(fleet, session_id))["ended_at"] and s, 10))


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """`python -m http.server` on a free loopback port, serving a temporary directory."""
    root = tmp_path / "www"
    root.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _accepts(port), 10)
        yield port, root
    finally:
        server.terminate()
        server.wait(5)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def test_a_forward_carries_many_concurrent_http_requests_and_records_metadata(
    port_fleet: Fleet, http_root: tuple[int, Path]
) -> None:
    port, root = http_root
    big = os.urandom(5 * MEGABYTE)
    (root / "big.bin").write_bytes(big)
    for index in range(40):
        (root / f"page-{index}.txt").write_text(f"page {index}\n" * (index + 1))
    with forwarding(port_fleet, port) as forward:
        assert forward.info["remote_host"] == "localhost"
        base = f"http://127.0.0.1:{forward.port}"
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            pages = {i: pool.submit(_get, f"{base}/page-{i}.txt") for i in range(40)}
            downloads = [pool.submit(_get, f"{base}/big.bin") for _ in range(3)]
            for index, page in pages.items():
                assert page.result().decode() == f"page {index}\n" * (index + 1)
            for download in downloads:
                assert hashlib.sha256(download.result()).hexdigest() == (
                    hashlib.sha256(big).hexdigest()
                )
        session_id = forward.info["session_id"]
        assert forward.stop() == 0
    session = ended(port_fleet, session_id)
    assert (session["kind"], session["target_host"], session["target_port"]) == (
        "port", "localhost", port,
    )  # fmt: skip
    assert (session["status"], session["reason"]) == (
        "Terminated", "the operator closed the session",
    )  # fmt: skip
    assert session["connections"] == 43
    assert session["bytes_out"] > 3 * len(big)
    assert session["recording"] is None
    connections = wait_for(
        lambda: len(c := audit_of(port_fleet, "session:Connection", session_id)) == 43 and c
    )
    assert {c["details"]["outcome"] for c in connections} == {"closed"}
    assert {(c["details"]["host"], c["details"]["port"]) for c in connections} == {
        ("localhost", port)
    }
    assert sum(c["details"]["bytes_out"] for c in connections) == session["bytes_out"]
    assert all(c["details"]["bytes_in"] > 0 and c["details"]["closed_at"] for c in connections)
    [start] = audit_of(port_fleet, "session:Start", session_id)
    assert (start["details"]["kind"], start["details"]["target"]) == ("port", f"localhost:{port}")
    [end] = wait_for(lambda: audit_of(port_fleet, "session:End", session_id))
    assert end["details"]["target"] == f"localhost:{port}"
    assert end["details"]["connections"] == 43
    assert end["details"]["duration_seconds"] > 0


def test_half_close_works_both_ways(port_fleet: Fleet) -> None:
    """The client half-closes and still gets the reply; the server half-closes first and
    still gets what the client sends afterwards."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                mode = conn.recv(1)
                if mode == b"A":  # read to EOF, then answer
                    data = _read_all(conn)
                    conn.sendall(f"got {len(data)} {hashlib.sha256(data).hexdigest()}".encode())
                else:  # say hello, half-close, then read what still comes
                    conn.sendall(b"hello")
                    conn.shutdown(socket.SHUT_WR)
                    received.append(_read_all(conn))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    payload = os.urandom(3 * MEGABYTE)
    with listener, forwarding(port_fleet, port) as forward:
        with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as client:
            client.sendall(b"A" + payload)
            client.shutdown(socket.SHUT_WR)
            reply = _read_all(client).decode()
        assert reply == f"got {len(payload)} {hashlib.sha256(payload).hexdigest()}"
        with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as client:
            client.sendall(b"B")
            assert _read_exactly(client, 5) == b"hello"
            assert client.recv(1) == b""  # the node's side half-closed
            client.sendall(b"after the peer's EOF")
            client.shutdown(socket.SHUT_WR)
            thread.join(10)
        assert received == [b"after the peer's EOF"]


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def test_a_stalled_connection_holds_up_neither_the_others_nor_memory(port_fleet: Fleet) -> None:
    """A client that stops reading stops the node-side sender (the flood stalls at a
    bounded amount), while another connection through the same forward still flows."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    flooded = [0]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if conn.recv(1) == b"F":  # flood until the reader goes away
                chunk = b"x" * 65536
                while True:
                    flooded[0] += conn.send(chunk)
            else:  # echo to EOF
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    with (
        listener,
        forwarding(port_fleet, port) as forward,
        socket.create_connection(("127.0.0.1", forward.port), timeout=10) as stalled,
    ):
        stalled.sendall(b"F")
        wait_for(lambda: flooded[0] > MEGABYTE, 5)
        time.sleep(1.0)
        stalled_at = flooded[0]
        with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as other:
            payload = os.urandom(2 * MEGABYTE)
            other.sendall(b"E")
            sender = threading.Thread(target=_send_and_close, args=(other, payload))
            sender.start()
            assert _read_all(other) == payload
            sender.join(5)
        # Nothing kept reading for the stalled client: no buffer grew meanwhile.
        assert flooded[0] == stalled_at
        assert stalled_at < 32 * MEGABYTE
        assert len(_read_exactly(stalled, 8 * MEGABYTE)) == 8 * MEGABYTE  # and it resumes


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def test_a_refused_port_closes_the_connection_and_says_why(port_fleet: Fleet) -> None:
    port = free_port()  # nothing listens there
    with forwarding(port_fleet, port) as forward:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", forward.port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(100) == b""
        assert time.monotonic() - started < 5
        wait_for(lambda: "connection refused" in forward.stderr(), 5)
        assert f"localhost:{port}" in forward.stderr()
        session_id = forward.info["session_id"]
        [failed] = wait_for(lambda: audit_of(port_fleet, "session:Connection", session_id))
        assert failed["details"]["outcome"] == "failed"
        assert "connection refused" in failed["details"]["reason"]
        # The forward itself lives on: the next connection is tried again.
        assert session_of(port_fleet, session_id)["status"] == "Connected"


def test_session_proxy_reports_a_refused_port_on_stderr_only(port_fleet: Fleet) -> None:
    node = port_fleet.agents[0].node_id
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        [PYTHON, "-m", "corral", "session", "proxy", node, "--port", str(port)],
        input=b"SSH-2.0-test\r\n", capture_output=True, env=cli_env(port_fleet), timeout=30,
        check=False,
    )  # fmt: skip
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"connection refused" in done.stderr
    assert f"localhost:{port} on {node}".encode() in done.stderr


# --- OpenSSH through `session proxy` ---------------------------------------------


def _install_openssh() -> None:
    """Install Debian's OpenSSH server and client when missing (skip, or fail under CI)."""
    have_server = shutil.which("sshd") or Path("/usr/sbin/sshd").exists()
    if have_server and shutil.which("ssh") and shutil.which("ssh-keygen"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "openssh-server",
        "openssh-client",
    ]
    try:
        done = subprocess.run(
            install, capture_output=True, text=True, env=env, timeout=300, check=False
        )
        if done.returncode != 0:  # package lists may be missing in a fresh image
            subprocess.run(
                ["apt-get", "update"], capture_output=True, env=env, timeout=300, check=False
            )
            done = subprocess.run(
                install, capture_output=True, text=True, env=env, timeout=300, check=False
            )
    except (OSError, subprocess.TimeoutExpired) as error:
        done = subprocess.CompletedProcess(install, 1, "", str(error))
    if done.returncode != 0:
        message = f"cannot install openssh-server/openssh-client: {done.stderr[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, str]]:
    """An `sshd -D` on a loopback port accepting one throwaway key for the current user."""
    _install_openssh()
    root = tmp_path_factory.mktemp("sshd")
    sshd_path = shutil.which("sshd") or "/usr/sbin/sshd"
    user = pwd.getpwuid(os.getuid()).pw_name
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True
        )
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"HostKey {root / 'host_key'}",
                "ListenAddress 127.0.0.1",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                "StrictModes no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                f"PidFile {root / 'sshd.pid'}",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # the privilege separation directory
    log = (root / "sshd.log").open("wb")
    process = subprocess.Popen(
        [sshd_path, "-D", "-e", "-f", str(config), "-p", str(port)], stdout=log, stderr=log
    )
    log.close()
    try:
        wait_for(lambda: process.poll() is not None or _accepts(port), 10)
        assert process.poll() is None, (root / "sshd.log").read_text()
        yield port, root / "client_key", user
    finally:
        process.terminate()
        process.wait(5)


def test_openssh_runs_through_session_proxy(port_fleet: Fleet, sshd: tuple[int, Path, str]) -> None:
    port, key, user = sshd
    node = port_fleet.agents[0].node_id
    proxy = f"{PYTHON} -m corral session proxy %h --port {port}"
    done = subprocess.run(
        [
            "ssh", "-o", f"ProxyCommand={proxy}", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-i", str(key), f"{user}@{node}", "echo", "through-corral",
        ],
        capture_output=True, text=True, env=cli_env(port_fleet), timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "through-corral\n"
    sessions = port_fleet.server.cli_json("session", "list")
    session = next(s for s in sessions if s["kind"] == "port" and s["target_port"] == port)
    session = ended(port_fleet, session["session_id"])
    assert session["status"] == "Terminated"
    assert session["connections"] == 1
    assert session["bytes_in"] > 0
    assert session["bytes_out"] > 0
    [connection] = wait_for(
        lambda: audit_of(port_fleet, "session:Connection", session["session_id"])
    )
    assert (connection["details"]["host"], connection["details"]["port"]) == ("localhost", port)
    assert connection["details"]["outcome"] == "closed"  # ended by ssh, not cut off
    assert session["reason"] == "the operator closed the session"
    assert connection["details"]["bytes_out"] == session["bytes_out"]
