"""TLS in the CLI: `corral server` flags, `--ca-file`, and the activation's register line."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from corral.cli.client import read_config
from corral.server.config import ServerConfig
from corral.server.tls import ensure_generated_tls, subject_names

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import FakeApi, Result

    Cli = Callable[..., Result]

FINGERPRINT = "sha256:" + "1f" * 32
ACTIVATION = {
    "activation_id": "4b0c0e1e-0000-4000-8000-000000000001",
    "activation_code": "c0de",
    "description": "",
    "tags": {},
    "registration_limit": 1,
    "registrations_count": 0,
    "expires_at": "2030-01-01T00:00:00Z",
    "created_at": "2029-12-31T00:00:00Z",
    "expired": False,
}


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    """Replace corral.server.main with a stub that records the config it is run with."""
    calls: list[ServerConfig] = []
    stub: Any = types.ModuleType("corral.server.main")
    stub.run = calls.append
    monkeypatch.setitem(sys.modules, "corral.server.main", stub)
    return calls


def test_server_tls_flags(cli: Cli, started: list[ServerConfig], tmp_path: Path) -> None:
    result = cli(
        "server", "--data-dir", str(tmp_path), "--listen", "0.0.0.0:8443", "--tls", "ON",
        "--tls-cert", "s.crt", "--tls-key", "s.key", "--tls-ca", "ca.crt",
        "--tls-san", "corral.example", "--tls-san", "10.0.0.1", server=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    [config] = started
    assert config.tls == "on"
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (
        Path("s.crt"),
        Path("s.key"),
        Path("ca.crt"),
    )
    assert config.tls_san == ("corral.example", "10.0.0.1")


def test_server_tls_defaults_to_auto(cli: Cli, started: list[ServerConfig], tmp_path: Path) -> None:
    assert cli("server", "--data-dir", str(tmp_path), server=False).exit_code == 0
    [config] = started
    assert (config.tls, config.tls_cert, config.tls_san) == ("auto", None, ())
    assert not config.tls_enabled


def test_server_bad_tls_mode(cli: Cli, started: list[ServerConfig], tmp_path: Path) -> None:
    result = cli("server", "--data-dir", str(tmp_path), "--tls", "maybe", server=False)
    assert result.exit_code == 2
    assert started == []


def test_server_refuses_a_key_that_is_not_the_certificates(cli: Cli, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    one = ensure_generated_tls(tmp_path / "one", subject_names("corral.example"), now)
    two = ensure_generated_tls(tmp_path / "two", subject_names("corral.example"), now)
    result = cli(
        "server", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:9",
        "--tls-cert", str(one.cert_file), "--tls-key", str(two.key_file), server=False,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "is not the key of the certificate" in result.stderr


def test_activation_create_prints_the_pinned_register_line(api: FakeApi, cli: Cli) -> None:
    api.on("POST", "/api/v1/activations", 201, {**ACTIVATION, "ca_fingerprint": FINGERPRINT})
    result = cli("activation", "create")
    assert result.exit_code == 0
    assert f"CA fingerprint:  {FINGERPRINT}" in result.stdout
    (line,) = [x for x in result.stdout.splitlines() if "corral agent register" in x]
    words = shlex.split(line)
    assert words[words.index("--server") + 1] == "http://corral.test"
    assert words[words.index("--activation-id") + 1] == ACTIVATION["activation_id"]
    assert words[words.index("--activation-code") + 1] == "c0de"
    assert words[words.index("--ca-fingerprint") + 1] == FINGERPRINT
    as_json = cli("activation", "create", "-o", "json")
    assert as_json.json()["ca_fingerprint"] == FINGERPRINT


def test_activation_create_without_tls_has_no_fingerprint(api: FakeApi, cli: Cli) -> None:
    api.on("POST", "/api/v1/activations", 201, {**ACTIVATION, "ca_fingerprint": None})
    result = cli("activation", "create")
    assert "corral agent register --server http://corral.test" in result.stdout
    assert "--ca-fingerprint" not in result.stdout


def test_missing_ca_file_is_a_usage_error(cli: Cli) -> None:
    result = cli("nodes", "list", "--ca-file", "/nonexistent/ca.pem", "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == "ca_file"
    assert "/nonexistent/ca.pem does not exist" in result.error()["message"]


def test_login_saves_the_ca_file_as_an_absolute_path(
    api: FakeApi, cli: Cli, isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(dt.UTC)
    ensure_generated_tls(tmp_path / "pki", subject_names("corral.example"), now)
    monkeypatch.chdir(tmp_path)
    api.on("GET", "/api/v1/commands", body=[])
    result = cli(
        "login", "--server", "https://corral.test", "--token", "t", "--ca-file", "pki/ca.crt",
        server=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert read_config(isolated_env)["ca_file"] == str(tmp_path / "pki" / "ca.crt")
