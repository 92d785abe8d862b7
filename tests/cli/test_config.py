"""Connection precedence (flags > env > config file) and `corral login`."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from corral.cli.client import config_path, read_config, resolve_connection, write_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import FakeApi, Result

    Cli = Callable[..., Result]


@pytest.mark.parametrize(
    ("flag", "env", "file", "expected"),
    [
        ("http://flag", "http://env", "http://file", "http://flag"),
        (None, "http://env", "http://file", "http://env"),
        (None, None, "http://file", "http://file"),
        (None, None, "http://file/", "http://file"),
    ],
)
def test_server_precedence(
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    file: str,
    expected: str,
) -> None:
    write_config(isolated_env, {"server": file, "token": "file-token"})
    if env:
        monkeypatch.setenv("CORRAL_SERVER", env)
        monkeypatch.setenv("CORRAL_TOKEN", "env-token")
    connection = resolve_connection(flag, "flag-token" if flag else None, None)
    assert connection.server == expected
    assert (
        connection.token
        == {"flag": "flag-token", "env": "env-token", "file": "file-token"}[
            expected.split("//")[1].rstrip("/")
        ]
    )


def test_ca_file_from_env(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_CA_FILE", "/etc/ca.pem")
    assert resolve_connection("http://x", None, None).ca_file == "/etc/ca.pem"
    assert resolve_connection("http://x", None, "/other.pem").ca_file == "/other.pem"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CORRAL_CONFIG": "/a/b.toml"}, Path("/a/b.toml")),
        ({"XDG_CONFIG_HOME": "/xdg"}, Path("/xdg/corral/config.toml")),
        ({"HOME": "/home/op"}, Path("/home/op/.config/corral/config.toml")),
    ],
)
def test_config_path(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: Path) -> None:
    monkeypatch.delenv("CORRAL_CONFIG", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert config_path() == expected


def test_login_verifies_then_writes_0600(api: FakeApi, cli: Cli, isolated_env: Path) -> None:
    api.on("GET", "/api/v1/commands", body=[])
    result = cli("login", "--server", "http://corral.test/", "--token", 'to"k\\en', server=False)
    assert result.exit_code == 0
    assert api.requests[0].headers["authorization"] == 'Bearer to"k\\en'
    assert stat.S_IMODE(isolated_env.stat().st_mode) == 0o600
    assert read_config(isolated_env) == {"server": "http://corral.test", "token": 'to"k\\en'}
    # Later commands use the saved server and token.
    api.on("GET", "/api/v1/nodes", body=[])
    assert cli("nodes", "list", "-o", "json", server=False).json() == []
    assert api.requests[-1].url.host == "corral.test"
    assert api.requests[-1].headers["authorization"] == 'Bearer to"k\\en'


def test_login_rejected_token_writes_nothing(api: FakeApi, cli: Cli, isolated_env: Path) -> None:
    api.fail("GET", "/api/v1/commands", 401, "AuthError", "unknown token")
    result = cli(
        "login", "--server", "http://corral.test", "--token", "bad", "-o", "json", server=False
    )
    assert result.exit_code == 4
    assert result.error()["type"] == "AuthError"
    assert not isolated_env.exists()


def test_flag_beats_env_in_requests(
    api: FakeApi, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_SERVER", "http://env.test")
    monkeypatch.setenv("CORRAL_TOKEN", "env-token")
    api.on("GET", "/api/v1/nodes", body=[])
    cli("nodes", "list", server=False)
    assert api.requests[-1].url.host == "env.test"
    cli("nodes", "list", "--server", "http://flag.test", "--token", "ft", server=False)
    assert api.requests[-1].url.host == "flag.test"
    assert api.requests[-1].headers["authorization"] == "Bearer ft"


def test_login_accepts_a_valid_token_without_list_permission(
    api: FakeApi, cli: Cli, isolated_env: Path
) -> None:
    api.fail("GET", "/api/v1/commands", 403, "AuthError", "access denied")
    result = cli("login", "--server", "http://corral.test", "--token", "limited", server=False)
    assert result.exit_code == 0
    assert read_config(isolated_env)["token"] == "limited"
