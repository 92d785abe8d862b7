"""Fixtures for CLI tests: an isolated config/env and a tiny fake of the HTTP API."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.cli.client import use_transport
from corral.cli.main import run_cli

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeApi:
    """Routes (METHOD, PATH) to queued responses and records every request."""

    routes: dict[tuple[str, str], list[Handler]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, status: int = 200, body: Any = None) -> None:
        """Queue a JSON response; the last one queued for a route repeats forever."""
        content = b"" if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if body is not None else {}
        self.routes.setdefault((method, path), []).append(
            lambda _req: httpx.Response(status, content=content, headers=headers)
        )

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        type_: str,
        message: str,
        field_: str | None = None,
    ) -> None:
        """Queue an API error response."""
        self.on(
            method, path, status, {"error": {"type": type_, "message": message, "field": field_}}
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        """MockTransport handler."""
        self.requests.append(request)
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(
                404, json={"error": {"type": "NotFoundError", "message": "no route", "field": None}}
            )
        handler = queue.pop(0) if len(queue) > 1 else queue[0]
        return handler(request)

    def bodies(self, method: str, path: str) -> list[Any]:
        """Decoded JSON bodies sent to a route."""
        return [
            json.loads(r.content) if r.content else None
            for r in self.requests
            if r.method == method and r.url.path == path
        ]


@dataclass
class Result:
    """What a CLI run produced."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as exactly one JSON document."""
        return json.loads(self.stdout)

    def error(self) -> Any:
        """stderr parsed as the JSON error document."""
        return json.loads(self.stderr)["error"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No real config, no real env, instant polling, wide tables."""
    config = tmp_path / "config" / "corral.toml"
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    for name in ("CORRAL_SERVER", "CORRAL_TOKEN", "CORRAL_CA_FILE", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CORRAL_POLL_INTERVAL", "0")
    monkeypatch.setenv("COLUMNS", "200")
    yield config
    use_transport(None)


@pytest.fixture
def api() -> FakeApi:
    """A fake API wired in through the client's transport seam."""
    fake = FakeApi()
    use_transport(httpx.MockTransport(fake.handle))
    return fake


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the CLI in-process against the fake API, with --server given."""

    def invoke(*argv: str, server: bool = True) -> Result:
        args = [*argv, "--server", "http://corral.test", "--token", "t0k"] if server else list(argv)
        capsys.readouterr()
        code = run_cli(args)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return invoke
