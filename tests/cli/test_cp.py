"""`corral cp` before any transfer: which side is the node's, paths, and refusals' exit codes
(the transfers themselves run end to end in tests/e2e/test_cp.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from corral.cli.client import CliError
from corral.cli.cp import parse_plan
from tests.cli.conftest import FakeApi, Result

NODE = "mi-0123456789abcdef0"


def test_which_side_is_the_node() -> None:
    up = parse_plan("./a.txt", f"{NODE}:/srv/a.txt", False)
    assert (up.direction, up.node_id, up.remote, up.local) == (
        "upload",
        NODE,
        "/srv/a.txt",
        "./a.txt",
    )
    down = parse_plan(f"{NODE}:/srv/", "out", True)
    assert (down.direction, down.remote, down.local, down.recursive) == (
        "download",
        "/srv/",
        "out",
        True,
    )
    assert parse_plan("c:/x", f"{NODE}:/x", False).local == "c:/x"  # not a node id: local
    for source, destination in [("a", "b"), (f"{NODE}:/a", f"{NODE}:/b")]:
        with pytest.raises(CliError):
            parse_plan(source, destination, False)


def test_usage_errors_exit_2_before_any_request(
    cli: Callable[..., Result], api: FakeApi, tmp_path: Path
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    for args in [
        (str(tmp_path / "f"), str(tmp_path / "g")),
        (str(tmp_path / "d"), f"{NODE}:/srv/d"),
        (str(tmp_path / "f"), f"{NODE}:srv/f"),
        (str(tmp_path / "f"), f"{NODE}:/srv/../etc/f"),
    ]:
        result = cli("cp", *args, "-o", "json")
        assert result.exit_code == 2, (args, result.stderr)
        assert result.error()["type"] == "ValidationError"
    missing = cli("cp", str(tmp_path / "nope"), f"{NODE}:/srv/f")
    assert missing.exit_code == 3
    assert api.requests == []


def test_refusals_from_the_server_keep_their_exit_codes(
    cli: Callable[..., Result], api: FakeApi, tmp_path: Path
) -> None:
    (tmp_path / "f").write_text("x")
    api.fail("POST", "/api/v1/transfers/upload", 403, "AccessDeniedError", "may not file:Upload")
    denied = cli("cp", str(tmp_path / "f"), f"{NODE}:/etc/", "-o", "json")
    assert (denied.exit_code, denied.error()["type"]) == (4, "AccessDeniedError")
    assert api.bodies("POST", "/api/v1/transfers/upload") == [
        {
            "node_id": NODE,
            "path": "/etc/f",
            "recursive": False,
            "source_kind": "file",
            "source_name": "f",
        }
    ]
    api.fail("POST", "/api/v1/transfers/download", 409, "ConflictError", "node is not connected")
    offline = cli("cp", f"{NODE}:/etc/hosts", str(tmp_path / "h"), "-o", "json")
    assert (offline.exit_code, offline.error()["type"]) == (5, "UnavailableError")
    assert len(api.bodies("POST", "/api/v1/transfers/download")) == 1  # offline: no retry
