"""A real Corral server (uvicorn on SQLite) in a background thread, for CLI tests.

The CLI is synchronous, so the server runs in its own thread and event loop; the CLI
runs in-process (`run_cli`) and reaches it over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from nacl.signing import SigningKey

from tests.server.conftest import fast_config, live_server

if TYPE_CHECKING:
    from tests.cli.conftest import Result

START_TIMEOUT = 30.0


@dataclass
class Live:
    """A running server: its URL, admin token and data directory."""

    url: str
    admin_token: str
    data_dir: Path
    database: Path

    def http(self, token: str | None = None) -> httpx.Client:
        """A plain HTTP client for setting things up (admin by default)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=10,
            trust_env=False,
        )

    def register_node(self, tags: dict[str, str]) -> str:
        """Register a node (activation + registration, no agent); returns its id."""
        key = SigningKey.generate()
        with self.http() as client:
            created = client.post(
                "/api/v1/activations", json={"tags": tags, "registration_limit": 1}
            )
            assert created.status_code == 201, created.text
            activation = created.json()
            registered = client.post(
                "/api/v1/register",
                json={
                    "activation_id": activation["activation_id"],
                    "activation_code": activation["activation_code"],
                    "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
                },
            )
            assert registered.status_code == 201, registered.text
            return str(registered.json()["node_id"])

    def sql(self, statement: str, *args: Any) -> None:
        """Change the SQLite database behind the server's back (to tamper with it)."""
        connection = sqlite3.connect(self.database, timeout=10)
        try:
            with connection:
                connection.execute(statement, args)
        finally:
            connection.close()


def _serve(data_dir: Path, ready: queue.Queue[object], stop: threading.Event) -> None:
    async def main() -> None:
        async with live_server(fast_config(data_dir)) as server:
            ready.put(server)
            while not stop.is_set():
                await asyncio.sleep(0.02)

    try:
        asyncio.run(main())
    except BaseException as exc:  # reported to the test through the queue
        ready.put(exc)


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """A real server on SQLite in a temporary data directory (stopped afterwards)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    ready: queue.Queue[object] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(data_dir, ready, stop), daemon=True)
    thread.start()
    started = ready.get(timeout=START_TIMEOUT)
    if isinstance(started, BaseException):
        raise started
    server: Any = started
    try:
        yield Live(server.url, server.token, data_dir, server.config.sqlite_path)
    finally:
        stop.set()
        thread.join(START_TIMEOUT)
    assert not thread.is_alive(), "the test server did not stop"
    assert ready.empty(), f"the test server failed: {ready.get_nowait()!r}"


Runner = Callable[..., "Result"]


def as_principal(cli: Runner, live: Live, token: str) -> Runner:
    """A CLI runner that talks to `live` with `token`."""

    def invoke(*argv: str) -> Result:
        return cli(*argv, "--server", live.url, "--token", token, server=False)

    return invoke
