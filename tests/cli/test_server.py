"""`corral server` builds the ServerConfig and hands it to corral.server.main.run."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from corral.server.config import ServerConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import Result

    Cli = Callable[..., Result]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    """Replace corral.server.main with a stub that records the config it is run with."""
    calls: list[ServerConfig] = []
    stub: Any = types.ModuleType("corral.server.main")
    stub.run = calls.append
    monkeypatch.setitem(sys.modules, "corral.server.main", stub)
    return calls


def test_server_options(cli: Cli, started: list[ServerConfig], tmp_path: Path) -> None:
    result = cli(
        "server", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:9443",
        "--database-url", "postgresql://u@db/corral", "--heartbeat", "5s",
        "--log-level", "DEBUG", server=False,
    )  # fmt: skip
    assert result.exit_code == 0
    [config] = started
    assert config.data_dir == tmp_path
    assert (config.host, config.port) == ("127.0.0.1", 9443)
    assert config.database_url == "postgresql://u@db/corral"
    assert config.heartbeat_seconds == 5
    assert config.log_level == "debug"


def test_server_defaults(cli: Cli, started: list[ServerConfig], tmp_path: Path) -> None:
    assert cli("server", "--data-dir", str(tmp_path), server=False).exit_code == 0
    [config] = started
    assert (config.host, config.port, config.database_url) == ("127.0.0.1", 8443, None)
    assert config.heartbeat_seconds == ServerConfig(data_dir=tmp_path).heartbeat_seconds


@pytest.mark.parametrize(
    "args",
    [["--listen", "nope"], ["--heartbeat", "soon"], ["--log-level", "loud"], []],
)
def test_server_bad_options(
    cli: Cli, started: list[ServerConfig], tmp_path: Path, args: list[str]
) -> None:
    data_dir = ["--data-dir", str(tmp_path)] if args else []
    result = cli("server", *data_dir, *args, server=False)
    assert result.exit_code == 2
    assert started == []
