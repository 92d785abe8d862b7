"""The agent reaches its server through an HTTP proxy when the environment names one."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Fleet


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on loopback that records where clients tunnel to."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tunnels: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            request_line = head.split(b"\r\n", 1)[0].decode()
            method, target, _ = request_line.split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                rest = head.split(b"\r\n\r\n", 1)[1]
                if rest:
                    upstream.sendall(rest)
                pair = {client: upstream, upstream: client}
                while not self._stop.is_set():
                    ready, _, _ = select.select(list(pair), [], [], 0.2)
                    for sock in ready:
                        data = sock.recv(65536)
                        if not data:
                            return
                        pair[sock].sendall(data)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as running:
        yield running


def test_agent_connects_through_the_proxy_in_its_environment(
    fresh_fleet: Fleet, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    (agent,) = fresh_fleet.add_agents(1, start=False)
    import tests.e2e.harness as harness

    proxied = {
        **harness.AGENT_ENV,
        "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
        "NO_PROXY": "",
    }
    monkeypatch.setattr(harness, "AGENT_ENV", proxied)
    agent.start()
    fresh_fleet.wait_online([agent.node_id])
    assert f"127.0.0.1:{fresh_fleet.server.port}" in proxy.tunnels
    result = fresh_fleet.server.cli(
        "run",
        "Corral-RunShellScript",
        "--targets",
        agent.node_id,
        "--param",
        "commands=echo via proxy",
    )
    assert result.returncode == 0, result.stderr


def test_no_proxy_bypasses_the_proxy(
    fresh_fleet: Fleet, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    (agent,) = fresh_fleet.add_agents(1, start=False)
    import tests.e2e.harness as harness

    bypass = {
        **harness.AGENT_ENV,
        "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
        "NO_PROXY": "127.0.0.1",
    }
    monkeypatch.setattr(harness, "AGENT_ENV", bypass)
    agent.start()
    fresh_fleet.wait_online([agent.node_id])
    assert proxy.tunnels == []
