"""Server fixtures: the app in-process (httpx ASGITransport) and a real uvicorn server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from nacl.signing import SigningKey

from corral.server.app import create_app
from corral.server.config import ServerConfig
from corral.server.main import uvicorn_config


def fast_config(data_dir: Path, **overrides: object) -> ServerConfig:
    """A config with short intervals for tests."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "port": 0,
        "heartbeat_seconds": 1.0,
        "connection_lost_seconds": 5.0,
        "dispatch_tick_seconds": 0.05,
        "last_seen_flush_seconds": 0.05,
        "presence_check_seconds": 0.2,
        "shutdown_grace_seconds": 2.0,
        "log_level": "warning",
    }
    values.update(overrides)
    return ServerConfig(**values)  # type: ignore[arg-type]


@dataclass
class Api:
    """An authenticated client plus the app it talks to."""

    client: httpx.AsyncClient
    app: FastAPI
    config: ServerConfig
    token: str

    async def register_node(
        self, tags: dict[str, str] | None = None, key: SigningKey | None = None
    ) -> tuple[str, SigningKey]:
        """Register a node through the API; returns its id and private key."""
        key = key or SigningKey.generate()
        created = await self.client.post(
            "/api/v1/activations", json={"tags": tags or {}, "registration_limit": 1}
        )
        assert created.status_code == 201, created.text
        body = created.json()
        response = await self.client.post(
            "/api/v1/register",
            json={
                "activation_id": body["activation_id"],
                "activation_code": body["activation_code"],
                "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["node_id"]), key


@contextlib.asynccontextmanager
async def running_app(config: ServerConfig) -> AsyncIterator[Api]:
    """The app with its lifespan running and an admin client."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        token = config.admin_token_path.read_text().strip()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://corral.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield Api(client, app, config, token)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The app on SQLite in a temporary data directory."""
    async with running_app(fast_config(tmp_path / "data")) as running:
        yield running


@dataclass
class LiveServer:
    """A real uvicorn server on 127.0.0.1 with a random port."""

    server: uvicorn.Server
    config: ServerConfig
    port: int

    @property
    def url(self) -> str:
        """HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """Agent channel URL."""
        return f"ws://127.0.0.1:{self.port}/agent/v1/connect"

    @property
    def token(self) -> str:
        """The admin token."""
        return self.config.admin_token_path.read_text().strip()

    def client(self) -> httpx.AsyncClient:
        """An admin HTTP client."""
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )


@contextlib.asynccontextmanager
async def live_server(config: ServerConfig) -> AsyncIterator[LiveServer]:
    """Run uvicorn in this event loop until the block ends."""
    server = uvicorn.Server(uvicorn_config(config))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(server, config, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """A real server on SQLite."""
    async with live_server(fast_config(tmp_path / "data")) as running:
        yield running
